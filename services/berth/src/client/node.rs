//! `berth node list`: the installation's machines, whether each is alive
//! and when it was last heard, what it offers and how many of your
//! instances run there (other owners' are not counted).

use clap::{Args, Subcommand};
use serde_json::Value;

use super::output::{self, s};
use super::{Api, ClientError, ClientOpts};

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub cmd: NodeCommand,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the nodes.
    List,
}

/// Seconds since `at` (RFC 3339) as `12s ago`, `-` without one.
fn ago(v: &Value, key: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| {
            let secs = (now - t.with_timezone(&chrono::Utc)).num_seconds().max(0);
            match secs {
                0..=119 => format!("{secs}s ago"),
                120..=7199 => format!("{}m ago", secs / 60),
                _ => format!("{}h ago", secs / 3600),
            }
        })
        .unwrap_or_else(|| "-".to_owned())
}

/// Runs one `berth node` command.
pub async fn run(args: NodeArgs) -> Result<(), ClientError> {
    let api = Api::from_opts(&args.opts)?;
    match args.cmd {
        NodeCommand::List => {
            let nodes = api.get("/v1/nodes").await?;
            if api.json() {
                output::json(&nodes);
                return Ok(());
            }
            let now = chrono::Utc::now();
            let rows: Vec<Vec<String>> = nodes
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| {
                    vec![
                        s(n, "id"),
                        s(n, "name"),
                        s(n, "state"),
                        ago(n, "lastHeartbeatAt", now),
                        s(n, "cpuMillis"),
                        s(n, "memoryMib"),
                        s(n, "instances"),
                    ]
                })
                .collect();
            output::table(
                &[
                    "NODE",
                    "NAME",
                    "STATE",
                    "LAST HEARD",
                    "CPU (MILLI)",
                    "MEMORY (MIB)",
                    "YOUR INSTANCES",
                ],
                &rows,
                "no nodes have registered (is a node running? see `berth up` or `berth run node`)",
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_heard_reads_as_an_age() {
        let now = chrono::Utc::now();
        let at = |secs: i64| serde_json::json!({ "t": (now - chrono::TimeDelta::seconds(secs)).to_rfc3339() });
        assert_eq!(ago(&at(3), "t", now), "3s ago");
        assert_eq!(ago(&at(600), "t", now), "10m ago");
        assert_eq!(ago(&at(7200), "t", now), "2h ago");
        assert_eq!(ago(&at(3), "missing", now), "-");
    }
}
