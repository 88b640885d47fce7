//! The service events timeline (SPEC §14): the log's service facts mapped to
//! Render's service event types as JSON with camelCase fields, and a
//! queryable read model of them per service. The mapping is pure
//! ([`TimelineEvent::from_envelope`]); the notifier publishes the same values
//! on the integration stream and notifies about them, and the API folds the
//! read model into its index and serves it at `/v1/services/{id}/events`.
//!
//! Only facts a user cares about become timeline events; bookkeeping
//! (placements, pull progress, settings) does not. The timeline event's id is
//! the log event's id, so a consumer of both can match them and dedupe.

use std::collections::{BTreeSet, HashMap};

use berth_schemas::ids::{EventId, ServiceId};
use berth_schemas::model::DeployTrigger;
use berth_schemas::{AggregateId, Envelope, Event};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// One entry of a service's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = details_by_type)]
pub struct TimelineEvent {
    /// `evt-…`: the id of the log event it comes from.
    pub id: String,
    /// When it happened.
    pub timestamp: DateTime<Utc>,
    /// The service it belongs to.
    pub service_id: String,
    /// Render's event type (`deploy_ended`, …) or berth's own.
    #[serde(rename = "type")]
    #[schemars(extend("enum" = TYPES))]
    pub kind: String,
    /// Type-specific fields, camelCase: Render's for Render's types (its
    /// `ServiceEvent` details), with berth's facts as extra fields.
    #[schemars(with = "serde_json::Map<String, Value>")]
    pub details: Value,
}

/// Every type the timeline can hold, for filters and docs: Render's
/// service event types ([`RENDER_TYPES`]) and berth's own.
pub const TYPES: &[&str] = &[
    "deploy_started",
    "deploy_ended",
    "pre_deploy_started",
    "pre_deploy_ended",
    "image_pull_failed",
    "server_failed",
    "server_restarted",
    "placement_blocked",
    "instance_exited",
    "instance_port_detected",
    "instance_command_requested",
    "instance_command_ended",
    "instance_count_changed",
    "autoscaling_config_changed",
    "autoscaling_started",
    "autoscaling_ended",
    "maintenance_mode_enabled",
    "maintenance_mode_uri_updated",
    "disk_placed",
    "disk_updated",
    "disk_added",
    "disk_removed",
    "disk_snapshot_restored",
    "service_disk_usage_high",
    "service_disk_usage_recovered",
    "cron_job_run_started",
    "cron_job_run_ended",
    "cron_job_run_skipped",
    "job_created",
    "job_started",
    "job_run_ended",
    "rollback_target_missing",
    "service_suspended",
    "service_resumed",
    "certificate_issued",
    "certificate_failed",
    "certificate_removed",
];

/// Render's event types berth never records (builds, commits, edge
/// caching, databases, Key Value, platform maintenance…): a webhook may
/// name them, so a filter written for Render is taken as is.
pub const RENDER_ONLY_TYPES: &[&str] = &[
    "artifact_fetch_failed",
    "artifact_source_changed",
    "auto_deploy_disabled",
    "auto_deploy_enabled",
    "branch_deleted",
    "build_ended",
    "build_started",
    "commit_ignored",
    "disk_created",
    "disk_deleted",
    "edge_cache_disabled",
    "edge_cache_enabled",
    "edge_cache_purged",
    "key_value_available",
    "key_value_config_restart",
    "key_value_unhealthy",
    "maintenance_ended",
    "maintenance_started",
    "pipeline_minutes_exhausted",
    "plan_changed",
    "postgres_available",
    "postgres_backup_completed",
    "postgres_backup_failed",
    "postgres_backup_started",
    "postgres_cluster_leader_changed",
    "postgres_connection_pool_changed",
    "postgres_connection_pool_enabled_changed",
    "postgres_created",
    "postgres_disk_autoscaling_enabled_changed",
    "postgres_disk_size_changed",
    "postgres_ha_status_changed",
    "postgres_pitr_checkpoint_completed",
    "postgres_pitr_checkpoint_failed",
    "postgres_pitr_checkpoint_started",
    "postgres_read_replicas_changed",
    "postgres_read_replica_stale",
    "postgres_restarted",
    "postgres_restore_failed",
    "postgres_restore_succeeded",
    "postgres_unavailable",
    "postgres_upgrade_failed",
    "postgres_upgrade_started",
    "postgres_upgrade_succeeded",
    "postgres_wal_archive_failed",
    "server_available",
    "server_hardware_failure",
    "zero_downtime_redeploy_ended",
    "zero_downtime_redeploy_started",
];

/// The types that are Render's own, with Render's details: a client
/// generated from Render's document knows these and no others.
pub const RENDER_TYPES: &[&str] = &[
    "deploy_started",
    "deploy_ended",
    "pre_deploy_started",
    "pre_deploy_ended",
    "image_pull_failed",
    "server_failed",
    "server_restarted",
    "instance_count_changed",
    "autoscaling_config_changed",
    "autoscaling_started",
    "autoscaling_ended",
    "maintenance_mode_enabled",
    "maintenance_mode_uri_updated",
    "disk_snapshot_restored",
    "service_disk_usage_high",
    "service_disk_usage_recovered",
    "cron_job_run_started",
    "cron_job_run_ended",
    "job_run_ended",
    "service_suspended",
    "service_resumed",
];

fn snake<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Render's numeric `status` of an ended deploy or pre-deploy, beside its
/// `deployStatus`: 2 succeeded, 3 failed, 4 canceled.
/// Render's details of a disk's use crossing its threshold, with berth's
/// bytes and a `message` saying it (`how`: "is above", "is back below").
fn disk_usage(
    disk: &berth_schemas::ids::DiskId,
    (name, mount_path): (&str, &str),
    (used, size, threshold): (u64, u64, u8),
    how: &str,
) -> Value {
    let percent = if size == 0 {
        0.0
    } else {
        (used as f64 * 1000.0 / size as f64).round() / 10.0
    };
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    json!({
        "diskId": disk,
        "diskName": name,
        "mountPath": mount_path,
        "usagePercent": percent,
        "thresholdPercent": f64::from(threshold),
        "usedBytes": used,
        "sizeBytes": size,
        "message": format!(
            "disk {name} at {mount_path} {how} {threshold} % full: {percent} % ({:.2} of {:.2} GB)",
            gib(used),
            gib(size)
        ),
    })
}

/// A disk's timeline details; `message` says what became of it, `{}`
/// standing for its name, path and size (after its id).
fn disk_details(d: &berth_schemas::model::Disk, message: &str) -> Value {
    let what = format!("{} at {}, {} GB", d.name, d.mount_path, d.size_gb);
    json!({
        "diskId": d.id,
        "name": d.name,
        "mountPath": d.mount_path,
        "sizeGB": d.size_gb,
        "message": format!("disk {} {}", d.id, message.replacen("{}", &what, 1)),
    })
}

fn numeric_status(outcome: &str) -> u8 {
    match outcome {
        "succeeded" => 2,
        "failed" => 3,
        _ => 4,
    }
}

/// Render's failure reason object (`evicted` is the one field it always has).
fn failure(extra: Value) -> Value {
    let mut f = json!({ "evicted": false });
    if let (Some(f), Value::Object(extra)) = (f.as_object_mut(), extra) {
        f.extend(extra.into_iter().filter(|(_, v)| !v.is_null()));
    }
    f
}

/// Render's trigger object of a started deploy, from berth's trigger.
fn trigger(t: Option<DeployTrigger>) -> Value {
    let is = |want: &[DeployTrigger]| t.is_some_and(|t| want.contains(&t));
    json!({
        "firstBuild": is(&[DeployTrigger::ServiceCreated]),
        "envUpdated": false,
        "manual": is(&[DeployTrigger::Manual, DeployTrigger::Api]),
        "deployedByRender": false,
        "clearCache": false,
        "rollback": is(&[DeployTrigger::Rollback]),
    })
}

/// Render's cron run status for berth's (`succeeded`, `failed`,
/// `timed_out`, `canceled`).
fn cron_status(berth: &str) -> &'static str {
    match berth {
        "succeeded" => "successful",
        "canceled" => "canceled",
        _ => "unsuccessful",
    }
}

impl TimelineEvent {
    /// The timeline entry for one logged event, if it is one users see.
    /// Render's types carry Render's details (required fields first);
    /// berth's own facts ride along as extra fields.
    pub fn from_envelope(env: &Envelope) -> Option<Self> {
        let (service, kind, details) = Self::mapped(env, true)?;
        Some(Self {
            id: env.id.to_string(),
            timestamp: env.time,
            service_id: service.to_string(),
            kind: kind.to_owned(),
            details: strip_nulls(details),
        })
    }

    /// The service and type of the timeline entry for one logged event, if
    /// it is one users see, without making its details.
    pub fn kind_of(env: &Envelope) -> Option<(&ServiceId, &'static str)> {
        Self::mapped(env, false).map(|(service, kind, _)| (service, kind))
    }

    /// The service, type and (if `details`, else null) details of the
    /// entry for `env`.
    fn mapped(env: &Envelope, details: bool) -> Option<(&ServiceId, &'static str, Value)> {
        let AggregateId::Service(service) = &env.aggregate else {
            return None;
        };
        // An entry's details, made only when asked for.
        macro_rules! d {
            ($($json:tt)+) => {
                if details {
                    json!($($json)+)
                } else {
                    Value::Null
                }
            };
        }
        let (kind, details) = match &env.event {
            Event::DeployStarted(e) => (
                "deploy_started",
                d!({
                    "deployId": e.deploy,
                    "trigger": trigger(e.trigger),
                    "triggerName": e.trigger.map(|t| snake(&t)),
                }),
            ),
            Event::DeployLive(e) => (
                "deploy_ended",
                d!({
                    "deployId": e.deploy,
                    "deployStatus": "succeeded",
                    "status": numeric_status("succeeded"),
                    "reason": {},
                    "finalStatus": "live",
                    "digest": e.digest,
                }),
            ),
            Event::DeployFailed(e) => (
                "deploy_ended",
                d!({
                    "deployId": e.deploy,
                    "deployStatus": "failed",
                    "status": numeric_status("failed"),
                    "reason": { "failure": failure(json!({})) },
                    "finalStatus": snake(&e.status),
                    "message": e.reason,
                }),
            ),
            Event::DeployCanceled(e) => (
                "deploy_ended",
                d!({
                    "deployId": e.deploy,
                    "deployStatus": "canceled",
                    "status": numeric_status("canceled"),
                    "reason": match &e.by {
                        Some(by) => json!({ "newDeploy": { "id": by } }),
                        None => json!({}),
                    },
                    "finalStatus": "canceled",
                    "cancelReason": snake(&e.reason),
                }),
            ),
            // berth runs one pre-deploy per deploy: its execution is named
            // by the deploy.
            Event::PreDeployStarted(e) => (
                "pre_deploy_started",
                d!({ "deployId": e.deploy, "deployCommandExecutionId": e.deploy }),
            ),
            Event::PreDeployEnded(e) => {
                let outcome = if e.success { "succeeded" } else { "failed" };
                (
                    "pre_deploy_ended",
                    d!({
                        "deployId": e.deploy,
                        "deployCommandExecutionId": e.deploy,
                        "preDeployStatus": outcome,
                        "status": numeric_status(outcome),
                        "reason": if e.success {
                            json!({})
                        } else {
                            json!({ "failure": failure(json!({ "nonZeroExit": e.exit_code })) })
                        },
                        "exitCode": e.exit_code,
                        "message": e.reason,
                    }),
                )
            }
            Event::ImagePullFailed(e) => (
                "image_pull_failed",
                d!({
                    "message": e.message,
                    "imageURL": e.image,
                    "deployId": e.deploy,
                    "nodeId": e.node,
                    "pullFailure": snake(&e.reason),
                }),
            ),
            Event::ServerFailed(e) => (
                "server_failed",
                d!({
                    "instanceID": e.instances.first(),
                    "reason": failure(json!({
                        "evicted": true,
                        "evictionReason": "its node stopped reporting (node lost)",
                    })),
                    "nodeId": e.node,
                    "instanceIds": e.instances,
                }),
            ),
            Event::ServerRestarted(e) => (
                "server_restarted",
                d!({
                    "triggeredByUser": null,
                    "instanceId": e.instance,
                    "attempt": e.attempt,
                }),
            ),
            Event::InstanceExited(e) => (
                "instance_exited",
                d!({
                    "instanceId": e.instance,
                    "exitCode": e.exit_code,
                    "signal": e.signal,
                    "outOfMemory": e.oom_killed,
                    "diskWrittenMib": e.disk_written_mib,
                    "diskLimitMib": e.disk_limit_mib,
                    "cannotRun": e.cannot_run,
                    "message": crate::service::instances::exit_message(e),
                }),
            ),
            Event::InstancePortDetected(e) => (
                "instance_port_detected",
                d!({
                    "instanceId": e.instance,
                    "port": e.port,
                    "expectedPort": e.expected,
                    "message": crate::service::instances::port_detected_message(e),
                }),
            ),
            Event::InstanceCommandRequested(e) => (
                "instance_command_requested",
                d!({
                    "instanceId": e.instance,
                    "nodeId": e.node,
                    "program": e.program,
                    "terminal": e.terminal,
                }),
            ),
            Event::InstanceCommandEnded(e) => (
                "instance_command_ended",
                d!({
                    "instanceId": e.instance,
                    "program": e.program,
                    "terminal": e.terminal,
                    "exitCode": e.exit_code,
                    "timedOut": e.timed_out,
                    "reason": e.reason,
                    "durationMs": e.duration_ms,
                }),
            ),
            Event::PlacementBlocked(e) => (
                "placement_blocked",
                d!({
                    "deployId": e.deploy,
                    "unplaced": e.unplaced,
                    "cpuMillis": e.cpu_millis,
                    "memoryMib": e.memory_mib,
                    "nodeId": e.node,
                    "freeCpuMillis": e.free_cpu_millis,
                    "freeMemoryMib": e.free_memory_mib,
                    "reason": e.reason,
                }),
            ),
            Event::InstanceCountChanged(e) => (
                "instance_count_changed",
                d!({ "fromInstances": e.from, "toInstances": e.to }),
            ),
            Event::AutoscalingConfigChanged(e) => (
                "autoscaling_config_changed",
                d!({
                    // Render's `toConfig` is always there: a removal shows
                    // the settings it ended, off.
                    "toConfig": e.to.clone().or_else(|| {
                        e.from.clone().map(|c| berth_schemas::model::AutoscalingConfig { enabled: false, ..c })
                    }),
                    "fromConfig": e.from,
                    "removed": e.to.is_none(),
                    "message": autoscaling_message(e.to.as_ref()),
                }),
            ),
            Event::AutoscalingStarted(e) => (
                "autoscaling_started",
                d!({
                    "fromInstances": e.from_instances,
                    "toInstances": e.to_instances,
                    "currentCPU": e.current_cpu,
                    "targetCPU": e.target_cpu,
                    "currentMemory": e.current_memory,
                    "targetMemory": e.target_memory,
                    "message": autoscaling_started_message(e),
                }),
            ),
            Event::AutoscalingEnded(e) => (
                "autoscaling_ended",
                d!({
                    "fromInstances": e.from_instances,
                    "toInstances": e.to_instances,
                    "message": format!("{} instances healthy, as autoscaling asked", e.to_instances),
                }),
            ),
            Event::MaintenanceModeEnabled(e) => (
                "maintenance_mode_enabled",
                d!({
                    "enabled": e.enabled,
                    "message": if e.enabled {
                        "maintenance mode on: the router answers its requests with a 503 maintenance page; its instances keep running"
                    } else {
                        "maintenance mode off: the router passes its requests on again"
                    },
                }),
            ),
            Event::MaintenanceModeUriUpdated(e) => (
                "maintenance_mode_uri_updated",
                d!({
                    "fromUri": e.from_uri,
                    "toUri": e.to_uri,
                    "message": if e.to_uri.is_empty() {
                        "maintenance mode shows berth's own page".to_owned()
                    } else {
                        format!("maintenance mode sends browsers to {}", e.to_uri)
                    },
                }),
            ),
            Event::DiskPlaced(e) => (
                "disk_placed",
                d!({
                    "diskId": e.disk,
                    "nodeId": e.node,
                    "message": format!("its disk {} is on {}: its instance runs there from now on", e.disk, e.node),
                }),
            ),
            Event::DiskAdded(e) => (
                "disk_added",
                d!(disk_details(
                    &e.disk,
                    "added: {}; its instance gets it at the deploy that comes with it",
                )),
            ),
            Event::DiskRemoved(e) => (
                "disk_removed",
                d!({
                    "diskId": e.disk,
                    "message": format!(
                        "disk {} removed, and what was on it; the deploy that comes with it starts an instance without it",
                        e.disk
                    ),
                }),
            ),
            Event::DiskSnapshotRestored(e) => (
                "disk_snapshot_restored",
                d!({
                    "diskId": e.disk,
                    "triggeredByUser": null,
                    "snapshotCreatedAt": e.snapshot_created_at,
                    "snapshotKey": e.key,
                    "message": format!(
                        "disk {} set back to its snapshot {} of {}; the deploy that comes with it starts the instance on it",
                        e.disk, e.key, e.snapshot_created_at.format("%Y-%m-%d %H:%M:%S UTC")
                    ),
                }),
            ),
            Event::ServiceDiskUsageHigh(e) => (
                "service_disk_usage_high",
                d!(disk_usage(
                    &e.disk,
                    (&e.disk_name, &e.mount_path),
                    (e.used_bytes, e.size_bytes, e.threshold_percent),
                    "is above",
                )),
            ),
            Event::ServiceDiskUsageRecovered(e) => (
                "service_disk_usage_recovered",
                d!(disk_usage(
                    &e.disk,
                    (&e.disk_name, &e.mount_path),
                    (e.used_bytes, e.size_bytes, e.threshold_percent),
                    "is back below",
                )),
            ),
            Event::DiskUpdated(e) => (
                "disk_updated",
                d!(disk_details(
                    &e.disk,
                    "is now {}: its instance sees it so at its next start",
                )),
            ),
            Event::CronJobRunStarted(e) => (
                "cron_job_run_started",
                d!({ "cronJobRunId": e.run, "digest": e.digest, "manual": e.manual }),
            ),
            Event::CronJobRunEnded(e) => (
                "cron_job_run_ended",
                d!({
                    "cronJobRunId": e.run,
                    "status": cron_status(&e.status),
                    "reason": (e.status != "succeeded" && e.status != "canceled").then(|| {
                        failure(json!({
                            "nonZeroExit": e.exit_code.filter(|c| *c != 0),
                            "timedOutReason": (e.status == "timed_out")
                                .then_some("the run outlasted its time limit"),
                        }))
                    }),
                    "runStatus": e.status,
                    "exitCode": e.exit_code,
                    "message": e.reason,
                }),
            ),
            Event::JobCreated(e) => (
                "job_created",
                d!({
                    "jobId": e.job,
                    "startCommand": e.start_command,
                    "planId": e.plan.name,
                    "digest": e.digest,
                }),
            ),
            Event::JobStarted(e) => ("job_started", d!({ "jobId": e.job })),
            Event::JobEnded(e) => (
                "job_run_ended",
                d!({
                    "jobId": e.job,
                    "status": e.status,
                    "reason": (e.status == "failed").then(|| {
                        failure(json!({ "nonZeroExit": e.exit_code.filter(|c| *c != 0) }))
                    }),
                    "exitCode": e.exit_code,
                    "message": e.reason,
                }),
            ),
            Event::CronJobRunSkipped(e) => (
                "cron_job_run_skipped",
                d!({ "scheduledFor": e.scheduled_for, "activeRunId": e.active_run }),
            ),
            Event::RollbackTargetMissing(e) => (
                "rollback_target_missing",
                d!({ "deployId": e.deploy, "digest": e.digest }),
            ),
            Event::ServiceSuspended(_) => ("service_suspended", d!({})),
            Event::ServiceResumed(_) => ("service_resumed", d!({})),
            Event::CertificateIssued(e) => (
                "certificate_issued",
                d!({
                    "domain": e.domain,
                    "notAfter": e.not_after,
                    "serial": e.serial,
                    "renewal": e.renewal,
                }),
            ),
            Event::CertificateFailed(e) => (
                "certificate_failed",
                d!({
                    "domain": e.domain,
                    "reason": e.reason.as_str(),
                    "attempt": e.attempt,
                    "retryInSecs": e.retry_in_secs,
                }),
            ),
            Event::CertificateRemoved(e) => ("certificate_removed", d!({ "domain": e.domain })),
            _ => return None,
        };
        Some((service, kind, details))
    }

    /// berth's outcome of an ended deploy (`live`, `update_failed`,
    /// `pre_deploy_failed`, `canceled`) or cron run (`succeeded`,
    /// `failed`, `timed_out`, `canceled`).
    pub fn outcome(&self) -> Option<&str> {
        let key = match self.kind.as_str() {
            "deploy_ended" => "finalStatus",
            "cron_job_run_ended" => "runStatus",
            "job_run_ended" => "status",
            _ => return None,
        };
        self.details.get(key).and_then(Value::as_str)
    }

    /// Whether this entry reports something that went wrong (what the
    /// `failure` notification setting sends).
    pub fn is_failure(&self) -> bool {
        match self.kind.as_str() {
            "deploy_ended" => matches!(self.outcome(), Some("update_failed" | "pre_deploy_failed")),
            "cron_job_run_ended" => matches!(self.outcome(), Some("failed" | "timed_out")),
            "job_run_ended" => self.outcome() == Some("failed"),
            "image_pull_failed" | "server_failed" | "service_disk_usage_high" => true,
            _ => false,
        }
    }

    /// Whether a notification is ever sent for this entry (`all` sends
    /// these, `failure` only the failures among them).
    pub fn is_notable(&self) -> bool {
        self.is_failure()
            || matches!(
                self.kind.as_str(),
                "deploy_ended" | "service_disk_usage_recovered"
            )
            || (matches!(self.kind.as_str(), "cron_job_run_ended" | "job_run_ended")
                && self.outcome() == Some("succeeded"))
    }
}

/// An autoscaling change in words.
fn autoscaling_message(to: Option<&berth_schemas::model::AutoscalingConfig>) -> String {
    match to.filter(|c| c.enabled) {
        Some(c) => c.to_string(),
        None => "autoscaling off: the service keeps the instance count it has".to_owned(),
    }
}

/// What the autoscaler saw and did, in words.
fn autoscaling_started_message(e: &berth_schemas::events::AutoscalingStarted) -> String {
    let mut saw = Vec::new();
    if let (Some(c), Some(t)) = (e.current_cpu, e.target_cpu) {
        saw.push(format!("CPU {c} % (target {t} %)"));
    }
    if let (Some(c), Some(t)) = (e.current_memory, e.target_memory) {
        saw.push(format!("memory {c} % (target {t} %)"));
    }
    let how = if e.to_instances > e.from_instances {
        "up"
    } else {
        "down"
    };
    let why = if saw.is_empty() {
        "into its autoscaling's range".to_owned()
    } else {
        format!("at {}", saw.join(", "))
    };
    format!(
        "autoscaling {how} from {} to {} instances, {why}",
        e.from_instances, e.to_instances
    )
}

/// One field of a type's `details`: its name, JSON schema, and whether it
/// is always there.
type DetailField = (&'static str, Value, bool);

/// What [`disk_usage`] writes.
fn disk_usage_fields() -> Vec<DetailField> {
    let (s, n) = (json!({"type": "string"}), json!({"type": "number"}));
    let int = json!({"type": "integer"});
    vec![
        ("diskId", s.clone(), true),
        ("diskName", s.clone(), true),
        ("mountPath", s.clone(), true),
        ("usagePercent", n.clone(), true),
        ("thresholdPercent", n, true),
        ("usedBytes", int.clone(), true),
        ("sizeBytes", int, true),
        ("message", s, true),
    ]
}

/// The schema of each type's `details`: `(type, [field])`. What [`TimelineEvent::from_envelope`] writes; the API's
/// tests hold every event they read to it.
fn details_schemas() -> Vec<(&'static str, Vec<DetailField>)> {
    let s = || json!({"type": "string"});
    let int = || json!({"type": "integer"});
    let bool_ = || json!({"type": "boolean"});
    // What `disk_details` writes.
    let disk = || {
        vec![
            ("diskId", s(), true),
            ("name", s(), true),
            ("mountPath", s(), true),
            ("sizeGB", int(), true),
            ("message", s(), true),
        ]
    };
    let autoscaling = || {
        let criterion = json!({"type": "object", "required": ["enabled", "percentage"], "properties": {
            "enabled": {"type": "boolean"}, "percentage": {"type": "integer"}}});
        json!({"type": "object", "required": ["enabled", "min", "max", "criteria"], "properties": {
            "enabled": {"type": "boolean"}, "min": {"type": "integer"}, "max": {"type": "integer"},
            "criteria": {"type": "object", "required": ["cpu", "memory"], "properties": {
                "cpu": criterion.clone(), "memory": criterion}}}})
    };
    let one_of = |v: &[&str]| json!({"type": "string", "enum": v});
    let failure = || {
        json!({"type": "object", "required": ["evicted"], "properties": {
            "evicted": {"type": "boolean"}, "evictionReason": {"type": "string"},
            "nonZeroExit": {"type": "integer"}, "timedOutReason": {"type": "string"}}})
    };
    let reason = || {
        json!({"type": "object", "properties": {
            "failure": failure(),
            "newDeploy": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}}})
    };
    let trigger = || {
        let flags = [
            "firstBuild",
            "envUpdated",
            "manual",
            "deployedByRender",
            "clearCache",
            "rollback",
        ];
        json!({"type": "object", "required": flags,
               "properties": flags.iter().map(|f| ((*f).to_owned(), json!({"type": "boolean"}))).collect::<serde_json::Map<_, _>>()})
    };
    let cron = ["succeeded", "failed", "canceled", "timed_out"];
    vec![
        (
            "deploy_started",
            vec![
                ("deployId", s(), true),
                ("trigger", trigger(), true),
                ("triggerName", s(), false),
            ],
        ),
        (
            "deploy_ended",
            vec![
                ("deployId", s(), true),
                (
                    "deployStatus",
                    one_of(&["succeeded", "failed", "canceled"]),
                    true,
                ),
                ("status", int(), true),
                ("reason", reason(), true),
                (
                    "finalStatus",
                    one_of(&["live", "update_failed", "pre_deploy_failed", "canceled"]),
                    true,
                ),
                ("digest", s(), false),
                ("message", s(), false),
                (
                    "cancelReason",
                    one_of(&[
                        "explicit",
                        "superseded",
                        "overlap_cancel",
                        "service_stopped",
                    ]),
                    false,
                ),
            ],
        ),
        (
            "pre_deploy_started",
            vec![
                ("deployId", s(), true),
                ("deployCommandExecutionId", s(), true),
            ],
        ),
        (
            "pre_deploy_ended",
            vec![
                ("deployId", s(), true),
                ("deployCommandExecutionId", s(), true),
                ("preDeployStatus", one_of(&["succeeded", "failed"]), true),
                ("status", int(), true),
                ("reason", reason(), true),
                ("exitCode", int(), false),
                ("message", s(), false),
            ],
        ),
        (
            "image_pull_failed",
            vec![
                ("message", s(), true),
                ("imageURL", s(), true),
                ("pullFailure", s(), true),
                ("deployId", s(), false),
                ("nodeId", s(), false),
            ],
        ),
        (
            "server_failed",
            vec![
                ("instanceID", s(), false),
                ("reason", failure(), true),
                ("nodeId", s(), true),
                (
                    "instanceIds",
                    json!({"type": "array", "items": {"type": "string"}}),
                    true,
                ),
            ],
        ),
        (
            "server_restarted",
            vec![
                ("triggeredByUser", json!({"type": ["string", "null"]}), true),
                ("instanceId", s(), true),
                ("attempt", int(), true),
            ],
        ),
        (
            "instance_exited",
            vec![
                ("instanceId", s(), true),
                ("exitCode", int(), false),
                ("signal", int(), false),
                ("outOfMemory", bool_(), true),
                ("diskWrittenMib", int(), false),
                ("diskLimitMib", int(), false),
                ("message", s(), true),
            ],
        ),
        (
            "instance_port_detected",
            vec![
                ("instanceId", s(), true),
                ("port", int(), true),
                ("expectedPort", int(), true),
                ("message", s(), true),
            ],
        ),
        (
            "instance_command_requested",
            vec![
                ("instanceId", s(), true),
                ("nodeId", s(), true),
                ("program", s(), true),
                ("terminal", bool_(), true),
            ],
        ),
        (
            "instance_command_ended",
            vec![
                ("instanceId", s(), true),
                ("program", s(), true),
                ("terminal", bool_(), true),
                ("exitCode", int(), false),
                ("timedOut", bool_(), true),
                ("reason", s(), false),
                ("durationMs", int(), true),
            ],
        ),
        (
            "placement_blocked",
            vec![
                ("deployId", s(), true),
                ("unplaced", int(), true),
                ("cpuMillis", int(), true),
                ("memoryMib", int(), true),
                ("nodeId", s(), false),
                ("freeCpuMillis", int(), true),
                ("freeMemoryMib", int(), true),
                ("reason", s(), true),
            ],
        ),
        (
            "instance_count_changed",
            vec![("fromInstances", int(), true), ("toInstances", int(), true)],
        ),
        (
            "autoscaling_config_changed",
            vec![
                ("toConfig", autoscaling(), true),
                ("fromConfig", autoscaling(), false),
                ("removed", bool_(), true),
                ("message", s(), true),
            ],
        ),
        (
            "autoscaling_started",
            vec![
                ("fromInstances", int(), true),
                ("toInstances", int(), true),
                ("currentCPU", int(), false),
                ("targetCPU", int(), false),
                ("currentMemory", int(), false),
                ("targetMemory", int(), false),
                ("message", s(), true),
            ],
        ),
        (
            "maintenance_mode_enabled",
            vec![("enabled", bool_(), true), ("message", s(), true)],
        ),
        (
            "maintenance_mode_uri_updated",
            vec![
                ("fromUri", s(), true),
                ("toUri", s(), true),
                ("message", s(), true),
            ],
        ),
        (
            "autoscaling_ended",
            vec![
                ("fromInstances", int(), true),
                ("toInstances", int(), true),
                ("message", s(), true),
            ],
        ),
        (
            "disk_placed",
            vec![
                ("diskId", s(), true),
                ("nodeId", s(), true),
                ("message", s(), true),
            ],
        ),
        ("disk_updated", disk()),
        ("disk_added", disk()),
        (
            "disk_removed",
            vec![("diskId", s(), true), ("message", s(), true)],
        ),
        ("service_disk_usage_high", disk_usage_fields()),
        ("service_disk_usage_recovered", disk_usage_fields()),
        (
            "disk_snapshot_restored",
            vec![
                ("diskId", s(), true),
                ("triggeredByUser", json!({"type": ["string", "null"]}), true),
                (
                    "snapshotCreatedAt",
                    json!({"type": "string", "format": "date-time"}),
                    true,
                ),
                ("snapshotKey", s(), true),
                ("message", s(), true),
            ],
        ),
        (
            "certificate_issued",
            vec![
                ("domain", s(), true),
                (
                    "notAfter",
                    json!({"type": "string", "format": "date-time"}),
                    true,
                ),
                ("serial", s(), true),
                ("renewal", bool_(), true),
            ],
        ),
        (
            "certificate_failed",
            vec![
                ("domain", s(), true),
                (
                    "reason",
                    one_of(&[
                        "ca_unavailable",
                        "challenge_failed",
                        "rejected",
                        "timed_out",
                        "store_unavailable",
                    ]),
                    true,
                ),
                ("attempt", int(), true),
                ("retryInSecs", int(), true),
            ],
        ),
        ("certificate_removed", vec![("domain", s(), true)]),
        (
            "cron_job_run_started",
            vec![
                ("cronJobRunId", s(), true),
                ("digest", s(), true),
                ("manual", bool_(), true),
            ],
        ),
        (
            "cron_job_run_ended",
            vec![
                ("cronJobRunId", s(), true),
                (
                    "status",
                    one_of(&["successful", "unsuccessful", "canceled"]),
                    true,
                ),
                ("reason", failure(), false),
                ("runStatus", one_of(&cron), true),
                ("exitCode", int(), false),
                ("message", s(), false),
            ],
        ),
        (
            "job_created",
            vec![
                ("jobId", s(), true),
                ("startCommand", s(), true),
                ("planId", s(), true),
                ("digest", s(), true),
            ],
        ),
        ("job_started", vec![("jobId", s(), true)]),
        (
            "job_run_ended",
            vec![
                ("jobId", s(), true),
                ("status", one_of(&["succeeded", "failed", "canceled"]), true),
                ("reason", failure(), false),
                ("exitCode", int(), false),
                ("message", s(), false),
            ],
        ),
        (
            "cron_job_run_skipped",
            vec![("scheduledFor", s(), true), ("activeRunId", s(), true)],
        ),
        (
            "rollback_target_missing",
            vec![("deployId", s(), true), ("digest", s(), true)],
        ),
        ("service_suspended", vec![]),
        ("service_resumed", vec![]),
    ]
}

/// Ties `details` to `type` in the schema: one variant per type.
fn details_by_type(schema: &mut schemars::Schema) {
    let variants: Vec<Value> = details_schemas()
        .into_iter()
        .map(|(kind, fields)| {
            let required: Vec<&str> = fields.iter().filter(|f| f.2).map(|f| f.0).collect();
            let properties: serde_json::Map<String, Value> = fields
                .into_iter()
                .map(|(f, v, _)| (f.to_owned(), v))
                .collect();
            json!({"properties": {
                "type": {"const": kind},
                "details": {"type": "object", "required": required, "properties": properties},
            }})
        })
        .collect();
    schema.insert("oneOf".to_owned(), Value::Array(variants));
}

/// Absent optional fields are left out rather than sent as `null`; a field
/// Render requires even when it has no value stays, as `null`.
fn strip_nulls(v: Value) -> Value {
    const REQUIRED: &[&str] = &["triggeredByUser"];
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, v)| !v.is_null() || REQUIRED.contains(&k.as_str()))
                .collect(),
        ),
        other => other,
    }
}

/// A timeline query: one service, optional filters, a page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Query {
    /// Only these types (empty: all).
    #[serde(default)]
    pub types: BTreeSet<String>,
    /// At or after this time.
    #[serde(default)]
    pub start_time: Option<DateTime<Utc>>,
    /// At or before this time.
    #[serde(default)]
    pub end_time: Option<DateTime<Utc>>,
    /// Continue after the entry with this cursor (from the previous page).
    #[serde(default)]
    pub cursor: Option<String>,
    /// Page size (default 20, at most 100).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// One page of a query's answer, newest first (as Render lists them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    /// The entries.
    pub events: Vec<TimelineEvent>,
    /// Pass as `cursor` for the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

/// Entries of each service's timeline held in memory, the newest; a page
/// that reaches past them is answered from the log (see
/// [`Answer::NeedsHistory`]).
pub const KEPT_PER_SERVICE: usize = 256;
/// Entries beyond the kept ones before the oldest go, in one pass.
const FORGET_SLACK: usize = 64;

/// One service's recent entries, and whether older ones were let go.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Recent {
    entries: Vec<Held>,
    forgotten: bool,
}

/// An entry as the read model holds it: what a query filters on and where
/// its event is in the log, 40 bytes. The details are made again from the
/// event for the entries a page shows ([`Entry::event`]): held as JSON
/// text they cost ~350 bytes an entry, parsed ~1.4 KB, and an installation
/// holds hundreds of entries for each of thousands of services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Held {
    /// The stream sequence of the commit holding the event.
    seq: u64,
    /// The event id's random part ([`EventId::bits`]), in two halves.
    id: [u64; 2],
    timestamp: DateTime<Utc>,
    /// The type's place in [`TYPES`].
    kind: u8,
}

impl Held {
    fn of(stream_seq: u64, env: &Envelope, kind: &str) -> Option<Self> {
        let kind = TYPES.iter().position(|t| *t == kind)?;
        Some(Held {
            seq: stream_seq,
            id: halves(&env.id),
            timestamp: env.time,
            kind: u8::try_from(kind).ok()?,
        })
    }

    fn event_id(&self) -> EventId {
        EventId::from_bits((u128::from(self.id[0]) << 64) | u128::from(self.id[1]))
    }

    fn entry(&self) -> Entry {
        Entry {
            seq: self.seq,
            id: self.event_id(),
        }
    }
}

/// A held entry a page shows: the event it comes from and where that is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The stream sequence of the commit holding the event.
    pub seq: u64,
    /// The event's id (the entry's id and cursor).
    pub id: EventId,
}

impl Entry {
    /// The entry, from the commit stored at [`Entry::seq`]; `None` if that
    /// commit does not hold the event.
    pub fn event(&self, commit: &[Envelope]) -> Option<TimelineEvent> {
        commit
            .iter()
            .find(|e| e.id == self.id)
            .and_then(TimelineEvent::from_envelope)
    }
}

/// An event id as a held entry keeps it.
fn halves(id: &EventId) -> [u64; 2] {
    let bits = id.bits();
    [(bits >> 64) as u64, bits as u64]
}

/// What a query filters on, whether the entry is held or whole.
trait Filtered {
    /// A cursor (an entry's id) as entries compare to it, made once per
    /// query; `None`: no entry has it.
    type Key;
    fn key(id: &str) -> Option<Self::Key>;
    fn is(&self, key: &Self::Key) -> bool;
    fn kind(&self) -> &str;
    fn at(&self) -> DateTime<Utc>;
}

impl Filtered for Held {
    type Key = [u64; 2];
    fn key(id: &str) -> Option<[u64; 2]> {
        id.parse::<EventId>().ok().map(|id| halves(&id))
    }
    fn is(&self, key: &[u64; 2]) -> bool {
        self.id == *key
    }
    fn kind(&self) -> &str {
        TYPES
            .get(usize::from(self.kind))
            .copied()
            .unwrap_or_default()
    }
    fn at(&self) -> DateTime<Utc> {
        self.timestamp
    }
}

impl Filtered for TimelineEvent {
    type Key = String;
    fn key(id: &str) -> Option<String> {
        Some(id.to_owned())
    }
    fn is(&self, key: &String) -> bool {
        self.id == *key
    }
    fn kind(&self) -> &str {
        &self.kind
    }
    fn at(&self) -> DateTime<Utc> {
        self.timestamp
    }
}

/// One page of `newest_first` for `q`, and whether a later page exists.
/// The cursor is the id of the last entry of the previous page; one that
/// is not among the entries is refused, as on every other listing.
fn select<'a, T: Filtered>(
    newest_first: impl Iterator<Item = &'a T>,
    q: &Query,
) -> Result<(Vec<&'a T>, bool), UnknownCursor> {
    let limit = q.limit.unwrap_or(20).clamp(1, 100);
    let mut iter = newest_first;
    if let Some(cursor) = &q.cursor {
        let key = T::key(cursor).ok_or(UnknownCursor)?;
        if !iter.by_ref().any(|t| t.is(&key)) {
            return Err(UnknownCursor);
        }
    }
    let matching = iter.filter(|t| {
        (q.types.is_empty() || q.types.contains(t.kind()))
            && q.start_time.is_none_or(|s| t.at() >= s)
            && q.end_time.is_none_or(|e| t.at() <= e)
    });
    let mut page: Vec<&T> = matching.take(limit + 1).collect();
    let more = page.len() > limit;
    page.truncate(limit);
    Ok((page, more))
}

/// The read model: each service's recent timeline in log order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timeline {
    services: HashMap<String, Recent>,
}

/// One page of held entries, newest first; their details come from the
/// log ([`Entry::event`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Entries {
    /// The entries.
    pub entries: Vec<Entry>,
    /// Pass as `cursor` for the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

/// How a query was answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// From the entries held.
    Page(Entries),
    /// The page reaches entries no longer held: answer it from the
    /// service's whole history ([`History::of`]).
    NeedsHistory,
}

impl Timeline {
    /// An empty timeline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the entry for `env`, committed at `stream_seq`, if any (a
    /// redelivered event is ignored).
    pub fn push(&mut self, stream_seq: u64, env: &Envelope) {
        let Some((service, kind)) = TimelineEvent::kind_of(env) else {
            return;
        };
        let Some(held) = Held::of(stream_seq, env, kind) else {
            return;
        };
        let recent = self.services.entry(service.to_string()).or_default();
        let list = &mut recent.entries;
        // Commits arrive in order; a replay of the same event keeps one copy.
        if list.last().is_some_and(|last| last.id == held.id) {
            return;
        }
        list.push(held);
        if list.len() > KEPT_PER_SERVICE + FORGET_SLACK {
            list.drain(..list.len() - KEPT_PER_SERVICE);
            recent.forgotten = true;
        }
    }

    /// Drops `service`'s timeline (a deleted service's, from a read model
    /// that no longer answers for it).
    pub fn forget(&mut self, service: &ServiceId) {
        self.services.remove(service.as_str());
    }

    /// Services with a timeline held.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether no timeline is held.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The entries of `service` held, oldest first.
    pub fn all(&self, service: &ServiceId) -> Vec<Entry> {
        self.held(service).iter().map(Held::entry).collect()
    }

    /// Entry `id` of `service`, if held.
    pub fn find(&self, service: &ServiceId, id: &str) -> Option<Entry> {
        let key = Held::key(id)?;
        self.held(service)
            .iter()
            .rev()
            .find(|h| h.is(&key))
            .map(Held::entry)
    }

    /// The held entries of `service` of type `kind` committed after
    /// `stream_seq`, oldest first.
    pub fn after(&self, service: &ServiceId, stream_seq: u64, kind: &str) -> Vec<Entry> {
        self.held(service)
            .iter()
            .filter(|h| h.seq > stream_seq && h.kind() == kind)
            .map(Held::entry)
            .collect()
    }

    fn held(&self, service: &ServiceId) -> &[Held] {
        self.services
            .get(service.as_str())
            .map_or(&[], |r| r.entries.as_slice())
    }

    /// Answers `q` for `service` from the entries held, or says the log
    /// is needed: the cursor is not among them, or the page would run
    /// past the oldest held while older ones exist.
    pub fn answer(&self, service: &ServiceId, q: &Query) -> Result<Answer, UnknownCursor> {
        let forgotten = self
            .services
            .get(service.as_str())
            .is_some_and(|r| r.forgotten);
        match select(self.held(service).iter().rev(), q) {
            Err(UnknownCursor) if forgotten => Ok(Answer::NeedsHistory),
            Err(e) => Err(e),
            Ok((_, false)) if forgotten => Ok(Answer::NeedsHistory),
            Ok((page, more)) => {
                let entries: Vec<Entry> = page.into_iter().map(Held::entry).collect();
                let next_cursor = more
                    .then(|| entries.last().map(|e| e.id.to_string()))
                    .flatten();
                Ok(Answer::Page(Entries {
                    entries,
                    next_cursor,
                }))
            }
        }
    }
}

/// Every entry of one service's history, with details: for pages older
/// than what the read model holds, made from the service's events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History(Vec<TimelineEvent>);

impl History {
    /// The whole timeline of one service, from all of its events in order.
    pub fn of<'a>(events: impl IntoIterator<Item = &'a Envelope>) -> Self {
        let mut all: Vec<TimelineEvent> = Vec::new();
        for env in events {
            if let Some(t) = TimelineEvent::from_envelope(env) {
                if all.last().is_none_or(|last| last.id != t.id) {
                    all.push(t);
                }
            }
        }
        History(all)
    }

    /// Every entry, oldest first.
    pub fn all(&self) -> &[TimelineEvent] {
        &self.0
    }

    /// Answers `q`: newest first, filtered, one page.
    pub fn query(&self, q: &Query) -> Result<Page, UnknownCursor> {
        let (page, more) = select(self.0.iter().rev(), q)?;
        let next_cursor = more.then(|| page.last().map(|t| t.id.clone())).flatten();
        Ok(Page {
            events: page.into_iter().cloned().collect(),
            next_cursor,
        })
    }
}

/// A cursor that is not an entry of the timeline asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("is not a cursor of this listing")]
pub struct UnknownCursor;

#[cfg(test)]
mod tests {
    use super::*;
    use berth_schemas::events::{
        DeployFailed, DeployLive, DeployStarted, ImagePullFailed, PlacementBlocked,
    };
    use berth_schemas::ids::{DeployId, EventId};
    use berth_schemas::model::{DeployStatus, PullFailureReason};
    use berth_schemas::Actor;

    fn env(service: &ServiceId, seq: u64, event: Event) -> Envelope {
        Envelope {
            id: EventId::generate(),
            version: event.version(),
            aggregate: AggregateId::Service(service.clone()),
            sequence: seq,
            time: Utc::now(),
            actor: Actor::system("test"),
            correlation_id: None,
            causation_id: None,
            event,
        }
    }

    #[test]
    fn a_disk_filling_up_is_a_failure_and_its_recovery_notable_in_renders_shape() {
        let svc = ServiceId::generate();
        let (disk, used, size) = (berth_schemas::ids::DiskId::generate(), 966_367_642, 1 << 30);
        let high = env(
            &svc,
            1,
            berth_schemas::events::ServiceDiskUsageHigh {
                disk: disk.clone(),
                disk_name: "data".into(),
                mount_path: "/data".into(),
                used_bytes: used,
                size_bytes: size,
                threshold_percent: 90,
            }
            .into(),
        );
        let t = TimelineEvent::from_envelope(&high).unwrap_or_else(|| unreachable!());
        assert_eq!(t.kind, "service_disk_usage_high");
        assert_eq!(
            (
                &t.details["diskId"],
                &t.details["usagePercent"],
                &t.details["thresholdPercent"]
            ),
            (&json!(disk), &json!(90.0), &json!(90.0))
        );
        assert!(t.details["message"]
            .as_str()
            .unwrap_or_default()
            .contains("/data is above 90 % full"));
        assert!(t.is_failure() && t.is_notable());
        let ok = env(
            &svc,
            2,
            berth_schemas::events::ServiceDiskUsageRecovered {
                disk,
                disk_name: "data".into(),
                mount_path: "/data".into(),
                used_bytes: 1 << 20,
                size_bytes: size,
                threshold_percent: 90,
            }
            .into(),
        );
        let t = TimelineEvent::from_envelope(&ok).unwrap_or_else(|| unreachable!());
        assert!(!t.is_failure() && t.is_notable());
        assert_eq!(t.details["usagePercent"], json!(0.1));
    }

    #[test]
    fn failures_and_snapshots() {
        let svc = ServiceId::generate();
        let failed = env(
            &svc,
            1,
            DeployFailed {
                deploy: DeployId::generate(),
                status: DeployStatus::PreDeployFailed,
                reason: "exit 1".to_owned(),
            }
            .into(),
        );
        let pull = env(
            &svc,
            2,
            ImagePullFailed {
                deploy: None,
                node: None,
                image: "app:1".to_owned(),
                reason: PullFailureReason::RegistryUnavailable,
                message: "timeout".to_owned(),
            }
            .into(),
        );
        let t = TimelineEvent::from_envelope(&failed).unwrap_or_else(|| unreachable!());
        assert_eq!(t.kind, "deploy_ended");
        // Render's fields, and berth's outcome beside them.
        assert_eq!(t.details["deployStatus"], "failed");
        assert_eq!(t.details["status"], 3);
        assert_eq!(t.details["reason"]["failure"]["evicted"], false);
        assert_eq!(t.outcome(), Some("pre_deploy_failed"));
        assert_eq!(t.details["message"], "exit 1");
        assert!(t.is_failure() && t.is_notable());
        let p = TimelineEvent::from_envelope(&pull).unwrap_or_else(|| unreachable!());
        assert_eq!(p.details["imageURL"], "app:1");
        assert_eq!(p.details["message"], "timeout");
        assert_eq!(p.details["pullFailure"], "registry_unavailable");
        assert!(
            p.details.get("deployId").is_none(),
            "absent fields are left out"
        );

        let mut tl = Timeline::new();
        tl.push(1, &failed);
        tl.push(2, &pull);
        tl.push(2, &pull); // a replayed commit

        // Snapshots of read models holding it go through MessagePack (the
        // projection runner's format).
        let bytes = rmp_serde::to_vec_named(&tl).unwrap_or_default();
        let back: Timeline = rmp_serde::from_slice(&bytes).unwrap_or_default();
        assert_eq!(back.all(&svc), tl.all(&svc));
        assert_eq!(back.all(&svc).len(), 2);
    }

    #[test]
    fn held_entries_are_small_and_page_by_their_ids() {
        // What keeps thousands of services' timelines small: no details.
        assert!(
            std::mem::size_of::<Held>() <= 40,
            "{}",
            std::mem::size_of::<Held>()
        );
        let svc = ServiceId::generate();
        let mut tl = Timeline::new();
        let mut ids = Vec::new();
        for i in 0..30u64 {
            let deploy = DeployId::generate();
            let e = if i % 3 == 0 {
                env(
                    &svc,
                    i,
                    DeployStarted {
                        deploy,
                        trigger: None,
                    }
                    .into(),
                )
            } else {
                env(
                    &svc,
                    i,
                    DeployLive {
                        deploy,
                        digest: format!("sha256:{i:064x}"),
                    }
                    .into(),
                )
            };
            ids.push(e.id.to_string());
            // Commit 100 + i holds the event.
            tl.push(100 + i, &e);
        }
        let q = Query {
            types: ["deploy_started".to_owned()].into(),
            limit: Some(4),
            ..Query::default()
        };
        let Ok(Answer::Page(p1)) = tl.answer(&svc, &q) else {
            unreachable!("held whole")
        };
        let seqs: Vec<u64> = p1.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![127, 124, 121, 118]);
        assert_eq!(p1.entries[0].id.to_string(), ids[27]);
        assert_eq!(p1.next_cursor.as_deref(), Some(ids[18].as_str()));
        let Ok(Answer::Page(p2)) = tl.answer(
            &svc,
            &Query {
                cursor: p1.next_cursor,
                ..q.clone()
            },
        ) else {
            unreachable!("held whole")
        };
        let seqs: Vec<u64> = p2.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![115, 112, 109, 106]);
        // Cursors that are no entry's id, well-formed or not, are refused.
        for bad in [
            "evt-aaaaaaaaaaaaaaaaaaaa",
            "evt-",
            "srv-aaaaaaaaaaaaaaaaaaaa",
            "x",
        ] {
            let q = Query {
                cursor: Some(bad.to_owned()),
                ..Query::default()
            };
            assert_eq!(tl.answer(&svc, &q), Err(UnknownCursor), "{bad}");
        }
        // The ends after a start, for a cron job's runs.
        let after: Vec<u64> = tl
            .after(&svc, 124, "deploy_ended")
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(after, vec![125, 126, 128, 129]);
        assert_eq!(tl.find(&svc, &ids[5]).map(|e| e.seq), Some(105));
        assert_eq!(tl.find(&ServiceId::generate(), &ids[5]), None);
    }

    #[test]
    fn blocked_placement_is_on_the_timeline_with_its_reason() {
        let svc = ServiceId::generate();
        let reason = "no node has room: needs 0.5 CPU / 512 MiB, largest free 0.2 CPU / \
                      300 MiB on nod-aaaaaaaaaaaaaaaaaaab";
        let blocked = env(
            &svc,
            1,
            PlacementBlocked {
                deploy: DeployId::generate(),
                unplaced: 1,
                cpu_millis: 500,
                memory_mib: 512,
                node: None,
                free_cpu_millis: 200,
                free_memory_mib: 300,
                reason: reason.to_owned(),
            }
            .into(),
        );
        let t = TimelineEvent::from_envelope(&blocked).unwrap_or_else(|| unreachable!());
        assert_eq!(t.kind, "placement_blocked");
        assert!(TYPES.contains(&t.kind.as_str()));
        assert_eq!(t.details["reason"], reason);
        assert_eq!(t.details["freeCpuMillis"], 200);
        // A wait, not a failure: the deploy's end says whether it failed.
        assert!(!t.is_failure() && !t.is_notable());
    }

    #[test]
    fn an_instance_exit_is_on_the_timeline_saying_how_it_ended() {
        use berth_schemas::events::InstanceExited;
        use berth_schemas::ids::InstanceId;
        let svc = ServiceId::generate();
        let exit_as = |exit_code, signal, oom_killed: bool, restarted| {
            let e = env(
                &svc,
                1,
                InstanceExited {
                    exit_code,
                    signal,
                    oom_killed,
                    memory_limit_mib: oom_killed.then_some(512),
                    restarted,
                    ..InstanceExited::of(InstanceId::generate())
                }
                .into(),
            );
            TimelineEvent::from_envelope(&e).unwrap_or_else(|| unreachable!())
        };
        let exit = |exit_code, signal, oom_killed| exit_as(exit_code, signal, oom_killed, false);
        let oom = exit(Some(137), None, true);
        assert_eq!(oom.kind, "instance_exited");
        assert!(TYPES.contains(&oom.kind.as_str()));
        assert!(!RENDER_TYPES.contains(&oom.kind.as_str()));
        assert_eq!(oom.details["outOfMemory"], true);
        assert_eq!(oom.details["exitCode"], 137);
        assert_eq!(
            oom.details["message"],
            "ran out of memory: killed for going over its memory limit of 512 MiB"
        );
        let failed = exit(Some(1), None, false);
        assert_eq!(failed.details["outOfMemory"], false);
        assert_eq!(failed.details["message"], "exited with status 1");
        assert!(
            failed.details.get("signal").is_none(),
            "{:?}",
            failed.details
        );
        assert_eq!(
            exit(None, Some(9), false).details["message"],
            "killed by signal 9"
        );
        // Finished: a service's program must keep running.
        assert_eq!(
            exit(Some(0), None, false).details["message"],
            format!(
                "exited with status 0: {}",
                crate::service::instances::FINISHED
            )
        );
        // Stopped by its node to be started again: said so.
        assert_eq!(
            exit_as(Some(143), None, false, true).details["message"],
            "restarted for failing its health checks (exited with status 143)"
        );
        assert_eq!(
            exit_as(Some(0), None, false, true).details["message"],
            "restarted for failing its health checks (exited with status 0)"
        );
        assert!(failed.details.get("diskWrittenMib").is_none());
        // Killed by its node for what it wrote when the disk ran low.
        let filled = env(
            &svc,
            1,
            InstanceExited {
                signal: Some(9),
                disk_written_mib: Some(812),
                ..InstanceExited::of(InstanceId::generate())
            }
            .into(),
        );
        let filled = TimelineEvent::from_envelope(&filled).unwrap_or_else(|| unreachable!());
        assert_eq!(filled.details["diskWrittenMib"], 812);
        assert_eq!(
            filled.details["message"],
            "killed for filling the node's disk: it had written 812 MiB to its filesystem, the most of the node's instances, when the node's disk ran low; what it wrote is gone, and it starts again from the image's files"
        );
        // The restart that follows says the rest; no notification per exit.
        assert!(!oom.is_failure() && !oom.is_notable());
    }

    fn autoscaling_config() -> berth_schemas::model::AutoscalingConfig {
        berth_schemas::model::AutoscalingConfig::on(1, 3, Some(50), None)
    }

    #[test]
    fn autoscaling_is_said_in_renders_shape_and_in_words() {
        let svc = ServiceId::generate();
        let entry = |e: Event| {
            TimelineEvent::from_envelope(&env(&svc, 1, e)).unwrap_or_else(|| unreachable!())
        };
        let removed = entry(
            berth_schemas::events::AutoscalingConfigChanged {
                from: Some(autoscaling_config()),
                to: None,
            }
            .into(),
        );
        assert_eq!(removed.kind, "autoscaling_config_changed");
        assert_eq!(
            removed.details["toConfig"]["enabled"], false,
            "Render's toConfig is always there"
        );
        assert_eq!(removed.details["fromConfig"]["max"], 3);
        assert!(RENDER_TYPES.contains(&"autoscaling_started"));
        let up = entry(
            berth_schemas::events::AutoscalingStarted {
                from_instances: 1,
                to_instances: 3,
                current_cpu: Some(120),
                target_cpu: Some(50),
                current_memory: None,
                target_memory: None,
            }
            .into(),
        );
        assert_eq!(up.details["currentCPU"], 120);
        assert_eq!(
            up.details["message"],
            "autoscaling up from 1 to 3 instances, at CPU 120 % (target 50 %)"
        );
        assert!(!up.is_failure());
    }

    /// Every type's entry says what its schema says: the required fields
    /// are there with the right JSON type, nothing else is, and every type
    /// has a schema.
    #[test]
    fn every_type_matches_its_details_schema() {
        use berth_schemas::events::CancelReason;
        use berth_schemas::events::{
            CronJobRunEnded, CronJobRunSkipped, CronJobRunStarted, DeployCanceled, DeployLive,
            DeployStarted, InstanceCountChanged, PreDeployEnded, PreDeployStarted,
            RollbackTargetMissing, ServerFailed, ServerRestarted, ServiceResumed, ServiceSuspended,
        };
        use berth_schemas::ids::{CronRunId, InstanceId, NodeId};
        let svc = ServiceId::generate();
        let (d, d2) = (DeployId::generate(), DeployId::generate());
        let job = berth_schemas::ids::JobId::generate();
        let events: Vec<Event> = vec![
            DeployStarted {
                deploy: d.clone(),
                trigger: Some(berth_schemas::model::DeployTrigger::Rollback),
            }
            .into(),
            DeployStarted {
                deploy: d.clone(),
                trigger: None,
            }
            .into(),
            DeployLive {
                deploy: d.clone(),
                digest: "sha256:1".into(),
            }
            .into(),
            DeployFailed {
                deploy: d.clone(),
                status: DeployStatus::UpdateFailed,
                reason: "no".into(),
            }
            .into(),
            DeployCanceled {
                deploy: d.clone(),
                reason: CancelReason::Superseded,
                by: Some(d2.clone()),
            }
            .into(),
            DeployCanceled {
                deploy: d.clone(),
                reason: CancelReason::Explicit,
                by: None,
            }
            .into(),
            PreDeployStarted { deploy: d.clone() }.into(),
            PreDeployEnded {
                deploy: d.clone(),
                success: false,
                exit_code: Some(3),
                reason: Some("exit 3".into()),
            }
            .into(),
            PreDeployEnded {
                deploy: d.clone(),
                success: true,
                exit_code: Some(0),
                reason: None,
            }
            .into(),
            ImagePullFailed {
                deploy: Some(d.clone()),
                node: Some(NodeId::generate()),
                image: "a:1".into(),
                reason: PullFailureReason::Unauthorized,
                message: "401".into(),
            }
            .into(),
            ServerFailed {
                node: NodeId::generate(),
                instances: vec![InstanceId::generate()],
            }
            .into(),
            ServerRestarted {
                instance: InstanceId::generate(),
                attempt: 2,
            }
            .into(),
            berth_schemas::events::InstanceExited {
                exit_code: Some(137),
                oom_killed: true,
                memory_limit_mib: Some(512),
                ..berth_schemas::events::InstanceExited::of(InstanceId::generate())
            }
            .into(),
            berth_schemas::events::InstanceExited {
                ..berth_schemas::events::InstanceExited::of(InstanceId::generate())
            }
            .into(),
            berth_schemas::events::InstancePortDetected {
                instance: InstanceId::generate(),
                port: 3000,
                expected: 10000,
            }
            .into(),
            berth_schemas::events::InstanceCommandRequested {
                instance: InstanceId::generate(),
                node: NodeId::generate(),
                program: "sh".into(),
                terminal: true,
            }
            .into(),
            berth_schemas::events::InstanceCommandEnded {
                instance: InstanceId::generate(),
                program: "sh".into(),
                terminal: false,
                exit_code: Some(3),
                timed_out: false,
                reason: None,
                duration_ms: 12,
            }
            .into(),
            berth_schemas::events::InstanceCommandEnded {
                instance: InstanceId::generate(),
                program: "sh".into(),
                terminal: true,
                exit_code: None,
                timed_out: false,
                reason: Some("input was lost".into()),
                duration_ms: 1200,
            }
            .into(),
            PlacementBlocked {
                deploy: d.clone(),
                unplaced: 1,
                cpu_millis: 1,
                memory_mib: 1,
                node: None,
                free_cpu_millis: 0,
                free_memory_mib: 0,
                reason: "full".into(),
            }
            .into(),
            InstanceCountChanged { from: 1, to: 2 }.into(),
            berth_schemas::events::DiskPlaced {
                disk: berth_schemas::ids::DiskId::generate(),
                node: NodeId::generate(),
            }
            .into(),
            berth_schemas::events::DiskUpdated {
                disk: berth_schemas::model::Disk {
                    id: berth_schemas::ids::DiskId::generate(),
                    name: "data".into(),
                    mount_path: "/data".into(),
                    size_gb: 2,
                },
            }
            .into(),
            berth_schemas::events::DiskAdded {
                disk: berth_schemas::model::Disk {
                    id: berth_schemas::ids::DiskId::generate(),
                    name: "data".into(),
                    mount_path: "/data".into(),
                    size_gb: 1,
                },
            }
            .into(),
            berth_schemas::events::ServiceDiskUsageHigh {
                disk: berth_schemas::ids::DiskId::generate(),
                disk_name: "data".into(),
                mount_path: "/data".into(),
                used_bytes: 950 << 20,
                size_bytes: 1 << 30,
                threshold_percent: 90,
            }
            .into(),
            berth_schemas::events::ServiceDiskUsageRecovered {
                disk: berth_schemas::ids::DiskId::generate(),
                disk_name: "data".into(),
                mount_path: "/data".into(),
                used_bytes: 100 << 20,
                size_bytes: 1 << 30,
                threshold_percent: 90,
            }
            .into(),
            berth_schemas::events::AutoscalingConfigChanged {
                from: None,
                to: Some(autoscaling_config()),
            }
            .into(),
            berth_schemas::events::AutoscalingConfigChanged {
                from: Some(autoscaling_config()),
                to: None,
            }
            .into(),
            berth_schemas::events::AutoscalingStarted {
                from_instances: 1,
                to_instances: 3,
                current_cpu: Some(120),
                target_cpu: Some(50),
                current_memory: None,
                target_memory: None,
            }
            .into(),
            berth_schemas::events::AutoscalingEnded {
                from_instances: 1,
                to_instances: 3,
            }
            .into(),
            berth_schemas::events::MaintenanceModeEnabled { enabled: true }.into(),
            berth_schemas::events::MaintenanceModeUriUpdated {
                from_uri: String::new(),
                to_uri: "https://status.example.com/".into(),
            }
            .into(),
            berth_schemas::events::DiskSnapshotRestored {
                disk: berth_schemas::ids::DiskId::generate(),
                key: berth_schemas::ids::DiskSnapshotKey::generate(),
                snapshot_created_at: Utc::now(),
            }
            .into(),
            berth_schemas::events::DiskRemoved {
                disk: berth_schemas::ids::DiskId::generate(),
            }
            .into(),
            CronJobRunStarted {
                run: CronRunId::generate(),
                digest: "sha256:1".into(),
                manual: true,
            }
            .into(),
            CronJobRunEnded {
                run: CronRunId::generate(),
                status: "timed_out".into(),
                exit_code: None,
                reason: Some("timed out after 2 s".into()),
            }
            .into(),
            CronJobRunEnded {
                run: CronRunId::generate(),
                status: "succeeded".into(),
                exit_code: Some(0),
                reason: None,
            }
            .into(),
            CronJobRunSkipped {
                scheduled_for: Utc::now(),
                active_run: CronRunId::generate(),
            }
            .into(),
            berth_schemas::events::JobCreated {
                job: job.clone(),
                start_command: "rake db:migrate".into(),
                plan: berth_schemas::model::Plan {
                    name: "starter".into(),
                    cpu_millis: 500,
                    memory_mib: 512,
                },
                digest: "sha256:1".into(),
            }
            .into(),
            berth_schemas::events::JobStarted { job: job.clone() }.into(),
            berth_schemas::events::JobEnded {
                job: job.clone(),
                status: "failed".into(),
                exit_code: Some(1),
                reason: Some("ran out of memory".into()),
            }
            .into(),
            berth_schemas::events::JobEnded {
                job: job.clone(),
                status: "succeeded".into(),
                exit_code: Some(0),
                reason: None,
            }
            .into(),
            RollbackTargetMissing {
                deploy: d.clone(),
                digest: "sha256:1".into(),
            }
            .into(),
            ServiceSuspended {}.into(),
            ServiceResumed {}.into(),
            berth_schemas::events::CertificateIssued {
                domain: "www.example.com".into(),
                not_after: Utc::now(),
                serial: "0a".into(),
                renewal: true,
            }
            .into(),
            berth_schemas::events::CertificateFailed {
                domain: "www.example.com".into(),
                reason: berth_schemas::model::CertificateFailure::ChallengeFailed,
                attempt: 2,
                retry_in_secs: 120,
            }
            .into(),
            berth_schemas::events::CertificateRemoved {
                domain: "www.example.com".into(),
            }
            .into(),
        ];
        let schemas = details_schemas();
        let mut seen = BTreeSet::new();
        let mut timeline = Timeline::new();
        let mut mapped = Vec::new();
        let mut log = Vec::new();
        for (i, e) in events.into_iter().enumerate() {
            let envelope = env(&svc, i as u64 + 1, e);
            timeline.push(i as u64 + 1, &envelope);
            log.push(envelope.clone());
            let t = TimelineEvent::from_envelope(&envelope).unwrap_or_else(|| unreachable!());
            assert_eq!(
                TimelineEvent::kind_of(&envelope),
                Some((&svc, t.kind.as_str())),
                "the type held is the type mapped"
            );
            mapped.push(t.clone());
            seen.insert(t.kind.clone());
            let Some((_, fields)) = schemas.iter().find(|(k, _)| *k == t.kind) else {
                unreachable!("{} has no details schema", t.kind)
            };
            let details = t.details.as_object().cloned().unwrap_or_default();
            for (name, schema, required) in fields {
                match details.get(*name) {
                    None => assert!(!required, "{}: {name} missing: {details:?}", t.kind),
                    Some(v) => {
                        let want = &schema["type"];
                        let is = match v {
                            Value::String(_) => "string",
                            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
                            Value::Bool(_) => "boolean",
                            Value::Object(_) => "object",
                            Value::Array(_) => "array",
                            Value::Null => "null",
                            Value::Number(_) => "number",
                        };
                        let ok = want == is
                            || want.as_array().is_some_and(|a| a.iter().any(|w| w == is));
                        assert!(ok, "{}: {name} is {is}, schema says {want}", t.kind);
                        if let Some(allowed) = schema["enum"].as_array() {
                            assert!(
                                allowed.contains(v),
                                "{}: {name} = {v} is not one of {allowed:?}",
                                t.kind
                            );
                        }
                    }
                }
            }
            for name in details.keys() {
                assert!(
                    fields.iter().any(|f| f.0 == name),
                    "{}: {name} is not in its schema",
                    t.kind
                );
            }
        }
        // Held as a place in the log, every entry reads back from its
        // event as it was mapped.
        let shown: Vec<Option<TimelineEvent>> = timeline
            .all(&svc)
            .iter()
            .map(|e| e.event(std::slice::from_ref(&log[e.seq as usize - 1])))
            .collect();
        let want: Vec<Option<TimelineEvent>> = mapped.iter().cloned().map(Some).collect();
        assert_eq!(shown, want);
        let newest = mapped.last().unwrap_or_else(|| unreachable!());
        let found = timeline.find(&svc, &newest.id);
        assert_eq!(found.map(|e| e.id.to_string()).as_ref(), Some(&newest.id));
        assert_eq!(History::of(&log).all(), mapped.as_slice());
        let types: BTreeSet<String> = TYPES.iter().map(|t| (*t).to_owned()).collect();
        assert_eq!(seen, types, "every type is produced by some event here");
        let schema_types: BTreeSet<String> = schemas.iter().map(|(k, _)| (*k).to_owned()).collect();
        assert_eq!(schema_types, types);
    }
}
