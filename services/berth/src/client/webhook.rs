//! `berth webhook create|list|show|update|delete|events`: the owner's
//! webhooks (Render's webhooks API), endpoints posted your services'
//! events, signed with a secret berth makes (shown by `create` and
//! `show`), and what each post got.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::http::enc;
use super::output::{self, s};
use super::{Api, ClientError, ClientOpts};

#[derive(Debug, Args)]
pub struct WebhookArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub cmd: WebhookCommand,
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Create a webhook and print its signing secret.
    Create {
        /// What it is for, e.g. `deploys-to-chat`.
        name: String,
        /// Where events are posted (http or https).
        #[arg(long)]
        url: String,
        /// An event type to send (repeat for more) [default: every type].
        #[arg(long = "event", value_name = "TYPE")]
        events: Vec<String>,
        /// Create it turned off.
        #[arg(long)]
        off: bool,
        /// Whose [default: the owner of credentials.json].
        #[arg(long)]
        owner: Option<String>,
    },
    /// List webhooks (never their secrets).
    List,
    /// Show one webhook (by id or name), its secret included.
    Show { webhook: String },
    /// Change a webhook: what is given changes.
    Update {
        webhook: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        url: Option<String>,
        /// The event types to send from now on (repeat for more).
        #[arg(long = "event", value_name = "TYPE", conflicts_with = "all_events")]
        events: Vec<String>,
        /// Send every event type from now on.
        #[arg(long)]
        all_events: bool,
        /// Turn it on.
        #[arg(long, conflicts_with = "off")]
        on: bool,
        /// Turn it off: nothing is posted until it is on again.
        #[arg(long)]
        off: bool,
    },
    /// Delete a webhook.
    Delete { webhook: String },
    /// What posting to a webhook got, newest first.
    Events {
        webhook: String,
        /// How many [default: 20].
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

/// The webhook's id: as given when it is one, else the one of that name.
async fn find(api: &Api, given: &str) -> Result<String, ClientError> {
    if given.starts_with("whk-") {
        return Ok(given.to_owned());
    }
    let all = api.list_all("/v1/webhooks").await?;
    let named: Vec<String> = all
        .iter()
        .filter(|i| s(i, "webhook/name") == given)
        .map(|i| s(i, "webhook/id"))
        .collect();
    match &named[..] {
        [one] => Ok(one.clone()),
        [] => Err(ClientError::Failed(format!("no webhook named {given:?}"))),
        _ => Err(ClientError::Usage(format!(
            "{} webhooks are named {given:?}: give the id",
            named.len()
        ))),
    }
}

fn events_shown(v: &Value) -> String {
    let e = s(v, "eventFilter");
    if e == "-" {
        "all".to_owned()
    } else {
        e
    }
}

fn print_one(api: &Api, v: &Value) {
    if api.json() {
        output::json(v);
        return;
    }
    let state = if v.get("enabled").and_then(Value::as_bool) == Some(true) {
        "on"
    } else {
        "off"
    };
    output::fields(&[
        ("id", s(v, "id")),
        ("name", s(v, "name")),
        ("url", s(v, "url")),
        ("state", state.to_owned()),
        ("events", events_shown(v)),
        ("secret", s(v, "secret")),
    ]);
}

/// Runs one `berth webhook` command.
pub async fn run(args: WebhookArgs) -> Result<(), ClientError> {
    let api = Api::from_opts(&args.opts)?;
    match args.cmd {
        WebhookCommand::Create {
            name,
            url,
            events,
            off,
            owner,
        } => {
            let owner = super::notify::owner(&api, owner)?;
            let v = api
                .post(
                    "/v1/webhooks",
                    Some(json!({"ownerId": owner, "name": name, "url": url,
                                "enabled": !off, "eventFilter": events})),
                )
                .await?;
            print_one(&api, &v);
        }
        WebhookCommand::List => {
            let all = api.list_all("/v1/webhooks").await?;
            let hooks: Vec<Value> = all.iter().map(|i| i["webhook"].clone()).collect();
            if api.json() {
                // Never the secrets in a listing printed to a terminal or log.
                let shown: Vec<Value> = hooks
                    .into_iter()
                    .map(|mut h| {
                        if let Some(o) = h.as_object_mut() {
                            o.remove("secret");
                        }
                        h
                    })
                    .collect();
                output::json(&Value::Array(shown));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = hooks
                .iter()
                .map(|h| {
                    let state = if h.get("enabled").and_then(Value::as_bool) == Some(true) {
                        "on"
                    } else {
                        "off"
                    };
                    vec![
                        s(h, "id"),
                        s(h, "name"),
                        state.to_owned(),
                        events_shown(h),
                        s(h, "url"),
                    ]
                })
                .collect();
            output::table(
                &["ID", "NAME", "STATE", "EVENTS", "URL"],
                &rows,
                "no webhooks",
            );
        }
        WebhookCommand::Show { webhook } => {
            let id = find(&api, &webhook).await?;
            let v = api.get(&format!("/v1/webhooks/{}", enc(&id))).await?;
            print_one(&api, &v);
        }
        WebhookCommand::Update {
            webhook,
            name,
            url,
            events,
            all_events,
            on,
            off,
        } => {
            let id = find(&api, &webhook).await?;
            let mut body = serde_json::Map::new();
            if let Some(n) = name {
                body.insert("name".into(), json!(n));
            }
            if let Some(u) = url {
                body.insert("url".into(), json!(u));
            }
            if all_events {
                body.insert("eventFilter".into(), json!([]));
            } else if !events.is_empty() {
                body.insert("eventFilter".into(), json!(events));
            }
            if on || off {
                body.insert("enabled".into(), json!(on));
            }
            if body.is_empty() {
                return Err(ClientError::Usage(
                    "nothing to change: give --name, --url, --event, --all-events, --on or --off"
                        .to_owned(),
                ));
            }
            let v = api
                .patch(&format!("/v1/webhooks/{}", enc(&id)), Value::Object(body))
                .await?;
            print_one(&api, &v);
        }
        WebhookCommand::Delete { webhook } => {
            let id = find(&api, &webhook).await?;
            api.delete(&format!("/v1/webhooks/{}", enc(&id))).await?;
            if api.json() {
                output::json(&json!({ "ok": true, "deleted": id }));
            } else {
                println!("deleted {id}");
            }
        }
        WebhookCommand::Events { webhook, limit } => {
            let id = find(&api, &webhook).await?;
            let page = api
                .get(&format!(
                    "/v1/webhooks/{}/events?limit={}",
                    enc(&id),
                    limit.clamp(1, 100)
                ))
                .await?;
            let sends: Vec<Value> = page
                .as_array()
                .map(|a| a.iter().map(|i| i["webhookEvent"].clone()).collect())
                .unwrap_or_default();
            if api.json() {
                output::json(&Value::Array(sends));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = sends
                .iter()
                .map(|e| {
                    let outcome = match e.get("statusCode") {
                        Some(code) if !code.is_null() => code.to_string(),
                        _ => s(e, "error"),
                    };
                    vec![
                        output::time(e, "sentAt"),
                        s(e, "eventType"),
                        outcome,
                        s(e, "eventId"),
                        s(e, "id"),
                    ]
                })
                .collect();
            output::table(
                &["SENT", "EVENT", "ANSWER", "EVENT ID", "DELIVERY"],
                &rows,
                "nothing sent yet",
            );
        }
    }
    Ok(())
}
