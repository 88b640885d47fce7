//! Manifest, index and image-config parsing, platform choice.
//!
//! Deliberately minimal serde structs instead of oci-spec's types: berth
//! reads only descriptors (digest, size, platform) and config os/arch, must
//! accept manifests without `mediaType` (skopeo/umoci omit it), and must
//! treat every field as hostile (digests are validated before they go into
//! a URL, sizes are `u64`, sums are checked). Whether a body is an index or
//! an image manifest is decided by Content-Type when it names one of the
//! four supported types, else by structure — never by the `mediaType` field.

use berth_domain::reference::Digest;
use serde::Deserialize;

use crate::error::ResolveError;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 2 manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The `Accept` header for manifest requests: the four supported types.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Deserialize)]
struct RawPlatform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawDescriptor {
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<RawPlatform>,
}

#[derive(Debug, Deserialize)]
struct RawManifest {
    #[serde(default, rename = "schemaVersion")]
    schema_version: Option<u64>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    manifests: Option<Vec<RawDescriptor>>,
}

/// A descriptor with a validated digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Content digest.
    pub digest: Digest,
    /// Size in bytes as listed.
    pub size: u64,
}

/// One entry of an index.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    /// The platform manifest.
    pub descriptor: Descriptor,
    /// `os/architecture[/variant]`, empty parts when absent.
    pub os: String,
    /// CPU architecture, e.g. `amd64`.
    pub architecture: String,
    /// CPU variant, e.g. `v8`.
    pub variant: Option<String>,
}

/// A parsed manifest body.
#[derive(Debug, Clone)]
pub enum Manifest {
    /// OCI index or Docker manifest list.
    Index(Vec<IndexEntry>),
    /// OCI or Docker schema 2 image manifest.
    Image {
        /// The config blob.
        config: Descriptor,
        /// Layer blobs in order.
        layers: Vec<Descriptor>,
    },
}

fn descriptor(raw: &RawDescriptor) -> Result<Descriptor, ResolveError> {
    let digest = crate::digest::parse(&raw.digest).ok_or_else(|| {
        ResolveError::InvalidResponse(format!(
            "manifest lists an invalid digest {:?}",
            truncate(&raw.digest, 80)
        ))
    })?;
    Ok(Descriptor {
        digest,
        size: raw.size,
    })
}

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Parse a manifest body. `content_type` is the response's Content-Type
/// (parameters stripped), used when it names a supported type.
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Manifest, ResolveError> {
    let ct = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if ct.starts_with("application/vnd.docker.distribution.manifest.v1") {
        return Err(ResolveError::UnsupportedMediaType(format!(
            "{ct} (Docker schema 1 is not supported; push the image again with a current client)"
        )));
    }
    let raw: RawManifest = serde_json::from_slice(body)
        .map_err(|e| ResolveError::InvalidResponse(format!("manifest is not valid JSON: {e}")))?;
    if raw.schema_version == Some(1) {
        return Err(ResolveError::UnsupportedMediaType(
            "Docker schema 1 manifest is not supported".into(),
        ));
    }
    let want_index = match ct.as_str() {
        OCI_INDEX | DOCKER_LIST => Some(true),
        OCI_MANIFEST | DOCKER_MANIFEST => Some(false),
        _ => None,
    };
    let is_index = match want_index {
        Some(i) => i,
        None if raw.manifests.is_some() => true,
        None if raw.config.is_some() => false,
        None => {
            return Err(ResolveError::UnsupportedMediaType(format!(
                "{} is neither an image manifest nor an index",
                if ct.is_empty() { "response" } else { &ct }
            )))
        }
    };
    if is_index {
        let entries = raw.manifests.ok_or_else(|| {
            ResolveError::InvalidResponse("index without a manifests list".into())
        })?;
        let entries = entries
            .iter()
            .map(|e| {
                let (os, architecture, variant) = match &e.platform {
                    Some(p) => (p.os.clone(), p.architecture.clone(), p.variant.clone()),
                    None => (String::new(), String::new(), None),
                };
                Ok(IndexEntry {
                    descriptor: descriptor(e)?,
                    os,
                    architecture,
                    variant,
                })
            })
            .collect::<Result<Vec<_>, ResolveError>>()?;
        Ok(Manifest::Index(entries))
    } else {
        let config = raw.config.as_ref().ok_or_else(|| {
            ResolveError::InvalidResponse("image manifest without a config".into())
        })?;
        let layers = raw
            .layers
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(descriptor)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Manifest::Image {
            config: descriptor(config)?,
            layers,
        })
    }
}

/// Pick the linux/amd64 entry of an index; entries without a variant (or
/// `v1`) are preferred over e.g. `v3`, which needs newer CPUs.
pub fn choose_amd64(entries: &[IndexEntry]) -> Result<&IndexEntry, ResolveError> {
    let amd64 = |e: &&IndexEntry| e.os == "linux" && e.architecture == "amd64";
    entries
        .iter()
        .filter(amd64)
        .find(|e| matches!(e.variant.as_deref(), None | Some("") | Some("v1")))
        .or_else(|| entries.iter().find(amd64))
        .ok_or_else(|| {
            let mut seen: Vec<String> = entries
                .iter()
                .filter(|e| !e.os.is_empty() && e.os != "unknown")
                .map(|e| match &e.variant {
                    Some(v) if !v.is_empty() => format!("{}/{}/{}", e.os, e.architecture, v),
                    _ => format!("{}/{}", e.os, e.architecture),
                })
                .collect();
            seen.dedup();
            ResolveError::UnsupportedPlatform(format!(
                "no linux/amd64 variant in the index (has: {})",
                if seen.is_empty() {
                    "none".to_string()
                } else {
                    seen.join(", ")
                }
            ))
        })
}

/// The platform fields of an image config blob.
#[derive(Debug, Clone, Deserialize)]
pub struct ConfigPlatform {
    /// e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
}

/// Parse the os/architecture of an image config.
pub fn parse_config_platform(body: &[u8]) -> Result<ConfigPlatform, ResolveError> {
    serde_json::from_slice(body)
        .map_err(|e| ResolveError::InvalidResponse(format!("image config is not valid JSON: {e}")))
}

/// Config plus layer sizes; an overflowing sum is reported as `u64::MAX`.
pub fn compressed_size(config: &Descriptor, layers: &[Descriptor]) -> u64 {
    layers
        .iter()
        .try_fold(config.size, |acc, l| acc.checked_add(l.size))
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn structure_decides_without_media_type() {
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{D1}","size":10}},"layers":[{{"digest":"{D2}","size":5}}]}}"#
        );
        for ct in [OCI_MANIFEST, DOCKER_MANIFEST] {
            assert!(
                matches!(parse(Some(ct), m.as_bytes()), Ok(Manifest::Image { .. })),
                "{ct}"
            );
        }
        match parse(Some("application/json"), m.as_bytes()) {
            Ok(Manifest::Image { config, layers }) => {
                assert_eq!(compressed_size(&config, &layers), 15);
            }
            other => panic!("{other:?}"),
        }
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{D1}","size":3,"platform":{{"os":"linux","architecture":"arm64"}}}}]}}"#
        );
        let Ok(Manifest::Index(entries)) = parse(None, idx.as_bytes()) else {
            panic!("index expected")
        };
        let err = choose_amd64(&entries).map(|_| ()).unwrap_err();
        assert_eq!(
            err.reason(),
            berth_schemas::model::PullFailureReason::UnsupportedPlatform
        );
        assert!(err.to_string().contains("linux/arm64"));
    }

    #[test]
    fn hostile_fields_are_refused() {
        let bad = r#"{"config":{"digest":"sha256:../../x","size":1},"layers":[]}"#;
        assert!(matches!(
            parse(None, bad.as_bytes()),
            Err(ResolveError::InvalidResponse(_))
        ));
        let neg = format!(r#"{{"config":{{"digest":"{D1}","size":-1}}}}"#);
        assert!(parse(None, neg.as_bytes()).is_err());
        let big = Descriptor {
            digest: Digest::parse(D1).unwrap(),
            size: u64::MAX,
        };
        assert_eq!(compressed_size(&big, std::slice::from_ref(&big)), u64::MAX);
        assert!(matches!(
            parse(
                Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
                b"{}"
            ),
            Err(ResolveError::UnsupportedMediaType(_))
        ));
    }
}
