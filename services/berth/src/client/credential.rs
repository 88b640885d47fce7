//! `berth credential …`: registry credentials for private images. The
//! token is read from stdin or a file, never from argv, and no answer of
//! the API ever holds it.

use std::io::Read;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::http::enc;
use super::output::{self, s};
use super::{Api, ClientError, ClientOpts};

#[derive(Debug, Args)]
pub struct CredentialArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub cmd: CredentialCommand,
}

/// Where the token comes from (one of them).
#[derive(Debug, Args)]
pub struct TokenSource {
    /// Read the token (or password) from stdin.
    #[arg(long, conflicts_with = "token_file")]
    pub token_stdin: bool,
    /// Read the token (or password) from this file.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

impl TokenSource {
    fn given(&self) -> bool {
        self.token_stdin || self.token_file.is_some()
    }

    /// The token, without a trailing newline.
    fn read(&self) -> Result<String, ClientError> {
        let mut raw = String::new();
        if self.token_stdin {
            std::io::stdin().read_to_string(&mut raw).map_err(|e| {
                ClientError::Usage(format!("cannot read the token from stdin: {e}"))
            })?;
        } else if let Some(p) = &self.token_file {
            raw = std::fs::read_to_string(p).map_err(|e| {
                ClientError::Usage(format!("cannot read the token file {}: {e}", p.display()))
            })?;
        } else {
            return Err(ClientError::Usage(
                "give the token with --token-stdin or --token-file PATH (never on the command line)"
                    .to_owned(),
            ));
        }
        let token = raw.trim_end_matches(['\n', '\r']).to_owned();
        if token.is_empty() {
            return Err(ClientError::Usage("the token is empty".to_owned()));
        }
        Ok(token)
    }
}

#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Add a credential.
    Add {
        /// A name to recognise it by.
        #[arg(long)]
        name: String,
        /// docker, github, gitlab, google_artifact or generic (for any other
        /// host, an AWS ECR one too: give --host).
        #[arg(long, default_value = "generic")]
        registry: String,
        /// Registry host (for generic registries), e.g. `registry.example.com:5000`.
        #[arg(long)]
        host: Option<String>,
        /// User name at the registry.
        #[arg(long)]
        username: String,
        #[command(flatten)]
        token: TokenSource,
    },
    /// List credentials.
    List,
    /// Show one credential (never its token).
    Show { credential: String },
    /// Replace a credential's token (and optionally its user name or name;
    /// its registry and host stay).
    Rotate {
        credential: String,
        #[arg(long)]
        username: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        token: TokenSource,
    },
    /// Delete a credential.
    Rm { credential: String },
}

const HEADER: &[&str] = &["ID", "NAME", "REGISTRY", "HOST", "USERNAME", "UPDATED"];

fn row(c: &Value) -> Vec<String> {
    vec![
        s(c, "id"),
        s(c, "name"),
        // berth's own kind (GENERIC as well as Render's registries).
        s(c, "kind"),
        s(c, "host"),
        s(c, "username"),
        output::time(c, "updatedAt"),
    ]
}

fn print_one(api: &Api, c: &Value) {
    if api.json() {
        output::json(c);
    } else {
        output::table(HEADER, &[row(c)], "");
    }
}

/// Runs one `berth credential` command.
pub async fn run(args: CredentialArgs) -> Result<(), ClientError> {
    let api = Api::from_opts(&args.opts)?;
    match args.cmd {
        CredentialCommand::Add {
            name,
            registry,
            host,
            username,
            token,
        } => {
            // Read the secret before any network call so a usage error costs nothing.
            let token = token.read()?;
            let mut body = json!({
                "name": name,
                "registry": registry.to_ascii_uppercase().replace('-', "_"),
                "username": username,
                "authToken": token,
            });
            if let (Some(h), Some(m)) = (host, body.as_object_mut()) {
                m.insert("host".into(), json!(h));
            }
            let c = api.post("/v1/registrycredentials", Some(body)).await?;
            print_one(&api, &c);
            Ok(())
        }
        CredentialCommand::List => {
            let all = api.list_all("/v1/registrycredentials").await?;
            if api.json() {
                output::json(&Value::Array(all));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = all.iter().map(row).collect();
            output::table(HEADER, &rows, "no registry credentials");
            Ok(())
        }
        CredentialCommand::Show { credential } => {
            let credential = resolve_credential(&api, &credential).await?;
            let c = api
                .get(&format!("/v1/registrycredentials/{}", enc(&credential)))
                .await?;
            print_one(&api, &c);
            Ok(())
        }
        CredentialCommand::Rotate {
            credential,
            username,
            name,
            token,
        } => {
            let credential = resolve_credential(&api, &credential).await?;
            // The API rotates the token on every update (Render's update
            // takes it each time), so a new name or username comes with one.
            if !token.given() {
                return Err(ClientError::Usage(
                    "give the new token with --token-stdin or --token-file \
                     (--username and --name change along with it)"
                        .to_owned(),
                ));
            }
            let mut body = Map::new();
            body.insert("authToken".into(), json!(token.read()?));
            if let Some(u) = username {
                body.insert("username".into(), json!(u));
            }
            if let Some(n) = name {
                body.insert("name".into(), json!(n));
            }
            let c = api
                .patch(
                    &format!("/v1/registrycredentials/{}", enc(&credential)),
                    Value::Object(body),
                )
                .await?;
            print_one(&api, &c);
            Ok(())
        }
        CredentialCommand::Rm { credential } => {
            let credential = resolve_credential(&api, &credential).await?;
            api.delete(&format!("/v1/registrycredentials/{}", enc(&credential)))
                .await?;
            if api.json() {
                output::json(&json!({ "ok": true, "deleted": credential }));
            } else {
                println!("deleted {credential}");
            }
            Ok(())
        }
    }
}

/// The id of `credential` (an id, or a name looked up with the API's
/// `name` filter).
pub async fn resolve_credential(api: &Api, credential: &str) -> Result<String, ClientError> {
    if credential.starts_with("rgc-") {
        return Ok(credential.to_owned());
    }
    let found = api
        .list_all(&format!("/v1/registrycredentials?name={}", enc(credential)))
        .await?;
    match found.as_slice() {
        [one] => Ok(s(one, "id")),
        [] => Err(ClientError::Api {
            status: 404,
            message: format!("no registry credential named {credential:?}"),
            hint: Some("see `berth credential list` for ids and names".to_owned()),
        }),
        _ => Err(ClientError::Usage(format!(
            "{} registry credentials are named {credential:?}: give its id (rgc-…)",
            found.len()
        ))),
    }
}
