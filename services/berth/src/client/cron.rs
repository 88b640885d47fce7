//! `berth cron run|cancel|runs`: trigger a cron job now, cancel its
//! running run, or list its runs.

use clap::{Args, Subcommand};
use serde_json::json;

use super::http::enc;
use super::output::{self, s};
use super::service::resolve;
use super::{Api, ClientError, ClientOpts};

#[derive(Debug, Args)]
pub struct CronArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub cmd: CronCommand,
}

#[derive(Debug, Subcommand)]
pub enum CronCommand {
    /// Start a run of the cron job now (its schedule is unchanged).
    Run { service: String },
    /// Cancel the cron job's running run.
    Cancel { service: String },
    /// The cron job's runs, newest first: how each ended, its exit code.
    Runs {
        service: String,
        /// At most this many runs (1–100).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

/// Runs one `berth cron` command.
pub async fn run(args: CronArgs) -> Result<(), ClientError> {
    let api = Api::from_opts(&args.opts)?;
    match &args.cmd {
        CronCommand::Run { service } => {
            let id = resolve(&api, service).await?;
            let run = api
                .post(&format!("/v1/cron-jobs/{}/runs", enc(&id)), None)
                .await?;
            if api.json() {
                output::json(&run);
            } else {
                println!("{id}: run {} started", s(&run, "id"));
            }
        }
        CronCommand::Cancel { service } => {
            let id = resolve(&api, service).await?;
            api.delete(&format!("/v1/cron-jobs/{}/runs", enc(&id)))
                .await?;
            if api.json() {
                output::json(&json!({ "ok": true, "serviceId": id }));
            } else {
                println!("{id}: run cancel requested");
            }
        }
        CronCommand::Runs { service, limit } => {
            let id = resolve(&api, service).await?;
            let runs = api
                .get(&format!("/v1/cron-jobs/{}/runs?limit={limit}", enc(&id)))
                .await?;
            if api.json() {
                output::json(&runs);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = runs
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i.get("cronJobRun"))
                .map(|r| {
                    vec![
                        s(r, "id"),
                        s(r, "runStatus"),
                        s(r, "exitCode"),
                        s(r, "triggeredBy"),
                        output::time(r, "startedAt"),
                        output::time(r, "finishedAt"),
                        s(r, "nodeId"),
                        s(r, "reason"),
                    ]
                })
                .collect();
            output::table(
                &[
                    "RUN", "STATUS", "EXIT", "TRIGGER", "STARTED", "FINISHED", "NODE", "REASON",
                ],
                &rows,
                "no runs yet",
            );
        }
    }
    Ok(())
}
