//! Data-driven tests of the image reference grammar: the cases of
//! distribution/reference v0.6.0 (and berth's own) in
//! `data/reference_cases.tsv`, run through `Reference::parse`, `Display`,
//! `familiar` and `normalize_cli`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use berth_domain::reference::{normalize_cli, Digest, Reference};

use crate::common;

use common::{expand, rows};

fn opt(col: &str) -> Option<String> {
    (col != "-").then(|| expand(col))
}

enum Case {
    Ok {
        input: String,
        domain: String,
        path: String,
        tag: Option<String>,
        digest: Option<String>,
        familiar: Option<String>,
    },
    Err {
        input: String,
        code: String,
    },
}

fn cases() -> Vec<(usize, Case)> {
    let mut out = Vec::new();
    for (line_no, cols) in rows() {
        let case = match cols[0] {
            "ok" => {
                assert!(
                    cols.len() == 6 || cols.len() == 7,
                    "line {line_no}: {cols:?}"
                );
                Case::Ok {
                    input: expand(cols[1]),
                    domain: expand(cols[2]),
                    path: expand(cols[3]),
                    tag: opt(cols[4]),
                    digest: opt(cols[5]),
                    familiar: cols.get(6).map(|f| expand(f)),
                }
            }
            "err" => {
                assert_eq!(cols.len(), 3, "line {line_no}: {cols:?}");
                Case::Err {
                    input: expand(cols[1]),
                    code: cols[2].to_owned(),
                }
            }
            other => panic!("line {line_no}: unknown kind {other:?}"),
        };
        out.push((line_no, case));
    }
    out
}

#[test]
fn the_data_file_is_not_silently_empty() {
    let all = cases();
    let ok = all
        .iter()
        .filter(|(_, c)| matches!(c, Case::Ok { .. }))
        .count();
    let err = all.len() - ok;
    assert!(ok >= 150, "only {ok} valid cases");
    assert!(err >= 120, "only {err} invalid cases");
}

#[test]
fn every_case_parses_as_docker_does() {
    let mut failures = Vec::new();
    for (line, case) in cases() {
        match case {
            Case::Ok {
                input,
                domain,
                path,
                tag,
                digest,
                familiar,
            } => {
                let parsed = match Reference::parse(&input) {
                    Ok(r) => r,
                    Err(e) => {
                        failures.push(format!("line {line}: {input:?} refused: {e}"));
                        continue;
                    }
                };
                let mut canonical = format!("{domain}/{path}");
                if let Some(t) = &tag {
                    canonical.push(':');
                    canonical.push_str(t);
                }
                if let Some(d) = &digest {
                    canonical.push('@');
                    canonical.push_str(d);
                }
                let got = (
                    parsed.domain(),
                    parsed.path(),
                    parsed.tag(),
                    parsed.digest().map(|d| d.as_str()),
                );
                let want = (
                    domain.as_str(),
                    path.as_str(),
                    tag.as_deref(),
                    digest.as_deref(),
                );
                if got != want {
                    failures.push(format!(
                        "line {line}: {input:?}: got {got:?}, want {want:?}"
                    ));
                }
                if parsed.to_string() != canonical {
                    failures.push(format!(
                        "line {line}: {input:?} displays as {parsed}, want {canonical}"
                    ));
                }
                if normalize_cli(&input).as_deref() != Ok(canonical.as_str()) {
                    failures.push(format!("line {line}: normalize_cli({input:?}) differs"));
                }
                // The canonical form is a fixed point that parses back equal.
                match Reference::parse(&canonical) {
                    Ok(again) if again == parsed => {}
                    other => failures.push(format!(
                        "line {line}: canonical {canonical:?} reparses as {other:?}"
                    )),
                }
                if let Some(f) = familiar {
                    if parsed.familiar() != f {
                        failures.push(format!(
                            "line {line}: familiar {:?}, want {f:?}",
                            parsed.familiar()
                        ));
                    }
                    // The short form means the same image.
                    if Reference::parse(&f).as_ref() != Ok(&parsed) {
                        failures.push(format!("line {line}: familiar {f:?} reparses differently"));
                    }
                }
            }
            Case::Err { input, code } => match Reference::parse(&input) {
                Ok(r) => failures.push(format!("line {line}: {input:?} accepted as {r}")),
                Err(e) => {
                    if e.code() != code {
                        failures.push(format!(
                            "line {line}: {input:?}: error {:?} ({e}), want {code}",
                            e.code()
                        ));
                    }
                    if normalize_cli(&input) != Err(e.clone()) {
                        failures.push(format!("line {line}: normalize_cli({input:?}) differs"));
                    }
                    let msg = e.to_string();
                    if msg.chars().count() > 300 {
                        failures.push(format!("line {line}: message too long: {msg}"));
                    }
                }
            },
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn error_messages_echo_only_a_bounded_prefix() {
    let long_path = format!("ghcr.io/{}/X{}", "a".repeat(5000), "b".repeat(5000));
    let long_tag = format!("alpine:{}", "t".repeat(10_000));
    let long_digest = format!("alpine@sha256:{}", "z".repeat(10_000));
    let long_host = format!("{}_.io/x", "h".repeat(10_000));
    for input in [long_path, long_tag, long_digest, long_host] {
        let err = Reference::parse(&input).unwrap_err();
        let msg = err.to_string();
        assert!(msg.len() < 400, "{} bytes: {msg}", msg.len());
        assert!(msg.contains('…'), "truncation is marked: {msg}");
    }
    // Control characters are escaped, not echoed raw.
    let msg = Reference::parse("alpine:\u{1b}[31mred\n")
        .unwrap_err()
        .to_string();
    assert!(!msg.contains('\u{1b}') && !msg.contains('\n'), "{msg:?}");
}

#[test]
fn error_messages_name_the_wrong_part() {
    let msg = |s: &str| Reference::parse(s).unwrap_err().to_string();
    assert!(msg("").contains("empty"));
    assert!(msg("Alpine").contains("lowercase"));
    assert!(msg("alpine:-x").contains("tag"));
    assert!(msg("alpine@sha256:abc").contains("sha256 needs 64"));
    assert!(
        msg("alpine@md5:ffffffffffffffffffffffffffffffff").contains("unsupported digest algorithm")
    );
    assert!(msg("bad_host.io/x").contains("registry host"));
    assert!(msg(&"a".repeat(300)).contains("255"));
    assert!(msg(&"ab".repeat(32)).contains("64-byte hexadecimal"));
}

#[test]
fn accessors_and_helpers() {
    let hub = Reference::parse(
        "redis@sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c",
    )
    .unwrap();
    assert_eq!(hub.registry_host(), "registry-1.docker.io");
    assert_eq!(hub.domain(), "docker.io");
    assert_eq!(hub.name(), "docker.io/library/redis");
    assert_eq!(hub.tag(), None);
    assert!(hub.is_pinned());
    let d = hub.digest().unwrap();
    assert_eq!(d.algorithm(), "sha256");
    assert_eq!(d.encoded().len(), 64);
    assert_eq!(hub.manifest_reference(), d.as_str());

    let local = Reference::parse("localhost:5000/app:v2").unwrap();
    assert_eq!(local.registry_host(), "localhost:5000");
    assert_eq!(local.manifest_reference(), "v2");
    assert!(!local.is_pinned());
    let pinned = local.with_digest(d.clone());
    assert_eq!(
        pinned.to_string(),
        format!("localhost:5000/app:v2@{}", d.as_str())
    );
    assert_eq!(pinned.manifest_reference(), d.as_str());
    assert!(pinned.same_repository(&local));
    assert!(!pinned.same_repository(&hub));

    let tagged = Reference::parse("docker.io/library/redis:7").unwrap();
    assert!(tagged.same_repository(&hub));
    assert!(!tagged.same_repository(&Reference::parse("redis/redis:7").unwrap()));
    assert!(!tagged.same_repository(&Reference::parse("index.docker.io:443/redis:7").unwrap()));
    assert_eq!("redis:7".parse::<Reference>().unwrap(), tagged);
}

#[test]
fn a_computed_sha256_is_a_valid_digest() {
    let mut hash = [0u8; 32];
    hash[0] = 0xab;
    hash[31] = 0x0f;
    let d = Digest::from_sha256(hash);
    assert_eq!(d.algorithm(), "sha256");
    assert_eq!(
        d.encoded(),
        format!("ab{}0f", "0".repeat(60)),
        "lowercase hex, two characters a byte"
    );
    assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
}
