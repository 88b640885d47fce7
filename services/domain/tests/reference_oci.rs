//! Where `oci_client::Reference` (oci-client 0.18 re-exports
//! `oci_spec::distribution::Reference` from oci-spec 0.10, used here directly
//! to avoid building oci-client's HTTP stack) disagrees with berth's
//! Docker-exact grammar on the ported cases.
//!
//! The list is pinned: if oci-spec changes, or berth's parser does, this test
//! says which cases moved. Known disagreements (see `KNOWN` below):
//! - bracketed IPv6 hosts are refused by oci-spec;
//! - an uppercase first component (`Docker/docker`, `Foo/bar`) is a host for
//!   Docker; oci-spec keeps it in the path (and so accepts uppercase paths);
//! - bare 64-hex names and uppercase digest hex are accepted by oci-spec;
//! - oci-spec's tag pattern uses Unicode `\w`, so it accepts `x:tåg`;
//! - a first component with `.` that is no valid host (`foo_bar.com/x`) is a
//!   host for oci-spec; berth refuses it (Docker yields an empty domain);
//! - oci-spec's "registry" for Docker Hub resolves to `index.docker.io`, berth's
//!   `registry_host()` to `registry-1.docker.io` (not a parsing difference).
//!
//! So a resolver must parse with berth's `Reference` and build the oci-client
//! value from its parts (`Reference::with_tag`/`with_digest` on
//! `domain()`/`path()`), never parse user input with oci-client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use berth_domain::reference::Reference;
use oci_spec::distribution::Reference as OciReference;

use crate::common;

use common::{expand, rows};

/// Inputs on which the two parsers disagree today, as (input, short reason).
/// Long inputs are named by their data-file spelling.
const KNOWN: &[(&str, &str)] = &[
    ("[2001:db8::1]/repo", "ipv6"),
    ("[2001:db8:1:2:3:4:5:6]/repo:tag", "ipv6"),
    ("[2001:db8::1]:5000/repo", "ipv6"),
    ("[2001:db8::1]:5000/repo:tag", "ipv6"),
    ("[2001:db8::1]:5000/repo@sha256:{f*64}", "ipv6"),
    ("[2001:db8::1]:5000/repo:tag@sha256:{f*64}", "ipv6"),
    ("[2001:db8::]:5000/repo", "ipv6"),
    ("[::1]:5000/repo", "ipv6"),
    ("[fc00::1]:5000/docker", "ipv6"),
    ("[fc00::1]:5000/docker/docker", "ipv6"),
    ("[fc00:1:2:3:4:5:6:7]:5000/library/debian", "ipv6"),
    ("[fd00:1:2::3]:75050/repo", "ipv6"),
    ("[fd00123123123]:75050/repo", "ipv6"),
    (
        "[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:75050/repo",
        "ipv6",
    ),
    (
        "[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:750505/repo",
        "ipv6",
    ),
    ("[::1]/foo", "ipv6"),
    ("[::1]:5000/foo:tag", "ipv6"),
    ("Docker/docker", "uppercase host"),
    ("DOCKER/docker", "uppercase host"),
    ("Foo/bar", "uppercase host"),
    ("FOO/bar", "uppercase host"),
    ("LOCALHOST/foo", "uppercase host"),
    (
        "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
        "64-hex name",
    ),
    (
        "dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c",
        "64-hex name",
    ),
    (
        "da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf9821",
        "64-hex name",
    ),
    ("x@sha256:{F*64}", "uppercase digest hex"),
    ("foo_bar.com/x", "invalid host kept"),
    ("a.b_c/d/e", "invalid host kept"),
    ("x:t\u{e5}g", "unicode \\w in tags"),
];

fn oci_parts(s: &str) -> Option<(String, String, Option<String>, Option<String>)> {
    let r: OciReference = s.parse().ok()?;
    Some((
        r.registry().to_owned(),
        r.repository().to_owned(),
        r.tag().map(str::to_owned),
        r.digest().map(str::to_owned),
    ))
}

fn berth_parts(s: &str) -> Option<(String, String, Option<String>, Option<String>)> {
    let r = Reference::parse(s).ok()?;
    Some((
        r.domain().to_owned(),
        r.path().to_owned(),
        r.tag().map(str::to_owned),
        r.digest().map(|d| d.as_str().to_owned()),
    ))
}

#[test]
fn oci_client_disagreements_are_exactly_the_known_ones() {
    let mut disagree = Vec::new();
    for (_, cols) in rows() {
        let raw = cols[1];
        let input = expand(raw);
        let (ours, theirs) = (berth_parts(&input), oci_parts(&input));
        if ours != theirs {
            disagree.push((raw.to_owned(), ours, theirs));
        }
    }
    let unexpected: Vec<_> = disagree
        .iter()
        .filter(|(raw, ..)| !KNOWN.iter().any(|(k, _)| k == raw))
        .collect();
    let vanished: Vec<_> = KNOWN
        .iter()
        .filter(|(k, _)| !disagree.iter().any(|(raw, ..)| raw == k))
        .collect();
    assert!(
        unexpected.is_empty() && vanished.is_empty(),
        "new disagreements:\n{}\nno longer disagreeing: {vanished:?}",
        unexpected
            .iter()
            .map(|(raw, o, t)| format!("  {raw}: berth {o:?} / oci {t:?}"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
}

#[test]
fn where_both_accept_the_display_forms_convert_losslessly() {
    for s in [
        "alpine",
        "ghcr.io/o/app:v1",
        "localhost:5000/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "nginx:1.26@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        let ours = Reference::parse(s).unwrap();
        let theirs: OciReference = ours.to_string().parse().unwrap();
        assert_eq!(theirs.registry(), ours.domain());
        assert_eq!(theirs.repository(), ours.path());
        assert_eq!(theirs.tag(), ours.tag());
        assert_eq!(theirs.digest(), ours.digest().map(|d| d.as_str()));
        assert_eq!(theirs.to_string(), ours.to_string());
    }
}
