//! Benchmarks run by examples (`./scripts/bench`, BENCHMARKS.md), each
//! measuring berth beside its raw anchor in the same run. They live here,
//! beside the registry they start, so the libraries they measure carry no
//! benchmark code. (The event log's is `berth bench eventlog`, in the
//! `berth` binary.)
//!
//! - [`resolve`]: tag → digest against `curl -sI` and a raw HEAD;
//! - [`pull`]: cold pull, unpack and warm re-pull against skopeo and umoci.

pub mod pull;
pub mod resolve;
