//! `berth up` (every component in one process) and `berth run <component>`
//! (one alone). Both follow the thin-main order: validate all config and
//! read the NATS credentials file (`--check` prints the result and stops
//! here) → init tracing → check that the node can run on this machine →
//! data dir and secret key (only for the components that seal or open
//! secrets: never the node, the router or the projector) → bind the
//! health/metrics port → make sure NATS answers (starting a local
//! nats-server if needed) → connect → open the event store → run
//! components until SIGINT/SIGTERM → drain → stop the nats-server we
//! started.
//!
//! A machine the node cannot run on (not root, no runc, …) stops `berth run
//! node` at once (exit 64); `berth up` says so and runs everything else, so
//! the control plane still works and deploys wait for a node.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use berth_eventlog::start::until_available;
use berth_node::preflight::{self, Verdict};
use berth_runtime::config::Problems;
use berth_runtime::egress::AddressPolicy;
use berth_runtime::nats_auth::{self, Creds};
use berth_runtime::{
    install_metrics, run_components, Config, HttpServer, LocalNats, LocalNatsError, RunDeps,
    Shutdown,
};

use crate::cli::{RunArgs, UpArgs};
use crate::components::{self, ComponentDeps, Options};
use crate::exit::Outcome;
use crate::nats_users::{self, LocalUsers};
use crate::secret::{self, KeySource};

/// Why `berth run node` refuses `BERTH_SECRET_KEY`.
const NODE_HOLDS_NO_KEY: &str = "a node never holds the installation's secret key \
     (its work comes sealed to the node's own key); unset it for `berth run node`";

/// How long a nats-server we started gets to stop after SIGTERM.
const NATS_STOP_PATIENCE: Duration = Duration::from_secs(5);

pub async fn up(args: UpArgs) -> Outcome {
    start(args, None).await
}

pub async fn run_one(args: RunArgs) -> Outcome {
    start(args.up, Some(args.component)).await
}

/// Everything a start (or `--check`) works from, validated.
pub struct Validated {
    pub config: Config,
    pub options: Options,
    pub secret_key: Option<String>,
    pub only: Option<&'static str>,
    /// What owner-supplied URLs may reach, as applied to `options`.
    pub targets: AddressPolicy,
}

/// `BERTH_ALLOW_TARGETS`, else the product default: loopback for `berth
/// up` (one machine, where a local registry is normal), nothing internal
/// for `berth run` (many machines: loopback is whichever machine the
/// component landed on, private ranges are the operator's network).
fn allowed_targets(config: &Config, only: Option<&str>) -> AddressPolicy {
    config.allow_targets.unwrap_or(match only {
        None => AddressPolicy::LOOPBACK,
        Some(_) => AddressPolicy::PUBLIC_ONLY,
    })
}

/// The startup summary's line on what owner-supplied URLs may reach.
fn targets_summary(targets: AddressPolicy, set: bool, only: Option<&str>) -> String {
    let allowed = if targets == AddressPolicy::PUBLIC_ONLY {
        "public addresses only".to_owned()
    } else {
        format!(
            "public addresses and {}",
            targets.to_string().replace(',', ", ")
        )
    };
    let source = match (set, only) {
        (true, _) => "BERTH_ALLOW_TARGETS",
        (false, None) => "default of berth up; set BERTH_ALLOW_TARGETS to change",
        (false, Some(_)) => "default of berth run; set BERTH_ALLOW_TARGETS to allow more",
    };
    format!("registries and webhooks at {allowed} ({source})")
}

/// Records a component's problems under its variables' prefix.
fn checked<T>(problems: &mut Problems, vars: &'static str, r: Result<T, Vec<String>>) -> Option<T> {
    r.map_err(|errors| {
        for e in errors {
            problems.add(vars, e);
        }
    })
    .ok()
}

/// Every check on the command line and environment, reported together.
fn validate(args: UpArgs, only: Option<String>) -> Result<Validated, berth_runtime::ConfigError> {
    let mut problems = Problems::default();
    let config = args.common.validate_into(&mut problems);
    let p = &mut problems;
    let resolver = checked(p, "BERTH_RESOLVER_*", args.resolver.validate());
    let node = checked(p, "BERTH_NODE_*", args.node.validate());
    // `validate` already reported any problem with the checks.
    let node_checks = args.node.checks().ok();
    let scheduler = checked(p, "BERTH_SCHEDULER_*", args.scheduler.validate());
    let cron = checked(p, "BERTH_CRON_*", args.cron.validate());
    let router = checked(p, "BERTH_ROUTER_*", args.router.validate());
    let notifier = checked(p, "BERTH_NOTIFIER_*", args.notifier.validate());
    let api = checked(p, "BERTH_API_*", args.api.validate()).map(|()| {
        let mut api = args.api.clone();
        // Web services' URLs are the router's, unless told otherwise.
        api.api_services_url.get_or_insert_with(|| {
            let port = args
                .router
                .router_addr
                .rsplit_once(':')
                .map(|(_, p)| p)
                .filter(|p| *p != "80")
                .map(|p| format!(":{p}"))
                .unwrap_or_default();
            format!("http://{}{port}", args.router.router_base_domain)
        });
        api
    });
    // A web instance's RENDER_EXTERNAL_URL is the URL the API shows for it.
    let node = node.map(|mut n| {
        if n.services_url.is_none() {
            n.services_url = api.as_ref().and_then(|a| a.api_services_url.clone());
        }
        n
    });
    let options = (|| {
        Some(Options {
            resolver: resolver?,
            node: node?,
            node_checks: node_checks?,
            node_gc: args.node.gc(),
            scheduler: scheduler?,
            cron: cron?,
            notifier: notifier?,
            router: router?,
            api: api?,
        })
    })();
    if let Some(key) = &args.secret_key {
        // Not even checked where it is not to be handed at all.
        if only.as_deref() == Some("node") {
            problems.add("BERTH_SECRET_KEY", NODE_HOLDS_NO_KEY);
        } else if !components::holds_key(only.as_deref(), args.router.router_https_addr.is_some()) {
            let name = only.as_deref().unwrap_or_default();
            // The router holds it only to seal its certificates' keys.
            let unless = if name == "router" {
                " without BERTH_ROUTER_HTTPS_ADDR"
            } else {
                ""
            };
            problems.add(
                "BERTH_SECRET_KEY",
                format!(
                    "the {name} never holds the installation's secret key{unless} (it reads \
                     nothing sealed); unset it for `berth run {name}`"
                ),
            );
        } else if let Err(m) = secret::check(key) {
            problems.add("BERTH_SECRET_KEY", m);
        }
    }
    let only = match only {
        None => None,
        Some(name) => match components::NAMES.iter().find(|n| **n == name) {
            Some(n) => Some(*n),
            None => {
                problems.add(
                    "component",
                    format!(
                        "unknown component {name:?}; known: {}",
                        components::NAMES.join(", ")
                    ),
                );
                None
            }
        },
    };
    problems
        .finish(config.zip(options))
        .map(|(config, mut options)| {
            let targets = allowed_targets(&config, only);
            options.allow_targets(targets);
            Validated {
                config,
                options,
                secret_key: args.secret_key,
                only,
                targets,
            }
        })
}

async fn start(args: UpArgs, only: Option<String>) -> Outcome {
    let check = args.check;
    let v = match validate(args, only) {
        Ok(v) => v,
        Err(e) => return Outcome::Config(e),
    };
    let creds = match presented_creds(&v.config, v.only) {
        Ok(c) => c,
        Err(e) => return Outcome::Config(e),
    };
    if check {
        let targets = targets_summary(v.targets, v.config.allow_targets.is_some(), v.only);
        let report = crate::check::report(&v, creds.as_ref(), &targets);
        return match serde_json::to_string_pretty(&report) {
            Ok(text) => {
                println!("{text}");
                Outcome::Ok
            }
            Err(e) => Outcome::Failed(e.into()),
        };
    }
    if let Err(e) = berth_runtime::init_tracing(&v.config) {
        return Outcome::Failed(e.into());
    }
    let shutdown = Shutdown::new(v.config.shutdown_grace);
    if let Err(e) = shutdown.listen_for_signals() {
        return Outcome::Failed(anyhow::anyhow!("cannot install signal handlers: {e}"));
    }
    let node_refused = match node_preflight(v.only, &v.options).await {
        Ok(None) => None,
        Ok(Some((verdict, sentence))) if v.only == Some("node") => {
            let hint = if verdict.needs_root() {
                " (run `berth run node` as root)"
            } else {
                ""
            };
            return Outcome::Unfit(format!("{sentence}{hint}"));
        }
        Ok(Some((verdict, sentence))) => {
            let note = node_not_started(&verdict, &sentence);
            // At once, before the summary: the rest takes a while to start.
            eprintln!("berth: {note}");
            Some(note)
        }
        Err(e) => return Outcome::Failed(e),
    };
    let local = Arc::new(Mutex::new(None));
    let result = serve(v, creds, node_refused.as_deref(), &shutdown, &local).await;
    let local = local.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(nats) = local {
        if let Err(e) = nats.stop(NATS_STOP_PATIENCE).await {
            tracing::warn!(error = %e, "stopping nats-server failed");
        }
    }
    if let Err(e) = &result {
        // A nats-server too old for the fsync policy asked for: like a
        // machine the node cannot run on, starting again unchanged cannot help.
        if let Some(unfit @ LocalNatsError::SyncUnsupported { .. }) = e.downcast_ref() {
            return Outcome::Unfit(unfit.to_string());
        }
        tracing::error!(error = %format!("{e:#}"), "berth stopped with an error");
    }
    result.into()
}

/// `BERTH_NATS_CREDS` read, when set, and checked against the role the
/// selected components present (the node its own, the rest the control
/// plane's): a file of another role is a configuration error, not a run
/// of permission errors later.
fn presented_creds(
    config: &Config,
    only: Option<&str>,
) -> Result<Option<Creds>, berth_runtime::ConfigError> {
    let Some(path) = &config.nats_creds else {
        return Ok(None);
    };
    let problem = |message: String| berth_runtime::ConfigError {
        problems: vec![berth_runtime::config::ConfigProblem {
            setting: "BERTH_NATS_CREDS",
            message,
        }],
    };
    let creds = Creds::read(path).map_err(|e| problem(e.to_string()))?;
    let wanted = components::nats_role(only);
    if creds.role != wanted {
        let who = only.map_or("berth up".to_owned(), |c| format!("berth run {c}"));
        return Err(problem(format!(
            "{} holds {} credentials; {who} presents the {wanted} role's",
            path.display(),
            creds.role
        )));
    }
    Ok(Some(creds))
}

/// The node's verdict on this machine and its refusal, when the node is
/// among the components to run and something it needs is missing.
async fn node_preflight(
    only: Option<&'static str>,
    options: &Options,
) -> anyhow::Result<Option<(Verdict, String)>> {
    if only.is_some_and(|c| c != "node") {
        return Ok(None);
    }
    let opts = options.node.clone();
    // Blocking: it runs `runc --version`.
    let verdict = tokio::task::spawn_blocking(move || preflight::check_machine(&opts))
        .await
        .context("checking this machine for the node")?;
    Ok(verdict.refusal().map(|sentence| (verdict, sentence)))
}

/// What `berth up` says when it runs without the node.
fn node_not_started(verdict: &Verdict, sentence: &str) -> String {
    let fix = if verdict.needs_root() {
        "run `berth up` as root, or run `berth run node` as root on this machine"
    } else {
        "install what is missing and start berth again, or run `berth run node` on a machine that has it"
    };
    format!("node not started: {sentence} ({fix}); deploys will wait for a node")
}

async fn serve(
    v: Validated,
    given: Option<Creds>,
    node_refused: Option<&str>,
    shutdown: &Shutdown,
    local: &Arc<Mutex<Option<LocalNats>>>,
) -> anyhow::Result<()> {
    let mut config = v.config;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    // Absolute from here on: it is printed, and handed to nats-server.
    config.data_dir = std::fs::canonicalize(&config.data_dir)
        .with_context(|| format!("resolving {}", config.data_dir.display()))?;
    let config = Arc::new(config);
    let data_dir = config.data_dir.clone();
    // A component that holds no key neither reads nor creates its file.
    let (secret_key, key_source) =
        if !components::holds_key(v.only, v.options.router.https.is_some()) {
            (None, None)
        } else {
            let (key, source) = secret::load_or_create(v.secret_key.as_deref(), &data_dir)?;
            (Some(key), Some(source))
        };

    let http = HttpServer::bind(config.http_addr).await.with_context(|| {
        format!(
            "binding the health/metrics listener on {}",
            config.http_addr
        )
    })?;
    let metrics = install_metrics()?;

    // Who connects as whom: BERTH_NATS_CREDS for a server berth did not
    // start; for one it starts, the users it generates (the node with its
    // own, the rest as the control plane).
    let node_runs = v.only.is_none_or(|c| c == "node") && node_refused.is_none();
    let node_dir = v.options.node.state_dir(&config.data_dir);
    // Whether its instances' root is this machine's, for the summary.
    let instances =
        node_runs.then(|| berth_node::userns::summary(v.options.node.user_namespace, &node_dir));
    let users = if given.is_none() && !berth_runtime::local_nats::any_answers(&config).await {
        let node = node_runs
            .then(|| berth_node::load_or_create_id(&node_dir))
            .transpose()
            .context("the node's id")?;
        Some(Arc::new(LocalUsers::prepare(&config, node)?))
    } else {
        None
    };
    let authorization = users
        .as_ref()
        .map(|u| u.authorization(&u.saved_integrations()));
    let started = LocalNats::ensure(&config, authorization).await?;
    if started.is_none() {
        tracing::info!(
            nats.url = %config.nats_url,
            "using a running nats-server: its own sync_interval applies, not BERTH_NATS_SYNC_INTERVAL"
        );
    }
    let users = users.filter(|_| started.is_some());
    *local.lock().unwrap_or_else(|p| p.into_inner()) = started;
    let creds = given
        .clone()
        .or_else(|| users.as_ref().map(|u| u.control.clone()));
    let name = v.only.unwrap_or("berth up");
    let client = nats_auth::connect(config.nats_servers.clone(), name, creds.as_ref())
        .await
        .with_context(|| format!("connecting to NATS at {}", config.nats_url))?;

    let api_url = v.options.api.public_url();
    // Where web services answer: `<name>.<base-domain>` on the router.
    let router_url = v
        .options
        .api
        .api_services_url
        .clone()
        .map(|u| match u.split_once("://") {
            Some((scheme, host)) => format!("{scheme}://<service>.{host}"),
            None => u,
        });
    let token = shutdown.token();
    let Some(mut deps) =
        ComponentDeps::open(client.clone(), &config, secret_key, v.options, &token).await?
    else {
        return Ok(());
    };
    // The node presents its own credentials, bound to its id.
    let node_creds = users
        .as_ref()
        .and_then(|u| u.node.clone())
        .or_else(|| given.filter(|c| c.node_id.is_some()));
    if let Some(node_creds) = node_creds.filter(|_| node_runs) {
        deps.node_id = node_creds.node_id.clone();
        if users.is_some() {
            let node_client =
                nats_auth::connect(config.nats_servers.clone(), "berth node", Some(&node_creds))
                    .await
                    .context("connecting the node to NATS")?;
            if !deps.open_node_store(node_client, &config, &token).await? {
                return Ok(());
            }
        } else if v.only == Some("node") {
            // `berth run node` on its own user: the store it works on is
            // opened as a node's (no consumers on the log, no snapshots),
            // which that user may not go beyond.
            if !deps
                .open_node_store(client.clone(), &config, &token)
                .await?
            {
                return Ok(());
            }
        }
    }
    if let Some(users) = users.clone() {
        let store = (*deps.store).clone();
        let server = local.clone();
        let token = shutdown.token();
        shutdown.spawn("nats users", async move {
            nats_users::follow_integrations(store, users, server, token).await;
        });
    }
    // The first owner and API key, written where the CLI finds them; only
    // where the API runs.
    let credentials = match &deps.secret_key {
        Some(key) if v.only.is_none_or(|c| c == "api") => {
            let made = until_available(&token, "first owner not created", || {
                berth_api::bootstrap_store(&deps.store, key, &data_dir, &api_url)
            });
            let Some(b) = made.await.context("creating the first owner and API key")? else {
                return Ok(());
            };
            Some(b)
        }
        _ => None,
    };
    let mut selected = components::build(&deps, v.only)?;
    if node_refused.is_some() {
        selected.retain(|c| c.name() != "node");
    }
    let names: Vec<_> = selected.iter().map(|c| c.name()).collect();

    let mut addresses = Vec::new();
    // Where the CLI finds this installation from any directory; removed
    // when `berth up` stops (kept until the end of this function).
    let mut _recorded = None;
    if let Some(b) = &credentials {
        let note = if b.created {
            " (created: owner id and API key, mode 0600)"
        } else {
            ""
        };
        addresses.push(("api", api_url.clone()));
        addresses.push(("api key", format!("{}{note}", b.path.display())));
        if let Some(path) = crate::installation::record_path() {
            match crate::installation::Recorded::write(path.clone(), &data_dir, &api_url) {
                Ok(r) => {
                    addresses.push(("recorded", r.path().display().to_string()));
                    _recorded = Some(r);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "could not record where this installation is; the CLI needs BERTH_DATA_DIR")
                }
            }
        }
    }
    if let Some(u) = router_url.filter(|_| names.contains(&"router")) {
        addresses.push(("router", u));
    }
    if let Some(how) = instances.filter(|_| names.contains(&"node")) {
        addresses.push(("instances", how));
    }
    let http_addr = http.local_addr();
    print_where_things_are(
        &data_dir,
        key_source.as_ref(),
        &config,
        local.lock().unwrap_or_else(|p| p.into_inner()).as_ref(),
        http_addr,
        &names,
        node_refused,
        &targets_summary(v.targets, config.allow_targets.is_some(), v.only),
        &addresses,
    );
    tracing::info!(components = ?names, http.addr = %http_addr, nats.url = %config.nats_url, "berth running");

    let deps = RunDeps {
        config,
        client,
        http,
        metrics,
    };
    run_components(deps, selected, shutdown.clone()).await?;
    tracing::info!("berth stopped cleanly");
    Ok(())
}

// One summary line per argument; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn print_where_things_are(
    data_dir: &std::path::Path,
    key: Option<&KeySource>,
    config: &Config,
    local: Option<&LocalNats>,
    http: std::net::SocketAddr,
    names: &[&'static str],
    node_refused: Option<&str>,
    targets: &str,
    addresses: &[(&str, String)],
) {
    let key = match key {
        Some(KeySource::Env) => "from BERTH_SECRET_KEY".to_owned(),
        Some(KeySource::File(p)) => p.display().to_string(),
        Some(KeySource::Created(p)) => format!("{} (created)", p.display()),
        None if names == ["node"] => {
            "none (a node holds only its own key pair, in the node dir)".to_owned()
        }
        None => "none (not needed here)".to_owned(),
    };
    let nats = match local {
        Some(n) => format!(
            "{} (nats-server started by berth: pid {}, store {}, log {}, fsync {})",
            n.url(),
            n.pid().map(|p| p.to_string()).unwrap_or_default(),
            n.spec().store_dir.display(),
            n.spec().log_file.display(),
            match n.sync() {
                Some(s @ berth_runtime::SyncInterval::Always) => s.to_string(),
                Some(s) => format!("every {s}"),
                None => "every 60 s (nats-server before 2.10)".to_owned(),
            }
        ),
        None => format!("{} (existing server)", config.nats_url),
    };
    let creds = match (local, &config.nats_creds) {
        (Some(_), _) => format!(
            "{} (a user per role; anonymous clients refused)",
            config.data_dir.join(nats_auth::CREDS_DIR).display()
        ),
        (None, Some(p)) => format!("{} (BERTH_NATS_CREDS)", p.display()),
        (None, None) => "none (anonymous; set BERTH_NATS_CREDS for a server with users)".to_owned(),
    };
    println!("berth is up");
    println!("  data dir:   {}", data_dir.display());
    println!("  secret key: {key}");
    println!("  nats:       {nats}");
    println!("  nats creds: {creds}");
    println!("  subjects:   {}.*", config.subjects.prefix());
    println!("  health:     http://{http}/healthz");
    println!("  metrics:    http://{http}/metrics");
    for (label, value) in addresses {
        println!("  {:<11} {value}", format!("{label}:"));
    }
    if let Some(note) = node_refused {
        println!("  node:       {note}");
    }
    println!("  targets:    {targets}");
    println!("  components: {}", names.join(", "));
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn validated(argv: &[&str]) -> Result<Validated, berth_runtime::ConfigError> {
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Up(args) => validate(args, None),
            Command::Run(args) => validate(args.up, Some(args.component)),
            _ => unreachable!("not up or run"),
        }
    }

    /// The policy of every client that dials owner-supplied URLs.
    fn applied(argv: &[&str]) -> Vec<AddressPolicy> {
        let Ok(v) = validated(argv) else {
            panic!("{argv:?} refused")
        };
        let o = &v.options;
        let all = vec![
            o.resolver.deploy_client.targets,
            o.resolver.check_client.targets,
            o.node.client.targets,
            o.notifier.targets,
        ];
        assert!(all.iter().all(|t| *t == v.targets), "{all:?}");
        all
    }

    #[test]
    fn up_allows_loopback_and_run_nothing_internal_unless_the_operator_says() {
        assert_eq!(applied(&["berth", "up"]), [AddressPolicy::LOOPBACK; 4]);
        for component in ["resolver", "node", "notifier", "api"] {
            assert_eq!(
                applied(&["berth", "run", component]),
                [AddressPolicy::PUBLIC_ONLY; 4],
                "{component}"
            );
        }
        let private = AddressPolicy {
            allow_private: true,
            ..AddressPolicy::PUBLIC_ONLY
        };
        assert_eq!(
            applied(&["berth", "run", "resolver", "--allow-targets", "private"]),
            [private; 4]
        );
        assert_eq!(
            applied(&["berth", "up", "--allow-targets", "none"]),
            [AddressPolicy::PUBLIC_ONLY; 4]
        );
    }

    #[test]
    fn components_that_open_nothing_sealed_refuse_the_installation_key() {
        let key = berth_runtime::SecretKey::generate_base64();
        for component in ["node", "router", "projector"] {
            let Err(e) = validated(&["berth", "run", component, "--secret-key", &key]) else {
                panic!("{component} accepted")
            };
            assert_eq!(e.problems.len(), 1, "{e}");
            assert_eq!(e.problems[0].setting, "BERTH_SECRET_KEY");
            assert!(!e.to_string().contains(&key), "{e}");
        }
        // Every other component, and `berth up`, takes it; so does a router
        // serving HTTPS (its certificate store seals private keys).
        assert!(validated(&["berth", "run", "scheduler", "--secret-key", &key]).is_ok());
        let https = [
            "berth",
            "run",
            "router",
            "--router-https-addr",
            "127.0.0.1:8443",
            "--secret-key",
            &key,
        ];
        assert!(validated(&https).is_ok());
        assert!(validated(&["berth", "up", "--secret-key", &key]).is_ok());
        assert!(validated(&["berth", "run", "node"]).is_ok());
    }

    #[test]
    fn an_unknown_target_class_is_a_configuration_error() {
        let Err(e) = validated(&["berth", "run", "resolver", "--allow-targets", "metadata"]) else {
            panic!("accepted")
        };
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(e.problems[0].setting, "BERTH_ALLOW_TARGETS");
    }

    #[test]
    fn the_summary_says_what_is_allowed_and_why() {
        let up = targets_summary(AddressPolicy::LOOPBACK, false, None);
        assert_eq!(
            up,
            "registries and webhooks at public addresses and loopback \
             (default of berth up; set BERTH_ALLOW_TARGETS to change)"
        );
        let run = targets_summary(AddressPolicy::PUBLIC_ONLY, false, Some("resolver"));
        assert!(run.contains("public addresses only"), "{run}");
        let set = AddressPolicy::parse("loopback,private").unwrap();
        assert!(
            targets_summary(set, true, None).contains("loopback, private (BERTH_ALLOW_TARGETS)")
        );
    }
}
