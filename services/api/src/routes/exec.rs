//! `POST /v1/services/{id}/exec`: a command run in one of the service's
//! running instances as its own process runs (Render's Shell, without a
//! terminal; `kubectl exec` without `-it`). The answer waits for the
//! command: its exit code and output, each stream bounded.

use axum::extract::{Path, State};
use axum::Json;
use berth_domain::service::{job_instance, run_instance};
use berth_ingress::shell::{ExecInput, DEFAULT_TIMEOUT_SECS};
use berth_schemas::ids::{CronRunId, InstanceId, JobId};
use serde::{Deserialize, Serialize};

use super::services::service_id;
use crate::app::{AppState, Authed, JsonBody};
use crate::error::ApiError;

/// Body of `POST /v1/services/{id}/exec`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(rename = "ExecPOST")]
pub struct ExecBody {
    /// The program and its arguments, not run through a shell unless it
    /// names one (`["sh", "-c", "…"]`).
    pub command: Vec<String>,
    /// The instance, or the running job (`job-…`) or cron run (`crn-…`)
    /// whose container to run in; when absent, a running instance of the
    /// live deploy (of a cron job: its active run).
    pub instance_id: Option<String>,
    /// Text given on the command's standard input (closed after it).
    pub stdin: Option<String>,
    /// Killed after this many seconds (1 to 600; 60 when absent).
    pub timeout_seconds: Option<u32>,
}

/// What the command printed and how it ended.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "ExecResult")]
pub struct ExecView {
    /// The instance it ran in.
    pub instance_id: String,
    /// Its exit code (128 + the signal when a signal killed it); `null`
    /// when it was killed at its timeout.
    pub exit_code: Option<i32>,
    /// Killed at its timeout.
    pub timed_out: bool,
    /// Its standard output as text (bytes that are not UTF-8 shown as
    /// U+FFFD), the first 256 KiB.
    pub stdout: String,
    /// Its standard error, likewise.
    pub stderr: String,
    /// Whether either stream said more than is shown.
    pub truncated: bool,
}

/// An `instanceId` given: one that cannot be an id is one the service
/// does not have.
pub fn instance_param(given: Option<&str>) -> Result<Option<InstanceId>, ApiError> {
    given
        .map(|i| {
            // A job or a cron run names the container it runs as.
            let container = i
                .parse::<InstanceId>()
                .or_else(|_| i.parse::<JobId>().map(|j| job_instance(&j)))
                .or_else(|_| i.parse::<CronRunId>().map(|r| run_instance(&r)));
            container.map_err(|_| ApiError::not_found("instance"))
        })
        .transpose()
}

/// POST /v1/services/{id}/exec.
pub async fn run(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ExecBody>,
) -> Result<Json<ExecView>, ApiError> {
    let id = service_id(&id)?;
    let instance = instance_param(body.instance_id.as_deref())?;
    let input = ExecInput {
        instance,
        command: body.command,
        stdin: body.stdin.unwrap_or_default().into_bytes(),
        timeout_secs: body.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECS),
    };
    let out = st.ingress.exec_in_instance(&caller, &id, input).await?;
    Ok(Json(ExecView {
        instance_id: out.instance.to_string(),
        exit_code: out.exit_code,
        timed_out: out.timed_out,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        truncated: out.truncated,
    }))
}
