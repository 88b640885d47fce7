//! `berth service …`: create, list, show, update, delete, deploy, rollback,
//! scale, restart, suspend, resume, events and logs. A service is named by
//! its id (`srv-…`) or by its name.

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::http::enc;
use super::output::{self, s};
use super::settings::{settings_body, Settings};
use super::{deploy, logs, Api, ClientError, ClientOpts, NatsOpts};

#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub cmd: ServiceCommand,
}

/// Following the deploy a command starts.
#[derive(Debug, Clone, Args)]
pub struct FollowArgs {
    /// Follow the deploy this starts until it ends (exit 1 if it fails).
    #[arg(long)]
    pub wait: bool,
    /// Give up following after this many seconds (exit 1).
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    #[command(flatten)]
    pub nats: NatsOpts,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service; its first deploy starts at once.
    Create {
        /// Service name (unique per owner).
        name: String,
        /// web_service, private_service, background_worker or cron_job.
        #[arg(long = "type", default_value = "web_service")]
        service_type: String,
        #[command(flatten)]
        settings: Settings,
        /// Number of instances (later: `service scale`).
        #[arg(long)]
        instances: Option<u32>,
        /// Region label (fixed once created).
        #[arg(long)]
        region: Option<String>,
        /// A disk kept across restarts and deploys: NAME:PATH[:GB] (1 GB
        /// unless given; one instance only; fixed once created).
        #[arg(long, value_name = "NAME:PATH[:GB]")]
        disk: Option<String>,
        /// Follow the first deploy until it ends (exit 1 if it fails).
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        nats: NatsOpts,
    },
    /// List services.
    List,
    /// Show one service and its recent deploys.
    Show { service: String },
    /// Change a service's settings (a change of image or settings that
    /// affect instances starts a deploy).
    Update {
        service: String,
        /// A new name (its URL at the router changes with it).
        #[arg(long = "rename", value_name = "NEW_NAME")]
        rename: Option<String>,
        #[command(flatten)]
        settings: Settings,
        /// With --env/--env-file: replace every env var with the ones given
        /// (without it they are merged: others are kept).
        #[arg(long)]
        replace_env: bool,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// Delete a service and stop its instances.
    Delete {
        service: String,
        /// Really delete (required).
        #[arg(long)]
        yes: bool,
    },
    /// Start a deploy and follow it until it ends (exit 1 if it fails).
    Deploy {
        service: String,
        /// Deploy this image reference instead of the service's.
        #[arg(long)]
        image: Option<String>,
        /// Return once the deploy is accepted instead of following it.
        #[arg(long)]
        no_wait: bool,
        /// Give up following after this many seconds (exit 1).
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        #[command(flatten)]
        nats: NatsOpts,
    },
    /// Follow a deploy until it ends (exit 1 if it fails): the one named,
    /// or the service's newest.
    Follow {
        service: String,
        /// The deploy (`dep-…`); default the newest.
        deploy: Option<String>,
        /// Give up following after this many seconds (exit 1).
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        #[command(flatten)]
        nats: NatsOpts,
    },
    /// Cancel a queued or running deploy.
    Cancel {
        service: String,
        /// The deploy (`dep-…`).
        deploy: String,
    },
    /// Where each instance runs and in what state.
    Instances { service: String },
    /// Deploy an earlier deploy's image again.
    Rollback {
        service: String,
        /// The deploy to go back to (`dep-…`).
        deploy: String,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// Set the number of instances.
    Scale { service: String, instances: u32 },
    /// A web service's IP allow list: with no flag, shows it; --add and
    /// --remove change it (only clients in its blocks reach the service;
    /// others get 403 from the router), --everyone lets every client
    /// through again. Blocks are CIDRs (203.0.113.0/24, 2001:db8::/32) or
    /// single addresses.
    Allow {
        service: String,
        /// A block to let through, with an optional description:
        /// CIDR[=DESCRIPTION]. May be given more than once.
        #[arg(long, value_name = "CIDR[=DESCRIPTION]")]
        add: Vec<String>,
        /// A block to take off the list (as listed). May be given more than once.
        #[arg(long, value_name = "CIDR")]
        remove: Vec<String>,
        /// Remove the list: every client is let through again.
        #[arg(long, conflicts_with_all = ["add", "remove"])]
        everyone: bool,
    },
    /// A web service's maintenance mode: --on makes the router answer
    /// every request with a 503 maintenance page (its instances keep
    /// running), which sends browsers to --page when one is set; --off
    /// passes requests on again. The page is kept for next time.
    Maintenance {
        service: String,
        #[arg(long, conflicts_with = "off", required_unless_present = "off")]
        on: bool,
        #[arg(long)]
        off: bool,
        /// An http(s):// address of the page to show instead of berth's
        /// ("" for berth's again).
        #[arg(long, value_name = "URL", conflicts_with = "off")]
        page: Option<String>,
    },
    /// Keep the instance count between --min and --max, sized to what the
    /// instances use of their plan's CPU (--cpu, 70 % when neither target
    /// is given) and/or memory (--memory): more at once when well above,
    /// fewer when well below for five minutes. --off removes it; the count
    /// stays where it is.
    Autoscale {
        service: String,
        #[arg(long, required_unless_present = "off")]
        min: Option<u32>,
        #[arg(long, required_unless_present = "off")]
        max: Option<u32>,
        /// Target CPU use, percent of the plan's.
        #[arg(long, value_name = "PERCENT")]
        cpu: Option<u32>,
        /// Target memory use, percent of the plan's.
        #[arg(long, value_name = "PERCENT")]
        memory: Option<u32>,
        #[arg(long, conflicts_with_all = ["min", "max", "cpu", "memory"])]
        off: bool,
    },
    /// Show the service's disk; with a flag, change it (its instance sees
    /// the change at its next start: a deploy or `service restart`), add
    /// one to a service without, or remove it (both deploy the service).
    Disk {
        service: String,
        /// Give the service a disk: NAME:PATH[:GB] (1 GB by default). The
        /// service is deployed: its instance is stopped, then started with
        /// the disk.
        #[arg(long, value_name = "NAME:PATH[:GB]", conflicts_with_all = ["size_gb", "name", "mount_path", "remove"])]
        add: Option<String>,
        /// Remove the disk and everything on it; the service is deployed
        /// without it. Needs --yes.
        #[arg(long, conflicts_with_all = ["size_gb", "name", "mount_path"])]
        remove: bool,
        /// Confirms --remove (its data is gone for good) or --restore
        /// (what was written since the snapshot is gone).
        #[arg(long)]
        yes: bool,
        /// List the disk's snapshots (taken daily by its node; the 7
        /// newest are kept), newest first.
        #[arg(long, conflicts_with_all = ["size_gb", "name", "mount_path", "add", "remove", "snapshot", "restore"])]
        snapshots: bool,
        /// Take a snapshot now and wait until it is listed.
        #[arg(long, conflicts_with_all = ["size_gb", "name", "mount_path", "add", "remove", "restore"])]
        snapshot: bool,
        /// Set the disk back to this snapshot (a key from --snapshots);
        /// the service is deployed on it. Needs --yes.
        #[arg(long, value_name = "KEY", conflicts_with_all = ["size_gb", "name", "mount_path", "add", "remove"])]
        restore: Option<String>,
        /// Grow it to this many GB (a disk never shrinks).
        #[arg(long = "size", value_name = "GB")]
        size_gb: Option<u32>,
        /// Rename it.
        #[arg(long)]
        name: Option<String>,
        /// Mount it at another path in the instance.
        #[arg(long)]
        mount_path: Option<String>,
    },
    /// Restart every instance.
    Restart { service: String },
    /// Stop every instance and ignore deploy hooks until resumed.
    Suspend { service: String },
    /// Start a suspended service again (its live image deploys again).
    Resume {
        service: String,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// The service's event timeline, newest first.
    Events {
        service: String,
        /// Only these types, comma-separated (e.g. deploy_ended,server_failed).
        #[arg(long = "type")]
        types: Option<String>,
        /// At most this many events (1–100).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only events at or after this time (RFC 3339, e.g. 2026-11-27T08:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only events before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
    },
    /// Instance logs: the last lines kept (100 unless --tail or --since
    /// say otherwise), oldest first; with -f, then new lines as they come.
    ///
    /// Lines are kept for a while (7 days and a number of lines per
    /// service by default: see docs/logs.md) after the instance that
    /// wrote them has gone.
    Logs(logs::LogsArgs),
}

/// Runs one `berth service` command.
pub async fn run(args: ServiceArgs) -> Result<(), ClientError> {
    let api = Api::from_opts(&args.opts)?;
    match args.cmd {
        ServiceCommand::Create {
            name,
            service_type,
            settings,
            instances,
            region,
            disk,
            wait,
            nats,
        } => {
            create(
                &api,
                name,
                service_type,
                settings,
                (instances, region, disk),
                wait.then_some(&nats),
            )
            .await
        }
        ServiceCommand::List => list(&api).await,
        ServiceCommand::Show { service } => show(&api, &service).await,
        ServiceCommand::Update {
            service,
            rename,
            settings,
            replace_env,
            follow,
        } => {
            let id = resolve(&api, &service).await?;
            let before = newest_deploy(&api, &id).await?;
            // With --json --wait, stdout holds only the followed deploy.
            let print = !(follow.wait && api.json());
            update(&api, &id, rename, settings, replace_env, print).await?;
            started_since(&api, &id, before, follow).await
        }
        ServiceCommand::Follow {
            service,
            deploy,
            timeout,
            nats,
        } => {
            let id = resolve(&api, &service).await?;
            let dep = match deploy {
                Some(d) => d,
                None => {
                    let newest = api
                        .get(&format!("/v1/services/{}/deploys?limit=1", enc(&id)))
                        .await?;
                    newest
                        .get(0)
                        .map(|i| s(i, "deploy/id"))
                        .filter(|d| d != "-")
                        .ok_or_else(|| ClientError::Api {
                            status: 404,
                            message: format!("{id} has no deploy"),
                            hint: None,
                        })?
                }
            };
            finish_deploy(&api, &id, &json!({ "id": dep }), Some(&nats), timeout).await
        }
        ServiceCommand::Cancel { service, deploy } => {
            let id = resolve(&api, &service).await?;
            let d = api
                .post(
                    &format!("/v1/services/{}/deploys/{}/cancel", enc(&id), enc(&deploy)),
                    None,
                )
                .await?;
            if api.json() {
                output::json(&d);
            } else {
                println!("{id}: deploy {deploy} {}", s(&d, "status"));
            }
            Ok(())
        }
        ServiceCommand::Instances { service } => {
            let id = resolve(&api, &service).await?;
            let all = api
                .get(&format!("/v1/services/{}/instances", enc(&id)))
                .await?;
            if api.json() {
                output::json(&all);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = all
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    vec![
                        s(i, "id"),
                        s(i, "nodeId"),
                        s(i, "phase"),
                        if i["healthy"].as_bool() == Some(true) {
                            "yes".to_owned()
                        } else {
                            "no".to_owned()
                        },
                        s(i, "addr"),
                        s(i, "deployId"),
                        output::time(i, "createdAt"),
                        s(i, "problem"),
                    ]
                })
                .collect();
            output::table(
                &[
                    "INSTANCE", "NODE", "PHASE", "HEALTHY", "ADDRESS", "DEPLOY", "STARTED",
                    "PROBLEM",
                ],
                &rows,
                "no instances",
            );
            Ok(())
        }
        ServiceCommand::Delete { service, yes } => {
            if !yes {
                return Err(ClientError::Usage(format!(
                    "deleting {service} stops its instances for good; add --yes to go ahead"
                )));
            }
            let id = resolve(&api, &service).await?;
            api.delete(&format!("/v1/services/{}", enc(&id))).await?;
            done(&api, &format!("deleted {id}"));
            Ok(())
        }
        ServiceCommand::Deploy {
            service,
            image,
            no_wait,
            timeout,
            nats,
        } => {
            let id = resolve(&api, &service).await?;
            let body = match image {
                Some(i) => json!({ "imageUrl": i }),
                None => json!({}),
            };
            let dep = api
                .post(&format!("/v1/services/{}/deploys", enc(&id)), Some(body))
                .await?;
            finish_deploy(&api, &id, &dep, (!no_wait).then_some(&nats), timeout).await
        }
        ServiceCommand::Rollback {
            service,
            deploy,
            follow,
        } => {
            let id = resolve(&api, &service).await?;
            let dep = api
                .post(
                    &format!("/v1/services/{}/rollback", enc(&id)),
                    Some(json!({ "deployId": deploy })),
                )
                .await?;
            let nats = follow.wait.then_some(&follow.nats);
            finish_deploy(&api, &id, &dep, nats, follow.timeout).await
        }
        ServiceCommand::Scale { service, instances } => {
            let id = resolve(&api, &service).await?;
            api.post(
                &format!("/v1/services/{}/scale", enc(&id)),
                Some(json!({ "numInstances": instances })),
            )
            .await?;
            done(&api, &format!("{id}: scaling to {instances} instance(s)"));
            Ok(())
        }
        ServiceCommand::Allow {
            service,
            add,
            remove,
            everyone,
        } => allow(&api, &service, add, remove, everyone).await,
        ServiceCommand::Maintenance {
            service, on, page, ..
        } => maintenance(&api, &service, on, page).await,
        ServiceCommand::Autoscale {
            service, off: true, ..
        } => {
            let id = resolve(&api, &service).await?;
            api.delete(&format!("/v1/services/{}/autoscaling", enc(&id)))
                .await?;
            done(
                &api,
                &format!("{id}: autoscaling removed; the instance count stays where it is"),
            );
            Ok(())
        }
        ServiceCommand::Autoscale {
            service,
            min,
            max,
            cpu,
            memory,
            ..
        } => {
            let id = resolve(&api, &service).await?;
            let cpu = cpu.or(memory.is_none().then_some(70));
            let on = berth_schemas::model::AutoscalingConfig::on(
                min.unwrap_or(1),
                max.unwrap_or(1),
                cpu,
                memory,
            );
            let body = serde_json::to_value(&on)
                .map_err(|e| ClientError::Usage(format!("autoscaling: {e}")))?;
            api.put(&format!("/v1/services/{}/autoscaling", enc(&id)), body)
                .await?;
            done(
                &api,
                &format!(
                    "{id}: {}",
                    autoscaling_of(&json!({"serviceDetails": {"autoscaling": on}}))
                ),
            );
            Ok(())
        }
        ServiceCommand::Disk {
            service,
            add: Some(spec),
            ..
        } => add_disk(&api, &service, &spec).await,
        ServiceCommand::Disk {
            service,
            remove: true,
            yes,
            ..
        } => remove_disk(&api, &service, yes).await,
        ServiceCommand::Disk {
            service,
            snapshots: true,
            ..
        } => list_snapshots(&api, &service).await,
        ServiceCommand::Disk {
            service,
            snapshot: true,
            ..
        } => take_snapshot(&api, &service).await,
        ServiceCommand::Disk {
            service,
            restore: Some(key),
            yes,
            ..
        } => restore_snapshot(&api, &service, &key, yes).await,
        ServiceCommand::Disk {
            service,
            size_gb,
            name,
            mount_path,
            ..
        } => disk(&api, &service, size_gb, name, mount_path).await,
        ServiceCommand::Restart { service } => {
            action(&api, &service, "restart", "restarting").await
        }
        ServiceCommand::Suspend { service } => {
            action(&api, &service, "suspend", "suspending").await
        }
        ServiceCommand::Resume { service, follow } => {
            let id = resolve(&api, &service).await?;
            let before = newest_deploy(&api, &id).await?;
            if follow.wait && api.json() {
                api.post(&format!("/v1/services/{}/resume", enc(&id)), None)
                    .await?;
            } else {
                action(&api, &id, "resume", "resuming").await?;
            }
            started_since(&api, &id, before, follow).await
        }
        ServiceCommand::Events {
            service,
            types,
            limit,
            since,
            until,
        } => events(&api, &service, types, limit, [since, until]).await,
        ServiceCommand::Logs(a) => {
            let id = resolve(&api, &a.service).await?;
            logs::run(&api, &id, a).await
        }
    }
}

/// In `--json` mode an action with no body prints `{"ok": …}` so scripts
/// always get JSON; otherwise the sentence.
pub(super) fn done(api: &Api, sentence: &str) {
    if api.json() {
        output::json(&json!({ "ok": true, "message": sentence }));
    } else {
        println!("{sentence}");
    }
}

async fn action(api: &Api, service: &str, verb: &str, ing: &str) -> Result<(), ClientError> {
    let id = resolve(api, service).await?;
    api.post(&format!("/v1/services/{}/{verb}", enc(&id)), None)
        .await?;
    done(api, &format!("{id}: {ing} (accepted)"));
    Ok(())
}

/// `--credential` given by name becomes its id ("" stays: it removes it).
async fn credential_by_name(api: &Api, mut settings: Settings) -> Result<Settings, ClientError> {
    if let Some(c) = settings.credential.as_deref().filter(|c| !c.is_empty()) {
        settings.credential = Some(super::credential::resolve_credential(api, c).await?);
    }
    Ok(settings)
}

/// The id of `service` (an id, or a name looked up in the listing).
pub async fn resolve(api: &Api, service: &str) -> Result<String, ClientError> {
    if service.starts_with("srv-") {
        return Ok(service.to_owned());
    }
    // Names are unique per owner: the API's `name` filter finds it.
    let all = api
        .list_all(&format!("/v1/services?name={}", enc(service)))
        .await?;
    all.iter()
        .filter_map(|i| i.get("service"))
        .find(|v| v.get("name").and_then(Value::as_str) == Some(service))
        .and_then(|v| v.get("id").and_then(Value::as_str))
        .map(str::to_owned)
        .ok_or_else(|| ClientError::Api {
            status: 404,
            message: format!("no service named {service:?}"),
            hint: Some("see `berth service list` for ids and names".to_owned()),
        })
}

/// `berth service disk`: shows the disk, or changes what the flags say.
async fn disk(
    api: &Api,
    service: &str,
    size_gb: Option<u32>,
    name: Option<String>,
    mount_path: Option<String>,
) -> Result<(), ClientError> {
    let changing = size_gb.is_some() || name.is_some() || mount_path.is_some();
    let (_, disk) = disk_id(api, service).await?;
    let disk = disk.as_str();
    let mut change = serde_json::Map::new();
    if let Some(gb) = size_gb {
        change.insert("sizeGB".into(), json!(gb));
    }
    if let Some(n) = name {
        change.insert("name".into(), json!(n));
    }
    if let Some(p) = mount_path {
        change.insert("mountPath".into(), json!(p));
    }
    let now = match changing {
        false => api.get(&format!("/v1/disks/{}", enc(disk))).await?,
        true => {
            api.patch(&format!("/v1/disks/{}", enc(disk)), Value::Object(change))
                .await?
        }
    };
    if api.json() {
        output::json(&now);
        return Ok(());
    }
    output::fields(&[
        ("disk", s(&now, "id")),
        ("name", s(&now, "name")),
        ("mount path", s(&now, "mountPath")),
        ("size", format!("{} GB", s(&now, "sizeGB"))),
        ("node", s(&now, "nodeId")),
        ("service", s(&now, "serviceId")),
        ("updated", output::time(&now, "updatedAt")),
    ]);
    if changing {
        println!("(its instance sees a change at its next start: a deploy or `berth service restart {service}`)");
    }
    Ok(())
}

/// The service's id and its disk's, or a 404 saying it has none.
async fn disk_id(api: &Api, service: &str) -> Result<(String, String), ClientError> {
    let id = resolve(api, service).await?;
    let svc = api.get(&format!("/v1/services/{}", enc(&id))).await?;
    match svc["serviceDetails"]["disk"]["id"].as_str() {
        Some(disk) => Ok((id, disk.to_owned())),
        None => Err(ClientError::Api {
            status: 404,
            message: format!("{service} has no disk"),
            hint: Some(format!(
                "give it one: `berth service disk {service} --add NAME:PATH[:GB]`"
            )),
        }),
    }
}

/// `service disk --add`: `POST /v1/disks`.
async fn add_disk(api: &Api, service: &str, spec: &str) -> Result<(), ClientError> {
    let mut body = disk_body(spec)?;
    let id = resolve(api, service).await?;
    body["serviceId"] = json!(id);
    let d = api.post("/v1/disks", Some(body)).await?;
    if api.json() {
        output::json(&d);
        return Ok(());
    }
    println!(
        "{id}: disk {} added ({} at {}, {} GB); the service deploys with it (`berth service follow {service}`)",
        s(&d, "id"),
        s(&d, "name"),
        s(&d, "mountPath"),
        s(&d, "sizeGB")
    );
    Ok(())
}

/// `service disk --remove --yes`: `DELETE /v1/disks/{id}`.
async fn remove_disk(api: &Api, service: &str, yes: bool) -> Result<(), ClientError> {
    let (id, disk) = disk_id(api, service).await?;
    if !yes {
        return Err(ClientError::Usage(format!(
            "removing disk {disk} deletes everything on it: add --yes to go on"
        )));
    }
    api.delete(&format!("/v1/disks/{}", enc(&disk))).await?;
    done(
        api,
        &format!("{id}: disk {disk} removed; the service deploys without it"),
    );
    Ok(())
}

/// `service disk --snapshots`: `GET /v1/disks/{id}/snapshots`.
async fn list_snapshots(api: &Api, service: &str) -> Result<(), ClientError> {
    let (_, disk) = disk_id(api, service).await?;
    let list = api
        .get(&format!("/v1/disks/{}/snapshots", enc(&disk)))
        .await?;
    if api.json() {
        output::json(&list);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|v| {
            vec![
                s(v, "snapshotKey"),
                output::time(v, "createdAt"),
                v["sizeBytes"].as_u64().map_or_else(
                    || "-".to_owned(),
                    |b| format!("{:.1} MiB", b as f64 / 1048576.0),
                ),
            ]
        })
        .collect();
    output::table(
        &["KEY", "TAKEN", "SIZE"],
        &rows,
        &format!("disk {disk} has no snapshots yet (`berth service disk {service} --snapshot` takes one)"),
    );
    Ok(())
}

/// `service disk --snapshot`: `POST /v1/disks/{id}/snapshots`, then waits
/// until a snapshot newer than the newest before is listed.
async fn take_snapshot(api: &Api, service: &str) -> Result<(), ClientError> {
    let (id, disk) = disk_id(api, service).await?;
    let path = format!("/v1/disks/{}/snapshots", enc(&disk));
    let newest = |list: &Value| list[0]["snapshotKey"].as_str().map(str::to_owned);
    let before = newest(&api.get(&path).await?);
    api.post(&path, None).await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let list = api.get(&path).await?;
        if newest(&list).is_some_and(|k| Some(&k) != before.as_ref()) {
            if api.json() {
                output::json(&list[0]);
            } else {
                println!(
                    "{id}: disk {disk} snapshot {} taken ({})",
                    s(&list[0], "snapshotKey"),
                    output::time(&list[0], "createdAt")
                );
            }
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(ClientError::Usage(format!(
                "no snapshot of disk {disk} after 10 minutes: is its node up? (`berth node list`)"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// `service disk --restore KEY --yes`: `POST /v1/disks/{id}/snapshots/restore`.
async fn restore_snapshot(
    api: &Api,
    service: &str,
    key: &str,
    yes: bool,
) -> Result<(), ClientError> {
    let (id, disk) = disk_id(api, service).await?;
    if !yes {
        return Err(ClientError::Usage(format!(
            "restoring disk {disk} to {key} loses what was written on it since: add --yes to go on"
        )));
    }
    api.post(
        &format!("/v1/disks/{}/snapshots/restore", enc(&disk)),
        Some(json!({"snapshotKey": key})),
    )
    .await?;
    done(
        api,
        &format!("{id}: disk {disk} restored to {key}; the service deploys on it (`berth service follow {service}`)"),
    );
    Ok(())
}

/// Shows or changes a web service's IP allow list.
async fn allow(
    api: &Api,
    service: &str,
    add: Vec<String>,
    remove: Vec<String>,
    everyone: bool,
) -> Result<(), ClientError> {
    let id = resolve(api, service).await?;
    let path = format!("/v1/services/{}", enc(&id));
    let now = api.get(&path).await?;
    let listed = now["serviceDetails"]["ipAllowList"].as_array().cloned();
    let list = if everyone {
        // No list: every client.
        Some(Value::Null)
    } else if add.is_empty() && remove.is_empty() {
        None
    } else {
        let mut list = listed.clone().unwrap_or_default();
        for r in &remove {
            let before = list.len();
            list.retain(|b| b["cidrBlock"].as_str() != Some(r.as_str()));
            if list.len() == before {
                return Err(ClientError::Usage(format!(
                    "{r} is not on the list (see `berth service allow {service}`)"
                )));
            }
        }
        for a in &add {
            let (cidr, description) = a.split_once('=').unwrap_or((a.as_str(), ""));
            list.push(json!({"cidrBlock": cidr, "description": description}));
        }
        Some(Value::Array(list))
    };
    let shown = match list {
        Some(list) => {
            api.patch(&path, json!({"serviceDetails": {"ipAllowList": list}}))
                .await?
        }
        None => now,
    };
    if api.json() {
        output::json(&shown["serviceDetails"]["ipAllowList"]);
        return Ok(());
    }
    println!("{}", allow_list_of(&shown));
    Ok(())
}

/// A service's IP allow list in words.
fn allow_list_of(svc: &Value) -> String {
    if svc["type"] != json!("web_service") {
        return "-".to_owned();
    }
    match svc["serviceDetails"]["ipAllowList"].as_array() {
        None => "every client (no IP allow list)".to_owned(),
        Some(l) if l.is_empty() => "no client: its IP allow list is empty".to_owned(),
        Some(l) => l
            .iter()
            .map(|b| {
                let d = b["description"].as_str().unwrap_or_default();
                let c = b["cidrBlock"].as_str().unwrap_or_default();
                if d.is_empty() {
                    c.to_owned()
                } else {
                    format!("{c} ({d})")
                }
            })
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Turns a web service's maintenance mode on or off, keeping its page
/// unless another is given.
async fn maintenance(
    api: &Api,
    service: &str,
    on: bool,
    page: Option<String>,
) -> Result<(), ClientError> {
    let id = resolve(api, service).await?;
    let path = format!("/v1/services/{}", enc(&id));
    let now = api.get(&path).await?;
    let uri = page.unwrap_or_else(|| {
        now["serviceDetails"]["maintenanceMode"]["uri"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    });
    api.patch(
        &path,
        json!({"serviceDetails": {"maintenanceMode": {"enabled": on, "uri": uri}}}),
    )
    .await?;
    let said = match (on, uri.as_str()) {
        (false, _) => "maintenance mode off: requests reach its instances again".to_owned(),
        (true, "") => {
            "maintenance mode on: the router answers with a 503 maintenance page".to_owned()
        }
        (true, page) => format!(
            "maintenance mode on: the router answers with a 503 page that sends browsers to {page}"
        ),
    };
    done(api, &format!("{id}: {said}"));
    Ok(())
}

/// A service's maintenance mode in words (`-` when never set).
fn maintenance_of(svc: &Value) -> String {
    let m = &svc["serviceDetails"]["maintenanceMode"];
    match (
        m["enabled"].as_bool(),
        m["uri"].as_str().unwrap_or_default(),
    ) {
        (None, _) => "-".to_owned(),
        (Some(false), _) => "off".to_owned(),
        (Some(true), "") => "ON: requests get a 503 maintenance page".to_owned(),
        (Some(true), page) => format!("ON: requests get a 503 page sending browsers to {page}"),
    }
}

/// A service's autoscaling in words (`-` without).
fn autoscaling_of(svc: &Value) -> String {
    serde_json::from_value::<berth_schemas::model::AutoscalingConfig>(
        svc["serviceDetails"]["autoscaling"].clone(),
    )
    .map_or_else(|_| "-".to_owned(), |a| a.to_string())
}

/// A service's disk in words (`-` without one).
fn disk_of(svc: &Value) -> String {
    let d = &svc["serviceDetails"]["disk"];
    if d.is_null() {
        return "-".to_owned();
    }
    let node = match s(svc, "serviceDetails/disk/nodeId") {
        n if n == "-" => "not placed yet".to_owned(),
        n => format!("on {n}"),
    };
    let full = if d["usageHigh"] == json!(true) {
        " — OVER 90 % FULL"
    } else {
        ""
    };
    format!(
        "{} at {}, {} GB ({}, {node}){full}",
        s(svc, "serviceDetails/disk/name"),
        s(svc, "serviceDetails/disk/mountPath"),
        s(svc, "serviceDetails/disk/sizeGB"),
        s(svc, "serviceDetails/disk/id"),
    )
}

/// `--disk NAME:PATH[:GB]` as the API's `serviceDetails.disk`.
fn disk_body(given: &str) -> Result<Value, ClientError> {
    let usage = || {
        ClientError::Usage(format!(
            "{given:?}: give NAME:PATH or NAME:PATH:GB, e.g. data:/var/lib/data:10"
        ))
    };
    let (name, rest) = given.split_once(':').ok_or_else(usage)?;
    let (path, size) = match rest.rsplit_once(':') {
        Some((path, gb)) => (path, Some(gb.parse::<u32>().map_err(|_| usage())?)),
        None => (rest, None),
    };
    if name.is_empty() || path.is_empty() {
        return Err(usage());
    }
    let mut disk = json!({"name": name, "mountPath": path});
    if let Some(gb) = size {
        disk["sizeGB"] = json!(gb);
    }
    Ok(disk)
}

async fn create(
    api: &Api,
    name: String,
    service_type: String,
    settings: Settings,
    (instances, region, disk): (Option<u32>, Option<String>, Option<String>),
    wait: Option<&NatsOpts>,
) -> Result<(), ClientError> {
    let disk = disk.as_deref().map(disk_body).transpose()?;
    if settings.image.is_none() {
        return Err(ClientError::Usage(
            "--image is required to create a service".to_owned(),
        ));
    }
    let settings = credential_by_name(api, settings).await?;
    let mut body = Map::new();
    body.insert("name".into(), json!(name));
    body.insert("type".into(), json!(service_type));
    settings_body(&settings, &mut body)?;
    if instances.is_some() || region.is_some() || disk.is_some() {
        let details = body
            .entry("serviceDetails")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(d) = details.as_object_mut() {
            if let Some(n) = instances {
                d.insert("numInstances".into(), json!(n));
            }
            if let Some(r) = region {
                d.insert("region".into(), json!(r));
            }
            if let Some(disk) = disk {
                d.insert("disk".into(), disk);
            }
        }
    }
    let created = api.post("/v1/services", Some(Value::Object(body))).await?;
    let svc = created.get("service").cloned().unwrap_or(Value::Null);
    let id = s(&svc, "id");
    let dep = s(&created, "deployId");
    if api.json() {
        if wait.is_none() {
            output::json(&created);
        }
    } else {
        output::fields(&[
            ("created", format!("{} ({})", s(&svc, "name"), id)),
            ("type", s(&svc, "type")),
            ("image", s(&svc, "image/imagePath")),
            ("instances", s(&svc, "serviceDetails/numInstances")),
            ("deploy", dep.clone()),
            (
                "deploy hook",
                format!("{}{}", api.base(), s(&created, "deployHookUrl")),
            ),
        ]);
        println!(
            "(the deploy hook URL holds a secret key; `berth hook regenerate {id}` replaces it)"
        );
    }
    if let Some(nats) = wait {
        let done = deploy::follow(api, nats, &id, &dep, 600).await?;
        if api.json() {
            // One JSON document: the creation answer with the deploy as it ended.
            let mut all = created;
            if let Some(m) = all.as_object_mut() {
                m.insert("deploy".into(), done);
            }
            output::json(&all);
        }
    }
    Ok(())
}

/// `suspended` or `active`, from the API's `suspended` field.
fn state(v: &Value) -> String {
    if s(v, "suspended") == "suspended" {
        "suspended".to_owned()
    } else {
        "active".to_owned()
    }
}

fn service_row(v: &Value) -> Vec<String> {
    vec![
        s(v, "id"),
        s(v, "name"),
        s(v, "type"),
        s(v, "image/imagePath"),
        s(v, "serviceDetails/numInstances"),
        state(v),
        s(v, "liveDeployId"),
    ]
}

const SERVICE_HEADER: &[&str] = &[
    "ID",
    "NAME",
    "TYPE",
    "IMAGE",
    "INSTANCES",
    "STATE",
    "LIVE DEPLOY",
];

async fn list(api: &Api) -> Result<(), ClientError> {
    let all = api.list_all("/v1/services").await?;
    if api.json() {
        output::json(&Value::Array(all));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .filter_map(|i| i.get("service"))
        .map(service_row)
        .collect();
    output::table(
        SERVICE_HEADER,
        &rows,
        "no services yet (create one with `berth service create NAME --image REF`)",
    );
    Ok(())
}

async fn show(api: &Api, service: &str) -> Result<(), ClientError> {
    let id = resolve(api, service).await?;
    let svc = api.get(&format!("/v1/services/{}", enc(&id))).await?;
    if api.json() {
        output::json(&svc);
        return Ok(());
    }
    // Only the table shows the recent deploys.
    let deploys = api
        .get(&format!("/v1/services/{}/deploys?limit=5", enc(&id)))
        .await?;
    output::fields(&[
        ("id", s(&svc, "id")),
        ("name", s(&svc, "name")),
        ("type", s(&svc, "type")),
        ("image", s(&svc, "image/imagePath")),
        ("credential", s(&svc, "image/registryCredentialId")),
        ("state", state(&svc)),
        ("instances", s(&svc, "serviceDetails/numInstances")),
        ("plan", s(&svc, "serviceDetails/plan")),
        ("region", s(&svc, "serviceDetails/region")),
        ("disk", disk_of(&svc)),
        ("autoscaling", autoscaling_of(&svc)),
        ("maintenance", maintenance_of(&svc)),
        ("allowed", allow_list_of(&svc)),
        ("health check", s(&svc, "serviceDetails/healthCheckPath")),
        ("pre-deploy", s(&svc, "serviceDetails/preDeployCommand")),
        ("schedule", s(&svc, "serviceDetails/schedule")),
        ("overlap", s(&svc, "serviceDetails/overlapPolicy")),
        (
            "shutdown",
            format!("{} s", s(&svc, "serviceDetails/shutdownDelaySeconds")),
        ),
        ("notify", s(&svc, "notifyOnFail")),
        (
            "command",
            s(&svc, "serviceDetails/envSpecificDetails/dockerCommand"),
        ),
        ("env vars", s(&svc, "envVarKeys")),
        ("live deploy", s(&svc, "liveDeployId")),
        ("created", output::time(&svc, "createdAt")),
        ("updated", output::time(&svc, "updatedAt")),
    ]);
    let rows: Vec<Vec<String>> = deploys
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("deploy"))
        .map(deploy::row)
        .collect();
    println!();
    output::table(deploy::HEADER, &rows, "no deploys");
    Ok(())
}

async fn update(
    api: &Api,
    service: &str,
    rename: Option<String>,
    settings: Settings,
    replace_env: bool,
    print: bool,
) -> Result<(), ClientError> {
    let id = resolve(api, service).await?;
    let settings = credential_by_name(api, settings).await?;
    let mut body = Map::new();
    settings_body(&settings, &mut body)?;
    if let Some(name) = rename {
        body.insert("name".to_owned(), Value::String(name));
    }
    // Env vars given are merged into the service's (the others kept)
    // unless --replace-env says to replace them all.
    let merge = if replace_env {
        if !body.contains_key("envVars") {
            return Err(ClientError::Usage(
                "--replace-env needs the new env vars: --env or --env-file".to_owned(),
            ));
        }
        None
    } else {
        body.remove("envVars")
    };
    if body.is_empty() && merge.is_none() {
        return Err(ClientError::Usage(
            "nothing to change: give at least one setting (see --help)".to_owned(),
        ));
    }
    let mut svc = Value::Null;
    if !body.is_empty() {
        svc = api
            .patch(&format!("/v1/services/{}", enc(&id)), Value::Object(body))
            .await?;
    }
    let mut merged = Value::Null;
    if let Some(changes) = merge {
        merged = api
            .patch(&format!("/v1/services/{}/env-vars", enc(&id)), changes)
            .await?;
        if svc.is_null() {
            svc = api.get(&format!("/v1/services/{}", enc(&id))).await?;
        }
    }
    if !print {
        return Ok(());
    }
    if api.json() {
        let mut out = svc;
        if let (Some(o), Some(dep)) = (out.as_object_mut(), merged.get("deployId")) {
            o.insert("envDeployId".to_owned(), dep.clone());
        }
        output::json(&out);
        return Ok(());
    }
    output::table(SERVICE_HEADER, &[service_row(&svc)], "");
    if let Some(dep) = merged.get("deployId").and_then(Value::as_str) {
        println!(
            "env vars merged; deploy {dep} started (follow it: berth service follow {id} {dep})"
        );
    }
    Ok(())
}

/// Prints an accepted deploy, or follows it to its end (then `--json`
/// prints only the final deploy, so stdout stays one JSON document).
async fn finish_deploy(
    api: &Api,
    id: &str,
    dep: &Value,
    follow: Option<&NatsOpts>,
    timeout: u64,
) -> Result<(), ClientError> {
    let dep_id = s(dep, "id");
    if let Some(nats) = follow {
        let done = deploy::follow(api, nats, id, &dep_id, timeout).await?;
        if api.json() {
            output::json(&done);
        }
        return Ok(());
    }
    if api.json() {
        output::json(dep);
    } else {
        println!(
            "{id}: deploy {dep_id} {} ({}) (follow it: berth service follow {id} {dep_id})",
            s(dep, "status"),
            s(dep, "image/ref")
        );
    }
    Ok(())
}

/// The id of the service's newest deploy, if it has one.
async fn newest_deploy(api: &Api, id: &str) -> Result<Option<String>, ClientError> {
    let newest = api
        .get(&format!("/v1/services/{}/deploys?limit=1", enc(id)))
        .await?;
    Ok(newest
        .get(0)
        .map(|i| s(i, "deploy/id"))
        .filter(|d| d != "-"))
}

/// After a command that may start a deploy: the deploy it started, named
/// (with how to follow it) or followed with --wait; nothing when none
/// started.
async fn started_since(
    api: &Api,
    id: &str,
    before: Option<String>,
    follow: FollowArgs,
) -> Result<(), ClientError> {
    let now = newest_deploy(api, id).await?;
    match now.filter(|d| Some(d) != before.as_ref()) {
        Some(dep) if follow.wait => {
            if !api.json() {
                println!("deploy {dep} started");
            }
            let done = deploy::follow(api, &follow.nats, id, &dep, follow.timeout).await?;
            if api.json() {
                output::json(&done);
            }
            Ok(())
        }
        Some(dep) => {
            if !api.json() {
                println!("deploy {dep} started (follow it: berth service follow {id} {dep})");
            }
            Ok(())
        }
        None => Ok(()),
    }
}

async fn events(
    api: &Api,
    service: &str,
    types: Option<String>,
    limit: u32,
    [since, until]: [Option<String>; 2],
) -> Result<(), ClientError> {
    let id = resolve(api, service).await?;
    let mut path = format!("/v1/services/{}/events?limit={limit}", enc(&id));
    match types {
        Some(t) => path.push_str(&format!("&type={}", enc(&t))),
        // berth's own event types too, not only Render's.
        None => path.push_str("&allTypes=true"),
    }
    if let Some(t) = since {
        path.push_str(&format!("&startTime={}", enc(&t)));
    }
    if let Some(t) = until {
        path.push_str(&format!("&endTime={}", enc(&t)));
    }
    let evs = api.get(&path).await?;
    if api.json() {
        output::json(&evs);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = evs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("event"))
        .map(|e| {
            vec![
                output::time(e, "timestamp"),
                s(e, "type"),
                output::details(e.get("details").unwrap_or(&Value::Null)),
            ]
        })
        .collect();
    output::table(&["TIME", "TYPE", "DETAILS"], &rows, "no events");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::{allow_list_of, autoscaling_of, disk_body, disk_of, maintenance_of};

    #[test]
    fn a_web_services_reach_is_said_in_words() {
        let web =
            |details: serde_json::Value| json!({"type": "web_service", "serviceDetails": details});
        assert_eq!(
            allow_list_of(&web(json!({}))),
            "every client (no IP allow list)"
        );
        assert_eq!(
            allow_list_of(&web(json!({"ipAllowList": []}))),
            "no client: its IP allow list is empty"
        );
        assert_eq!(
            allow_list_of(&web(json!({"ipAllowList": [
                {"cidrBlock": "203.0.113.0/24", "description": "office"},
                {"cidrBlock": "198.51.100.9/32", "description": ""}]}))),
            "203.0.113.0/24 (office), 198.51.100.9/32"
        );
        assert_eq!(allow_list_of(&json!({"type": "background_worker"})), "-");
        assert_eq!(maintenance_of(&web(json!({}))), "-");
        assert_eq!(
            maintenance_of(&web(
                json!({"maintenanceMode": {"enabled": true, "uri": ""}})
            )),
            "ON: requests get a 503 maintenance page"
        );
    }

    #[test]
    fn autoscaling_is_said_in_words() {
        let on = json!({"serviceDetails": {"autoscaling": {"enabled": true, "min": 1, "max": 4,
            "criteria": {"cpu": {"enabled": true, "percentage": 70},
                         "memory": {"enabled": true, "percentage": 80}}}}});
        assert_eq!(
            autoscaling_of(&on),
            "autoscaling between 1 and 4 instances, keeping CPU at 70 % and memory at 80 %"
        );
        assert_eq!(autoscaling_of(&json!({"serviceDetails": {}})), "-");
    }

    #[test]
    fn a_disk_is_given_as_name_path_and_size() {
        assert_eq!(
            disk_body("data:/var/lib/data:10").unwrap(),
            json!({"name": "data", "mountPath": "/var/lib/data", "sizeGB": 10})
        );
        assert_eq!(
            disk_body("pg:/var/lib/postgresql/data").unwrap(),
            json!({"name": "pg", "mountPath": "/var/lib/postgresql/data"})
        );
        for bad in ["data", ":/data", "data:", "data:/x:ten", "data::5"] {
            assert!(disk_body(bad).is_err(), "{bad}");
        }
        let svc = json!({"serviceDetails": {"disk": {
            "id": "dsk-x", "name": "data", "mountPath": "/data", "sizeGB": 1, "nodeId": "nod-y"
        }}});
        assert_eq!(disk_of(&svc), "data at /data, 1 GB (dsk-x, on nod-y)");
        assert_eq!(disk_of(&json!({"serviceDetails": {}})), "-");
        let full = json!({"serviceDetails": {"disk": {
            "id": "dsk-x", "name": "data", "mountPath": "/data", "sizeGB": 1, "usageHigh": true
        }}});
        assert_eq!(
            disk_of(&full),
            "data at /data, 1 GB (dsk-x, not placed yet) — OVER 90 % FULL"
        );
    }
}
