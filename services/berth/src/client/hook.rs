//! `berth hook url|regenerate`: a service's deploy hook URL (a GET or POST
//! to it starts a deploy; the key in it is the only secret it needs).

use clap::{Args, Subcommand};
use serde_json::json;

use super::http::enc;
use super::output::{self, s};
use super::service::resolve;
use super::{Api, ClientError, ClientOpts};

#[derive(Debug, Args)]
pub struct HookArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub cmd: HookCommand,
}

#[derive(Debug, Subcommand)]
pub enum HookCommand {
    /// Print the service's deploy hook URL.
    Url { service: String },
    /// Replace the hook's key (the old URL stops working) and print the new URL.
    Regenerate { service: String },
}

/// Runs one `berth hook` command.
pub async fn run(args: HookArgs) -> Result<(), ClientError> {
    let api = Api::from_opts(&args.opts)?;
    let (service, regenerate) = match &args.cmd {
        HookCommand::Url { service } => (service, false),
        HookCommand::Regenerate { service } => (service, true),
    };
    let id = resolve(&api, service).await?;
    let path = format!("/v1/services/{}/deploy-hook", enc(&id));
    let answer = if regenerate {
        api.post(&format!("{path}/regenerate"), None).await?
    } else {
        api.get(&path).await?
    };
    let url = format!("{}{}", api.base(), s(&answer, "url"));
    if api.json() {
        output::json(&json!({ "serviceId": id, "url": url, "path": answer.get("url") }));
    } else {
        println!("{url}");
    }
    Ok(())
}
