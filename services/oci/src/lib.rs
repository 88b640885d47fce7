//! berth-oci: the registry client under the resolver and (later) the puller.
//! No event-store dependency: it turns an image reference plus an optional
//! credential into a verified [`ResolvedImage`](berth_schemas::model::ResolvedImage)
//! or a [`ResolveError`] whose [`reason`](ResolveError::reason) is one of
//! SPEC §9's pull-failure reasons.
//!
//! Why our own HTTP layer on `reqwest` rather than `oci-client` 0.18: the
//! resolver must honour `Retry-After` (oci-client hides response headers),
//! must tell a refused token fetch apart from other failures and classify
//! every status into SPEC §9 (oci-client collapses those into a generic
//! error), must cap how much of a hostile manifest it reads, and must
//! stream blobs verifying size and digest as they arrive (oci-client checks
//! the digest only after the bytes are written and never the size). The
//! registry API needed here is four requests (HEAD/GET manifest, GET blob,
//! GET token), so owning them costs less than working around a client.
//! Manifest types are minimal serde structs (see [`manifest`]) rather than
//! oci-spec's, for tolerance of omitted `mediaType` and strict digest checks.
//! TLS is rustls with the ring provider (no aws-lc/cmake build) and the
//! platform certificate verifier; loopback registries are plain http.
//! Registry hosts are owner-supplied: internal addresses the operator has
//! not allowed ([`ClientConfig::targets`]) are refused before connecting
//! ([`ResolveError::TargetRefused`]).

mod auth;
mod blob;
mod client;
mod config;
pub mod digest;
mod error;
mod fetch;
pub mod manifest;
mod resolve;
mod retry;

pub use auth::Credential;
pub use berth_runtime::egress::{AddressPolicy, TargetRefused};
pub use berth_schemas::model::{PullFailureReason, ResolvedImage};
pub use client::{BuildError, ImageRef, RegistryClient};
pub use config::{parse_insecure_hosts, ClientConfig, RetryPolicy};
pub use error::ResolveError;
pub use fetch::FetchedManifest;
pub use retry::{watching_retries, RetryNotice};
