//! Running a command in one of the caller's running instances (`berth
//! exec`, Render's Shell without a terminal): the instance is picked from
//! the service's state (the one named, or a running instance of the live
//! deploy), and the command goes to its node as a core NATS request
//! ([`berth_schemas::commands::ExecRequest`]), which runs it as the
//! instance's own process runs. Before it is sent, the service's log gets
//! `instance_command_requested` (the actor, the instance and its node, the
//! program — not its arguments, which may hold secrets): an audit trail,
//! on the service's events.

use std::time::Duration;

use async_nats::RequestErrorKind;
use berth_domain::service::Target;
use berth_domain::DomainError;
use berth_schemas::commands::{
    exec_refusal, ExecFailure, ExecReply, ExecRequest, EXEC_STDIN_LIMIT,
};
use berth_schemas::ids::{InstanceId, ServiceId};
use data_encoding::BASE64;

use crate::{Caller, Ingress, IngressError};

/// Arguments a command may have, and bytes all of them together.
pub const COMMAND_MAX_ARGS: usize = 256;
/// See [`COMMAND_MAX_ARGS`].
pub const COMMAND_MAX_BYTES: usize = 16 * 1024;
/// The timeout when none is given, in seconds.
pub const DEFAULT_TIMEOUT_SECS: u32 = 60;
/// How often a node nobody answers for is asked again, and the pause
/// before each (a node's subscription may take a moment to count).
const NO_RESPONDERS_TRIES: u32 = 3;
/// See [`NO_RESPONDERS_TRIES`].
const NO_RESPONDERS_PAUSE: Duration = Duration::from_millis(300);
/// How much longer than the command's timeout its node is waited for.
const ANSWER_MARGIN: Duration = Duration::from_secs(10);

/// A command to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecInput {
    /// The instance; a running one of the live deploy when `None`.
    pub instance: Option<InstanceId>,
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Given on its standard input.
    pub stdin: Vec<u8>,
    /// Killed after this many seconds.
    pub timeout_secs: u32,
}

/// What it printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// The instance it ran in.
    pub instance: InstanceId,
    /// Its exit code (128 + the signal when killed by one); `None` when
    /// it timed out.
    pub exit_code: Option<i32>,
    /// Killed at its timeout.
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Whether either stream said more than was kept.
    pub truncated: bool,
}

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> IngressError {
    IngressError::Rejected(DomainError::Invalid {
        field,
        reason: reason.into(),
    })
}

/// Refuses what no node should be asked to run.
fn check(input: &ExecInput) -> Result<(), IngressError> {
    if let Some((field, why)) = exec_refusal(&input.command, input.timeout_secs) {
        return Err(invalid(field, why));
    }
    check_command(&input.command)?;
    if input.stdin.len() > EXEC_STDIN_LIMIT {
        return Err(invalid(
            "stdin",
            format!("is longer than {EXEC_STDIN_LIMIT} bytes"),
        ));
    }
    Ok(())
}

/// Refuses a command no node should be asked to run, whatever its
/// timeout: no program, NUL bytes, too many or too long arguments.
pub(crate) fn check_command(command: &[String]) -> Result<(), IngressError> {
    if let Some((field, why)) = exec_refusal(command, 1) {
        return Err(invalid(field, why));
    }
    if command.len() > COMMAND_MAX_ARGS {
        return Err(invalid(
            "command",
            format!("has more than {COMMAND_MAX_ARGS} arguments"),
        ));
    }
    if command.iter().map(String::len).sum::<usize>() > COMMAND_MAX_BYTES {
        return Err(invalid(
            "command",
            format!("is longer than {COMMAND_MAX_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// The container to run in ([`ServiceState::command_target`]).
///
/// [`ServiceState::command_target`]: berth_domain::service::ServiceState::command_target
pub(crate) fn pick(
    state: &berth_domain::service::ServiceState,
    named: Option<&InstanceId>,
) -> Result<Target, IngressError> {
    state.command_target(named).map_err(IngressError::Rejected)
}

impl Ingress {
    /// Runs `input` in one of the caller's service's running instances.
    pub async fn exec_in_instance(
        &self,
        caller: &Caller,
        id: &ServiceId,
        input: ExecInput,
    ) -> Result<ExecResult, IngressError> {
        check(&input)?;
        let state = self.show_service(caller, id).await?;
        let instance = &pick(&state, input.instance.as_ref())?;
        let request = ExecRequest {
            service: id.clone(),
            instance: instance.instance.clone(),
            command: input.command,
            stdin: BASE64.encode(&input.stdin),
            timeout_secs: input.timeout_secs,
        };
        let payload =
            rmp_serde::to_vec_named(&request).map_err(|e| IngressError::Store(e.to_string()))?;
        let program = request.command.first().cloned().unwrap_or_default();
        self.record_command(caller, id, instance, program.clone(), false)
            .await?;
        let asked = std::time::Instant::now();
        let wait = Duration::from_secs(u64::from(input.timeout_secs)) + ANSWER_MARGIN;
        let subject = self.store.subjects().exec(&instance.node);
        let unreachable = |why: String| unreachable(instance, why);
        let msg = self.ask_node(instance, subject, payload, wait).await?;
        let reply: ExecReply = rmp_serde::from_slice(&msg.payload)
            .map_err(|e| unreachable(format!("answered with something unreadable: {e}")))?;
        let ended = berth_schemas::events::InstanceCommandEnded {
            instance: instance.instance.clone(),
            program,
            terminal: false,
            exit_code: match &reply {
                ExecReply::Ran { exit_code, .. } => *exit_code,
                ExecReply::Failed { .. } => None,
            },
            timed_out: matches!(
                reply,
                ExecReply::Ran {
                    timed_out: true,
                    ..
                }
            ),
            reason: match &reply {
                ExecReply::Ran { .. } => None,
                ExecReply::Failed { message, .. } => {
                    Some(ended_reason(&format!("not run: {message}")))
                }
            },
            duration_ms: crate::terminal::millis(asked),
        };
        self.record_command_ended(&caller.actor, id, ended).await;
        match reply {
            ExecReply::Ran {
                exit_code,
                timed_out,
                stdout,
                stderr,
                truncated,
            } => {
                let decode = |s: &str| {
                    BASE64
                        .decode(s.as_bytes())
                        .map_err(|_| unreachable("answered with output that is not base64".into()))
                };
                Ok(ExecResult {
                    instance: instance.instance.clone(),
                    exit_code,
                    timed_out,
                    stdout: decode(&stdout)?,
                    stderr: decode(&stderr)?,
                    truncated,
                })
            }
            ExecReply::Failed { reason, message } => Err(node_refusal(instance, reason, message)),
        }
    }
}

/// What a node's refusal to run beside `instance` says to the caller.
pub(crate) fn node_refusal(
    instance: &Target,
    reason: ExecFailure,
    message: String,
) -> IngressError {
    match reason {
        // The service's state still lists it: its node stopped it (and
        // forgot it) a moment ago.
        ExecFailure::NotFound | ExecFailure::NotRunning => {
            IngressError::Rejected(DomainError::Conflict(format!(
                "instance {} is not running now: {message}",
                instance.instance
            )))
        }
        ExecFailure::Invalid | ExecFailure::Failed => invalid("command", message),
    }
}

/// A reason for `instance_command_ended`, at most 300 characters (what
/// the node said, bounded: the log keeps it for good).
pub(crate) fn ended_reason(why: &str) -> String {
    why.chars().take(300).collect()
}

/// The refusal for a node that cannot be reached about `instance`.
pub(crate) fn unreachable(instance: &Target, why: String) -> IngressError {
    IngressError::NodeUnavailable(format!(
        "node {} of instance {} {why}",
        instance.node, instance.instance
    ))
}

impl Ingress {
    /// Records that `caller` sent `program` to run in `instance` of
    /// service `id` (`instance_command_requested`), before it is sent: a
    /// command that ran is never missing from the service's events (its
    /// arguments are not recorded).
    pub(crate) async fn record_command(
        &self,
        caller: &Caller,
        id: &ServiceId,
        instance: &Target,
        program: String,
        terminal: bool,
    ) -> Result<(), IngressError> {
        tracing::info!(
            service.id = %id,
            instance.id = %instance.instance,
            node.id = %instance.node,
            actor = ?caller.actor,
            program = %program,
            "command sent to an instance"
        );
        let key = format!("exec:{:032x}", rand::random::<u128>());
        crate::exec::run::<berth_domain::service::Service>(
            &self.store,
            &berth_schemas::AggregateId::Service(id.clone()),
            &key,
            &caller.actor,
            berth_domain::service::Command::RecordCommandRequested {
                instance: instance.instance.clone(),
                program,
                terminal,
            },
        )
        .await?;
        Ok(())
    }

    /// Records how a command sent to an instance (or a terminal) ended
    /// (`instance_command_ended`). Best effort: the command already ran,
    /// so a log that cannot take the fact now only loses it (said in the
    /// log).
    pub(crate) async fn record_command_ended(
        &self,
        actor: &berth_schemas::Actor,
        id: &ServiceId,
        ended: berth_schemas::events::InstanceCommandEnded,
    ) {
        let key = format!("exec-end:{:032x}", rand::random::<u128>());
        let instance = ended.instance.clone();
        let recorded = crate::exec::run::<berth_domain::service::Service>(
            &self.store,
            &berth_schemas::AggregateId::Service(id.clone()),
            &key,
            actor,
            berth_domain::service::Command::RecordCommandEnded(ended),
        )
        .await;
        if let Err(e) = recorded {
            tracing::warn!(service.id = %id, instance.id = %instance, error = %e, "how a command in an instance ended was not recorded");
        }
    }

    /// Asks the node of `instance` on `subject`, waiting `wait` for its
    /// answer. No responders at all: the node is not connected, or
    /// subscribed a moment ago and the server does not count it yet;
    /// asked again a few times within a second before saying so.
    pub(crate) async fn ask_node(
        &self,
        instance: &Target,
        subject: String,
        payload: Vec<u8>,
        wait: Duration,
    ) -> Result<async_nats::Message, IngressError> {
        let mut tries = 0;
        loop {
            let asked = self
                .store
                .client()
                .send_request(
                    subject.clone(),
                    async_nats::Request::new()
                        .payload(payload.clone().into())
                        .timeout(Some(wait)),
                )
                .await;
            match asked {
                Ok(msg) => return Ok(msg),
                Err(e)
                    if e.kind() == RequestErrorKind::NoResponders
                        && tries < NO_RESPONDERS_TRIES =>
                {
                    tries += 1;
                    tokio::time::sleep(NO_RESPONDERS_PAUSE).await;
                }
                Err(e) => {
                    let why = match e.kind() {
                        RequestErrorKind::NoResponders => "is not connected".into(),
                        RequestErrorKind::TimedOut => {
                            format!("did not answer within {}s", wait.as_secs())
                        }
                        _ => format!("could not be asked: {e}"),
                    };
                    return Err(unreachable(instance, why));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(command: &[&str]) -> ExecInput {
        ExecInput {
            instance: None,
            command: command.iter().map(|s| s.to_string()).collect(),
            stdin: Vec::new(),
            timeout_secs: DEFAULT_TIMEOUT_SECS,
        }
    }

    /// The field an invalid-input refusal names (`"?"` for any other).
    fn field_of(e: IngressError) -> &'static str {
        match e {
            IngressError::Rejected(DomainError::Invalid { field, .. }) => field,
            _ => "?",
        }
    }

    #[test]
    fn commands_are_checked_before_any_node_is_asked() {
        assert!(check(&input(&["sh", "-c", "true"])).is_ok());
        for bad in [
            input(&[]),
            input(&["-x"]),
            input(&[""]),
            input(&["a\0"]),
            input(&vec!["a"; COMMAND_MAX_ARGS + 1]),
        ] {
            assert_eq!(check(&bad).map_err(field_of), Err("command"), "{bad:?}");
        }
        let long = "x".repeat(COMMAND_MAX_BYTES);
        assert_eq!(
            check(&input(&["sh", &long])).map_err(field_of),
            Err("command")
        );
        let mut i = input(&["true"]);
        i.timeout_secs = 0;
        assert_eq!(check(&i).map_err(field_of), Err("timeoutSeconds"));
        i.timeout_secs = berth_schemas::commands::EXEC_TIMEOUT_MAX_SECS + 1;
        assert_eq!(check(&i).map_err(field_of), Err("timeoutSeconds"));
        i.timeout_secs = 1;
        i.stdin = vec![0; EXEC_STDIN_LIMIT + 1];
        assert_eq!(check(&i).map_err(field_of), Err("stdin"));
    }
}
