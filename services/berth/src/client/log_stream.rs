//! `berth log-stream …`: where your services' log lines are sent, as
//! Render's log streams: a TLS syslog endpoint (`HOST:PORT`) for every
//! service of the owner, and a service's override (`--drop` its lines,
//! `--send` them to an endpoint of its own, `--default` to follow the
//! owner's again). A token is read from a file (it is a secret) and never
//! shown.

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::http::enc;
use super::notify::{owner, secret_file};
use super::output::{self, s};
use super::service::resolve;
use super::{Api, ClientError, ClientOpts};

#[derive(Debug, Args)]
pub struct LogStreamArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub cmd: LogStreamCommand,
}

#[derive(Debug, Subcommand)]
pub enum LogStreamCommand {
    /// Your owner's log stream.
    Show {
        /// The owner (`usr-…`); default: the one in credentials.json.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Send every line of your services to ENDPOINT (`HOST:PORT`, TLS).
    Set {
        /// `HOST:PORT`; without it the endpoint set is kept.
        endpoint: Option<String>,
        /// A file holding the token written before each line (an empty
        /// file removes it; without it, the token of the same endpoint is
        /// kept).
        #[arg(long)]
        token_file: Option<std::path::PathBuf>,
        /// send or drop: Render's setting for preview environments (berth
        /// has none; it is kept and shown).
        #[arg(long, default_value = "send")]
        preview: String,
        /// The owner (`usr-…`); default: the one in credentials.json.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Stop sending your services' lines.
    Remove {
        /// The owner (`usr-…`); default: the one in credentials.json.
        #[arg(long)]
        owner: Option<String>,
    },
    /// A service's override (without options: show it).
    Service {
        service: String,
        /// Send its lines to this endpoint (`HOST:PORT`) instead.
        #[arg(long, conflicts_with_all = ["drop", "default"])]
        send: Option<String>,
        /// Send none of its lines.
        #[arg(long, conflicts_with_all = ["send", "default", "token_file"])]
        drop: bool,
        /// Follow the owner's stream again.
        #[arg(long, conflicts_with_all = ["send", "drop", "token_file"])]
        default: bool,
        /// A file holding the token for `--send`'s endpoint.
        #[arg(long, requires = "send")]
        token_file: Option<std::path::PathBuf>,
    },
}

fn print_owner(api: &Api, v: &Value) {
    if api.json() {
        output::json(v);
        return;
    }
    output::fields(&[
        ("owner", s(v, "ownerId")),
        ("endpoint", s(v, "endpoint")),
        ("token", s(v, "tokenConfigured")),
        ("preview", s(v, "preview")),
        ("delivery", delivery(v)),
    ]);
}

/// Whether lines reach the endpoint, in words.
fn delivery(v: &Value) -> String {
    match v.get("delivery") {
        Some(d) => format!(
            "FAILING since {}: {}",
            output::time(d, "failingSince"),
            s(d, "error")
        ),
        None if v.get("endpoint").is_some() => "ok".to_owned(),
        None => "-".to_owned(),
    }
}

fn print_override(api: &Api, v: &Value) {
    if api.json() {
        output::json(v);
        return;
    }
    let id = s(v, "resourceId");
    match v["setting"].as_str() {
        None => println!("{id}: default (the owner's stream)"),
        Some("drop") => println!("{id}: drop"),
        Some(_) => println!(
            "{id}: send to {} (token: {}; delivery: {})",
            s(v, "endpoint"),
            s(v, "tokenConfigured"),
            delivery(v)
        ),
    }
}

/// Runs one `berth log-stream` command.
pub async fn run(args: LogStreamArgs) -> Result<(), ClientError> {
    let api = Api::from_opts(&args.opts)?;
    match args.cmd {
        LogStreamCommand::Show { owner: given } => {
            let owner = owner(&api, given)?;
            let v = api
                .get(&format!("/v1/logs/streams/owner/{}", enc(&owner)))
                .await?;
            print_owner(&api, &v);
        }
        LogStreamCommand::Set {
            endpoint,
            token_file,
            preview,
            owner: given,
        } => {
            let owner = owner(&api, given)?;
            let mut body = Map::new();
            body.insert("preview".into(), json!(preview));
            if let Some(e) = endpoint {
                body.insert("endpoint".into(), json!(e));
            }
            if let Some(f) = token_file {
                body.insert("token".into(), json!(secret_file(&f)?));
            }
            let v = api
                .put(
                    &format!("/v1/logs/streams/owner/{}", enc(&owner)),
                    Value::Object(body),
                )
                .await?;
            print_owner(&api, &v);
        }
        LogStreamCommand::Remove { owner: given } => {
            let owner = owner(&api, given)?;
            api.delete(&format!("/v1/logs/streams/owner/{}", enc(&owner)))
                .await?;
            if !api.json() {
                println!("log stream removed: no line is sent (but a service's own --send)");
            }
        }
        LogStreamCommand::Service {
            service,
            send,
            drop,
            default,
            token_file,
        } => {
            let id = resolve(&api, &service).await?;
            let path = format!("/v1/logs/streams/resource/{}", enc(&id));
            let v = if default {
                api.delete(&path).await?;
                api.get(&path).await?
            } else if drop {
                api.put(&path, json!({"setting": "drop"})).await?
            } else if let Some(endpoint) = send {
                let mut body = json!({"setting": "send", "endpoint": endpoint});
                if let Some(f) = token_file {
                    body["token"] = json!(secret_file(&f)?);
                }
                api.put(&path, body).await?
            } else {
                api.get(&path).await?
            };
            print_override(&api, &v);
        }
    }
    Ok(())
}
