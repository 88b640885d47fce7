//! Docker image references: the grammar and normalisation behind every image
//! URL berth accepts (SPEC §2), and the deploy-hook `imgURL` rule (SPEC §6).
//!
//! Parsing follows `ParseNormalizedNamed` + `TagNameOnly` of the CNCF
//! distribution `reference` package v0.6.0 (the version Docker CLI and
//! containerd pin), with go-digest v1.0.0's digest checks:
//!
//! - the first `/`-separated component is a registry host only if it is
//!   `localhost`, contains `.` or `:`, or has an uppercase letter; otherwise the
//!   host is `docker.io` (and `index.docker.io` is rewritten to `docker.io`);
//! - on `docker.io` only, a one-component path gets `library/`;
//! - the tag defaults to `latest` only when neither tag nor digest is given;
//! - a bare 64-hex string is refused (it is an image ID, not a name);
//! - the path (domain excluded) is at most 255 characters, as in v0.6.0;
//! - digests are `sha256` (64 hex), `sha384` (96) or `sha512` (128), lowercase.
//!
//! Deliberate differences from Docker, both about inputs Docker accepts only
//! by accident:
//! - Docker keeps a first component chosen as a host by the rules above even
//!   when it is not a valid host, if the whole name happens to be a valid path
//!   (`foo_bar.com/x` parses with an *empty* domain). berth refuses it as an
//!   invalid registry host: there is no registry to pull it from.
//! - Errors name the part that is wrong (tag, digest, host, path) where Docker
//!   often says only "invalid reference format". Which inputs are refused is
//!   the same.
//!
//! `oci_client::Reference` (oci-spec 0.10) is *not* this grammar: it has no
//! IPv6 hosts, does not treat an uppercase first component as a host, accepts
//! uppercase digest hex, bare 64-hex names and non-ASCII tags, and maps
//! `docker.io` to `index.docker.io`. Convert with `Display` (`r.to_string().parse()`) or its
//! `with_tag`/`with_digest` constructors from [`Reference::domain`] and
//! [`Reference::path`]; `tests/reference_oci.rs` lists where the two disagree.

mod grammar;
mod hook;

use std::fmt;
use std::str::FromStr;

pub use hook::HookOverrideError;

/// The registry host of Docker Hub as written in references.
pub const DOCKER_HUB: &str = "docker.io";
/// The legacy name of Docker Hub, normalised to [`DOCKER_HUB`].
pub const DOCKER_HUB_LEGACY: &str = "index.docker.io";
/// The host that actually serves Docker Hub's `/v2/` API.
pub const DOCKER_HUB_REGISTRY: &str = "registry-1.docker.io";
/// Namespace of official images, implied on Docker Hub only.
pub const OFFICIAL_NAMESPACE: &str = "library";
/// Tag implied when a reference has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";

/// How much of a rejected input an error message may repeat.
const ECHO_MAX_CHARS: usize = 64;

/// A parsed, normalised image reference: `domain/path[:tag][@digest]`.
///
/// Invariant: at least one of tag and digest is present (a reference with
/// neither is given the tag `latest` when parsed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// A content digest `algorithm:hex`, checked as go-digest checks it: the one
/// digest type of berth (image references, the registry client, the node's
/// content store). Events and commands still carry digests as strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

/// Why an image reference was refused. Every variant is the caller's fault
/// (never retryable); messages repeat at most a short prefix of the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The input was the empty string.
    #[error("image reference is empty")]
    Empty,
    /// The input does not have the shape `NAME[:TAG][@DIGEST]` at all.
    #[error("invalid reference format {input}: {reason}")]
    InvalidFormat {
        /// Bounded, escaped prefix of the input.
        input: String,
        /// What is structurally missing.
        reason: &'static str,
    },
    /// The input is a bare 64-character hex string, i.e. an image ID.
    #[error(
        "invalid repository name {input}: cannot specify 64-byte hexadecimal strings (that is an image ID, not a name)"
    )]
    HexIdentifier {
        /// Bounded, escaped prefix of the input.
        input: String,
    },
    /// The registry host (first path component) is not a valid host[:port].
    #[error("invalid registry host {domain}: expected a host name, IPv4 address or [IPv6] address, optionally with :port")]
    InvalidDomain {
        /// Bounded, escaped prefix of the host part.
        domain: String,
    },
    /// The repository path has uppercase letters.
    #[error("invalid reference format: repository name {path} must be lowercase")]
    UppercasePath {
        /// Bounded, escaped prefix of the path part.
        path: String,
    },
    /// The repository path is not `/`-separated lowercase components.
    #[error("invalid repository name {path}: components are [a-z0-9] separated by '.', '_', '__' or dashes, joined by single '/'")]
    InvalidPath {
        /// Bounded, escaped prefix of the path part.
        path: String,
    },
    /// The repository path is longer than 255 characters.
    #[error("repository name must not be more than 255 characters (got {len})")]
    NameTooLong {
        /// Length of the normalised path.
        len: usize,
    },
    /// The tag does not match `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[error("invalid tag {tag}: must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'")]
    InvalidTag {
        /// Bounded, escaped prefix of the tag part.
        tag: String,
    },
    /// The digest is not `algorithm:hex` with lowercase hex.
    #[error("invalid digest {digest}: {reason}")]
    InvalidDigest {
        /// Bounded, escaped prefix of the digest part.
        digest: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The digest algorithm is well formed but not sha256/sha384/sha512.
    #[error("unsupported digest algorithm {algorithm}: use sha256, sha384 or sha512")]
    UnsupportedDigestAlgorithm {
        /// Bounded, escaped prefix of the algorithm.
        algorithm: String,
    },
    /// The digest's hex part has the wrong length for its algorithm.
    #[error("invalid digest length: {algorithm} needs {expected} hex characters, got {actual}")]
    DigestLength {
        /// The algorithm (one of the supported ones).
        algorithm: &'static str,
        /// Required hex length.
        expected: usize,
        /// Given hex length.
        actual: usize,
    },
}

impl ReferenceError {
    /// A stable snake_case code for the kind of error, for API bodies and
    /// tests.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::InvalidFormat { .. } => "invalid_format",
            Self::HexIdentifier { .. } => "hex_identifier",
            Self::InvalidDomain { .. } => "invalid_domain",
            Self::UppercasePath { .. } => "uppercase_path",
            Self::InvalidPath { .. } => "invalid_path",
            Self::NameTooLong { .. } => "name_too_long",
            Self::InvalidTag { .. } => "invalid_tag",
            Self::InvalidDigest { .. } => "invalid_digest",
            Self::UnsupportedDigestAlgorithm { .. } => "unsupported_digest_algorithm",
            Self::DigestLength { .. } => "digest_length",
        }
    }
}

/// A quoted, escaped prefix of untrusted input, safe to put in a message.
fn echo(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars().take(ECHO_MAX_CHARS) {
        out.extend(c.escape_debug());
    }
    if s.chars().nth(ECHO_MAX_CHARS).is_some() {
        out.push_str("\"…");
    } else {
        out.push('"');
    }
    out
}

impl Digest {
    /// Parses `algorithm:hex` as go-digest v1.0.0 validates it.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let invalid = |reason| ReferenceError::InvalidDigest {
            digest: echo(s),
            reason,
        };
        let Some((algorithm, hex)) = s.split_once(':') else {
            return Err(invalid("expected ALGORITHM:HEX"));
        };
        let Some(&(known, expected)) = grammar::ALGORITHMS.iter().find(|(a, _)| *a == algorithm)
        else {
            return Err(if grammar::is_digest_algorithm(algorithm) {
                ReferenceError::UnsupportedDigestAlgorithm {
                    algorithm: echo(algorithm),
                }
            } else {
                invalid("malformed algorithm name")
            });
        };
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("the encoded part is not hexadecimal"));
        }
        if hex.len() != expected {
            return Err(ReferenceError::DigestLength {
                algorithm: known,
                expected,
                actual: hex.len(),
            });
        }
        if !hex.bytes().all(grammar::is_lower_hex) {
            return Err(invalid("hex must be lowercase"));
        }
        Ok(Self(s.to_owned()))
    }

    /// The `sha256:` digest whose hash is `hash` (as a hasher computed it
    /// from content).
    pub fn from_sha256(hash: [u8; 32]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(7 + 64);
        s.push_str("sha256:");
        for b in hash {
            s.push(HEX[usize::from(b >> 4)] as char);
            s.push(HEX[usize::from(b & 15)] as char);
        }
        Self(s)
    }

    /// The whole digest, `algorithm:hex`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The algorithm, e.g. `sha256`.
    pub fn algorithm(&self) -> &str {
        self.0.split_once(':').map_or("", |(a, _)| a)
    }

    /// The hex encoding after the colon.
    pub fn encoded(&self) -> &str {
        self.0.split_once(':').map_or("", |(_, h)| h)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Digest {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Reference {
    /// Parses and normalises an image reference the way `docker pull` does.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if grammar::is_identifier(s) {
            return Err(ReferenceError::HexIdentifier { input: echo(s) });
        }

        // Only the digest may contain '@', and it comes last.
        let (rest, digest) = match s.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (s, None),
        };
        // A ':' after the last '/' can only start the tag: the name has a
        // colon only in the host's port, and the host is followed by '/'.
        let tag_sep = match (rest.rfind(':'), rest.rfind('/')) {
            (Some(colon), Some(slash)) if colon > slash => Some(colon),
            (Some(colon), None) => Some(colon),
            _ => None,
        };
        let (name, tag) = match tag_sep {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(ReferenceError::InvalidFormat {
                input: echo(s),
                reason: "no repository name before ':' or '@'",
            });
        }

        let (domain, path) = split_docker_domain(name);
        if !grammar::is_domain(domain) {
            return Err(ReferenceError::InvalidDomain {
                domain: echo(domain),
            });
        }
        if !grammar::is_path(&path) {
            let lowered = path.to_ascii_lowercase();
            return Err(if lowered != path && grammar::is_path(&lowered) {
                ReferenceError::UppercasePath { path: echo(&path) }
            } else {
                ReferenceError::InvalidPath { path: echo(&path) }
            });
        }
        if let Some(tag) = tag {
            if !grammar::is_tag(tag) {
                return Err(ReferenceError::InvalidTag { tag: echo(tag) });
            }
        }
        if path.len() > grammar::PATH_MAX {
            return Err(ReferenceError::NameTooLong { len: path.len() });
        }
        let digest = digest.map(Digest::parse).transpose()?;
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_owned()),
        };
        Ok(Self {
            domain: domain.to_owned(),
            path,
            tag,
            digest,
        })
    }

    /// The registry host as written in references, e.g. `docker.io`,
    /// `ghcr.io`, `localhost:5000`, `[::1]:5000`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The host:port to send registry API requests to: Docker Hub's API is
    /// served by `registry-1.docker.io`, every other registry by its own name.
    pub fn registry_host(&self) -> &str {
        if self.domain == DOCKER_HUB {
            DOCKER_HUB_REGISTRY
        } else {
            &self.domain
        }
    }

    /// The repository path within the registry, e.g. `library/alpine`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `domain/path`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The tag, if given (or implied `latest` when no digest was given).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if given.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// A reference with a digest names fixed content and is never
    /// re-resolved.
    pub fn is_pinned(&self) -> bool {
        self.digest.is_some()
    }

    /// What to put after `/v2/<path>/manifests/`: the digest when there is
    /// one (a digest wins over a tag, as in containerd), else the tag.
    pub fn manifest_reference(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.as_str(),
            (None, Some(t)) => t,
            (None, None) => DEFAULT_TAG,
        }
    }

    /// This reference with `digest` added (keeping the tag), e.g. to record
    /// what a tag resolved to.
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// True when both name the same repository: every component except tag
    /// and digest equal after normalisation.
    pub fn same_repository(&self, other: &Reference) -> bool {
        self.domain == other.domain && self.path == other.path
    }

    /// The short form Docker shows: `docker.io/` and, for official images,
    /// `library/` dropped (`alpine:latest`, `bitnami/redis:7`,
    /// `ghcr.io/o/app@sha256:…`).
    pub fn familiar(&self) -> String {
        let mut out = String::new();
        if self.domain == DOCKER_HUB {
            match self.path.strip_prefix("library/") {
                Some(official) if !official.contains('/') => out.push_str(official),
                _ => out.push_str(&self.path),
            }
        } else {
            out.push_str(&self.domain);
            out.push('/');
            out.push_str(&self.path);
        }
        push_suffix(&mut out, self.tag.as_deref(), self.digest.as_ref());
        out
    }

    /// The deploy-hook override (SPEC §6): `img_url` (already URL-decoded)
    /// must name the same repository as the service's image after
    /// normalisation, and may differ only in its tag or its digest.
    ///
    /// `img_url` may carry a tag *or* a digest, not both: Render allows only
    /// one of `:tag` and `@digest` after the repository, and a tag beside a
    /// digest would be recorded but ignored by the pull (the digest wins),
    /// which misleads whoever reads the deploy later. With neither, the
    /// normal default applies and `latest` is deployed.
    pub fn hook_override(
        service_image: &Reference,
        img_url: &str,
    ) -> Result<Reference, HookOverrideError> {
        hook::hook_override(service_image, img_url)
    }
}

fn push_suffix(out: &mut String, tag: Option<&str>, digest: Option<&Digest>) {
    if let Some(tag) = tag {
        out.push(':');
        out.push_str(tag);
    }
    if let Some(digest) = digest {
        out.push('@');
        out.push_str(digest.as_str());
    }
}

/// `splitDockerDomain`: picks the host by Docker's heuristic and adds
/// `library/` on Docker Hub. `name` has no tag or digest.
fn split_docker_domain(name: &str) -> (&str, String) {
    let (domain, remote) = match name.split_once('/') {
        None => (DOCKER_HUB, name),
        Some((first, rest)) => {
            if first == DOCKER_HUB_LEGACY {
                (DOCKER_HUB, rest)
            } else if first == "localhost"
                || first.contains(['.', ':'])
                || first.bytes().any(|b| b.is_ascii_uppercase())
            {
                (first, rest)
            } else {
                (DOCKER_HUB, name)
            }
        }
    };
    let path = if domain == DOCKER_HUB && !remote.contains('/') {
        format!("{OFFICIAL_NAMESPACE}/{remote}")
    } else {
        remote.to_owned()
    };
    (domain, path)
}

impl fmt::Display for Reference {
    /// The canonical, fully qualified form: `docker.io/library/alpine:latest`,
    /// `docker.io/library/redis@sha256:…`, `host/p:tag@sha256:…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.name();
        push_suffix(&mut out, self.tag.as_deref(), self.digest.as_ref());
        f.write_str(&out)
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// `berth image normalize REF`: the canonical form, or the reason it is
/// refused.
pub fn normalize_cli(arg: &str) -> Result<String, ReferenceError> {
    Reference::parse(arg).map(|r| r.to_string())
}
