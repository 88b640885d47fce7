//! `berth shell SERVICE [-- COMMAND…]`: a terminal in one of the
//! service's running instances (Render's Shell, `kubectl exec -it`,
//! `docker exec -it`), through the API's WebSocket
//! (`GET /v1/services/{id}/shell`). On a terminal, this one is put in raw
//! mode (every key goes to the program, Ctrl-C included) and its size
//! follows the window's; exits with the program's exit code.
//!
//! Without a terminal (input from a pipe or a file) the program still
//! gets one; what is read is typed into it, and the end of the input is
//! typed as Ctrl-D (end of file), so `echo 'ls; exit 3' | berth shell
//! web` runs and exits with 3. An empty input (`< /dev/null`) types
//! nothing, not even the Ctrl-D.

use std::io::Write;
use std::os::fd::AsFd;

use clap::Args;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;

use super::http::enc;
use super::service::resolve;
use super::{Api, ClientError, ClientOpts};

/// End of transmission: what Ctrl-D types.
const EOT: u8 = 0x04;

#[derive(Debug, Args)]
pub struct ShellArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    /// The service (name or `srv-…` id).
    pub service: String,
    /// The instance (`ins-…`, from `berth service instances`), or a
    /// running one-off job (`job-…`) or cron run (`crn-…`) to run in; by
    /// default a running instance of the live deploy (of a cron job: its
    /// active run).
    #[arg(long)]
    pub instance: Option<String>,
    /// The program and its arguments, after `--` (by default `bash` when
    /// the image has it, else `sh`).
    #[arg(last = true, num_args = 0..)]
    pub command: Vec<String>,
}

/// This terminal in raw mode for as long as it is held; restored after.
struct Raw {
    saved: rustix::termios::Termios,
}

impl Raw {
    /// Raw mode on standard input, when it is a terminal.
    fn enter() -> Option<Raw> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(stdin.as_fd(), rustix::termios::OptionalActions::Now, &raw)
            .ok()?;
        Some(Raw { saved })
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin().as_fd(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

/// This terminal's size (columns, rows), when standard output is one.
fn window() -> Option<(u16, u16)> {
    let size = rustix::termios::tcgetwinsize(std::io::stdout().as_fd()).ok()?;
    (size.ws_col > 0 && size.ws_row > 0).then_some((size.ws_col, size.ws_row))
}

/// The API's path for the terminal `args` asks for in service `id`.
fn path(id: &str, args: &ShellArgs, (cols, rows): (u16, u16)) -> String {
    let mut query = format!("cols={cols}&rows={rows}");
    for part in &args.command {
        query.push_str("&command=");
        query.push_str(&enc(part));
    }
    if let Some(i) = &args.instance {
        query.push_str("&instanceId=");
        query.push_str(&enc(i));
    }
    format!("/v1/services/{}/shell?{query}", enc(id))
}

/// Runs `berth shell`.
pub async fn run(args: ShellArgs) -> Result<(), ClientError> {
    let api = Api::from_opts(&args.opts)?;
    let id = resolve(&api, &args.service).await?;
    let size = window().unwrap_or((80, 24));
    let upgraded = api.websocket(&path(&id, &args, size)).await?;
    let mut socket =
        tokio_tungstenite::WebSocketStream::from_raw_socket(upgraded, Role::Client, None).await;
    let raw = Raw::enter();
    let ended = session(&mut socket, raw.is_some()).await;
    drop(raw);
    if let Err(ClientError::Failed(m)) = &ended {
        // After raw mode, the cursor may be anywhere on the line.
        eprintln!("\r\nberth: {m}");
        return Err(ClientError::Exit(1));
    }
    ended
}

type Socket = tokio_tungstenite::WebSocketStream<reqwest::Upgraded>;

/// Standard input, read on a thread of its own until its end: a read of
/// a terminal cannot be cancelled, and one left waiting on the async
/// runtime's blocking pool would keep the CLI from exiting after the
/// program ended until a key was pressed. The thread is left blocked
/// when the session ends first; the process's exit ends it.
fn read_stdin() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Carries the session both ways: standard input and window sizes in,
/// the terminal's output to standard output, until the program ends.
async fn session(socket: &mut Socket, on_terminal: bool) -> Result<(), ClientError> {
    let lost = |e: tokio_tungstenite::tungstenite::Error| {
        ClientError::Failed(format!("the connection to the API was lost: {e}"))
    };
    let mut typed = read_stdin();
    let mut input_open = true;
    let mut typed_any = false;
    let mut resized = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        .map_err(|e| ClientError::Failed(format!("cannot follow the window's size: {e}")))?;
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            msg = socket.next() => match msg {
                Some(Ok(Message::Binary(bytes))) => {
                    let _ = stdout.write_all(&bytes);
                    let _ = stdout.flush();
                }
                Some(Ok(Message::Text(text))) => {
                    let said: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                    match said.get("type").and_then(Value::as_str) {
                        Some("exited") => {
                            let code = said.get("exitCode").and_then(Value::as_i64).unwrap_or(1);
                            let _ = socket.close(None).await;
                            return match u8::try_from(code) {
                                Ok(0) => Ok(()),
                                Ok(code) => Err(ClientError::Exit(code)),
                                Err(_) => Err(ClientError::Exit(1)),
                            };
                        }
                        Some("ended") => {
                            let message = said.get("message").and_then(Value::as_str).unwrap_or("ended");
                            return Err(ClientError::Failed(format!("the session ended: {message}")));
                        }
                        Some("refused") => {
                            let message = said.get("message").and_then(Value::as_str).unwrap_or_default();
                            eprint!("\r\nberth: {message}\r\n");
                        }
                        // `started`, and anything newer.
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(_))) | None => {
                    return Err(ClientError::Failed("the API closed the session".into()));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(lost(e)),
            },
            read = typed.recv(), if input_open => {
                let bytes = match read {
                    Some(bytes) => {
                        typed_any = true;
                        bytes
                    }
                    // A terminal's end of input is Ctrl-D; an input with
                    // nothing in it (`< /dev/null`) types nothing at all.
                    None => {
                        input_open = false;
                        if !typed_any {
                            continue;
                        }
                        vec![EOT]
                    }
                };
                socket.send(Message::Binary(bytes.into())).await.map_err(lost)?;
            }
            _ = resized.recv(), if on_terminal => {
                if let Some((cols, rows)) = window() {
                    let resize = json!({ "type": "resize", "cols": cols, "rows": rows });
                    socket.send(Message::Text(resize.to_string().into())).await.map_err(lost)?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]
    use super::*;

    #[test]
    fn the_command_and_size_go_in_the_query_in_order() {
        #[derive(clap::Parser)]
        struct Line {
            #[command(flatten)]
            args: ShellArgs,
        }
        use clap::Parser;
        let line = Line::try_parse_from([
            "berth",
            "web",
            "--instance",
            "ins-1",
            "--",
            "sh",
            "-c",
            "echo a&b",
        ])
        .map_err(|e| e.to_string());
        let args = match line {
            Ok(l) => l.args,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(args.service, "web");
        assert_eq!(
            path("srv-1", &args, (120, 40)),
            "/v1/services/srv-1/shell?cols=120&rows=40&command=sh&command=-c&command=echo%20a%26b&instanceId=ins-1"
        );
    }
}
