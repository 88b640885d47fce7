//! `berth exec SERVICE -- COMMAND…`: runs a command in one of the
//! service's running instances as its own process runs (its user,
//! environment, limits and network), prints what it printed on the same
//! streams and exits with its exit code — `kubectl exec` without a
//! terminal, Render's Shell for scripts.

use std::io::{Read, Write};
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use super::http::enc;
use super::output;
use super::service::resolve;
use super::{Api, ClientError, ClientOpts};

/// The exit code when the command was killed at its timeout (as
/// `timeout(1)` says it).
const TIMED_OUT: u8 = 124;

#[derive(Debug, Args)]
pub struct ExecArgs {
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
    /// Kill it after this many seconds (1–600).
    #[arg(long, default_value_t = 60)]
    pub timeout: u32,
    /// Give it this command's standard input (read to its end first; at
    /// most 32 KiB of text).
    #[arg(long, short = 'i')]
    pub stdin: bool,
    /// The program and its arguments, after `--` (a shell only if it names
    /// one: `-- sh -c 'ls /app | wc -l'`).
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// Runs `berth exec`.
pub async fn run(args: ExecArgs) -> Result<(), ClientError> {
    let api = Api::from_opts(&args.opts)?;
    let id = resolve(&api, &args.service).await?;
    let mut body = json!({ "command": args.command, "timeoutSeconds": args.timeout });
    if let Some(i) = &args.instance {
        body["instanceId"] = json!(i);
    }
    if args.stdin {
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .map_err(|e| ClientError::Usage(format!("standard input is not text: {e}")))?;
        body["stdin"] = json!(input);
    }
    let path = format!("/v1/services/{}/exec", enc(&id));
    // The command's own time, and the node's and the API's on top.
    let wait = Duration::from_secs(u64::from(args.timeout) + 30);
    let out = api.post_waiting(&path, body, wait).await?;
    if api.json() {
        output::json(&out);
    } else {
        let text = |k: &str| out.get(k).and_then(Value::as_str).unwrap_or_default();
        let _ = std::io::stdout().write_all(text("stdout").as_bytes());
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().write_all(text("stderr").as_bytes());
        if out.get("truncated").and_then(Value::as_bool) == Some(true) {
            eprintln!("berth: the output was cut at 256 KiB per stream");
        }
    }
    if out.get("timedOut").and_then(Value::as_bool) == Some(true) {
        if !api.json() {
            eprintln!(
                "berth: killed after {}s in {}",
                args.timeout,
                out.get("instanceId").and_then(Value::as_str).unwrap_or("?")
            );
        }
        return Err(ClientError::Exit(TIMED_OUT));
    }
    match out.get("exitCode").and_then(Value::as_i64) {
        Some(0) => Ok(()),
        Some(code) => Err(ClientError::Exit(u8::try_from(code).unwrap_or(1))),
        None => Err(ClientError::Failed(format!("unexpected answer: {out}"))),
    }
}
