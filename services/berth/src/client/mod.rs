//! The `berth` API client commands (`service`, `credential`, `env`,
//! `domain`, `hook`, `cron`, `job`, `node`, `apikey`, `notify`, `log-stream`, `secret-file`, `integration`, `webhook`): each one is
//! a few HTTP calls to the API that `berth up` serves, printed as a table
//! or, with `--json`, as the API's own JSON for scripts.
//!
//! Where the API is and which key to use: `--api-url`/`BERTH_API_URL` and
//! `BERTH_API_KEY`, else `credentials.json` written by the first `berth
//! up`, in `$BERTH_DATA_DIR`, else `./.berth`, else the data dir the running
//! `berth up` recorded ([`crate::installation`]). The key is never taken
//! from argv (it would show in `ps`). Only the commands that follow a
//! deploy take the NATS options ([`NatsOpts`]), for its pull progress.
//!
//! Exit codes: 0 ok, 1 the API refused (or the deploy followed failed),
//! 64 usage, 69 the API could not be reached.

pub mod apikey;
pub mod credential;
pub mod cron;
pub mod deploy;
pub mod domain;
pub mod env;
pub mod exec;
pub mod hook;
pub mod http;
pub mod integration;
pub mod job;
pub mod log_stream;
pub mod logs;
pub mod node;
pub mod notify;
pub mod output;
pub mod secret_file;
pub mod service;
pub mod settings;
pub mod shell;
pub mod webhook;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

pub use http::{Api, ClientError};

/// Where the API is, how to print; shared by every client command.
#[derive(Debug, Clone, Args)]
pub struct ClientOpts {
    /// The API's base URL [default: `apiUrl` from credentials.json, else
    /// the URL the running `berth up` recorded, else
    /// http://127.0.0.1:7000]. The key is read from BERTH_API_KEY or
    /// credentials.json, never from the command line.
    #[arg(long, env = "BERTH_API_URL", global = true)]
    pub api_url: Option<String>,

    /// Where `berth up` keeps its data (and credentials.json) [default:
    /// ./.berth if it holds credentials.json, else the data dir the
    /// running `berth up` recorded (see docs/operating.md)].
    #[arg(long, env = "BERTH_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The installation's NATS server, for the commands that follow a deploy
/// (its pull progress is not in the API).
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Pull progress (NATS)")]
pub struct NatsOpts {
    /// The installation's NATS server, for the pull progress a followed
    /// deploy shows (optional: without it the deploy is followed through
    /// the API alone).
    #[arg(long, env = "BERTH_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// NATS credentials for pull progress [default: the operator
    /// credentials `berth up` keeps in its data dir].
    #[arg(long, env = "BERTH_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,

    /// The installation's subject prefix (as given to `berth up`).
    #[arg(long, env = "BERTH_SUBJECT_PREFIX", default_value = "berth")]
    pub subject_prefix: String,
}

impl NatsOpts {
    /// Connects to the installation's NATS server as the operator: with
    /// `BERTH_NATS_CREDS`, else the operator credentials `berth up` keeps in
    /// `data_dir`, else anonymously (a server without users).
    pub async fn connect(&self, data_dir: Option<&Path>) -> Result<async_nats::Client, String> {
        use berth_runtime::nats_auth::{self, Creds, Role};
        let servers = berth_runtime::config::parse_nats_urls(&self.nats_url)?;
        let path = match (&self.nats_creds, data_dir) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(d)) => Some(nats_auth::creds_path(d, &Role::Operator)),
            (None, None) => None,
        };
        let creds = match path.as_deref().map(Creds::read) {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(nats_auth::CredsError::Io { source, .. }))
                if self.nats_creds.is_none() && source.kind() == std::io::ErrorKind::NotFound =>
            {
                None
            }
            Some(Err(e)) => return Err(e.to_string()),
        };
        let connect = nats_auth::connect(servers, "berth cli", creds.as_ref());
        match tokio::time::timeout(std::time::Duration::from_secs(5), connect).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_owned()),
        }
    }
}

/// The client subcommands, flattened into the top-level command line.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create, inspect, change and deploy services.
    Service(Box<service::ServiceArgs>),
    /// Registry credentials for private images.
    Credential(credential::CredentialArgs),
    /// A service's environment variables, one at a time.
    Env(env::EnvArgs),
    /// A web service's custom domains.
    Domain(domain::DomainArgs),
    /// A service's deploy hook URL.
    Hook(hook::HookArgs),
    /// Trigger, cancel or list a cron job's runs.
    Cron(cron::CronArgs),
    /// Run a service's one-off jobs; list, show or cancel them.
    Job(job::JobArgs),
    /// Run a command in a running instance of a service (no terminal) and
    /// exit with its exit code.
    Exec(Box<exec::ExecArgs>),
    /// A terminal in a running instance of a service (`sh` unless a
    /// command follows `--`); exits with its program's exit code.
    Shell(Box<shell::ShellArgs>),
    /// The installation's nodes.
    Node(node::NodeArgs),
    /// API keys of your owner.
    Apikey(apikey::ApiKeyArgs),
    /// Who is told when a deploy fails: your setting and channels, and
    /// each service's override.
    Notify(notify::NotifyArgs),
    /// Where your services' log lines are sent (a TLS syslog endpoint),
    /// and each service's override.
    LogStream(log_stream::LogStreamArgs),
    /// A service's secret files: read by its instances in /etc/secrets.
    SecretFile(secret_file::SecretFileArgs),
    /// NATS credentials for programs that send bus commands and read your
    /// service events.
    Integration(integration::IntegrationArgs),
    /// Endpoints posted your services' events (Render's webhooks), signed,
    /// and what each post got.
    Webhook(webhook::WebhookArgs),
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
            ClientCommand::Service(a) => service::run(*a).await,
            ClientCommand::Credential(a) => credential::run(a).await,
            ClientCommand::Env(a) => env::run(a).await,
            ClientCommand::Domain(a) => domain::run(a).await,
            ClientCommand::Hook(a) => hook::run(a).await,
            ClientCommand::Cron(a) => cron::run(a).await,
            ClientCommand::Job(a) => job::run(a).await,
            ClientCommand::Exec(a) => exec::run(*a).await,
            ClientCommand::Shell(a) => shell::run(*a).await,
            ClientCommand::Node(a) => node::run(a).await,
            ClientCommand::Apikey(a) => apikey::run(a).await,
            ClientCommand::Notify(a) => notify::run(a).await,
            ClientCommand::LogStream(a) => log_stream::run(a).await,
            ClientCommand::SecretFile(a) => secret_file::run(a).await,
            ClientCommand::Integration(a) => integration::run(a).await,
            ClientCommand::Webhook(a) => webhook::run(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(),
    }
}

/// Reports a command line clap refused. Help and version print and exit
/// 0; a bad command line exits 64, as every usage error does.
pub fn parse_failed(e: clap::Error) -> ExitCode {
    let _ = e.print();
    if !e.use_stderr() {
        return ExitCode::SUCCESS;
    }
    ExitCode::from(64)
}
