//! Bus commands: integrations publish `scale`, `restart` and `deploy`
//! commands (MessagePack with named fields, [`berth_schemas::commands`], or
//! the same object as JSON) on `…cmd.<owner>.<kind>`, as core-NATS requests
//! answered by any API instance of the queue group `api`. An integration's
//! NATS credentials let it publish under its own owner only, and a command
//! acts on that owner's services only: another owner's service is not found
//! and nothing is appended. Each is validated by the same functions as the HTTP
//! API and decided with its `requestId` in the idempotency key, so a
//! republished command acts once. The reply is a [`CommandReply`] as JSON
//! (what integrators in any language read without a MessagePack schema):
//! errors are data (the status the API would answer, and why), and a
//! refused command changes nothing.

use std::sync::Arc;

use berth_ingress::{Ingress, Scope};
use berth_schemas::commands::{DeployCommand, RestartCommand, ScaleCommand};
use berth_schemas::ids::OwnerId;
use berth_schemas::subjects::CommandKind;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// Longest accepted request id.
const MAX_REQUEST_ID: usize = 128;

/// The answer to a bus command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandReply {
    pub ok: bool,
    /// The HTTP status the API would have answered (200 on success).
    pub status: u16,
    /// Error kind (`invalid_input`, `not_found`, `conflict`, `unavailable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The deploy a `deploy` command created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<String>,
}

impl CommandReply {
    fn ok(deploy: Option<String>) -> Self {
        Self {
            ok: true,
            status: 200,
            error: None,
            message: None,
            deploy,
        }
    }

    fn err(e: ApiError) -> Self {
        Self {
            ok: false,
            status: e.status.as_u16(),
            error: Some(e.id.to_owned()),
            message: Some(e.message),
            deploy: None,
        }
    }
}

/// The three subscriptions.
#[derive(Debug)]
pub struct BusSubscriptions(Vec<(CommandKind, async_nats::Subscriber)>);

/// Subscribes to every command subject in the queue group `api`.
pub async fn subscribe(ingress: &Ingress) -> Result<BusSubscriptions, async_nats::Error> {
    let client = ingress.store().client();
    let mut subs = Vec::new();
    for kind in CommandKind::ALL {
        let subject = ingress.store().subjects().command_any_owner(kind);
        subs.push((kind, client.queue_subscribe(subject, "api".into()).await?));
    }
    // Subscribed once the server says so, not when our buffer is written.
    ingress.store().server_round_trip().await?;
    Ok(BusSubscriptions(subs))
}

fn request_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_REQUEST_ID || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::field(
            "requestId",
            "must be 1-128 printable ASCII characters",
        ));
    }
    Ok(())
}

/// A command body: a JSON object (it starts with `{`, which MessagePack
/// never uses for a map) or MessagePack with named fields.
fn decode<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, ApiError> {
    let json = payload
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    let decoded = if json {
        serde_json::from_slice(payload).map_err(|e| e.to_string())
    } else {
        rmp_serde::from_slice(payload).map_err(|e| e.to_string())
    };
    decoded.map_err(|e| ApiError::bad_request(format!("undecodable command: {e}")))
}

/// Handles one command received on `subject`.
pub async fn handle(
    ingress: &Ingress,
    kind: CommandKind,
    subject: &str,
    payload: &[u8],
) -> CommandReply {
    let outcome: Result<Option<String>, ApiError> = async {
        let owner: OwnerId = ingress
            .store()
            .subjects()
            .command_owner(subject)
            .and_then(|o| o.parse().ok())
            .ok_or_else(|| ApiError::bad_request("the subject names no owner"))?;
        let scope = Scope::Bus(&owner);
        match kind {
            CommandKind::Scale => {
                let c: ScaleCommand = decode(payload)?;
                request_id(&c.request_id)?;
                ingress
                    .scale(scope, &c.service, c.num_instances, &c.request_id)
                    .await
                    .map_err(ApiError::from)?;
                Ok(None)
            }
            CommandKind::Restart => {
                let c: RestartCommand = decode(payload)?;
                request_id(&c.request_id)?;
                ingress
                    .restart(scope, &c.service, &c.request_id)
                    .await
                    .map_err(ApiError::from)?;
                Ok(None)
            }
            CommandKind::Deploy => {
                let c: DeployCommand = decode(payload)?;
                request_id(&c.request_id)?;
                let (d, _) = ingress
                    .deploy(
                        scope,
                        &c.service,
                        c.image_url.as_deref(),
                        Some(&c.request_id),
                    )
                    .await
                    .map_err(ApiError::from)?;
                Ok(Some(d.to_string()))
            }
        }
    }
    .await;
    match outcome {
        Ok(deploy) => CommandReply::ok(deploy),
        Err(e) => {
            tracing::info!(command = ?kind, status = e.status.as_u16(), reason = %e.message, "bus command refused");
            CommandReply::err(e)
        }
    }
}

/// Answers commands until `shutdown`; each message is handled on its own
/// task so a slow decision does not hold up the others.
pub async fn serve(ingress: Arc<Ingress>, subs: BusSubscriptions, shutdown: CancellationToken) {
    let streams = subs
        .0
        .into_iter()
        .map(|(kind, sub)| sub.map(move |m| (kind, m)));
    let mut all = futures::stream::select_all(streams);
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = all.next() => m,
        };
        let Some((kind, msg)) = next else { break };
        let ingress = ingress.clone();
        tasks.spawn(async move {
            let reply = handle(&ingress, kind, &msg.subject, &msg.payload).await;
            let Some(to) = msg.reply else {
                return;
            };
            match serde_json::to_vec(&reply) {
                Ok(bytes) => {
                    if let Err(e) = ingress.store().client().publish(to, bytes.into()).await {
                        tracing::warn!(error = %e, "could not answer a bus command");
                    }
                }
                Err(e) => tracing::error!(error = %e, "could not encode a bus reply"),
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}
