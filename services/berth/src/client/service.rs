//! `berth service …`: create, list, show, update, delete, deploy, rollback,
//! scale, restart, suspend, resume, events and logs. A service is named by
//! its id (`srv-…`) or by its name.

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::http::enc;
use super::output::{self, s};
use super::{deploy, logs, Api, ClientError, ClientOpts};

#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub cmd: ServiceCommand,
}

/// Settings shared by `create` and `update`.
#[derive(Debug, Args)]
pub struct Settings {
    /// Image reference, e.g. `ghcr.io/org/app:1.2`.
    #[arg(long)]
    pub image: Option<String>,
    /// Registry credential (`rgc-…`) for a private image.
    #[arg(long)]
    pub credential: Option<String>,
    /// Number of instances.
    #[arg(long)]
    pub instances: Option<u32>,
    /// Instance type: free, starter, standard, pro, pro_plus, pro_max, pro_ultra.
    #[arg(long)]
    pub plan: Option<String>,
    /// Region label.
    #[arg(long)]
    pub region: Option<String>,
    /// HTTP path polled before an instance counts as up (web services).
    #[arg(long)]
    pub health_check_path: Option<String>,
    /// Command run once before each deploy goes live.
    #[arg(long)]
    pub pre_deploy_command: Option<String>,
    /// Cron schedule (cron jobs), e.g. `*/5 * * * *`.
    #[arg(long)]
    pub schedule: Option<String>,
    /// Command replacing the image's entrypoint and arguments.
    #[arg(long = "command")]
    pub docker_command: Option<String>,
    /// Environment variable `KEY=VALUE` (repeatable). For secret values use
    /// --env-file, which keeps them out of the process list.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// File of `KEY=VALUE` lines (blank lines and `#` comments skipped).
    #[arg(long)]
    pub env_file: Option<std::path::PathBuf>,
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
        /// Follow the first deploy until it ends (exit 1 if it fails).
        #[arg(long)]
        wait: bool,
    },
    /// List services.
    List,
    /// Show one service and its recent deploys.
    Show { service: String },
    /// Change a service's settings (a change of image or settings that
    /// affect instances starts a deploy).
    Update {
        service: String,
        #[command(flatten)]
        settings: Settings,
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
    },
    /// Deploy an earlier deploy's image again.
    Rollback {
        service: String,
        /// The deploy to go back to (`dep-…`).
        deploy: String,
    },
    /// Set the number of instances.
    Scale { service: String, instances: u32 },
    /// Restart every instance.
    Restart { service: String },
    /// Stop every instance and ignore deploy hooks until resumed.
    Suspend { service: String },
    /// Start a suspended service again.
    Resume { service: String },
    /// The service's event timeline, newest first.
    Events {
        service: String,
        /// Only these types, comma-separated (e.g. deploy_ended,server_failed).
        #[arg(long = "type")]
        types: Option<String>,
        /// At most this many events (1–100).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Instance logs (live only: berth keeps no log history).
    ///
    /// Lines are read from NATS as instances write them; nothing written
    /// before the command started is shown. Without -f this prints what
    /// arrives during --for seconds and exits.
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
            wait,
        } => create(&api, name, service_type, settings, wait).await,
        ServiceCommand::List => list(&api).await,
        ServiceCommand::Show { service } => show(&api, &service).await,
        ServiceCommand::Update { service, settings } => update(&api, &service, settings).await,
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
        } => {
            let id = resolve(&api, &service).await?;
            let body = match image {
                Some(i) => json!({ "imageUrl": i }),
                None => json!({}),
            };
            let dep = api
                .post(&format!("/v1/services/{}/deploys", enc(&id)), Some(body))
                .await?;
            finish_deploy(&api, &id, &dep, !no_wait, timeout).await
        }
        ServiceCommand::Rollback { service, deploy } => {
            let id = resolve(&api, &service).await?;
            let dep = api
                .post(
                    &format!("/v1/services/{}/rollback", enc(&id)),
                    Some(json!({ "deployId": deploy })),
                )
                .await?;
            finish_deploy(&api, &id, &dep, false, 0).await
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
        ServiceCommand::Restart { service } => {
            action(&api, &service, "restart", "restarting").await
        }
        ServiceCommand::Suspend { service } => {
            action(&api, &service, "suspend", "suspending").await
        }
        ServiceCommand::Resume { service } => action(&api, &service, "resume", "resuming").await,
        ServiceCommand::Events {
            service,
            types,
            limit,
        } => events(&api, &service, types, limit).await,
        ServiceCommand::Logs(a) => {
            let id = resolve(&api, &a.service).await?;
            logs::run(&id, a, &args.opts).await
        }
    }
}

/// In `--json` mode an action with no body prints `{"ok": …}` so scripts
/// always get JSON; otherwise the sentence.
fn done(api: &Api, sentence: &str) {
    if api.json {
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

/// The id of `service` (an id, or a name looked up in the listing).
pub async fn resolve(api: &Api, service: &str) -> Result<String, ClientError> {
    if service.starts_with("srv-") {
        return Ok(service.to_owned());
    }
    let all = api.list_all("/v1/services").await?;
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

fn env_vars(settings: &Settings) -> Result<Option<Vec<Value>>, ClientError> {
    let mut lines: Vec<String> = settings.env.clone();
    if let Some(path) = &settings.env_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ClientError::Usage(format!("cannot read env file {}: {e}", path.display()))
        })?;
        lines.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    if lines.is_empty() {
        return Ok(None);
    }
    lines
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok(json!({ "key": k, "value": v })),
            // Never echo the line: it may hold a secret value.
            _ => Err(ClientError::Usage(
                "an env var must be KEY=VALUE (one was not)".to_owned(),
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The `image` and `serviceDetails` parts of a create/update body.
fn settings_body(st: &Settings, body: &mut Map<String, Value>) -> Result<(), ClientError> {
    let mut image = Map::new();
    if let Some(i) = &st.image {
        image.insert("imagePath".into(), json!(i));
    }
    if let Some(c) = &st.credential {
        image.insert("registryCredentialId".into(), json!(c));
    }
    if !image.is_empty() {
        body.insert("image".into(), Value::Object(image));
    }
    let mut d = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            d.insert(k.into(), v);
        }
    };
    put("numInstances", st.instances.map(|n| json!(n)));
    put("plan", st.plan.as_ref().map(|v| json!(v)));
    put("region", st.region.as_ref().map(|v| json!(v)));
    put(
        "healthCheckPath",
        st.health_check_path.as_ref().map(|v| json!(v)),
    );
    put(
        "preDeployCommand",
        st.pre_deploy_command.as_ref().map(|v| json!(v)),
    );
    put("schedule", st.schedule.as_ref().map(|v| json!(v)));
    put(
        "envSpecificDetails",
        st.docker_command
            .as_ref()
            .map(|c| json!({ "dockerCommand": c })),
    );
    if !d.is_empty() {
        body.insert("serviceDetails".into(), Value::Object(d));
    }
    if let Some(env) = env_vars(st)? {
        body.insert("envVars".into(), Value::Array(env));
    }
    Ok(())
}

async fn create(
    api: &Api,
    name: String,
    service_type: String,
    settings: Settings,
    wait: bool,
) -> Result<(), ClientError> {
    if settings.image.is_none() {
        return Err(ClientError::Usage(
            "--image is required to create a service".to_owned(),
        ));
    }
    let mut body = Map::new();
    body.insert("name".into(), json!(name));
    body.insert("type".into(), json!(service_type));
    settings_body(&settings, &mut body)?;
    let created = api.post("/v1/services", Some(Value::Object(body))).await?;
    let svc = created.get("service").cloned().unwrap_or(Value::Null);
    let id = s(&svc, "id");
    let dep = s(&created, "deployId");
    if api.json {
        if !wait {
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
    if wait {
        let done = deploy::follow(api, &id, &dep, 600).await?;
        if api.json {
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

fn service_row(v: &Value) -> Vec<String> {
    vec![
        s(v, "id"),
        s(v, "name"),
        s(v, "type"),
        s(v, "image/imagePath"),
        s(v, "serviceDetails/numInstances"),
        if s(v, "suspended") == "suspended" {
            "suspended".to_owned()
        } else {
            "active".to_owned()
        },
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
    if api.json {
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
    let deploys = api
        .get(&format!("/v1/services/{}/deploys?limit=5", enc(&id)))
        .await?;
    if api.json {
        output::json(&svc);
        return Ok(());
    }
    output::fields(&[
        ("id", s(&svc, "id")),
        ("name", s(&svc, "name")),
        ("type", s(&svc, "type")),
        ("image", s(&svc, "image/imagePath")),
        ("credential", s(&svc, "image/registryCredentialId")),
        (
            "state",
            if s(&svc, "suspended") == "suspended" {
                "suspended".to_owned()
            } else {
                "active".to_owned()
            },
        ),
        ("instances", s(&svc, "serviceDetails/numInstances")),
        ("plan", s(&svc, "serviceDetails/plan")),
        ("region", s(&svc, "serviceDetails/region")),
        ("health check", s(&svc, "serviceDetails/healthCheckPath")),
        ("pre-deploy", s(&svc, "serviceDetails/preDeployCommand")),
        ("schedule", s(&svc, "serviceDetails/schedule")),
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

async fn update(api: &Api, service: &str, settings: Settings) -> Result<(), ClientError> {
    let id = resolve(api, service).await?;
    let mut body = Map::new();
    settings_body(&settings, &mut body)?;
    if body.is_empty() {
        return Err(ClientError::Usage(
            "nothing to change: give at least one setting (see --help)".to_owned(),
        ));
    }
    let svc = api
        .patch(&format!("/v1/services/{}", enc(&id)), Value::Object(body))
        .await?;
    if api.json {
        output::json(&svc);
    } else {
        output::table(SERVICE_HEADER, &[service_row(&svc)], "");
    }
    Ok(())
}

/// Prints an accepted deploy, or follows it to its end (then `--json`
/// prints only the final deploy, so stdout stays one JSON document).
async fn finish_deploy(
    api: &Api,
    id: &str,
    dep: &Value,
    follow: bool,
    timeout: u64,
) -> Result<(), ClientError> {
    let dep_id = s(dep, "id");
    if follow {
        let done = deploy::follow(api, id, &dep_id, timeout).await?;
        if api.json {
            output::json(&done);
        }
        return Ok(());
    }
    if api.json {
        output::json(dep);
    } else {
        println!(
            "{id}: deploy {dep_id} {} ({})",
            s(dep, "status"),
            s(dep, "image/ref")
        );
    }
    Ok(())
}

async fn events(
    api: &Api,
    service: &str,
    types: Option<String>,
    limit: u32,
) -> Result<(), ClientError> {
    let id = resolve(api, service).await?;
    let mut path = format!("/v1/services/{}/events?limit={limit}", enc(&id));
    if let Some(t) = types {
        path.push_str(&format!("&type={}", enc(&t)));
    }
    let evs = api.get(&path).await?;
    if api.json {
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
    use super::*;

    fn settings(env: &[&str], file: Option<std::path::PathBuf>) -> Settings {
        Settings {
            image: None,
            credential: None,
            instances: None,
            plan: None,
            region: None,
            health_check_path: None,
            pre_deploy_command: None,
            schedule: None,
            docker_command: None,
            env: env.iter().map(|s| s.to_string()).collect(),
            env_file: file,
        }
    }

    #[test]
    fn env_vars_from_flags_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("env");
        std::fs::write(&f, "# c\n\nB=2=two\n").unwrap();
        let vars = env_vars(&settings(&["A=1"], Some(f))).unwrap().unwrap();
        assert_eq!(
            Value::Array(vars),
            json!([{"key": "A", "value": "1"}, {"key": "B", "value": "2=two"}])
        );
        assert!(env_vars(&settings(&[], None)).unwrap().is_none());
    }

    #[test]
    fn a_bad_env_line_is_refused_without_echoing_it() {
        let err = env_vars(&settings(&["NOEQUALS-secretvalue"], None)).unwrap_err();
        assert!(matches!(&err, ClientError::Usage(m) if !m.contains("secretvalue")));
        assert!(env_vars(&settings(&["=x"], None)).is_err());
    }

    #[test]
    fn settings_become_the_api_body() {
        let mut st = settings(&[], None);
        st.image = Some("img:1".into());
        st.instances = Some(3);
        st.docker_command = Some("sh -c x".into());
        let mut body = Map::new();
        settings_body(&st, &mut body).unwrap();
        assert_eq!(
            Value::Object(body),
            json!({
                "image": {"imagePath": "img:1"},
                "serviceDetails": {
                    "numInstances": 3,
                    "envSpecificDetails": {"dockerCommand": "sh -c x"},
                },
            })
        );
    }
}
