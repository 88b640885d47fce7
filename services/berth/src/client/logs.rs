//! `berth service logs`: instance log lines straight from NATS
//! (`<prefix>.logs.<service>`, JSON lines published by each node's agent,
//! the instance in each). berth stores no log history, so this shows only lines
//! written while it listens.

use std::time::Duration;

use berth_schemas::ids::{InstanceId, ServiceId};
use berth_schemas::Subjects;
use clap::Args;
use futures::StreamExt;
use serde_json::Value;

use super::output;
use super::{ClientError, ClientOpts};

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Service id or name.
    pub service: String,
    /// Keep following until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// Without -f: listen this many seconds, then exit.
    #[arg(long = "for", default_value_t = 5, value_name = "SECS")]
    pub listen_secs: u64,
    /// Only this instance (`ins-…`).
    #[arg(long)]
    pub instance: Option<String>,
}

/// One printable line of a log message (`--json`: the message as sent).
fn render(payload: &[u8], json: bool) -> String {
    match serde_json::from_slice::<Value>(payload) {
        Ok(v) if json => v.to_string(),
        Ok(v) => format!(
            "{} {} {:<6} | {}",
            output::time(&v, "time"),
            output::s(&v, "instance"),
            output::s(&v, "stream"),
            v.get("line").and_then(Value::as_str).unwrap_or_default()
        ),
        Err(_) => String::from_utf8_lossy(payload).into_owned(),
    }
}

/// Prints the logs of service `id` as they arrive.
pub async fn run(id: &str, args: LogsArgs, opts: &ClientOpts) -> Result<(), ClientError> {
    let json = opts.json;
    let subjects = Subjects::new(&opts.subject_prefix)
        .map_err(|e| ClientError::Usage(format!("BERTH_SUBJECT_PREFIX: {e}")))?;
    let instance = args
        .instance
        .as_deref()
        .map(|i| {
            i.parse::<InstanceId>()
                .map_err(|_| ClientError::Usage(format!("{i:?} is not an instance id (ins-…)")))
        })
        .transpose()?;
    let service: ServiceId = id
        .parse()
        .map_err(|_| ClientError::Usage(format!("{id:?} is not a service id")))?;
    let subject = subjects.logs(&service);
    // No retry on the first connect: an unreachable server must fail here,
    // not leave us listening to nothing.
    let client = opts
        .nats()
        .await
        .map_err(|e| unreachable_nats(&opts.nats_url, &e))?;
    let mut sub = client
        .subscribe(subject.clone())
        .await
        .map_err(|e| unreachable_nats(&opts.nats_url, &e.to_string()))?;
    if !json {
        if args.follow {
            eprintln!("following {subject} (live only; Ctrl-C to stop)");
        } else {
            eprintln!(
                "listening on {subject} for {} s (logs are live only; -f to follow)",
                args.listen_secs
            );
        }
    }
    let stop = async {
        if args.follow {
            let _ = tokio::signal::ctrl_c().await;
        } else {
            tokio::time::sleep(Duration::from_secs(args.listen_secs)).await;
        }
    };
    tokio::pin!(stop);
    let mut count = 0u64;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            msg = sub.next() => match msg {
                Some(m) => {
                    let other = instance.as_ref().is_some_and(|want| {
                        serde_json::from_slice::<Value>(&m.payload)
                            .is_ok_and(|v| v.get("instance").and_then(Value::as_str) != Some(want.as_str()))
                    });
                    if other {
                        continue;
                    }
                    count += 1;
                    println!("{}", render(&m.payload, json));
                }
                None => return Err(unreachable_nats(&opts.nats_url, "connection closed")),
            },
        }
    }
    if count == 0 && !json {
        eprintln!("no log lines arrived (is an instance running and writing output?)");
    }
    Ok(())
}

fn unreachable_nats(url: &str, why: &str) -> ClientError {
    ClientError::Unreachable(format!(
        "cannot reach NATS at {url} ({why}); logs come from the installation's NATS server \
         (set BERTH_NATS_URL)"
    ))
}
