//! Commands run in this node's instances for the control plane (`berth
//! exec`, `POST /v1/services/{id}/exec`): core NATS requests on
//! `<prefix>.exec.<node>` (MessagePack, as the resolver's checks), which only the control plane may send and only
//! this node may receive. Each is checked again here — the instance must
//! be one placed on this node for the service named — then run by the
//! agent as the instance's own process runs ([`berth_agent::exec`]) and
//! answered once. A few run at a time; the rest wait their turn.

use std::sync::Arc;
use std::time::Duration;

use berth_agent::exec::{ExecEnd, ExecRequest as AgentExec};
use berth_agent::{Agent, AgentError, RuntimeError};
use berth_schemas::commands::{
    exec_refusal, ExecFailure, ExecReply, ExecRequest, EXEC_OUTPUT_LIMIT, EXEC_STDIN_LIMIT,
};
use berth_schemas::ids::{InstanceId, ServiceId};
use data_encoding::BASE64;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::report::Reporter;

/// Commands running at once on one node.
const AT_ONCE: usize = 16;

/// Answers the requests on `subject` until `stop`.
pub(crate) async fn serve(
    client: async_nats::Client,
    subject: String,
    agent: Agent,
    reporter: Reporter,
    stop: CancellationToken,
) {
    let mut sub = match client.subscribe(subject.clone()).await {
        Ok(sub) => sub,
        Err(e) => {
            tracing::error!(%subject, error = %e, "commands in instances cannot be received");
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = sub.next() => match m {
                Some(m) => m,
                None => break,
            },
        };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let (client, agent, reporter) = (client.clone(), agent.clone(), reporter.clone());
        tokio::spawn(async move {
            let answer = answer(&agent, &reporter, &msg.payload).await;
            drop(slot);
            let payload = match rmp_serde::to_vec_named(&answer) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "exec answer not encoded");
                    return;
                }
            };
            if let Err(e) = client.publish(reply, payload.into()).await {
                tracing::warn!(error = %e, "exec answer not sent");
            }
        });
    }
    let _ = sub.unsubscribe().await;
}

fn failed(reason: ExecFailure, message: impl Into<String>) -> ExecReply {
    ExecReply::Failed {
        reason,
        message: message.into(),
    }
}

/// The answer to one request's payload.
async fn answer(agent: &Agent, reporter: &Reporter, payload: &[u8]) -> ExecReply {
    let req: ExecRequest = match rmp_serde::from_slice(payload) {
        Ok(r) => r,
        Err(e) => return failed(ExecFailure::Invalid, format!("not an exec request: {e}")),
    };
    let run = match checked(&req) {
        Ok(run) => run,
        Err(message) => return failed(ExecFailure::Invalid, message),
    };
    if let Some((reason, message)) = not_runnable(reporter, agent, &req.service, &req.instance) {
        return failed(reason, message);
    }
    tracing::info!(
        service.id = %req.service,
        instance.id = %req.instance,
        program = %req.command.first().map(String::as_str).unwrap_or_default(),
        "running a command in an instance"
    );
    match agent.exec(&req.instance, &run).await {
        Ok(out) => ExecReply::Ran {
            exit_code: match out.end {
                ExecEnd::Exited(code) => Some(code),
                ExecEnd::TimedOut => None,
            },
            timed_out: out.end == ExecEnd::TimedOut,
            stdout: BASE64.encode(&out.stdout),
            stderr: BASE64.encode(&out.stderr),
            truncated: out.truncated,
        },
        Err(e) => {
            let (reason, message) = runtime_refusal(&req.instance, e);
            failed(reason, message)
        }
    }
}

/// Why nothing may run beside `instance` of `service` on this node now
/// (not placed here for that service, or not running), if so.
pub(crate) fn not_runnable(
    reporter: &Reporter,
    agent: &Agent,
    service: &ServiceId,
    instance: &InstanceId,
) -> Option<(ExecFailure, String)> {
    // A one-off (a job, a cron run) has no placement: the agent runs it
    // for its service.
    let placed = reporter
        .placement(instance)
        .is_some_and(|p| &p.service == service)
        || agent.service_of(instance).as_ref() == Some(service);
    if !placed {
        return Some((
            ExecFailure::NotFound,
            format!("instance {instance} is not on this node"),
        ));
    }
    reporter.is_done(instance).then(|| not_running(instance))
}

fn not_running(instance: &InstanceId) -> (ExecFailure, String) {
    (
        ExecFailure::NotRunning,
        format!("instance {instance} is not running now (starting again, or stopping)"),
    )
}

/// What the agent's refusal to run beside `instance` says to the control
/// plane.
pub(crate) fn runtime_refusal(instance: &InstanceId, e: AgentError) -> (ExecFailure, String) {
    match e {
        // Placed here and not (or no longer) supervised: stopped.
        AgentError::UnknownInstance(_) | AgentError::NotRunning(_) => not_running(instance),
        // It ended between the look and runc's.
        AgentError::Runtime(RuntimeError::Failed { message, .. })
            if message.contains("stopped container") || message.contains("does not exist") =>
        {
            not_running(instance)
        }
        e => (ExecFailure::Failed, e.to_string()),
    }
}

/// The agent's request for `req`, or why it is not a valid one.
fn checked(req: &ExecRequest) -> Result<AgentExec, String> {
    if let Some((field, why)) = exec_refusal(&req.command, req.timeout_secs) {
        return Err(format!("{field} {why}"));
    }
    let stdin = BASE64
        .decode(req.stdin.as_bytes())
        .map_err(|_| "standard input is not base64".to_owned())?;
    if stdin.len() > EXEC_STDIN_LIMIT {
        return Err(format!("standard input is over {EXEC_STDIN_LIMIT} bytes"));
    }
    Ok(AgentExec {
        args: req.command.clone(),
        stdin,
        timeout: Duration::from_secs(u64::from(req.timeout_secs)),
        output_limit: EXEC_OUTPUT_LIMIT,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(command: &[&str]) -> ExecRequest {
        ExecRequest {
            service: ServiceId::generate(),
            instance: InstanceId::generate(),
            command: command.iter().map(|s| s.to_string()).collect(),
            stdin: String::new(),
            timeout_secs: 10,
        }
    }

    #[test]
    fn requests_are_checked_before_anything_runs() {
        let ok = checked(&request(&["sh", "-c", "true"])).map_err(|e| e.to_string());
        assert_eq!(
            ok.map(|r| (r.args.len(), r.timeout, r.output_limit)),
            Ok((3, Duration::from_secs(10), EXEC_OUTPUT_LIMIT))
        );
        for (bad, why) in [
            (request(&[]), "name a program"),
            (request(&["--help"]), "program name"),
            (request(&[""]), "program name"),
            (request(&["sh", "a\0b"]), "NUL"),
        ] {
            let e = checked(&bad).err().unwrap_or_default();
            assert!(e.contains(why), "{e}");
        }
        let mut r = request(&["true"]);
        r.timeout_secs = 0;
        assert!(checked(&r).is_err());
        r.timeout_secs = berth_schemas::commands::EXEC_TIMEOUT_MAX_SECS + 1;
        assert!(checked(&r).is_err());
        r.timeout_secs = 5;
        r.stdin = "not base64!".into();
        assert!(checked(&r).err().unwrap_or_default().contains("base64"));
        r.stdin = BASE64.encode(&vec![0u8; EXEC_STDIN_LIMIT + 1]);
        assert!(checked(&r).err().unwrap_or_default().contains("over"));
        r.stdin = BASE64.encode(b"input");
        assert_eq!(checked(&r).map(|a| a.stdin).ok(), Some(b"input".to_vec()));
    }
}
