//! A terminal in one of the caller's running instances (`berth shell`,
//! the dashboard's terminal; Render's Shell, `kubectl exec -it`): the
//! instance is picked as for a command ([`crate::shell`]), the opening is
//! recorded on the service's events (`instance_command_requested`, the
//! program only), and the session then runs over core NATS with the
//! instance's node ([`berth_schemas::commands::ShellRequest`]): typed
//! bytes and sizes go in, numbered; what the terminal shows comes out,
//! numbered and acknowledged, so a lost message ends the session with a
//! clear reason and a slow reader slows the program instead of losing
//! its output.

use std::time::{Duration, Instant};

use berth_schemas::commands::{
    ShellInput, ShellInputEvent, ShellOutput, ShellOutputEvent, ShellReply, ShellRequest,
    SHELL_IDLE_SECS, SHELL_INPUT_LIMIT, SHELL_PING_SECS, SHELL_WINDOW,
};
use berth_schemas::events::InstanceCommandEnded;
use berth_schemas::ids::{InstanceId, ServiceId};
use data_encoding::BASE64;
use futures::StreamExt;

use crate::shell::{check_command, ended_reason, invalid, node_refusal, pick, unreachable};
use crate::{Caller, Ingress, IngressError};

/// The program a terminal runs when none is named: `bash` when the
/// image has it on the instance's `PATH`, else `sh` (the shell's `-c`
/// finds it and `exec`s it, so the shell the user gets is the
/// instance's process, not a child of a wrapper). Recorded as `sh`.
pub const DEFAULT_COMMAND: [&str; 3] = [
    "sh",
    "-c",
    "command -v bash >/dev/null 2>&1 && exec bash; exec sh",
];

/// How long a terminal may stay open (an operator's settings). A
/// terminal ends, its program hung up on, when nothing was typed into it
/// and it showed nothing for `idle`; when it has been open for `max`; or
/// when its WebSocket client answered none of the API's pings, sent
/// every `client_ping`, for three of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalLimits {
    pub idle: Duration,
    pub max: Duration,
    pub client_ping: Duration,
}

impl TerminalLimits {
    /// How long a WebSocket client may stay silent (no message, not even
    /// a pong) before it is taken for gone.
    pub fn client_gone_after(&self) -> Duration {
        self.client_ping * 3
    }
}

impl Default for TerminalLimits {
    /// An hour idle (Heroku's one-off dynos, kubelet allows 4 h), 12 h in
    /// all, a ping every 15 s.
    fn default() -> Self {
        TerminalLimits {
            idle: Duration::from_secs(3600),
            max: Duration::from_secs(12 * 3600),
            client_ping: Duration::from_secs(15),
        }
    }
}

/// Seconds or minutes, as a limit is said to a user.
fn span(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 120 && s.is_multiple_of(60) {
        format!("{} minutes", s / 60)
    } else {
        format!("{s}s")
    }
}
/// The largest terminal, in columns and in rows.
pub const SIZE_MAX: u16 = 1000;
/// How long a node is given to open a terminal.
const OPEN_WAIT: Duration = Duration::from_secs(15);

/// A terminal to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminalInput {
    /// The instance; a running one of the live deploy when `None`.
    pub instance: Option<InstanceId>,
    /// The program and its arguments; [`DEFAULT_COMMAND`] when empty.
    pub command: Vec<String>,
    pub cols: u16,
    pub rows: u16,
}

/// What an open terminal says next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TerminalEvent {
    /// Bytes it shows.
    Output(Vec<u8>),
    /// The program ended with this exit code (the last event).
    Exited(i32),
    /// The session ended for another reason (the last event).
    Ended(String),
}

/// What a session's end is recorded with.
#[derive(Debug)]
struct Audit {
    ingress: Ingress,
    actor: berth_schemas::Actor,
    service: ServiceId,
    program: String,
    asked: Instant,
}

/// Milliseconds since `since`, for `instance_command_ended`.
pub(crate) fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// How long [`TerminalSession::close`] waits for the program's end once
/// the node was told to hang up (its grace is 2 s).
const END_HEARD_WITHIN: Duration = Duration::from_secs(5);

/// An open terminal.
#[derive(Debug)]
pub struct TerminalSession {
    instance: InstanceId,
    client: async_nats::Client,
    input: String,
    output: async_nats::Subscriber,
    /// The next input message's number.
    next_in: u64,
    /// The output message expected next.
    next_out: u64,
    /// The last output number acknowledged to the node.
    acked: u64,
    last_sent: Instant,
    last_heard: Instant,
    /// When something was last typed, resized or shown.
    last_active: Instant,
    opened: Instant,
    limits: TerminalLimits,
    tick: tokio::time::Interval,
    ping_due: bool,
    /// No more events to give.
    over: bool,
    /// The node ended the session itself.
    node_done: bool,
    /// The session's last event, once known.
    last: Option<TerminalEvent>,
    audit: Option<Audit>,
}

/// Refuses a terminal size outside 1 to [`SIZE_MAX`].
fn check_size(field: &'static str, n: u16) -> Result<(), IngressError> {
    if (1..=SIZE_MAX).contains(&n) {
        Ok(())
    } else {
        Err(invalid(field, format!("must be 1 to {SIZE_MAX}")))
    }
}

impl Ingress {
    /// Opens a terminal in one of the caller's service's running
    /// instances.
    pub async fn open_terminal(
        &self,
        caller: &Caller,
        id: &ServiceId,
        mut input: TerminalInput,
    ) -> Result<TerminalSession, IngressError> {
        if input.command.is_empty() {
            input.command = DEFAULT_COMMAND.map(str::to_owned).to_vec();
        }
        check_command(&input.command)?;
        check_size("cols", input.cols)?;
        check_size("rows", input.rows)?;
        let state = self.show_service(caller, id).await?;
        let instance = &pick(&state, input.instance.as_ref())?;
        let session = format!("{:032x}", rand::random::<u128>());
        let subjects = self.store.subjects();
        let request = ShellRequest {
            service: id.clone(),
            instance: instance.instance.clone(),
            command: input.command,
            session: session.clone(),
            cols: input.cols,
            rows: input.rows,
        };
        let payload =
            rmp_serde::to_vec_named(&request).map_err(|e| IngressError::Store(e.to_string()))?;
        let client = self.store.client().clone();
        // Listening before the node is asked: nothing it says is missed.
        let output = client
            .subscribe(subjects.shell_output(&instance.node, &session))
            .await
            .map_err(|e| unreachable(instance, format!("cannot be listened to: {e}")))?;
        let program = request.command.first().cloned().unwrap_or_default();
        self.record_command(caller, id, instance, program.clone(), true)
            .await?;
        let asked = Instant::now();
        let msg = self
            .ask_node(instance, subjects.shell(&instance.node), payload, OPEN_WAIT)
            .await?;
        let reply: ShellReply = rmp_serde::from_slice(&msg.payload).map_err(|e| {
            unreachable(instance, format!("answered with something unreadable: {e}"))
        })?;
        match reply {
            ShellReply::Started => Ok(TerminalSession::new(
                instance.instance.clone(),
                self.opts.terminal,
                client,
                subjects.shell_input(&instance.node, &session),
                output,
                Audit {
                    ingress: self.clone(),
                    actor: caller.actor.clone(),
                    service: id.clone(),
                    program,
                    asked,
                },
            )),
            ShellReply::Failed { reason, message } => {
                let ended = InstanceCommandEnded {
                    instance: instance.instance.clone(),
                    program,
                    terminal: true,
                    exit_code: None,
                    timed_out: false,
                    reason: Some(ended_reason(&format!("not opened: {message}"))),
                    duration_ms: millis(asked),
                };
                self.record_command_ended(&caller.actor, id, ended).await;
                Err(node_refusal(instance, reason, message))
            }
        }
    }
}

impl TerminalSession {
    fn new(
        instance: InstanceId,
        limits: TerminalLimits,
        client: async_nats::Client,
        input: String,
        output: async_nats::Subscriber,
        audit: Audit,
    ) -> Self {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        TerminalSession {
            instance,
            client,
            input,
            output,
            next_in: 1,
            next_out: 1,
            acked: 0,
            last_sent: Instant::now(),
            last_heard: Instant::now(),
            last_active: Instant::now(),
            opened: Instant::now(),
            limits,
            tick,
            ping_due: false,
            over: false,
            node_done: false,
            last: None,
            audit: Some(audit),
        }
    }

    /// The instance the terminal is in.
    pub fn instance(&self) -> &InstanceId {
        &self.instance
    }

    /// The limits it runs under.
    pub fn limits(&self) -> TerminalLimits {
        self.limits
    }

    /// Types `bytes` (sent in pieces of at most [`SHELL_INPUT_LIMIT`]).
    pub async fn type_in(&mut self, bytes: &[u8]) -> Result<(), IngressError> {
        for piece in bytes.chunks(SHELL_INPUT_LIMIT) {
            let data = BASE64.encode(piece);
            self.send(ShellInputEvent::Data { data }).await?;
        }
        self.last_active = Instant::now();
        Ok(())
    }

    /// Tells the program the terminal's new size.
    pub async fn resize(&mut self, cols: u16, rows: u16) -> Result<(), IngressError> {
        check_size("cols", cols)?;
        check_size("rows", rows)?;
        self.send(ShellInputEvent::Resize { cols, rows }).await?;
        self.last_active = Instant::now();
        Ok(())
    }

    /// Ends the session for `why` (recorded as how it ended), as
    /// [`close`](Self::close) does.
    pub async fn close_because(&mut self, why: String) {
        self.finish(TerminalEvent::Ended(why));
        self.close().await;
    }

    /// Leaves (or gives up on a session that went wrong): the node hangs
    /// up on the program, then kills it; how it ended (as heard within a
    /// few seconds) is recorded on the service's events. Call it once,
    /// when done with the session.
    pub async fn close(&mut self) {
        if !self.node_done {
            let _ = self.send(ShellInputEvent::Close).await;
            let _ = self.client.flush().await;
            // The program's end, as the node says it after hanging up.
            let deadline = tokio::time::Instant::now() + END_HEARD_WITHIN;
            while !self.node_done {
                let Ok(Some(msg)) = tokio::time::timeout_at(deadline, self.output.next()).await
                else {
                    break;
                };
                self.heard(&msg.payload);
            }
        }
        let Some(audit) = self.audit.take() else {
            return;
        };
        let (exit_code, reason) = match &self.last {
            Some(TerminalEvent::Exited(code)) => (Some(*code), None),
            Some(TerminalEvent::Ended(why)) => (None, Some(ended_reason(why))),
            _ => (None, Some("its end was not heard".to_owned())),
        };
        let ended = InstanceCommandEnded {
            instance: self.instance.clone(),
            program: audit.program,
            terminal: true,
            exit_code,
            timed_out: false,
            reason,
            duration_ms: millis(audit.asked),
        };
        audit
            .ingress
            .record_command_ended(&audit.actor, &audit.service, ended)
            .await;
    }

    /// Sends one input message; its number is used only once sent.
    async fn send(&mut self, event: ShellInputEvent) -> Result<(), IngressError> {
        let message = ShellInput {
            seq: self.next_in,
            event,
        };
        let payload =
            rmp_serde::to_vec_named(&message).map_err(|e| IngressError::Store(e.to_string()))?;
        self.client
            .publish(self.input.clone(), payload.into())
            .await
            .map_err(|e| IngressError::NodeUnavailable(format!("the terminal's input: {e}")))?;
        self.next_in += 1;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// What the terminal says next; `None` after its last event.
    /// Cancel-safe (it may lose a race in a `select!` without losing
    /// output).
    pub async fn next(&mut self) -> Option<TerminalEvent> {
        loop {
            if self.over {
                return None;
            }
            // Owed messages first: they take a number only once sent.
            let delivered = self.next_out - 1;
            if delivered >= self.acked + SHELL_WINDOW / 4 {
                if let Err(e) = self.send(ShellInputEvent::Ack { upto: delivered }).await {
                    return Some(self.end(e.to_string()));
                }
                self.acked = delivered;
            }
            if self.ping_due {
                if let Err(e) = self.send(ShellInputEvent::Ping).await {
                    return Some(self.end(e.to_string()));
                }
                self.ping_due = false;
            }
            tokio::select! {
                msg = self.output.next() => {
                    let Some(msg) = msg else {
                        return Some(self.end("the bus connection closed".into()));
                    };
                    if let Some(event) = self.heard(&msg.payload) {
                        return Some(event);
                    }
                }
                _ = self.tick.tick() => {
                    if self.last_heard.elapsed() >= Duration::from_secs(SHELL_IDLE_SECS) {
                        return Some(self.end(format!(
                            "nothing heard from the instance's node for {SHELL_IDLE_SECS}s"
                        )));
                    }
                    if self.last_active.elapsed() >= self.limits.idle {
                        return Some(self.end(format!(
                            "nothing was typed or shown for {}: idle terminals are closed",
                            span(self.limits.idle)
                        )));
                    }
                    if self.opened.elapsed() >= self.limits.max {
                        return Some(self.end(format!(
                            "open for {}, the longest a terminal may stay open",
                            span(self.limits.max)
                        )));
                    }
                    self.ping_due |= self.last_sent.elapsed() >= Duration::from_secs(SHELL_PING_SECS);
                }
            }
        }
    }

    /// One output message: what it says to the caller, if anything.
    fn heard(&mut self, payload: &[u8]) -> Option<TerminalEvent> {
        let Ok(output) = rmp_serde::from_slice::<ShellOutput>(payload) else {
            return Some(self.end("the node sent something unreadable".into()));
        };
        if output.seq != self.next_out {
            return Some(self.end(format!(
                "output was lost (message {} came where {} was due)",
                output.seq, self.next_out
            )));
        }
        self.next_out += 1;
        self.last_heard = Instant::now();
        match output.event {
            ShellOutputEvent::Data { data } => match BASE64.decode(data.as_bytes()) {
                Ok(bytes) => {
                    self.last_active = Instant::now();
                    Some(TerminalEvent::Output(bytes))
                }
                Err(_) => Some(self.end("the node sent output that is not base64".into())),
            },
            ShellOutputEvent::Ping => None,
            ShellOutputEvent::Exited { exit_code } => {
                self.node_done = true;
                Some(self.finish(TerminalEvent::Exited(exit_code)))
            }
            ShellOutputEvent::Ended { message } => {
                self.node_done = true;
                Some(self.finish(TerminalEvent::Ended(message)))
            }
        }
    }

    fn end(&mut self, why: String) -> TerminalEvent {
        self.finish(TerminalEvent::Ended(why))
    }

    /// The session's last event (the first one given, if more come).
    fn finish(&mut self, last: TerminalEvent) -> TerminalEvent {
        self.over = true;
        if self.last.is_none() {
            self.last = Some(last.clone());
        }
        last
    }
}
