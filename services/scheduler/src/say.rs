//! berth's lines about a deploy in the service's logs, as Render's `==>
//! Your service is live 🎉`: published by the copy of the scheduler whose
//! decision appended the deploy's outcome (never for a duplicate append,
//! so once per outcome; a crash between the append and the publish loses
//! the line, as any log line can be lost — the timeline keeps the fact).
//! They name no instance ([`LogLine::instance`] absent).

use berth_eventlog::EventStore;
use berth_schemas::events::{DeployFailed, DeployLive};
use berth_schemas::ids::ServiceId;
use berth_schemas::logs::{system_text, LogLine, Stream};
use berth_schemas::{Envelope, Event};

/// Says each deploy outcome among `appended` in `service`'s logs.
pub(crate) async fn outcomes(store: &EventStore, service: &ServiceId, appended: &[Envelope]) {
    for envelope in appended {
        let Some(what) = outcome(&envelope.event) else {
            continue;
        };
        let line = LogLine {
            service: service.clone(),
            instance: None,
            stream: Stream::System,
            line: String::new(),
            time: envelope.time,
        };
        let subject = store.subjects().logs(service);
        for payload in line.payloads(&system_text(&what)) {
            // Core NATS, as instance output: best effort.
            if let Err(e) = store
                .client()
                .publish(subject.clone(), payload.into())
                .await
            {
                tracing::debug!(service.id = %service, error = %e, "deploy line not published");
            }
        }
    }
}

/// What the logs say about `event`, when it is a deploy's outcome.
fn outcome(event: &Event) -> Option<String> {
    match event {
        Event::DeployLive(DeployLive { deploy, digest }) => Some(format!(
            "your service is live 🎉 (deploy {deploy}, {})",
            short(digest)
        )),
        Event::DeployFailed(DeployFailed {
            deploy,
            status,
            reason,
        }) => Some(format!(
            "deploy {deploy} failed ({}): {reason}",
            serde_json::to_value(status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        )),
        _ => None,
    }
}

/// `sha256:` and the first 12 hex digits of `digest`, as image tools show
/// it.
fn short(digest: &str) -> &str {
    let end = digest
        .find(':')
        .map_or(digest.len(), |colon| (colon + 13).min(digest.len()));
    digest.get(..end).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use berth_schemas::ids::DeployId;
    use berth_schemas::model::DeployStatus;

    use super::*;

    #[test]
    fn outcomes_read_as_renders_with_what_berth_knows() {
        let deploy = DeployId::generate();
        let digest = format!("sha256:{}", "ab".repeat(32));
        let live = outcome(&Event::DeployLive(DeployLive {
            deploy: deploy.clone(),
            digest,
        }));
        assert_eq!(
            live.as_deref().map(system_text),
            Some(format!(
                "==> Your service is live 🎉 (deploy {deploy}, sha256:abababababab)"
            ))
        );
        let failed = outcome(&Event::DeployFailed(DeployFailed {
            deploy: deploy.clone(),
            status: DeployStatus::UpdateFailed,
            reason: "0 of 1 new instances healthy".into(),
        }));
        assert_eq!(
            failed.as_deref().map(system_text),
            Some(format!(
                "==> Deploy {deploy} failed (update_failed): 0 of 1 new instances healthy"
            ))
        );
        assert_eq!(short("sha256:12"), "sha256:12");
        assert_eq!(short("nodigest"), "nodigest");
    }
}
