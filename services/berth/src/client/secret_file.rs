//! `berth secret-file list|set|rm SERVICE`: a service's secret files, as
//! on Render: each instance reads them in `/etc/secrets/<name>`. A
//! content is read from a file (or standard input with `-`), never from
//! the command line, and shown only with `list --reveal`. Each change
//! deploys the service.

use std::io::Read;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::http::enc;
use super::output::{self, s};
use super::service::{done, resolve};
use super::{Api, ClientError, ClientOpts};

#[derive(Debug, Args)]
pub struct SecretFileArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub cmd: SecretFileCommand,
}

#[derive(Debug, Subcommand)]
pub enum SecretFileCommand {
    /// List a service's secret files (names and sizes; contents with --reveal).
    List {
        service: String,
        /// Show the contents.
        #[arg(long)]
        reveal: bool,
    },
    /// Add or replace one file (the service deploys).
    Set {
        service: String,
        /// Its name in /etc/secrets (letters, digits, `.`, `_`, `-`).
        name: String,
        /// Where its content is: a file, or `-` for standard input.
        #[arg(long, value_name = "PATH")]
        from_file: std::path::PathBuf,
    },
    /// Remove one file (the service deploys).
    Rm { service: String, name: String },
}

fn content(path: &std::path::Path) -> Result<String, ClientError> {
    let unreadable =
        |e: std::io::Error| ClientError::Usage(format!("cannot read {}: {e}", path.display()));
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(unreadable)?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).map_err(unreadable)
    }
}

/// Runs one `berth secret-file` command.
pub async fn run(args: SecretFileArgs) -> Result<(), ClientError> {
    let api = Api::from_opts(&args.opts)?;
    match args.cmd {
        SecretFileCommand::List { service, reveal } => {
            let id = resolve(&api, &service).await?;
            let files = api
                .list_all(&format!("/v1/services/{}/secret-files", enc(&id)))
                .await?;
            let shown: Vec<Value> = files
                .iter()
                .filter_map(|i| i.get("secretFile"))
                .map(|f| {
                    let size = f["content"].as_str().map_or(0, str::len);
                    let content = if reveal {
                        f["content"].clone()
                    } else {
                        Value::Null
                    };
                    json!({"name": f["name"], "bytes": size, "content": content})
                })
                .collect();
            if api.json() {
                output::json(&Value::Array(shown));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = shown
                .iter()
                .map(|f| {
                    let mut row = vec![format!("/etc/secrets/{}", s(f, "name")), s(f, "bytes")];
                    if reveal {
                        row.push(s(f, "content"));
                    }
                    row
                })
                .collect();
            let header: &[&str] = if reveal {
                &["PATH", "BYTES", "CONTENT"]
            } else {
                &["PATH", "BYTES"]
            };
            output::table(header, &rows, "no secret files");
        }
        SecretFileCommand::Set {
            service,
            name,
            from_file,
        } => {
            let id = resolve(&api, &service).await?;
            let body = json!({ "content": content(&from_file)? });
            api.put(
                &format!("/v1/services/{}/secret-files/{}", enc(&id), enc(&name)),
                body,
            )
            .await?;
            done(
                &api,
                &format!("{id}: /etc/secrets/{name} set; the service deploys"),
            );
        }
        SecretFileCommand::Rm { service, name } => {
            let id = resolve(&api, &service).await?;
            api.delete(&format!(
                "/v1/services/{}/secret-files/{}",
                enc(&id),
                enc(&name)
            ))
            .await?;
            done(
                &api,
                &format!("{id}: /etc/secrets/{name} removed; the service deploys"),
            );
        }
    }
    Ok(())
}
