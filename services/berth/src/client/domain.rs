//! `berth domain add|list|rm SERVICE`: a web service's custom domains. A
//! name belongs to one service across the installation; point its DNS at
//! the router (docs/network.md) and it is served like the service's own
//! `<name>.<base-domain>`. The list shows each domain's type, whether it
//! is verified (a certificate was issued for it) and its certificate.

use clap::{Args, Subcommand};
use serde_json::Value;

use super::http::enc;
use super::output::{self, s};
use super::service::resolve;
use super::{Api, ClientError, ClientOpts};

#[derive(Debug, Args)]
pub struct DomainArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub cmd: DomainCommand,
}

#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Add a custom domain to a web service (e.g. www.example.com; no
    /// www/apex pair is added for you).
    Add {
        /// The web service (name or id).
        service: String,
        /// The host name, e.g. www.example.com (punycode for
        /// internationalised names).
        name: String,
    },
    /// List a service's custom domains.
    List {
        /// The service (name or id).
        service: String,
    },
    /// Remove a custom domain: it stops routing at once and its name is
    /// free for any service again.
    Rm {
        /// The service (name or id).
        service: String,
        /// The domain's name or id (cdm-…).
        name: String,
    },
}

/// One row of the table.
fn row(d: &Value) -> Vec<String> {
    let certificate = match (d.get("certificateError"), d.get("certificateNotAfter")) {
        (Some(e), _) if !e.is_null() => format!("failed ({})", e.as_str().unwrap_or("?")),
        (_, Some(t)) if !t.is_null() => format!("issued, until {}", t.as_str().unwrap_or("?")),
        _ => s(d, "certificateStatus"),
    };
    vec![
        s(d, "name"),
        s(d, "domainType"),
        s(d, "verificationStatus"),
        certificate,
        s(d, "id"),
    ]
}

const HEADERS: [&str; 5] = ["NAME", "TYPE", "VERIFICATION", "CERTIFICATE", "ID"];

/// Runs one `berth domain` command.
pub async fn run(args: DomainArgs) -> Result<(), ClientError> {
    let api = Api::from_opts(&args.opts)?;
    match args.cmd {
        DomainCommand::Add { service, name } => {
            let id = resolve(&api, &service).await?;
            let path = format!("/v1/services/{}/custom-domains", enc(&id));
            let body = serde_json::json!({ "name": name });
            let added = api.post(&path, Some(body)).await?;
            if api.json() {
                output::json(&added);
                return Ok(());
            }
            for d in added.as_array().into_iter().flatten() {
                println!(
                    "{id}: custom domain {} added ({}); point its DNS at the router to serve it",
                    s(d, "name"),
                    s(d, "id")
                );
            }
            Ok(())
        }
        DomainCommand::List { service } => {
            let id = resolve(&api, &service).await?;
            let items = api
                .list_all(&format!("/v1/services/{}/custom-domains", enc(&id)))
                .await?;
            let domains: Vec<Value> = items
                .iter()
                .filter_map(|i| i.get("customDomain").cloned())
                .collect();
            if api.json() {
                output::json(&Value::Array(domains));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = domains.iter().map(row).collect();
            output::table(&HEADERS, &rows, "no custom domains");
            Ok(())
        }
        DomainCommand::Rm { service, name } => {
            let id = resolve(&api, &service).await?;
            api.delete(&format!(
                "/v1/services/{}/custom-domains/{}",
                enc(&id),
                enc(&name)
            ))
            .await?;
            if api.json() {
                output::json(&serde_json::json!({ "serviceId": id, "removed": name }));
            } else {
                println!("{id}: custom domain {name} removed");
            }
            Ok(())
        }
    }
}
