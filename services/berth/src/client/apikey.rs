//! `berth apikey create|list|revoke`: the owner's API keys. A new key is
//! shown once, at creation; the API never shows it again.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::http::enc;
use super::output::{self, s};
use super::{Api, ClientError, ClientOpts};

#[derive(Debug, Args)]
pub struct ApiKeyArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub cmd: ApiKeyCommand,
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key and print it (only this once).
    Create {
        /// What the key is for, e.g. `ci`.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List keys (ids and labels, never the keys).
    List,
    /// Revoke a key; requests with it are refused from now on.
    Revoke { key_id: String },
}

/// Runs one `berth apikey` command.
pub async fn run(args: ApiKeyArgs) -> Result<(), ClientError> {
    let api = Api::from_opts(&args.opts)?;
    match &args.cmd {
        ApiKeyCommand::Create { label } => {
            let k = api
                .post("/v1/api-keys", Some(json!({ "label": label })))
                .await?;
            if api.json() {
                output::json(&k);
            } else {
                output::fields(&[
                    ("id", s(&k, "id")),
                    ("label", s(&k, "label")),
                    ("key", s(&k, "key")),
                ]);
                println!("(store the key now: it is not shown again)");
            }
        }
        ApiKeyCommand::List => {
            let all = api.list_all("/v1/api-keys").await?;
            if api.json() {
                output::json(&Value::Array(all));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|k| {
                    let state = if k.get("revoked").and_then(Value::as_bool) == Some(true) {
                        "revoked"
                    } else {
                        "active"
                    };
                    vec![s(k, "id"), s(k, "label"), state.to_owned()]
                })
                .collect();
            output::table(&["ID", "LABEL", "STATE"], &rows, "no API keys");
        }
        ApiKeyCommand::Revoke { key_id } => {
            api.delete(&format!("/v1/api-keys/{}", enc(key_id))).await?;
            if api.json() {
                output::json(&json!({ "ok": true, "revoked": key_id }));
            } else {
                println!("revoked {key_id}");
            }
        }
    }
    Ok(())
}
