//! `berth env list|set|unset SERVICE`: a service's environment variables
//! one at a time, as on Render. `set` and `unset` change only the keys
//! named and keep every other, in one change: the deploy that brings them
//! to the instances is named (and followed with `--wait`). Values are
//! shown only with `--reveal`; `set` reads values from `KEY=VALUE`
//! arguments or, for secrets kept out of the process list, from
//! `--from-file`.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::http::enc;
use super::output::{self, s};
use super::service::{resolve, FollowArgs};
use super::settings::key_values;
use super::{deploy, Api, ClientError, ClientOpts};

#[derive(Debug, Args)]
pub struct EnvArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub cmd: EnvCommand,
}

#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// List a service's env vars (values hidden unless --reveal).
    List {
        service: String,
        /// Show the values.
        #[arg(long)]
        reveal: bool,
    },
    /// Set env vars, keeping every other (one deploy).
    Set {
        service: String,
        /// `KEY=VALUE` (repeatable).
        #[arg(value_name = "KEY=VALUE")]
        vars: Vec<String>,
        /// A file of `KEY=VALUE` lines (blank lines and `#` comments
        /// skipped): values stay out of the process list.
        #[arg(long)]
        from_file: Option<std::path::PathBuf>,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// Remove env vars, keeping every other (one deploy).
    Unset {
        service: String,
        /// Keys to remove.
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        follow: FollowArgs,
    },
}

/// `KEY=VALUE` arguments and file lines as merge changes.
fn assignments(vars: &[String], file: Option<&std::path::Path>) -> Result<Vec<Value>, ClientError> {
    let changes = key_values(vars, file)?;
    if changes.is_empty() {
        return Err(ClientError::Usage(
            "give KEY=VALUE arguments or --from-file".to_owned(),
        ));
    }
    Ok(changes)
}

/// Runs one `berth env` command.
pub async fn run(args: EnvArgs) -> Result<(), ClientError> {
    let api = Api::from_opts(&args.opts)?;
    match args.cmd {
        EnvCommand::List { service, reveal } => {
            let id = resolve(&api, &service).await?;
            let vars = api
                .list_all(&format!("/v1/services/{}/env-vars", enc(&id)))
                .await?;
            let shown: Vec<Value> = vars
                .iter()
                .filter_map(|i| i.get("envVar"))
                .map(|v| {
                    if reveal {
                        v.clone()
                    } else {
                        json!({ "key": v["key"], "value": Value::Null })
                    }
                })
                .collect();
            if api.json() {
                output::json(&Value::Array(shown));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = shown
                .iter()
                .map(|v| {
                    let value = if reveal {
                        s(v, "value")
                    } else {
                        "••••••".to_owned()
                    };
                    vec![s(v, "key"), value]
                })
                .collect();
            output::table(&["KEY", "VALUE"], &rows, "no env vars");
            Ok(())
        }
        EnvCommand::Set {
            service,
            vars,
            from_file,
            follow,
        } => {
            let changes = assignments(&vars, from_file.as_deref())?;
            let keys: Vec<String> = changes.iter().map(|c| s(c, "key")).collect();
            change(
                &api,
                &service,
                changes,
                &format!("set {}", keys.join(", ")),
                follow,
            )
            .await
        }
        EnvCommand::Unset {
            service,
            keys,
            follow,
        } => {
            let changes = keys
                .iter()
                .map(|k| json!({ "key": k, "value": Value::Null }))
                .collect();
            change(
                &api,
                &service,
                changes,
                &format!("unset {}", keys.join(", ")),
                follow,
            )
            .await
        }
    }
}

/// Sends one merge and says what it started.
async fn change(
    api: &Api,
    service: &str,
    changes: Vec<Value>,
    what: &str,
    follow: FollowArgs,
) -> Result<(), ClientError> {
    let wait = follow.wait;
    let id = resolve(api, service).await?;
    let answer = api
        .patch(
            &format!("/v1/services/{}/env-vars", enc(&id)),
            Value::Array(changes),
        )
        .await?;
    let dep = answer
        .get("deployId")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let keys: Vec<Value> = answer["envVars"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i["envVar"]["key"].clone())
        .collect();
    if api.json() && !wait {
        output::json(&json!({ "serviceId": id, "keys": keys, "deployId": dep }));
        return Ok(());
    }
    match (&dep, wait) {
        (None, _) => {
            if !api.json() {
                println!("{id}: {what}: nothing changed, no deploy");
            } else {
                output::json(&json!({ "serviceId": id, "keys": keys, "deployId": null }));
            }
            Ok(())
        }
        (Some(dep), false) => {
            println!(
                "{id}: {what}; deploy {dep} started (follow it: berth service follow {id} {dep})"
            );
            Ok(())
        }
        (Some(dep), true) => {
            if !api.json() {
                println!("{id}: {what}; deploy {dep} started");
            }
            let ended = deploy::follow(api, &follow.nats, &id, dep, follow.timeout).await;
            if api.json() {
                if let Ok(d) = &ended {
                    output::json(&json!({ "serviceId": id, "keys": keys, "deploy": d }));
                }
            }
            ended.map(drop)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_from_arguments_and_a_file_never_echo_a_bad_line() {
        let dir = tempfile::tempdir().unwrap_or_else(|_| unreachable!());
        let f = dir.path().join("env");
        std::fs::write(&f, "# c\n\nB=two=2\n").unwrap_or_default();
        let got = assignments(&["A=1".to_owned()], Some(&f)).unwrap_or_default();
        assert_eq!(
            got,
            vec![
                json!({"key": "A", "value": "1"}),
                json!({"key": "B", "value": "two=2"})
            ]
        );
        let bad = assignments(&["s3cret-no-equals".to_owned()], None);
        let msg = match bad {
            Err(ClientError::Usage(m)) => m,
            other => unreachable!("{other:?}"),
        };
        assert!(!msg.contains("s3cret"), "{msg}");
        assert!(assignments(&[], None).is_err());
    }
}
