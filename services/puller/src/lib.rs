//! berth-puller: the node side of an image pull (SPEC §8, §9, §15).
//!
//! A node gets a resolved linux/amd64 manifest digest (from the resolver's
//! event) and must turn it into a rootfs it can hand to the runtime,
//! verifying every byte and trusting nothing in the layers:
//!
//! - [`store`]: a content-addressed blob store in the containerd style —
//!   bytes are *ingested* into a private temp file, verified against the
//!   expected digest and size while streaming, fsynced, and only then
//!   *committed* by an atomic rename; a crash leaves only ingest files,
//!   which are removed at start-up. Unpacked trees live beside the blobs;
//!   [`ContentStore::gc`] removes what no caller references.
//! - [`pull`]: fetches the manifest on **every** pull (a deleted image or a
//!   revoked credential fails at once), then config and layers with
//!   bounded concurrency, reusing verified blobs unless the policy is
//!   `always-download`, reporting progress at a bounded rate. Failures map
//!   to SPEC §9's [`PullFailureReason`].
//! - [`unpack`]: applies layers (plain tar, gzip, zstd) in order into one
//!   rootfs per image digest with OCI whiteouts, hard links, symlinks,
//!   modes, ownership, mtimes and xattrs — writing every entry itself with
//!   no-follow path resolution, so nothing in a hostile layer can escape
//!   the target — and bounding what a layer can take: header sizes before
//!   they are read, expanded bytes (a compression ratio) and the node's
//!   free disk as the layer streams.
//!
//! Its benchmark against skopeo and umoci is `berth_tests::bench::pull`
//! (`cargo run --release -p berth-puller --example bench_pull`).

mod error;
pub mod pull;
pub mod store;
pub mod unpack;
mod walk;

pub use berth_schemas::model::PullFailureReason;
pub use error::{PullError, StoreError, UnpackError};
pub use pull::{LayerInfo, Progress, PullConfig, PullPolicy, PullRequest, PulledImage, Puller};
pub use store::{searchable_by, ContentStore, GcReport, IdShift, Ingest, VerifyPolicy};
pub use unpack::{
    unpack_image, unpack_layer, Compression, LayerStats, UnpackLimits, UnpackOptions,
};
