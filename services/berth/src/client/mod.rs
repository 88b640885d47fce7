//! The `berth` API client commands (`service`, `credential`, `hook`, `cron`,
//! `apikey`): each one is a few HTTP calls to the API that `berth up` serves,
//! printed as a table or, with `--json`, as the API's own JSON for scripts.
//!
//! Where the API is and which key to use: `--api-url`/`BERTH_API_URL` and
//! `BERTH_API_KEY`, else `$BERTH_DATA_DIR/credentials.json` written by the
//! first `berth up`. The key is never taken from argv (it would show in `ps`).
//!
//! Exit codes: 0 ok, 1 the API refused (or the deploy followed failed),
//! 64 usage, 69 the API could not be reached.

pub mod apikey;
pub mod credential;
pub mod cron;
pub mod deploy;
pub mod hook;
pub mod http;
pub mod logs;
pub mod output;
pub mod service;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

pub use http::{Api, ClientError};

/// Where the API is, how to print; shared by every client command.
#[derive(Debug, Clone, Args)]
pub struct ClientOpts {
    /// The API's base URL [default: `apiUrl` from credentials.json, else
    /// http://127.0.0.1:7000]. The key is read from BERTH_API_KEY or
    /// credentials.json, never from the command line.
    #[arg(long, env = "BERTH_API_URL", global = true)]
    pub api_url: Option<String>,

    /// Where `berth up` keeps its data (and credentials.json).
    #[arg(
        long,
        env = "BERTH_DATA_DIR",
        default_value = "./.berth",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The client subcommands, flattened into the top-level command line.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create, inspect, change and deploy services.
    Service(service::ServiceArgs),
    /// Registry credentials for private images.
    Credential(credential::CredentialArgs),
    /// A service's deploy hook URL.
    Hook(hook::HookArgs),
    /// Trigger or cancel a cron job's run.
    Cron(cron::CronArgs),
    /// API keys of your owner.
    Apikey(apikey::ApiKeyArgs),
}

/// Runs one client command and returns its exit code.
pub fn main(cmd: ClientCommand) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return ClientError::Failed(format!("cannot start the async runtime: {e}")).report()
        }
    };
    let result = rt.block_on(async move {
        match cmd {
            ClientCommand::Service(a) => service::run(a).await,
            ClientCommand::Credential(a) => credential::run(a).await,
            ClientCommand::Hook(a) => hook::run(a).await,
            ClientCommand::Cron(a) => cron::run(a).await,
            ClientCommand::Apikey(a) => apikey::run(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(),
    }
}
