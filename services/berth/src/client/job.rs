//! `berth job run|list|show|cancel`: a service's one-off jobs (a command
//! run once in a container of its live image, with its environment).

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::http::enc;
use super::output::{self, s};
use super::service::resolve;
use super::{Api, ClientError, ClientOpts};

#[derive(Debug, Args)]
pub struct JobArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub cmd: JobCommand,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Run a command once in a container of the service's live image, with
    /// its environment (a migration, a one-off script).
    Run {
        service: String,
        /// The command, as the service's own command would be given (a
        /// shell only if it names one: `sh -c '…'`).
        command: String,
        /// An instance type (`starter`, `standard`, …); the service's own
        /// by default.
        #[arg(long)]
        plan: Option<String>,
        /// Wait for it to end; exit 1 unless it succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// The service's recent jobs, newest first.
    List {
        service: String,
        /// At most this many jobs (1–100).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One job: its status, exit code and times.
    Show { service: String, job: String },
    /// Cancel a pending or running job (its container is stopped).
    Cancel { service: String, job: String },
}

/// Runs one `berth job` command.
pub async fn run(args: JobArgs) -> Result<(), ClientError> {
    let api = Api::from_opts(&args.opts)?;
    match &args.cmd {
        JobCommand::Run {
            service,
            command,
            plan,
            wait,
        } => {
            let id = resolve(&api, service).await?;
            let mut body = json!({ "startCommand": command });
            if let Some(p) = plan {
                body["planId"] = json!(p);
            }
            let path = format!("/v1/services/{}/jobs", enc(&id));
            let mut job = api.post(&path, Some(body)).await?;
            if *wait {
                let one = format!("{path}/{}", enc(&s(&job, "id")));
                while matches!(s(&job, "status").as_str(), "pending" | "running") {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    job = api.get(&one).await?;
                }
            }
            if api.json() {
                output::json(&job);
            } else {
                println!("{}", summary(&id, &job));
                if let Some(instance) = job.get("instanceId").and_then(Value::as_str) {
                    println!("its output: berth service logs {service} --instance {instance}");
                }
                if matches!(s(&job, "status").as_str(), "pending" | "running") {
                    println!(
                        "a terminal in it while it runs: berth shell {service} --instance {}",
                        s(&job, "id")
                    );
                }
            }
            if *wait && s(&job, "status") != "succeeded" {
                return Err(ClientError::Failed(summary(&id, &job)));
            }
        }
        JobCommand::List { service, limit } => {
            let id = resolve(&api, service).await?;
            let jobs = api
                .get(&format!("/v1/services/{}/jobs?limit={limit}", enc(&id)))
                .await?;
            if api.json() {
                output::json(&jobs);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = jobs
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i.get("job"))
                .map(|j| {
                    vec![
                        s(j, "id"),
                        s(j, "status"),
                        s(j, "exitCode"),
                        output::time(j, "createdAt"),
                        output::time(j, "finishedAt"),
                        s(j, "startCommand"),
                    ]
                })
                .collect();
            output::table(
                &["JOB", "STATUS", "EXIT", "CREATED", "FINISHED", "COMMAND"],
                &rows,
                "no jobs yet",
            );
        }
        JobCommand::Show { service, job } => {
            let id = resolve(&api, service).await?;
            let got = api
                .get(&format!("/v1/services/{}/jobs/{}", enc(&id), enc(job)))
                .await?;
            if api.json() {
                output::json(&got);
            } else {
                println!("{}", summary(&id, &got));
            }
        }
        JobCommand::Cancel { service, job } => {
            let id = resolve(&api, service).await?;
            let got = api
                .post(
                    &format!("/v1/services/{}/jobs/{}/cancel", enc(&id), enc(job)),
                    None,
                )
                .await?;
            if api.json() {
                output::json(&got);
            } else {
                println!("{}", summary(&id, &got));
            }
        }
    }
    Ok(())
}

/// `srv-…: job job-… failed (exit 4): reason`.
fn summary(service: &str, job: &Value) -> String {
    let mut line = format!("{service}: job {} {}", s(job, "id"), s(job, "status"));
    if let Some(code) = job.get("exitCode").and_then(Value::as_i64) {
        line.push_str(&format!(" (exit {code})"));
    }
    if let Some(reason) = job.get("reason").and_then(Value::as_str) {
        line.push_str(&format!(": {reason}"));
    }
    line
}
