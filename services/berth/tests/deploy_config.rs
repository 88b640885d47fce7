//! The cluster configs in `deploy/nats/` and `docker-compose.yml`: every
//! node fsyncs before it acknowledges, keeps its monitoring port to itself,
//! takes its users from `berth nats auth`; a current nats-server accepts each
//! file as written. The compose file, read as compose reads it, runs every
//! component berth has on the 3-node cluster, and each one's own
//! `berth run <component> --check` accepts the environment given there and
//! shows it reachable, keyed and credentialed as a cluster needs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

mod processes;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn berth(args: &[&str]) {
    let out = Command::new(BERTH).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "berth {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cluster_nodes_fsync_every_write_and_the_server_accepts_their_configs() {
    let modern = berth_tests::nats_binary(berth_tests::NatsVersion::Modern).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats");
    // What compose's nats-init writes into the creds volume.
    let tmp = tempfile::tempdir().unwrap();
    let creds = tmp.path().join("creds");
    let files: Vec<String> = ["control", "operator", "node"]
        .iter()
        .map(|role| {
            let file = creds.join(format!("{role}.json"));
            berth(&["nats", "creds", role, "--out", file.to_str().unwrap()]);
            file.to_str().unwrap().to_owned()
        })
        .collect();
    let node_before = std::fs::read(&files[2]).unwrap();
    // Kept when run again (compose runs it at every start).
    berth(&["nats", "creds", "node", "--out", &files[2]]);
    assert_eq!(std::fs::read(&files[2]).unwrap(), node_before);
    let auth = creds.join("auth.conf");
    let mut args = vec!["nats", "auth", "--out", auth.to_str().unwrap()];
    args.extend(files.iter().map(String::as_str));
    berth(&args);
    let block = std::fs::read_to_string(&auth).unwrap();
    assert!(block.contains("user: \"control\""), "{block}");
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let password = serde_json::from_str::<serde_json::Value>(&text).unwrap()["password"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            !block.contains(&password),
            "a password in clear in auth.conf"
        );
    }

    for node in ["nats-1.conf", "nats-2.conf", "nats-3.conf"] {
        let text = std::fs::read_to_string(dir.join(node)).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let settings: Vec<&&str> = lines
            .iter()
            .filter(|l| l.starts_with("sync_interval:"))
            .collect();
        assert_eq!(settings, [&"sync_interval: always"], "{node}");
        assert!(lines.contains(&"include ./creds/auth.conf"), "{node}");
        for l in lines
            .iter()
            .filter(|l| l.starts_with("http:") || l.starts_with("http_port"))
        {
            assert!(l.contains("127.0.0.1"), "{node}: monitoring published: {l}");
        }
        // As mounted: the config beside the creds volume.
        let path = tmp.path().join(node);
        std::fs::write(&path, &text).unwrap();
        let out = Command::new(&modern)
            .arg("-t")
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{node}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `docker-compose.yml` as compose reads it: aliases expanded, merge keys
/// (`<<`) applied, also where a merged mapping merges another.
fn compose_file() -> Yaml {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docker-compose.yml");
    let mut doc: Yaml = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    // One level of nesting per pass.
    for _ in 0..8 {
        doc.apply_merge().unwrap();
    }
    fn no_merge_keys(v: &Yaml) {
        match v {
            Yaml::Mapping(m) => {
                assert!(!m.contains_key("<<"), "merge key left: {m:?}");
                m.values().for_each(no_merge_keys);
            }
            Yaml::Sequence(s) => s.iter().for_each(no_merge_keys),
            _ => {}
        }
    }
    no_merge_keys(&doc);
    doc
}

/// Compose's variable substitution: `${V}`, `${V:-default}`, `${V-default}`,
/// `${V:?error}`, `${V?error}`, `$$`; an error when a required one is unset.
fn interpolate(text: &str, vars: &BTreeMap<&str, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
            continue;
        }
        let body = rest
            .strip_prefix('{')
            .ok_or(format!("bare $ in {text:?}"))?;
        let end = body.find('}').ok_or(format!("unclosed ${{ in {text:?}"))?;
        let (expr, after) = (&body[..end], &body[end + 1..]);
        let (name, op) = expr.split_at(expr.find([':', '-', '?']).unwrap_or(expr.len()));
        // With a colon, an empty value counts as unset.
        let (colon, op) = match op.strip_prefix(':') {
            Some(op) => (true, op),
            None => (false, op),
        };
        let value = vars.get(name).filter(|v| !colon || !v.is_empty());
        match (value, op.get(..1), op.get(1..)) {
            (Some(v), _, _) => out.push_str(v),
            (None, None, _) => {}
            (None, Some("-"), Some(default)) => out.push_str(default),
            (None, Some("?"), Some(message)) => return Err(format!("{name}: {message}")),
            _ => return Err(format!("unknown substitution {expr:?}")),
        }
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

fn str_of(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn strings(v: &Yaml) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(str_of).collect())
        .unwrap_or_default()
}

/// A service's environment, substituted with `vars`.
fn environment(
    service: &Yaml,
    vars: &BTreeMap<&str, String>,
) -> Result<BTreeMap<String, String>, String> {
    let Some(env) = service["environment"].as_mapping() else {
        return Ok(BTreeMap::new());
    };
    env.iter()
        .map(|(k, v)| Ok((str_of(k), interpolate(&str_of(v), vars)?)))
        .collect()
}

/// `env` with files in the creds volume (`/creds/…`) found in `dir`.
fn in_creds_dir(mut env: BTreeMap<String, String>, dir: &Path) -> BTreeMap<String, String> {
    for v in env.values_mut() {
        if let Some(file) = v.strip_prefix("/creds/") {
            *v = dir.join(file).display().to_string();
        }
    }
    env
}

/// `a.b.c.d/n`.
fn cidr(s: &str) -> (Ipv4Addr, u32) {
    let (a, n) = s.split_once('/').unwrap();
    (a.parse().unwrap(), n.parse().unwrap())
}

fn in_cidr(ip: Ipv4Addr, (net, n): (Ipv4Addr, u32)) -> bool {
    let mask = u32::MAX.checked_shl(32 - n).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// The named volume mounted at a directory holding `path`, if any.
fn volume_holding(service: &Yaml, volumes: &Yaml, path: &str) -> Option<String> {
    strings(&service["volumes"]).into_iter().find_map(|v| {
        let mut parts = v.split(':');
        let (source, target) = (parts.next()?, parts.next()?);
        let named = volumes.get(source).is_some();
        (named && Path::new(path).starts_with(target)).then(|| source.to_owned())
    })
}

/// The host port publishing `container_port`, if the service publishes it.
fn published(service: &Yaml, container_port: u16) -> Option<u16> {
    strings(&service["ports"]).iter().find_map(|p| {
        let (host, container) = p.rsplit_once(':')?;
        (container.parse::<u16>().ok()? == container_port)
            .then(|| host.rsplit(':').next()?.parse().ok())?
    })
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// What `nats-init` writes into the creds volume, by its own script, into
/// `dir` standing for the volume.
fn nats_init(doc: &Yaml, dir: &Path) {
    std::fs::create_dir(dir).unwrap();
    let init = &doc["services"]["nats-init"];
    assert!(strings(&init["volumes"]).contains(&"creds:/creds".to_owned()));
    let script = strings(&init["command"]).concat();
    let bin_dir = Path::new(BERTH).parent().unwrap();
    let status = Command::new("sh")
        .args([
            "-ec",
            &script.replace("/creds/", &format!("{}/", dir.display())),
        ])
        .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
        .status()
        .unwrap();
    assert!(status.success());
}

/// `berth <args>` with exactly `env` (and PATH), as in a container.
fn berth_check(args: &[&str], env: &BTreeMap<String, String>) -> Result<Json, String> {
    let out = Command::new(BERTH)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(format!(
            "berth {args:?} exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn the_compose_file_runs_every_component_on_the_cluster_with_what_each_needs() {
    let doc = compose_file();
    let services = doc["services"].as_mapping().unwrap();
    let volumes = &doc["volumes"];
    let service = |name: &str| &doc["services"][name];

    // Every component berth has, from the binary itself.
    let all = berth_check(&["up", "--check"], &BTreeMap::new()).unwrap();
    let names: Vec<String> = all["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    assert!(names.len() >= 8, "{names:?}");
    // A web instance's RENDER_EXTERNAL_URL is the URL the API shows.
    assert!(all["node"]["servicesUrl"].is_string(), "{all}");
    assert_eq!(
        all["node"]["servicesUrl"], all["api"]["servicesUrl"],
        "{all}"
    );

    // The NATS cluster: three current servers, none published, each with
    // its config from deploy/nats/, which routes to all three.
    let nats: Vec<String> = services
        .iter()
        .filter(|(_, s)| s["image"].as_str().is_some_and(|i| i.starts_with("nats:")))
        .map(|(n, _)| str_of(n))
        .collect();
    assert_eq!(nats, ["nats-1", "nats-2", "nats-3"]);
    for n in &nats {
        let s = service(n);
        let tag = str_of(&s["image"]).trim_start_matches("nats:").to_owned();
        let (major, minor) = tag.split_once('.').unwrap();
        let version = (major.parse::<u32>().unwrap(), minor.parse::<u32>().unwrap());
        assert!(
            version >= (2, 11),
            "{n}: R3 streams need nats-server >= 2.11"
        );
        assert!(s.get("ports").is_none(), "{n} publishes a port");
        let conf = format!("./deploy/nats/{n}.conf");
        assert!(
            strings(&s["volumes"]).contains(&format!("{conf}:/etc/nats/nats.conf:ro")),
            "{n}"
        );
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(&conf),
        )
        .unwrap();
        for other in &nats {
            assert!(
                text.contains(&format!("nats-route://{other}:6222")),
                "{conf}"
            );
        }
    }
    let cluster: Vec<String> = nats.iter().map(|n| format!("nats://{n}:4222")).collect();

    let tmp = tempfile::tempdir().unwrap();
    let creds_dir = tmp.path().join("creds");
    nats_init(&doc, &creds_dir);

    let key = berth_runtime::SecretKey::generate_base64();
    let vars = BTreeMap::from([("BERTH_SECRET_KEY", key)]);
    let network = &doc["networks"]["default"];
    let subnet = cidr(&str_of(&network["ipam"]["config"][0]["subnet"]));

    let mut seen = BTreeSet::new();
    let mut reports = BTreeMap::new();
    for (name, s) in services {
        let name = str_of(name);
        let command = strings(&s["command"]);
        let [run, component] = command.as_slice() else {
            continue;
        };
        if run != "run" {
            continue;
        }
        assert_eq!(
            str_of(&s["build"]["dockerfile"]),
            "deploy/Dockerfile",
            "{name}"
        );
        assert!(seen.insert(component.clone()), "{component} twice");
        // Started before the cluster has a leader (or, the node, before the
        // streams exist), a component exits: compose must start it again.
        assert!(
            matches!(s["restart"].as_str(), Some("unless-stopped" | "always")),
            "{name} is not restarted"
        );
        let env = environment(s, &vars).unwrap();
        // Without the key, compose refuses to start whoever needs it.
        if env.contains_key("BERTH_SECRET_KEY") {
            assert!(environment(s, &BTreeMap::new()).is_err(), "{name}");
        }
        // As mounted: /creds is the creds volume, read-only.
        assert!(
            strings(&s["volumes"]).contains(&"creds:/creds:ro".to_owned()),
            "{name}"
        );
        let local = in_creds_dir(env.clone(), &creds_dir);
        let report = berth_check(&["run", component, "--check"], &local)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(report["components"], serde_json::json!([component]));
        assert_eq!(
            report["nats"]["servers"],
            serde_json::json!(cluster),
            "{name}"
        );
        assert_eq!(report["nats"]["replicas"], 3, "{name}: streams not R3");
        let role = if component == "node" {
            "node"
        } else {
            "control"
        };
        assert_eq!(report["nats"]["role"], role, "{name}");
        // The key comes from the environment, the same for all: never from
        // a file one container would create for itself.
        assert!(
            report["secretKey"].is_null() || report["secretKey"] == "BERTH_SECRET_KEY",
            "{name}: {}",
            report["secretKey"]
        );
        // Health and metrics reachable by scrapers on the network, not
        // published.
        let http = report["httpAddr"].as_str().unwrap();
        assert!(http.starts_with("0.0.0.0:"), "{name}: {http}");
        assert_eq!(published(s, port_of(http)), None, "{name}");
        reports.insert(component.clone(), (name, report));
    }
    let expected: BTreeSet<String> = names.iter().cloned().collect();
    assert_eq!(seen, expected, "components missing from docker-compose.yml");

    // Only the API and the router are published, each on the port it
    // listens on in its container, from every address there.
    let publishing: BTreeSet<String> = services
        .iter()
        .filter(|(_, s)| s.get("ports").is_some())
        .map(|(n, _)| str_of(n))
        .collect();
    let (api_service, api) = &reports["api"];
    let (router_service, router) = &reports["router"];
    assert_eq!(
        publishing,
        BTreeSet::from([api_service.clone(), router_service.clone()])
    );
    let listen = |r: &Json, part: &str| r[part]["addr"].as_str().unwrap().to_owned();
    let api_addr = listen(api, "api");
    let router_addr = listen(router, "router");
    assert!(api_addr.starts_with("0.0.0.0:"), "{api_addr}");
    assert!(router_addr.starts_with("0.0.0.0:"), "{router_addr}");
    let api_port = published(service(api_service), port_of(&api_addr)).expect("API published");
    let router_port =
        published(service(router_service), port_of(&router_addr)).expect("router published");
    // The URLs users are given lead to those published ports.
    let public = api["api"]["publicUrl"].as_str().unwrap();
    assert!(public.ends_with(&format!(":{api_port}")), "{public}");
    assert!(!public.contains("0.0.0.0"), "{public}");
    let router_url = match router_port {
        80 => String::new(),
        p => format!(":{p}"),
    };
    assert_eq!(
        api["api"]["servicesUrl"],
        format!(
            "http://{}{router_url}",
            router["router"]["baseDomain"].as_str().unwrap()
        )
    );
    // The first owner's credentials outlive the container.
    let file = api["api"]["credentialsFile"].as_str().unwrap();
    assert!(
        volume_holding(service(api_service), volumes, file).is_some(),
        "{file} is not on a volume"
    );

    // The node: privileged, its instances' cgroups beside its own, its
    // state on a volume, reachable by the router at the address it
    // advertises, and never the installation key.
    let (node_service, node) = &reports["node"];
    assert_eq!(
        node["node"]["servicesUrl"], api["api"]["servicesUrl"],
        "a web instance's RENDER_EXTERNAL_URL is the URL the API shows"
    );
    let ns = service(node_service);
    assert_eq!(ns["privileged"], Yaml::Bool(true));
    assert_eq!(ns["cgroup"].as_str(), Some("host"), "instances' cgroups");
    assert!(!environment(ns, &vars)
        .unwrap()
        .contains_key("BERTH_SECRET_KEY"));
    assert!(node["secretKey"].is_null());
    // Instances' root is not the machine's where it can be helped.
    assert_ne!(node["node"]["userNamespace"]["mode"], "off", "{node}");
    // What instances write cannot fill its disk.
    assert!(node["node"]["minFreeDiskMib"].as_u64() > Some(0), "{node}");
    let dir = node["node"]["dir"].as_str().unwrap();
    assert!(
        volume_holding(ns, volumes, dir).is_some(),
        "{dir} is not on a volume"
    );
    let advertised: Ipv4Addr = node["node"]["advertiseAddr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(!advertised.is_loopback());
    assert_eq!(
        str_of(&ns["networks"]["default"]["ipv4_address"]),
        advertised.to_string()
    );
    assert!(in_cidr(advertised, subnet));
    let instances = cidr(node["node"]["subnet"].as_str().unwrap());
    assert!(
        !in_cidr(instances.0, subnet) && !in_cidr(subnet.0, instances),
        "the instance subnet overlaps the compose network"
    );

    // A control-plane component handed the node's credentials is refused.
    let mut wrong = BTreeMap::new();
    let node_creds = creds_dir.join("node.json").display().to_string();
    wrong.insert("BERTH_NATS_CREDS".to_owned(), node_creds);
    let refused = berth_check(&["run", "api", "--check"], &wrong).unwrap_err();
    assert!(
        refused.contains("Some(64)") && refused.contains("BERTH_NATS_CREDS"),
        "{refused}"
    );
}

#[test]
fn compose_substitution_reads_as_compose_does() {
    let vars = BTreeMap::from([("SET", "x".to_owned()), ("EMPTY", String::new())]);
    let i = |s: &str| interpolate(s, &vars);
    assert_eq!(i("a${SET}b").unwrap(), "axb");
    assert_eq!(i("${UNSET:-d}").unwrap(), "d");
    assert_eq!(i("${EMPTY:-d}").unwrap(), "d");
    assert_eq!(i("${EMPTY-d}").unwrap(), "");
    assert_eq!(i("${UNSET}").unwrap(), "");
    assert_eq!(i("$${SET}").unwrap(), "${SET}");
    assert!(i("${UNSET:?needed}").is_err());
    assert!(i("${EMPTY:?needed}").is_err());
    assert_eq!(i("${EMPTY?needed}").unwrap(), "");
}
