//! `GET /v1/services/{id}/shell`: a terminal in one of the service's
//! running instances over a WebSocket (Render's Shell, `kubectl exec
//! -it`). The terminal is opened before the upgrade is accepted, so every
//! refusal is an ordinary API error (400, 404, 409, 503); once open:
//!
//! - the client sends binary messages (what is typed) and text messages
//!   `{"type":"resize","cols":…,"rows":…}`;
//! - the server sends `{"type":"started","instanceId":…}` first, then
//!   binary messages (what the terminal shows), and last
//!   `{"type":"exited","exitCode":…}` or `{"type":"ended","message":…}`
//!   before closing;
//! - the client closing the socket hangs up on the program.

use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use berth_ingress::terminal::{TerminalEvent, TerminalInput, TerminalSession};
use berth_ingress::Caller;
use berth_schemas::commands::SHELL_INPUT_LIMIT;
use serde::{Deserialize, Serialize};

use super::services::service_id;
use crate::app::{AppState, Authed};
use crate::error::ApiError;
use crate::query::{every, one, Listing};

/// The query of `GET /v1/services/{id}/shell`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "ShellQuery")]
pub struct ShellQuery {
    /// The program and its arguments, one `command=` each, in order
    /// (`bash` when the image has it, else `sh`, when absent).
    #[serde(default, deserialize_with = "every")]
    pub command: Vec<String>,
    /// The instance, or the running job (`job-…`) or cron run (`crn-…`)
    /// whose container to open the terminal in; when absent, a running
    /// instance of the live deploy (of a cron job: its active run).
    #[serde(default, deserialize_with = "one")]
    pub instance_id: Option<String>,
    /// The terminal's width in columns (80 when absent).
    #[serde(default, deserialize_with = "one")]
    pub cols: Option<String>,
    /// Its height in rows (24 when absent).
    #[serde(default, deserialize_with = "one")]
    pub rows: Option<String>,
}

/// A text message from the client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Control {
    Resize { cols: u16, rows: u16 },
}

/// A text message to the client.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Said<'a> {
    #[serde(rename_all = "camelCase")]
    Started {
        instance_id: String,
    },
    #[serde(rename_all = "camelCase")]
    Exited {
        exit_code: i32,
    },
    Ended {
        message: &'a str,
    },
    /// A message of the client's that was not understood (the session
    /// goes on).
    Refused {
        message: &'a str,
    },
}

fn size(name: &str, given: Option<&str>, default: u16) -> Result<u16, ApiError> {
    match given {
        None => Ok(default),
        Some(n) => n
            .parse()
            .map_err(|_| ApiError::field(name, "must be a number from 1 to 1000")),
    }
}

/// The terminal a query asks for.
pub fn terminal_input(q: ShellQuery) -> Result<TerminalInput, ApiError> {
    let instance = super::exec::instance_param(q.instance_id.as_deref())?;
    Ok(TerminalInput {
        instance,
        command: q.command,
        cols: size("cols", q.cols.as_deref(), 80)?,
        rows: size("rows", q.rows.as_deref(), 24)?,
    })
}

/// GET /v1/services/{id}/shell.
pub async fn open(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    Listing(q): Listing<ShellQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let id = service_id(&id)?;
    let input = terminal_input(q)?;
    let Ok(upgrade) = upgrade else {
        // Another owner's service is not found, WebSocket or not.
        st.ingress.show_service(&caller, &id).await?;
        return Err(ApiError::bad_request(
            "this route opens a WebSocket: send `Connection: Upgrade` and `Upgrade: websocket`",
        ));
    };
    accept(&st, &caller, &id, input, upgrade).await
}

/// Opens the terminal, then takes the WebSocket to it.
pub async fn accept(
    st: &AppState,
    caller: &Caller,
    id: &berth_schemas::ids::ServiceId,
    input: TerminalInput,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let session = st.ingress.open_terminal(caller, id, input).await?;
    Ok(limited(upgrade).on_upgrade(move |socket| pump(socket, session)))
}

/// The largest message a terminal's client may send: a client sends
/// what is typed (and a paste) in pieces of at most [`SHELL_INPUT_LIMIT`]
/// (the CLI's are 16 KiB, the dashboard's 64 KiB); a larger one closes
/// the socket.
pub const CLIENT_MESSAGE_MAX: usize = SHELL_INPUT_LIMIT * 4;

/// `upgrade` taking messages up to [`CLIENT_MESSAGE_MAX`].
pub fn limited(upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
    upgrade
        .max_message_size(CLIENT_MESSAGE_MAX)
        .max_frame_size(CLIENT_MESSAGE_MAX)
}

/// Opens the terminal on a WebSocket already taken (the dashboard's: a
/// browser shows nothing of a refused upgrade), saying a refusal there.
pub async fn open_on(
    socket: WebSocket,
    st: &AppState,
    caller: &Caller,
    id: &berth_schemas::ids::ServiceId,
    input: TerminalInput,
) {
    match st.ingress.open_terminal(caller, id, input).await {
        Ok(session) => pump(socket, session).await,
        Err(e) => refuse_on(socket, &ApiError::from(e).message).await,
    }
}

/// Says why no terminal opened, and closes.
pub async fn refuse_on(mut socket: WebSocket, message: &str) {
    if say_within(&mut socket, &Said::Ended { message }, REFUSAL_SEND).await {
        send_within(&mut socket, Message::Close(None), REFUSAL_SEND).await;
    }
}

/// How long a client just refused a terminal may hold up being told why.
const REFUSAL_SEND: Duration = Duration::from_secs(10);

/// Sends `message` unless the client holds it up (stopped reading) for
/// `within`.
pub(crate) async fn send_within(
    socket: &mut WebSocket,
    message: Message,
    within: Duration,
) -> bool {
    matches!(
        tokio::time::timeout(within, socket.send(message)).await,
        Ok(Ok(()))
    )
}

/// Says `said` unless the client holds it up for `within`.
async fn say_within(socket: &mut WebSocket, said: &Said<'_>, within: Duration) -> bool {
    let text = serde_json::to_string(said).unwrap_or_default();
    send_within(socket, Message::Text(text.into()), within).await
}

/// Carries the session both ways until either end is done. The client
/// is pinged every [`TerminalLimits::client_ping`]; one silent for three
/// of them (a laptop closed, a network gone without a TCP close) is taken
/// for gone and the program hung up on.
///
/// [`TerminalLimits::client_ping`]: berth_ingress::terminal::TerminalLimits
async fn pump(mut socket: WebSocket, mut session: TerminalSession) {
    let started = Said::Started {
        instance_id: session.instance().to_string(),
    };
    let limits = session.limits();
    // A client that stopped reading holds a send once the connection's
    // buffers are full; it is taken for gone after this long.
    let wait = limits.client_gone_after();
    let mut ping = tokio::time::interval(limits.client_ping);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut client_heard = tokio::time::Instant::now();
    let mut gone = None;
    if say_within(&mut socket, &started, wait).await {
        loop {
            tokio::select! {
                event = session.next() => match event {
                    Some(TerminalEvent::Output(bytes)) => {
                        if !send_within(&mut socket, Message::Binary(bytes.into()), wait).await {
                            gone = Some(STOPPED_READING.to_owned());
                            break;
                        }
                    }
                    Some(TerminalEvent::Exited(exit_code)) => {
                        say_within(&mut socket, &Said::Exited { exit_code }, wait).await;
                        break;
                    }
                    Some(TerminalEvent::Ended(message)) => {
                        say_within(&mut socket, &Said::Ended { message: &message }, wait).await;
                        break;
                    }
                    None => break,
                },
                frame = socket.recv() => {
                    client_heard = tokio::time::Instant::now();
                    match frame {
                        Some(Ok(Message::Binary(bytes))) => {
                            if session.type_in(&bytes).await.is_err() {
                                break;
                            }
                        }
                        Some(Ok(Message::Text(text))) => {
                            match serde_json::from_str::<Control>(text.as_str()) {
                                Ok(Control::Resize { cols, rows }) => {
                                    if let Err(e) = session.resize(cols, rows).await {
                                        let message = ApiError::from(e).message;
                                        say_within(&mut socket, &Said::Refused { message: &message }, wait).await;
                                    }
                                }
                                Err(_) => {
                                    let message = "a text message must be {\"type\":\"resize\",\"cols\":…,\"rows\":…}";
                                    say_within(&mut socket, &Said::Refused { message }, wait).await;
                                }
                            }
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    }
                }
                _ = ping.tick() => {
                    let silent = client_heard.elapsed();
                    if silent >= limits.client_gone_after() {
                        let why = format!(
                            "the terminal's client answered nothing for {}s",
                            silent.as_secs()
                        );
                        say_within(&mut socket, &Said::Ended { message: &why }, wait).await;
                        gone = Some(why);
                        break;
                    }
                    if !send_within(&mut socket, Message::Ping(Default::default()), wait).await {
                        gone = Some(STOPPED_READING.to_owned());
                        break;
                    }
                }
            }
        }
    }
    match gone {
        Some(why) => session.close_because(why).await,
        None => session.close().await,
    }
    send_within(&mut socket, Message::Close(None), wait).await;
}

/// Why a session ends whose client no longer takes what it is sent.
const STOPPED_READING: &str = "the terminal's client stopped reading";
