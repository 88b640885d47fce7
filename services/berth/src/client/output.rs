//! Printing: aligned tables for people, the API's JSON for scripts, and
//! small accessors for the JSON the API answers with.

use serde_json::Value;

/// Prints `v` as pretty JSON (the `--json` form).
pub fn json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// Prints an aligned table with a header row; an empty table prints `empty`.
pub fn table(header: &[&str], rows: &[Vec<String>], empty: &str) {
    if rows.is_empty() {
        println!("{empty}");
        return;
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                let w = widths.get(i).copied().unwrap_or(0);
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints `key: value` lines, keys aligned.
pub fn fields(pairs: &[(&str, String)]) {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (k, v) in pairs {
        println!("{:<w$} {v}", format!("{k}:"));
    }
}

/// The string at a `/`-separated pointer (`serviceDetails/numInstances`),
/// numbers and booleans rendered, `-` when absent or null.
pub fn s(v: &Value, pointer: &str) -> String {
    match v.pointer(&format!("/{pointer}")) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.is_empty() => "-".to_owned(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

/// A timestamp shortened for a table (`2026-11-27 07:04:29`).
pub fn time(v: &Value, pointer: &str) -> String {
    let t = s(v, pointer);
    if t.len() >= 19 && t.as_bytes().get(10) == Some(&b'T') {
        format!("{} {}", &t[..10], &t[11..19])
    } else {
        t
    }
}

/// An event's details as `key=value` pairs on one line.
pub fn details(v: &Value) -> String {
    match v {
        Value::Object(m) => m
            .iter()
            .filter(|(_, x)| !x.is_null())
            .map(|(k, x)| match x {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fields_render_as_table_cells() {
        let v = json!({
            "a": {"b": 3},
            "t": "2026-11-27T07:04:29.123Z",
            "keys": ["X", "Y"],
            "none": [],
            "n": null,
            "yes": true,
        });
        assert_eq!(s(&v, "a/b"), "3");
        assert_eq!(s(&v, "keys"), "X,Y");
        assert_eq!(s(&v, "none"), "-");
        assert_eq!(s(&v, "n"), "-");
        assert_eq!(s(&v, "missing/deep"), "-");
        assert_eq!(s(&v, "yes"), "true");
        assert_eq!(time(&v, "t"), "2026-11-27 07:04:29");
        assert_eq!(time(&v, "keys"), "X,Y");
    }

    #[test]
    fn details_skip_nulls() {
        let d = json!({"deployId": "dep-1", "status": "live", "reason": null, "n": 2});
        assert_eq!(details(&d), "deployId=dep-1 n=2 status=live");
        assert_eq!(details(&Value::Null), "");
    }
}
