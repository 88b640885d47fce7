//! Terminals the control plane opens in this node's instances (`berth
//! shell`, the dashboard's terminal): a core NATS request on
//! `<prefix>.shell.<node>` opens one (checked as commands are: the
//! instance must be placed here for the service named, and running), then
//! the session's input arrives on `<prefix>.shell.<node>.<session>.in` and
//! its output leaves on `….out` ([`berth_schemas::commands::ShellInput`],
//! [`ShellOutput`]), each numbered so a lost message ends the session
//! rather than garbling it.
//!
//! Flow control: at most [`SHELL_WINDOW`] output messages are sent ahead
//! of the control plane's acknowledgement, so a slow reader slows the
//! program instead of losing its output. Typing goes to the program
//! through a queue of its own, so a program that does not read does not
//! hold up its output or the acknowledgements. Either side pings after
//! [`SHELL_PING_SECS`] of silence; a session that hears nothing from the
//! control plane for [`SHELL_IDLE_SECS`] hangs up on its program, as one
//! whose input is lost or refused does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_agent::terminal::{Terminal, TerminalRequest};
use berth_agent::Agent;
use berth_schemas::commands::{
    exec_refusal, valid_session, ExecFailure, ShellInput, ShellInputEvent, ShellOutput,
    ShellOutputEvent, ShellReply, ShellRequest, SHELL_CHUNK, SHELL_IDLE_SECS, SHELL_INPUT_LIMIT,
    SHELL_PING_SECS, SHELL_WINDOW,
};
use berth_schemas::ids::NodeId;
use berth_schemas::Subjects;
use data_encoding::BASE64;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::exec::{not_runnable, runtime_refusal};
use crate::report::Reporter;

/// Terminals open at once on one node.
const SESSIONS_MAX: usize = 32;
/// Typed messages queued for a program that is not reading.
const TYPED_QUEUE: usize = 256;

/// One open session, as the input side sees it.
struct Session {
    /// The input message expected next.
    next_seq: u64,
    typed: mpsc::Sender<Vec<u8>>,
    size: watch::Sender<(u16, u16)>,
    acked: watch::Sender<u64>,
    heard: Arc<Mutex<Instant>>,
    end: CancellationToken,
    /// Why it ended, when not by the user's leaving.
    why: Arc<Mutex<Option<String>>>,
}

impl Session {
    fn fail(&self, why: impl Into<String>) {
        let mut w = self.why.lock().unwrap_or_else(|p| p.into_inner());
        w.get_or_insert_with(|| why.into());
        self.end.cancel();
    }
}

type Sessions = Arc<Mutex<HashMap<String, Session>>>;

fn lock(sessions: &Sessions) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
    sessions.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves terminal sessions for `node` until `stop`.
pub(crate) async fn serve(
    client: async_nats::Client,
    subjects: Subjects,
    node: NodeId,
    agent: Agent,
    reporter: Reporter,
    stop: CancellationToken,
) {
    let subscribed = async {
        let opens = client.subscribe(subjects.shell(&node)).await?;
        let inputs = client.subscribe(subjects.shell_inputs(&node)).await?;
        Ok::<_, async_nats::SubscribeError>((opens, inputs))
    };
    let (mut opens, mut inputs) = match subscribed.await {
        Ok(subs) => subs,
        Err(e) => {
            tracing::error!(error = %e, "terminals in instances cannot be opened");
            return;
        }
    };
    let sessions: Sessions = Arc::default();
    let input_prefix = format!("{}.", subjects.shell(&node));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            m = opens.next() => {
                let Some(msg) = m else { break };
                let Some(reply) = msg.reply.clone() else { continue };
                let opening = Opening {
                    client: client.clone(),
                    subjects: subjects.clone(),
                    node: node.clone(),
                    agent: agent.clone(),
                    reporter: reporter.clone(),
                    sessions: sessions.clone(),
                    stop: stop.clone(),
                };
                tokio::spawn(opening.open(msg.payload, reply));
            }
            m = inputs.next() => {
                let Some(msg) = m else { break };
                let session = msg
                    .subject
                    .strip_prefix(&input_prefix)
                    .and_then(|rest| rest.strip_suffix(".in"));
                if let Some(session) = session {
                    typed(&sessions, session, &msg.payload);
                }
            }
        }
    }
    for session in lock(&sessions).values() {
        session.fail("the node is stopping");
    }
}

/// Hands one input message to its session.
fn typed(sessions: &Sessions, session: &str, payload: &[u8]) {
    let mut all = lock(sessions);
    let Some(s) = all.get_mut(session) else {
        // Ended already (or never opened here): nothing to do.
        return;
    };
    let input: ShellInput = match rmp_serde::from_slice(payload) {
        Ok(i) => i,
        Err(_) => return s.fail("the control plane sent something unreadable"),
    };
    if input.seq != s.next_seq {
        return s.fail(format!(
            "input was lost (message {} came where {} was due)",
            input.seq, s.next_seq
        ));
    }
    s.next_seq += 1;
    *s.heard.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    match input.event {
        ShellInputEvent::Data { data } => {
            let bytes = match BASE64.decode(data.as_bytes()) {
                Ok(b) if b.len() <= SHELL_INPUT_LIMIT => b,
                _ => return s.fail("typed input is not base64 or too long"),
            };
            if s.typed.try_send(bytes).is_err() {
                s.fail("input came faster than the program read it");
            }
        }
        ShellInputEvent::Resize { cols, rows } => {
            let _ = s.size.send((cols, rows));
        }
        ShellInputEvent::Ack { upto } => {
            s.acked.send_if_modified(|a| {
                let newer = upto > *a;
                *a = (*a).max(upto);
                newer
            });
        }
        ShellInputEvent::Ping => {}
        ShellInputEvent::Close => s.end.cancel(),
    }
}

/// What opening a session needs.
struct Opening {
    client: async_nats::Client,
    subjects: Subjects,
    node: NodeId,
    agent: Agent,
    reporter: Reporter,
    sessions: Sessions,
    stop: CancellationToken,
}

impl Opening {
    /// Answers one open request and, when it opened, runs the session.
    async fn open(self, payload: bytes::Bytes, reply: async_nats::Subject) {
        let opened = self.start(&payload).await;
        let answer = match &opened {
            Ok(_) => ShellReply::Started,
            Err((reason, message)) => ShellReply::Failed {
                reason: *reason,
                message: message.clone(),
            },
        };
        match rmp_serde::to_vec_named(&answer) {
            Ok(p) => {
                if let Err(e) = self.client.publish(reply, p.into()).await {
                    tracing::warn!(error = %e, "terminal answer not sent");
                }
            }
            Err(e) => tracing::warn!(error = %e, "terminal answer not encoded"),
        }
        if let Ok(running) = opened {
            running.run().await;
        }
    }

    /// Checks the request and opens the terminal.
    async fn start(&self, payload: &[u8]) -> Result<Running, (ExecFailure, String)> {
        let invalid = |m: String| (ExecFailure::Invalid, m);
        let req: ShellRequest = rmp_serde::from_slice(payload)
            .map_err(|e| invalid(format!("not a terminal request: {e}")))?;
        if let Some((field, why)) = exec_refusal(&req.command, 1) {
            return Err(invalid(format!("{field} {why}")));
        }
        if !valid_session(&req.session) {
            return Err(invalid("the session name is not 32 hex digits".into()));
        }
        if let Some(refused) =
            not_runnable(&self.reporter, &self.agent, &req.service, &req.instance)
        {
            return Err(refused);
        }
        // The name is taken (once) before the terminal opens.
        let (typed_rx, size_rx, acked_rx, heard, end, why) = {
            let mut all = lock(&self.sessions);
            if all.len() >= SESSIONS_MAX {
                return Err((
                    ExecFailure::Failed,
                    format!("{SESSIONS_MAX} terminals are open on this node already"),
                ));
            }
            if all.contains_key(&req.session) {
                return Err(invalid("that session is open already".into()));
            }
            let (typed_tx, typed_rx) = mpsc::channel(TYPED_QUEUE);
            let (size_tx, size_rx) = watch::channel((req.cols, req.rows));
            let (acked_tx, acked_rx) = watch::channel(0);
            let heard = Arc::new(Mutex::new(Instant::now()));
            let end = self.stop.child_token();
            let why = Arc::new(Mutex::new(None));
            all.insert(
                req.session.clone(),
                Session {
                    next_seq: 1,
                    typed: typed_tx,
                    size: size_tx,
                    acked: acked_tx,
                    heard: heard.clone(),
                    end: end.clone(),
                    why: why.clone(),
                },
            );
            (typed_rx, size_rx, acked_rx, heard, end, why)
        };
        tracing::info!(
            service.id = %req.service,
            instance.id = %req.instance,
            program = %req.command.first().map(String::as_str).unwrap_or_default(),
            "terminal opened in an instance"
        );
        let terminal = self
            .agent
            .terminal(
                &req.instance,
                &TerminalRequest {
                    args: req.command.clone(),
                    cols: req.cols,
                    rows: req.rows,
                },
            )
            .await;
        let terminal = match terminal {
            Ok(t) => t,
            Err(e) => {
                lock(&self.sessions).remove(&req.session);
                return Err(runtime_refusal(&req.instance, e));
            }
        };
        Ok(Running {
            client: self.client.clone(),
            out: self.subjects.shell_output(&self.node, &req.session),
            session: req.session,
            sessions: self.sessions.clone(),
            terminal,
            typed: Some(typed_rx),
            size: size_rx,
            acked: acked_rx,
            heard,
            end,
            why,
        })
    }
}

/// An open session, as the output side runs it.
struct Running {
    client: async_nats::Client,
    out: String,
    session: String,
    sessions: Sessions,
    terminal: Terminal,
    /// What is typed, for the task that writes it (taken when it starts).
    typed: Option<mpsc::Receiver<Vec<u8>>>,
    size: watch::Receiver<(u16, u16)>,
    acked: watch::Receiver<u64>,
    heard: Arc<Mutex<Instant>>,
    end: CancellationToken,
    why: Arc<Mutex<Option<String>>>,
}

impl Running {
    async fn run(mut self) {
        let pty = self.terminal.pty();
        let typed = self.typed.take();
        let writer_pty = pty.clone();
        let writer = tokio::spawn(async move {
            let Some(mut typed) = typed else { return };
            while let Some(bytes) = typed.recv().await {
                if writer_pty.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        });
        let mut seq = 0u64;
        let mut buf = vec![0u8; SHELL_CHUNK];
        let mut last_sent = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let ping = Duration::from_secs(SHELL_PING_SECS);
        let idle = Duration::from_secs(SHELL_IDLE_SECS);
        let mut acked_open = true;
        let mut size_open = true;
        // Whether the program's side closed (it and runc are gone).
        let finished = loop {
            let window_open = seq.saturating_sub(*self.acked.borrow()) < SHELL_WINDOW;
            tokio::select! {
                _ = self.end.cancelled() => break false,
                read = pty.read(&mut buf), if window_open => match read {
                    Ok(0) | Err(_) => break true,
                    Ok(mut n) => {
                        // What else is there already goes in the same
                        // message (a pty hands out ~4 KiB at a time).
                        while n < buf.len() {
                            match pty.read_now(&mut buf[n..]) {
                                Ok(0) | Err(_) => break,
                                Ok(more) => n += more,
                            }
                        }
                        seq += 1;
                        let data = BASE64.encode(&buf[..n]);
                        self.send(seq, ShellOutputEvent::Data { data }).await;
                        last_sent = Instant::now();
                    }
                },
                changed = self.acked.changed(), if acked_open => acked_open = changed.is_ok(),
                changed = self.size.changed(), if size_open => {
                    size_open = changed.is_ok();
                    let (cols, rows) = *self.size.borrow_and_update();
                    let _ = self.terminal.resize(cols, rows);
                }
                _ = tick.tick() => {
                    let heard = *self.heard.lock().unwrap_or_else(|p| p.into_inner());
                    if heard.elapsed() >= idle {
                        let s = lock(&self.sessions);
                        if let Some(s) = s.get(&self.session) {
                            s.fail(format!("nothing heard from the control plane for {}s", idle.as_secs()));
                        }
                    } else if last_sent.elapsed() >= ping {
                        seq += 1;
                        self.send(seq, ShellOutputEvent::Ping).await;
                        last_sent = Instant::now();
                    }
                }
            }
        };
        let ended = if finished {
            self.terminal.wait().await
        } else {
            self.terminal.end().await
        };
        writer.abort();
        lock(&self.sessions).remove(&self.session);
        let why = self.why.lock().unwrap_or_else(|p| p.into_inner()).take();
        let last = match (ended, why) {
            (_, Some(why)) => ShellOutputEvent::Ended { message: why },
            (Ok(exit_code), None) => ShellOutputEvent::Exited { exit_code },
            (Err(e), None) => ShellOutputEvent::Ended {
                message: e.to_string(),
            },
        };
        tracing::info!(session.end = ?last, "terminal closed");
        self.send(seq + 1, last).await;
    }

    async fn send(&self, seq: u64, event: ShellOutputEvent) {
        let payload = match rmp_serde::to_vec_named(&ShellOutput { seq, event }) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "terminal output not encoded");
                return;
            }
        };
        if let Err(e) = self.client.publish(self.out.clone(), payload.into()).await {
            tracing::warn!(error = %e, "terminal output not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> (Session, mpsc::Receiver<Vec<u8>>, watch::Receiver<u64>) {
        let (typed, typed_rx) = mpsc::channel(2);
        let (acked, acked_rx) = watch::channel(0);
        let s = Session {
            next_seq: 1,
            typed,
            size: watch::channel((80, 24)).0,
            acked,
            heard: Arc::new(Mutex::new(Instant::now())),
            end: CancellationToken::new(),
            why: Arc::default(),
        };
        (s, typed_rx, acked_rx)
    }

    fn input(seq: u64, event: ShellInputEvent) -> Vec<u8> {
        rmp_serde::to_vec_named(&ShellInput { seq, event }).unwrap_or_default()
    }

    fn why(sessions: &Sessions) -> Option<String> {
        let all = lock(sessions);
        let s = all.get("s")?;
        let w = s.why.lock().unwrap_or_else(|p| p.into_inner()).clone();
        w
    }

    #[test]
    fn input_in_order_is_typed_and_acknowledgements_move_the_window() {
        let sessions: Sessions = Arc::default();
        let (s, mut typed_rx, acked_rx) = session();
        lock(&sessions).insert("s".into(), s);
        let data = BASE64.encode(b"ls\r");
        typed(&sessions, "s", &input(1, ShellInputEvent::Data { data }));
        typed(&sessions, "s", &input(2, ShellInputEvent::Ack { upto: 7 }));
        typed(&sessions, "s", &input(3, ShellInputEvent::Ack { upto: 3 }));
        typed(&sessions, "s", &input(4, ShellInputEvent::Ping));
        assert_eq!(typed_rx.try_recv().ok(), Some(b"ls\r".to_vec()));
        assert_eq!(
            *acked_rx.borrow(),
            7,
            "an older acknowledgement moves nothing back"
        );
        assert_eq!(why(&sessions), None);
        typed(&sessions, "unknown", &input(1, ShellInputEvent::Close));
        typed(&sessions, "s", &input(5, ShellInputEvent::Close));
        let all = lock(&sessions);
        let s = all
            .get("s")
            .map(|s| (s.end.is_cancelled(), s.why.lock().map(|w| w.clone()).ok()));
        assert_eq!(
            s,
            Some((true, Some(None))),
            "closed by the user: no failure"
        );
    }

    #[test]
    fn a_lost_message_a_bad_one_or_a_program_that_does_not_read_end_the_session() {
        for (payloads, said) in [
            (vec![input(2, ShellInputEvent::Ping)], "input was lost"),
            (vec![b"\xc1 not msgpack".to_vec()], "unreadable"),
            (
                vec![input(1, ShellInputEvent::Data { data: "!!".into() })],
                "not base64",
            ),
            (
                vec![input(
                    1,
                    ShellInputEvent::Data {
                        data: BASE64.encode(&vec![0u8; SHELL_INPUT_LIMIT + 1]),
                    },
                )],
                "too long",
            ),
            (
                (1..=3)
                    .map(|i| {
                        input(
                            i,
                            ShellInputEvent::Data {
                                data: BASE64.encode(b"x"),
                            },
                        )
                    })
                    .collect(),
                "faster than the program read",
            ),
        ] {
            let sessions: Sessions = Arc::default();
            let (s, _typed_rx, _acked) = session();
            lock(&sessions).insert("s".into(), s);
            for p in &payloads {
                typed(&sessions, "s", p);
            }
            let w = why(&sessions).unwrap_or_default();
            assert!(w.contains(said), "{w:?} should say {said:?}");
            assert!(lock(&sessions)
                .get("s")
                .is_some_and(|s| s.end.is_cancelled()));
        }
    }
}
