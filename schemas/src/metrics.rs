//! Resource and traffic samples (JSON on core NATS, kept for a day in the
//! metrics stream; not the log: samples are not facts worth keeping).
//!
//! - [`UsageSample`]: a node's agent, every interval, for each service it
//!   runs instances of: each instance's cumulative CPU time and current
//!   memory, read from its cgroup, and its service's disk's use. Subject `subjects.usage(service, node)`.
//! - [`HttpSample`]: a router, every interval in which a service was
//!   requested: how many requests it answered by status class and how long
//!   they took, as counts per latency bucket. Subject
//!   `subjects.http_metrics(service, router)`.
//!
//! One subject per service and producer keeps a service's series a filter
//! on the stream: reading a day of one service costs that service's
//! samples, whatever the count of services.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{InstanceId, NodeId};

/// Upper bounds (milliseconds, inclusive) of the latency buckets of an
/// [`HttpSample`]; one more bucket counts everything slower.
pub const LATENCY_BUCKETS_MS: &[u64] = &[5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];

/// One service's instances on one node at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageSample {
    pub node: NodeId,
    pub time: DateTime<Utc>,
    pub instances: Vec<InstanceUsage>,
}

/// One instance's resource use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceUsage {
    pub instance: InstanceId,
    /// CPU time used since the instance's cgroup was made, nanoseconds
    /// (a rate is the difference of two samples over their interval).
    pub cpu_nanos: u64,
    /// Memory in use now, bytes.
    pub memory_bytes: u64,
    /// The instance's memory limit, bytes (0: none known).
    #[serde(default)]
    pub memory_limit_bytes: u64,
    /// The instance's CPU limit, thousandths of a core (0: none known).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cpu_limit_millis: u64,
    /// Its service's disk: bytes in use (absent without a disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_used_bytes: Option<u64>,
    /// Its service's disk: the filesystem's size, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_capacity_bytes: Option<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One service's requests through one router over one interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpSample {
    /// The router (its own id, unique per process).
    pub router: String,
    /// The end of the interval.
    pub time: DateTime<Utc>,
    /// The interval's length, seconds.
    pub interval_secs: u32,
    /// Requests answered, by status class (`2xx`, `3xx`, `4xx`, `5xx`).
    pub counts: BTreeMap<String, u64>,
    /// Requests per latency bucket ([`LATENCY_BUCKETS_MS`], then the
    /// overflow bucket).
    pub latency_buckets: Vec<u64>,
}

impl HttpSample {
    /// The bucket a request that took `ms` milliseconds falls in.
    pub fn bucket(ms: u64) -> usize {
        LATENCY_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BUCKETS_MS.len())
    }

    /// The status class of `status`.
    pub fn class(status: u16) -> &'static str {
        match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_classes() {
        assert_eq!(HttpSample::bucket(0), 0);
        assert_eq!(HttpSample::bucket(5), 0);
        assert_eq!(HttpSample::bucket(6), 1);
        assert_eq!(HttpSample::bucket(10_000), LATENCY_BUCKETS_MS.len() - 1);
        assert_eq!(HttpSample::bucket(10_001), LATENCY_BUCKETS_MS.len());
        assert_eq!(HttpSample::class(204), "2xx");
        assert_eq!(HttpSample::class(503), "5xx");
    }
}
