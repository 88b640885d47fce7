//! Shared reading of `data/reference_cases.tsv` for the reference tests
//! (`reference_cases.rs` checks each case, `reference_oci.rs` compares
//! parsers on the same inputs).
#![allow(dead_code, clippy::expect_used)]

/// The ported cases: `ok`/`err` rows, tab-separated, `#` comments.
pub const DATA: &str = include_str!("../data/reference_cases.tsv");

/// The data rows as (1-based line number, columns), without blank lines,
/// comment lines and trailing `\t# ` comments.
pub fn rows() -> impl Iterator<Item = (usize, Vec<&'static str>)> {
    DATA.lines().enumerate().filter_map(|(n, line)| {
        if line.trim().is_empty() || line.starts_with('#') {
            return None;
        }
        let line = line.split("\t# ").next().unwrap_or(line);
        Some((n + 1, line.split('\t').collect()))
    })
}

/// Expands `{X*N}` (X repeated N times) and `{sp}` (a space).
pub fn expand(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').expect("unclosed {") + open;
        let inner = &rest[open + 1..close];
        if inner == "sp" {
            out.push(' ');
        } else {
            let (unit, count) = inner.rsplit_once('*').expect("{X*N}");
            out.push_str(&unit.repeat(count.parse().expect("count")));
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}
