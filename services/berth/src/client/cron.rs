//! `berth cron run|cancel`: trigger a cron job now, or cancel its running run.

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
    }
    Ok(())
}
