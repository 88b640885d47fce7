//! Property tests of the reference parser:
//! - against an oracle that transcribes Docker's algorithm literally
//!   (`ParseNormalizedNamed` + `TagNameOnly` over the v0.6.0 regular
//!   expressions, then go-digest's checks), on token soups and on every short
//!   string over a small alphabet: same accept/reject, same parts;
//! - `parse(display(parse(x))) == parse(x)` for generated valid references;
//! - no panic on arbitrary strings.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use berth_domain::reference::{Reference, ReferenceError};
use proptest::prelude::*;
use regex::Regex;

type Parts = (String, String, Option<String>, Option<String>);

struct Oracle {
    identifier: Regex,
    reference: Regex,
    name: Regex,
    lower_hex: Regex,
}

fn oracle() -> &'static Oracle {
    static O: OnceLock<Oracle> = OnceLock::new();
    O.get_or_init(|| {
        let path_component = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*";
        let remote = format!("{path_component}(?:/{path_component})*");
        let dnc = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
        let host = format!(r"(?:{dnc}(?:\.{dnc})*|\[(?:[a-fA-F0-9:]+)\])");
        let domain = format!("{host}(?::[0-9]+)?");
        let tag = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}";
        let digest = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][[:xdigit:]]{32,}";
        let name = format!("(?:{domain}/)?{remote}");
        Oracle {
            identifier: Regex::new("^[a-f0-9]{64}$").unwrap(),
            reference: Regex::new(&format!("^({name})(?::({tag}))?(?:@({digest}))?$")).unwrap(),
            name: Regex::new(&format!("^(?:({domain})/)?({remote})$")).unwrap(),
            lower_hex: Regex::new("^[a-f0-9]+$").unwrap(),
        }
    })
}

/// Docker's answer for `s`; `Ok` with an empty domain is Docker's quirk
/// that berth refuses (see the module docs of `reference`).
fn docker(s: &str) -> Result<Parts, ()> {
    let o = oracle();
    if o.identifier.is_match(s) {
        return Err(());
    }
    // splitDockerDomain, on the whole input as Docker does.
    let (mut domain, remainder) = match s.split_once('/') {
        // Fast path for familiar names: always Docker Hub's official images.
        None => ("docker.io".to_owned(), format!("library/{s}")),
        Some((first, rest)) => {
            let (d, r) = if first == "localhost" {
                (first, rest)
            } else if first == "index.docker.io" {
                ("docker.io", rest)
            } else if first.contains(['.', ':']) || first.to_lowercase() != first {
                (first, rest)
            } else {
                ("docker.io", s)
            };
            if d == "docker.io" && !r.contains('/') {
                (d.to_owned(), format!("library/{r}"))
            } else {
                (d.to_owned(), r.to_owned())
            }
        }
    };
    let remote = remainder.split(':').next().unwrap_or("");
    if remote.to_lowercase() != remote {
        return Err(());
    }
    let full = format!("{domain}/{remainder}");
    let caps = o.reference.captures(&full).ok_or(())?;
    let name = caps.get(1).unwrap().as_str();
    let tag = caps.get(2).map(|m| m.as_str().to_owned());
    let digest = caps.get(3).map(|m| m.as_str().to_owned());
    let name_caps = o.name.captures(name).unwrap();
    domain = name_caps.get(1).map_or("", |m| m.as_str()).to_owned();
    let path = name_caps.get(2).unwrap().as_str().to_owned();
    if path.len() > 255 {
        return Err(());
    }
    if let Some(d) = &digest {
        let (alg, enc) = d.split_once(':').ok_or(())?;
        let want = match alg {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return Err(()),
        };
        if enc.len() != want || !o.lower_hex.is_match(enc) {
            return Err(());
        }
    }
    let tag = match (&tag, &digest) {
        (None, None) => Some("latest".to_owned()),
        _ => tag,
    };
    Ok((domain, path, tag, digest))
}

fn berth(s: &str) -> Result<Parts, ReferenceError> {
    Reference::parse(s).map(|r| {
        (
            r.domain().to_owned(),
            r.path().to_owned(),
            r.tag().map(str::to_owned),
            r.digest().map(|d| d.as_str().to_owned()),
        )
    })
}

/// Checks one input against the oracle and the round-trip laws.
fn agree(s: &str) -> Result<(), String> {
    let ours = berth(s);
    match (docker(s), &ours) {
        (Ok(want), Ok(got)) if want == *got => {}
        (Ok(want), Err(ReferenceError::InvalidDomain { .. })) if want.0.is_empty() => {}
        (Err(()), Err(_)) => {}
        (want, got) => return Err(format!("{s:?}: docker {want:?}, berth {got:?}")),
    }
    if let Ok(parsed) = Reference::parse(s) {
        let shown = parsed.to_string();
        let again = Reference::parse(&shown).map_err(|e| format!("{shown:?}: {e}"))?;
        if again != parsed || again.to_string() != shown {
            return Err(format!("{s:?} -> {shown:?} -> {again}"));
        }
        if Reference::parse(&parsed.familiar()).as_ref() != Ok(&parsed) {
            return Err(format!("{s:?}: familiar {:?} differs", parsed.familiar()));
        }
    }
    Ok(())
}

#[test]
fn every_short_string_over_a_small_alphabet_agrees_with_docker() {
    const ALPHABET: [char; 11] = ['a', 'A', '1', '.', '_', '-', '/', ':', '@', '[', ']'];
    let mut frontier = vec![String::new()];
    let mut checked = 0usize;
    let mut failures = Vec::new();
    for _len in 1..=5 {
        let mut next = Vec::with_capacity(frontier.len() * ALPHABET.len());
        for prefix in &frontier {
            for c in ALPHABET {
                let s = format!("{prefix}{c}");
                if let Err(f) = agree(&s) {
                    failures.push(f);
                }
                checked += 1;
                next.push(s);
            }
        }
        frontier = next;
    }
    assert!(checked > 170_000);
    assert!(
        failures.is_empty(),
        "{} of {checked} disagree, e.g.:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

const TOKENS: &[&str] = &[
    "a",
    "b",
    "z",
    "0",
    "9",
    "A",
    "Z",
    ".",
    "_",
    "__",
    "-",
    "--",
    "/",
    ":",
    "@",
    "[",
    "]",
    "%",
    " ",
    "é",
    "::1",
    "fe80",
    "5000",
    "localhost",
    "Localhost",
    "docker.io",
    "index.docker.io",
    "library",
    "ghcr.io",
    "x.y",
    "sha256:",
    "sha384:",
    "sha512:",
    "md5:",
    "SHA256:",
    "ffffffff",
    "FFFFFFFF",
    "0123456789abcdef0123456789abcdef",
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
];

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..16).prop_map(|v| v.concat())
}

fn path_component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,2}"
}

fn host() -> impl Strategy<Value = String> {
    let label = "[a-zA-Z0-9]([a-zA-Z0-9-]{0,5}[a-zA-Z0-9])?";
    let port = prop::option::of("[0-9]{1,5}");
    let name = prop_oneof![
        prop::collection::vec(label, 2..4).prop_map(|v| v.join(".")),
        Just("localhost".to_owned()),
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
        // Docker sees a host only in a first component with ':' or '.'.
        "\\[[0-9a-fA-F]{0,4}:[0-9a-fA-F:]{0,10}\\]",
    ];
    (name, port).prop_map(|(n, p)| match p {
        Some(p) => format!("{n}:{p}"),
        None => n,
    })
}

fn valid_reference() -> impl Strategy<Value = String> {
    let digest = prop_oneof![
        "sha256:[a-f0-9]{64}",
        "sha384:[a-f0-9]{96}",
        "sha512:[a-f0-9]{128}",
    ];
    let tag = "[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}";
    // Without an explicit host, the first component must not look like one.
    let first = "[a-z0-9]{1,6}((_|__|-{1,3})[a-z0-9]{1,6}){0,2}";
    let with_host = (host(), prop::collection::vec(path_component(), 1..5))
        .prop_map(|(h, p)| format!("{h}/{}", p.join("/")));
    let without_host = (first, prop::collection::vec(path_component(), 0..4))
        .prop_map(|(f, p)| std::iter::once(f).chain(p).collect::<Vec<_>>().join("/"));
    (
        prop_oneof![with_host, without_host],
        prop::option::of(tag),
        prop::option::of(digest),
    )
        .prop_map(|(name, tag, digest)| {
            let mut s = name;
            if let Some(t) = tag {
                s = format!("{s}:{t}");
            }
            if let Some(d) = digest {
                s = format!("{s}@{d}");
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn token_soups_agree_with_docker(s in soup()) {
        if let Err(f) = agree(&s) {
            return Err(TestCaseError::fail(f));
        }
    }

    #[test]
    fn generated_valid_references_parse_and_round_trip(s in valid_reference()) {
        let parsed = Reference::parse(&s);
        prop_assert!(parsed.is_ok(), "{:?} refused: {:?}", s, parsed);
        if let Err(f) = agree(&s) {
            return Err(TestCaseError::fail(f));
        }
    }

    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>()) {
        match Reference::parse(&s) {
            Ok(r) => prop_assert_eq!(Reference::parse(&r.to_string()), Ok(r)),
            Err(e) => prop_assert!(e.to_string().len() < 400),
        }
    }
}
