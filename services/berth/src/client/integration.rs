//! `berth integration create|list|revoke`: NATS credentials bound to the
//! owner, for programs that send `scale`, `restart` and `deploy` commands on
//! the bus and read the owner's service events (docs/integration.md). The
//! credentials are written to a file (mode 0600) at creation; the API never
//! shows them again.

use std::path::PathBuf;

use berth_runtime::nats_auth::{write_private, Creds};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::http::enc;
use super::output::{self, s};
use super::{Api, ClientError, ClientOpts};

#[derive(Debug, Args)]
pub struct IntegrationArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub cmd: IntegrationCommand,
}

#[derive(Debug, Subcommand)]
pub enum IntegrationCommand {
    /// Create an integration and write its NATS credentials file.
    Create {
        /// What it is, e.g. `autoscaler`.
        name: String,
        /// Where to write the credentials [default: `./<name>.creds.json`];
        /// an existing file is not overwritten.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// List integrations (names and NATS users, never passwords).
    List,
    /// Revoke an integration (by id or name): its NATS user is removed.
    Revoke { integration: String },
}

/// Runs one `berth integration` command.
pub async fn run(args: IntegrationArgs) -> Result<(), ClientError> {
    let api = Api::from_opts(&args.opts)?;
    match &args.cmd {
        IntegrationCommand::Create { name, out } => {
            let out = out
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{}.creds.json", file_stem(name))));
            if out.exists() {
                return Err(ClientError::Usage(format!(
                    "{} exists; choose another file with --out",
                    out.display()
                )));
            }
            let created = api
                .post("/v1/integrations", Some(json!({ "name": name })))
                .await?;
            let creds: Creds = created
                .get("credentials")
                .cloned()
                .and_then(|c| serde_json::from_value(c).ok())
                .ok_or_else(|| ClientError::Failed("the API answered no credentials".to_owned()))?;
            let bytes = serde_json::to_vec_pretty(&creds)
                .map_err(|e| ClientError::Failed(e.to_string()))?;
            write_private(&out, &bytes).map_err(|e| {
                ClientError::Failed(format!(
                    "integration {} created but its credentials could not be written to {} ({e}); \
                     revoke it and create another",
                    s(&created, "id"),
                    out.display()
                ))
            })?;
            if api.json() {
                output::json(&json!({
                    "id": s(&created, "id"),
                    "name": s(&created, "name"),
                    "user": s(&created, "user"),
                    "credentialsFile": out.display().to_string(),
                }));
            } else {
                output::fields(&[
                    ("id", s(&created, "id")),
                    ("name", s(&created, "name")),
                    ("nats user", s(&created, "user")),
                    ("credentials", out.display().to_string()),
                ]);
                println!("(mode 0600; the password is not shown again)");
            }
        }
        IntegrationCommand::List => {
            let all = api.list_all("/v1/integrations").await?;
            if api.json() {
                output::json(&Value::Array(all));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|i| {
                    let state = if i.get("revoked").and_then(Value::as_bool) == Some(true) {
                        "revoked"
                    } else {
                        "active"
                    };
                    vec![s(i, "id"), s(i, "name"), s(i, "user"), state.to_owned()]
                })
                .collect();
            output::table(
                &["ID", "NAME", "NATS USER", "STATE"],
                &rows,
                "no integrations",
            );
        }
        IntegrationCommand::Revoke { integration } => {
            let id = if integration.starts_with("itg-") {
                integration.clone()
            } else {
                let all = api.list_all("/v1/integrations").await?;
                all.iter()
                    .find(|i| {
                        s(i, "name") == *integration
                            && i.get("revoked").and_then(Value::as_bool) != Some(true)
                    })
                    .map(|i| s(i, "id"))
                    .ok_or_else(|| {
                        ClientError::Failed(format!("no active integration named {integration:?}"))
                    })?
            };
            api.delete(&format!("/v1/integrations/{}", enc(&id)))
                .await?;
            if api.json() {
                output::json(&json!({ "ok": true, "revoked": id }));
            } else {
                println!("revoked {id}");
            }
        }
    }
    Ok(())
}

/// A file name from an integration name: letters, digits, `-` and `_`.
fn file_stem(name: &str) -> String {
    let stem: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if stem.is_empty() {
        "integration".to_owned()
    } else {
        stem
    }
}
