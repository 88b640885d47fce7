//! The lexical pieces of Docker's reference grammar, one checker per part.
//!
//! Each function accepts exactly the strings the matching sub-expression of
//! the CNCF distribution `reference` package (v0.6.0, `regexp.go`) accepts,
//! anchored, plus the digest rules of `go-digest` v1.0.0 that `Parse` applies
//! after the regular expression. They are hand-written rather than one big
//! regular expression so that a failure can say *which* part is wrong.

/// Upper bound on the repository path (domain excluded), as in
/// `RepositoryNameTotalLengthMax`.
pub(crate) const PATH_MAX: usize = 255;

/// Longest tag: `[\w][\w.-]{0,127}`.
pub(crate) const TAG_MAX: usize = 128;

/// Digest algorithms that `go-digest` has registered in Docker's build, with
/// the length of their hex encoding.
pub(crate) const ALGORITHMS: [(&str, usize); 3] = [("sha256", 64), ("sha384", 96), ("sha512", 128)];

/// `domainAndPort`: a DNS-ish name or IPv4 address, or an IPv6 address in
/// brackets, then an optional `:port`.
pub(crate) fn is_domain(s: &str) -> bool {
    let (host_ok, port) = match s.strip_prefix('[') {
        Some(bracketed) => {
            let Some((inner, rest)) = bracketed.split_once(']') else {
                return false;
            };
            let inner_ok =
                !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
            match rest {
                "" => (inner_ok, None),
                _ => match rest.strip_prefix(':') {
                    Some(port) => (inner_ok, Some(port)),
                    None => return false,
                },
            }
        }
        None => match s.split_once(':') {
            Some((host, port)) => (is_domain_name(host), Some(port)),
            None => (is_domain_name(s), None),
        },
    };
    host_ok && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `domainName`: dot-separated components, each alphanumeric with inner
/// dashes only.
fn is_domain_name(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(is_domain_component)
}

fn is_domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        }
        _ => false,
    }
}

/// `remoteName`: one or more `/`-separated path components.
pub(crate) fn is_path(s: &str) -> bool {
    s.split('/').all(is_path_component)
}

/// `pathComponent`: `[a-z0-9]+` runs joined by exactly one of `.`, `_`,
/// `__`, or one or more `-`.
pub(crate) fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        // one alphanumeric run
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        // one separator, then another run must follow
        let sep_start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[sep_start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
}

/// `tag`: `[\w][\w.-]{0,127}` with Go's ASCII `\w`.
pub(crate) fn is_tag(s: &str) -> bool {
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let b = s.as_bytes();
    match b.first() {
        Some(first) if word(*first) => {
            b.len() <= TAG_MAX && b.iter().all(|x| word(*x) || *x == b'.' || *x == b'-')
        }
        _ => false,
    }
}

/// The algorithm part of `digestPat`:
/// `[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*`.
pub(crate) fn is_digest_algorithm(s: &str) -> bool {
    !s.is_empty()
        && s.split(['-', '_', '+', '.']).all(|c| {
            let b = c.as_bytes();
            matches!(b.first(), Some(x) if x.is_ascii_alphabetic())
                && b.iter().all(|x| x.is_ascii_alphanumeric())
        })
}

/// `identifier`: a bare 64-character lowercase hex string (an image ID).
pub(crate) fn is_identifier(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(is_lower_hex)
}

pub(crate) fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_regexp_cases() {
        // Ported from distribution/reference regexp_test.go TestDomainRegexp.
        let cases = [
            ("test.com", true),
            ("test.com:10304", true),
            ("test.com:http", false),
            ("localhost", true),
            ("localhost:8080", true),
            ("a", true),
            ("a.b", true),
            ("ab.cd.com", true),
            ("a-b.com", true),
            ("-ab.com", false),
            ("ab-.com", false),
            ("ab.c-om", true),
            ("ab.-com", false),
            ("ab.com-", false),
            ("0101.com", true),
            ("001a.com", true),
            ("b.gbc.io:443", true),
            ("b.gbc.io", true),
            ("xn--n3h.com", true),
            ("Asdf.com", true),
            ("192.168.1.1:75050", true),
            ("192.168.1.1:750050", true),
            ("[fd00:1:2::3]:75050", true),
            ("[fd00:1:2::3]75050", false),
            ("[fd00:1:2::3]::75050", false),
            ("[fd00:1:2::3%eth0]:75050", false),
            ("[fd00123123123]:75050", true),
            ("[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:75050", true),
            ("[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:750505", true),
            ("fd00:1:2::3:75050", false),
            // extra edges
            ("", false),
            ("[]", false),
            ("[::1]", true),
            ("[::1]:", false),
            ("a:", false),
            ("a..b", false),
            (".a", false),
            ("a.", false),
            ("a_b.com", false),
        ];
        for (input, want) in cases {
            assert_eq!(is_domain(input), want, "is_domain({input:?})");
        }
    }

    #[test]
    fn path_component_cases() {
        let cases = [
            ("a", true),
            ("a.b", true),
            ("a_b", true),
            ("a__b", true),
            ("a___b", false),
            ("a-b", true),
            ("a---b", true),
            ("a..b", false),
            ("a._b", false),
            ("a-.b", false),
            ("a-", false),
            ("-a", false),
            ("_a", false),
            ("", false),
            ("A", false),
            ("project--id.module--name.ver---sion--name", true),
        ];
        for (input, want) in cases {
            assert_eq!(
                is_path_component(input),
                want,
                "is_path_component({input:?})"
            );
        }
    }

    #[test]
    fn tag_and_algorithm_cases() {
        assert!(is_tag("latest"));
        assert!(is_tag("_x"));
        assert!(is_tag("Uppercase"));
        assert!(is_tag(&"a".repeat(128)));
        assert!(!is_tag(&"a".repeat(129)));
        assert!(!is_tag(".x"));
        assert!(!is_tag("-x"));
        assert!(!is_tag(""));
        assert!(!is_tag("a~b"));
        assert!(is_digest_algorithm("sha256"));
        assert!(is_digest_algorithm("multihash+base58"));
        assert!(is_digest_algorithm("SHA256"));
        assert!(!is_digest_algorithm("2bad"));
        assert!(!is_digest_algorithm("a+"));
        assert!(!is_digest_algorithm("a+1"));
        assert!(!is_digest_algorithm(""));
    }

    #[test]
    fn identifier_regexp_cases() {
        // Ported from regexp_test.go TestIdentifierRegexp.
        assert!(is_identifier(
            "da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf9821"
        ));
        assert!(!is_identifier(
            "7EC43B381E5AEFE6E04EFB0B3F0693FF2A4A50652D64AEC573905F2DB5889A1C"
        ));
        assert!(!is_identifier(
            "da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf"
        ));
        assert!(!is_identifier(
            "sha256:da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf9821"
        ));
        assert!(!is_identifier(
            "da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf98218482"
        ));
    }
}
