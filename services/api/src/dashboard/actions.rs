//! A service's actions: each form posts to the `/v1` handler that does
//! the same (deploy, cancel, roll back, scale, restart, suspend, resume,
//! cron runs, jobs, disk snapshots) and comes back to the service's page with what happened.

use axum::extract::{Path, State};
use axum::response::Response;
use berth_schemas::model::DeployStatus;

use super::after;
use super::session::Posted;
use crate::app::{AppState, Authed, JsonBody};
use crate::error::ApiError;
use crate::routes::deploys::{self, RollbackBody};
use crate::routes::services::{self, Empty, ScaleBody};
use crate::routes::{cron, disks, jobs};
use crate::views::DeployView;

/// The page of service `id`.
fn back(id: &str) -> String {
    format!("/services/{id}")
}

/// POST /services/{serviceId}/deploys: a manual deploy, of the service's
/// reference or of `imageUrl`.
pub async fn deploy(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Posted { who, form }: Posted,
) -> Response {
    let body = deploys::CreateBody {
        image_url: form.text("imageUrl"),
        clear_cache: None,
        deploy_mode: None,
        build_id: None,
        commit_id: None,
    };
    let done = deploys::create(
        State(st.clone()),
        Authed(who.caller.clone()),
        Path(id.clone()),
        JsonBody(body),
    )
    .await
    .map(|(_, d)| deployed(&d.0));
    after(&st, &who, &back(&id), done)
}

fn deployed(d: &DeployView) -> String {
    match d.status {
        DeployStatus::Queued => format!("Deploy {} queued behind the running one.", d.id),
        _ => format!("Deploy {} started.", d.id),
    }
}

/// POST /services/{serviceId}/deploys/{deployId}/cancel
pub async fn cancel(
    State(st): State<AppState>,
    Path((id, dep)): Path<(String, String)>,
    Posted { who, .. }: Posted,
) -> Response {
    let done = deploys::cancel(
        State(st.clone()),
        Authed(who.caller.clone()),
        Path((id.clone(), dep)),
    )
    .await
    .map(|d| format!("Deploy {} canceled.", d.0.id));
    after(&st, &who, &back(&id), done)
}

/// POST /services/{serviceId}/rollback
pub async fn rollback(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Posted { who, form }: Posted,
) -> Response {
    let body = RollbackBody {
        deploy_id: form.text("deployId"),
    };
    let done = deploys::rollback(
        State(st.clone()),
        Authed(who.caller.clone()),
        Path(id.clone()),
        JsonBody(body),
    )
    .await
    .map(|(_, d)| format!("Rolling back: {}", deployed(&d.0)));
    after(&st, &who, &back(&id), done)
}

/// POST /services/{serviceId}/scale
pub async fn scale(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Posted { who, form }: Posted,
) -> Response {
    let done = match form.text("numInstances").map(|n| n.parse::<u32>()) {
        Some(Ok(n)) => services::scale(
            State(st.clone()),
            Authed(who.caller.clone()),
            Path(id.clone()),
            JsonBody(ScaleBody {
                num_instances: Some(n),
            }),
        )
        .await
        .map(|_| format!("Scaling to {n} instances.")),
        _ => Err(ApiError::field("numInstances", "must be a whole number")),
    };
    after(&st, &who, &back(&id), done)
}

/// POST /services/{serviceId}/autoscaling: autoscale between `min` and
/// `max` on the targets given (`cpu`, `memory`, percent; CPU at 70 % when
/// neither is).
pub async fn autoscale(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Posted { who, form }: Posted,
) -> Response {
    let number = |name: &str| -> Result<Option<u32>, ApiError> {
        form.text(name)
            .map(|v| v.parse::<u32>())
            .transpose()
            .map_err(|_| ApiError::field(name, "must be a whole number"))
    };
    let asked = (|| {
        let (min, max) = (number("min")?, number("max")?);
        let (cpu, memory) = (number("cpu")?, number("memory")?);
        let min = min.ok_or_else(|| ApiError::field("min", "is required"))?;
        let max = max.ok_or_else(|| ApiError::field("max", "is required"))?;
        let cpu = cpu.or(memory.is_none().then_some(70));
        Ok(berth_schemas::model::AutoscalingConfig::on(
            min, max, cpu, memory,
        ))
    })();
    let done = match asked {
        Ok(on) => services::set_autoscaling(
            State(st.clone()),
            Authed(who.caller.clone()),
            Path(id.clone()),
            JsonBody(on),
        )
        .await
        .map(|a| format!("Autoscaling between {} and {} instances.", a.0.min, a.0.max)),
        Err(e) => Err(e),
    };
    after(&st, &who, &back(&id), done)
}

/// POST /services/{serviceId}/autoscaling/delete: no more autoscaling
/// (the count stays).
pub async fn stop_autoscaling(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Posted { who, .. }: Posted,
) -> Response {
    let done = services::delete_autoscaling(
        State(st.clone()),
        Authed(who.caller.clone()),
        Path(id.clone()),
    )
    .await
    .map(|_| "Autoscaling removed: the instance count stays where it is.".to_owned());
    after(&st, &who, &back(&id), done)
}

/// The empty-bodied service actions.
macro_rules! action {
    ($name:ident, $handler:path, $done:literal) => {
        #[doc = concat!("POST /services/{serviceId}/… → `", stringify!($handler), "`")]
        pub async fn $name(
            State(st): State<AppState>,
            Path(id): Path<String>,
            Posted { who, .. }: Posted,
        ) -> Response {
            let done = $handler(
                State(st.clone()),
                Authed(who.caller.clone()),
                Path(id.clone()),
                JsonBody(Empty {}),
            )
            .await
            .map(|_| $done.to_owned());
            after(&st, &who, &back(&id), done)
        }
    };
}

action!(restart, services::restart, "Restarting the instances.");
action!(
    suspend,
    services::suspend,
    "Service suspended: its instances stop."
);
action!(
    resume,
    services::resume,
    "Service resumed: it redeploys its live image."
);

/// POST /services/{serviceId}/cron-runs
pub async fn run_cron(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Posted { who, .. }: Posted,
) -> Response {
    let done = cron::trigger(
        State(st.clone()),
        Authed(who.caller.clone()),
        Path(id.clone()),
        JsonBody(Empty {}),
    )
    .await
    .map(|r| format!("Run {} started.", r.0.id));
    after(&st, &who, &back(&id), done)
}

/// POST /services/{serviceId}/jobs: a one-off job of `startCommand`.
pub async fn run_job(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Posted { who, form }: Posted,
) -> Response {
    let body = jobs::CreateJobBody {
        start_command: form.text("startCommand").unwrap_or_default(),
        plan_id: form.text("planId"),
    };
    let done = jobs::create(
        State(st.clone()),
        Authed(who.caller.clone()),
        Path(id.clone()),
        JsonBody(body),
    )
    .await
    .map(|(_, j)| format!("Job {} started.", j.0.id));
    after(&st, &who, &back(&id), done)
}

/// POST /services/{serviceId}/jobs/{jobId}/cancel
pub async fn cancel_job(
    State(st): State<AppState>,
    Path((id, job)): Path<(String, String)>,
    Posted { who, .. }: Posted,
) -> Response {
    let done = jobs::cancel(
        State(st.clone()),
        Authed(who.caller.clone()),
        Path((id.clone(), job)),
        JsonBody(Empty {}),
    )
    .await
    .map(|j| format!("Job {} is {}.", j.0.id, j.0.status));
    after(&st, &who, &back(&id), done)
}

/// POST /services/{serviceId}/cron-runs/cancel
pub async fn cancel_cron(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Posted { who, .. }: Posted,
) -> Response {
    let done = cron::cancel(
        State(st.clone()),
        Authed(who.caller.clone()),
        Path(id.clone()),
    )
    .await
    .map(|_| "The active run is being canceled.".to_owned());
    after(&st, &who, &back(&id), done)
}

/// The id of service `id`'s disk, for the caller.
async fn disk_of(
    st: &AppState,
    who: &super::session::Signed,
    id: &str,
) -> Result<String, ApiError> {
    let svc = services::get(
        State(st.clone()),
        Authed(who.caller.clone()),
        Path(id.to_owned()),
    )
    .await?;
    super::service::common(&svc.0)
        .disk
        .as_ref()
        .map(|d| d.id.clone())
        .ok_or_else(|| ApiError::not_found("disk"))
}

/// POST /services/{serviceId}/disk-snapshots: a snapshot of its disk now.
pub async fn take_snapshot(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Posted { who, .. }: Posted,
) -> Response {
    let done = match disk_of(&st, &who, &id).await {
        Ok(disk) => disks::take_snapshot(State(st.clone()), Authed(who.caller.clone()), Path(disk))
            .await
            .map(|_| {
                "Snapshot asked for: it is listed here once its node has taken it.".to_owned()
            }),
        Err(e) => Err(e),
    };
    after(&st, &who, &back(&id), done)
}

/// POST /services/{serviceId}/disk-snapshots/restore: its disk set back
/// to `snapshotKey`, with a deploy.
pub async fn restore_snapshot(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Posted { who, form }: Posted,
) -> Response {
    let key = form.text("snapshotKey");
    let done = match disk_of(&st, &who, &id).await {
        Ok(disk) => disks::restore(
            State(st.clone()),
            Authed(who.caller.clone()),
            Path(disk),
            JsonBody(disks::RestoreBody {
                snapshot_key: key.clone(),
                instance_id: None,
            }),
        )
        .await
        .map(|_| {
            format!(
                "Disk set back to {}: the service deploys on it.",
                key.unwrap_or_default()
            )
        }),
        Err(e) => Err(e),
    };
    after(&st, &who, &back(&id), done)
}
