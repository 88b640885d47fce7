//! `berth notify …`: who is told when a deploy fails. The owner's setting
//! (`all`, `failure`, `none`) and channels (email recipient, Slack
//! incoming webhook, signed generic webhook), and a service's override of
//! the setting (`default` follows the owner's). Channel URLs and the
//! webhook secret are read from files (they are secrets) and never shown.

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::http::enc;
use super::output::{self, s};
use super::service::resolve;
use super::{Api, ClientError, ClientOpts};

#[derive(Debug, Args)]
pub struct NotifyArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub cmd: NotifyCommand,
}

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Your owner's setting and which channels are set.
    Show {
        /// The owner (`usr-…`); default: the one in credentials.json.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Change your owner's setting or channels ("" removes a channel).
    Set {
        /// all, failure or none.
        #[arg(long)]
        send: Option<String>,
        /// The email recipient.
        #[arg(long)]
        email: Option<String>,
        /// A file holding the Slack incoming-webhook URL.
        #[arg(long)]
        slack_webhook_url_file: Option<std::path::PathBuf>,
        /// A file holding the generic webhook's URL.
        #[arg(long)]
        webhook_url_file: Option<std::path::PathBuf>,
        /// A file holding the generic webhook's secret (`whsec_…`).
        #[arg(long)]
        webhook_secret_file: Option<std::path::PathBuf>,
        /// The owner (`usr-…`); default: the one in credentials.json.
        #[arg(long)]
        owner: Option<String>,
    },
    /// A service's override: default (the owner's), all, failure or none.
    Service {
        service: String,
        /// default, all, failure or none (without it: show the override).
        #[arg(long)]
        send: Option<String>,
    },
}

/// A secret from a file, trimmed of its trailing newline.
pub(super) fn secret_file(path: &std::path::Path) -> Result<String, ClientError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
        .map_err(|e| ClientError::Usage(format!("cannot read {}: {e}", path.display())))
}

/// The owner named, or the credentials file's.
pub(super) fn owner(api: &Api, given: Option<String>) -> Result<String, ClientError> {
    given.or_else(|| api.owner_id()).ok_or_else(|| {
        ClientError::Usage(
            "which owner? give --owner usr-… (credentials.json names none here)".to_owned(),
        )
    })
}

fn print_setting(api: &Api, v: &Value) {
    if api.json() {
        output::json(v);
        return;
    }
    output::fields(&[
        ("owner", s(v, "ownerId")),
        ("send", s(v, "notificationsToSend")),
        ("email", s(v, "email")),
        ("slack", s(v, "slackConfigured")),
        ("webhook", s(v, "webhookConfigured")),
    ]);
}

/// Runs one `berth notify` command.
pub async fn run(args: NotifyArgs) -> Result<(), ClientError> {
    let api = Api::from_opts(&args.opts)?;
    match args.cmd {
        NotifyCommand::Show { owner: given } => {
            let owner = owner(&api, given)?;
            let v = api
                .get(&format!("/v1/notification-settings/owners/{}", enc(&owner)))
                .await?;
            print_setting(&api, &v);
            Ok(())
        }
        NotifyCommand::Set {
            send,
            email,
            slack_webhook_url_file,
            webhook_url_file,
            webhook_secret_file,
            owner: given,
        } => {
            let owner = owner(&api, given)?;
            let mut body = Map::new();
            if let Some(v) = send {
                body.insert("notificationsToSend".into(), json!(v));
            }
            if let Some(v) = email {
                body.insert("email".into(), json!(v));
            }
            for (field, file) in [
                ("slackWebhookUrl", slack_webhook_url_file),
                ("webhookUrl", webhook_url_file),
                ("webhookSecret", webhook_secret_file),
            ] {
                if let Some(f) = file {
                    body.insert(field.into(), json!(secret_file(&f)?));
                }
            }
            if body.is_empty() {
                return Err(ClientError::Usage(
                    "nothing to change: give --send, --email or a channel file".to_owned(),
                ));
            }
            let v = api
                .patch(
                    &format!("/v1/notification-settings/owners/{}", enc(&owner)),
                    Value::Object(body),
                )
                .await?;
            print_setting(&api, &v);
            Ok(())
        }
        NotifyCommand::Service { service, send } => {
            let id = resolve(&api, &service).await?;
            let path = format!("/v1/notification-settings/overrides/services/{}", enc(&id));
            let v = match send {
                Some(v) => {
                    api.patch(&path, json!({ "notificationsToSend": v }))
                        .await?
                }
                None => api.get(&path).await?,
            };
            if api.json() {
                output::json(&v);
            } else {
                println!("{id}: {}", s(&v, "notificationsToSend"));
            }
            Ok(())
        }
    }
}
