//! `berth up --check` and `berth run <component> --check`: the settings the
//! selected components would run with, after the same validation as a real
//! start (and the same reading of `BERTH_NATS_CREDS`), printed as JSON.
//! Nothing is connected, bound or written, so an operator can check each
//! machine's environment, or a compose file's, before starting anything.

use berth_runtime::nats_auth::Creds;
use serde_json::{json, Value};

use crate::components;
use crate::up::Validated;

/// What `--check` prints.
pub fn report(v: &Validated, creds: Option<&Creds>, targets: &str) -> Value {
    let c = &v.config;
    let o = &v.options;
    let selected: Vec<&str> = components::NAMES
        .iter()
        .copied()
        .filter(|n| v.only.is_none_or(|o| o == *n))
        .collect();
    let secret_key = match &v.secret_key {
        _ if !components::holds_key(v.only, o.router.https.is_some()) => Value::Null,
        Some(_) => json!("BERTH_SECRET_KEY"),
        None => json!(crate::secret::key_file(&c.data_dir)),
    };
    let mut report = json!({
        "components": selected,
        "nats": {
            "servers": c.nats_url.split(',').map(str::trim).collect::<Vec<_>>(),
            "creds": c.nats_creds,
            "role": creds.map(|c| c.role.as_str()),
            "nodeId": creds.and_then(|c| c.node_id.as_ref()).map(ToString::to_string),
            "replicas": c.replicas,
            "subjectPrefix": c.subjects.prefix(),
        },
        "dataDir": c.data_dir,
        "httpAddr": c.http_addr,
        "secretKey": secret_key,
        "targets": targets,
    });
    for name in selected {
        let section = match name {
            "api" => json!({
                "addr": o.api.api_addr,
                "publicUrl": o.api.public_url(),
                "servicesUrl": o.api.api_services_url,
                "credentialsFile": c.data_dir.join(berth_api::bootstrap::CREDENTIALS_FILE),
            }),
            "router" => json!({
                "addr": o.router.addr,
                "baseDomain": o.router.base_domain,
            }),
            "node" => json!({
                "dir": o.node.state_dir(&c.data_dir),
                "name": o.node.name,
                "advertiseAddr": o.node_checks.advertise,
                "ports": format!("{}-{}", o.node_checks.ports.start(), o.node_checks.ports.end()),
                "subnet": o.node_checks.subnet.to_string(),
                "runc": o.node.runc,
                "cniPath": o.node.cni_path,
                "servicesUrl": o.node.services_url,
                "minFreeDiskMib": o.node.min_free_disk >> 20,
                "instanceDiskMib": o.node.instance_disk_limit >> 20,
                "userNamespace": match o.node.user_namespace {
                    berth_node::Userns::Off => json!({ "mode": "off" }),
                    berth_node::Userns::On(u) => json!({ "mode": "on", "firstHostId": u.host }),
                    berth_node::Userns::Auto(u) => json!({ "mode": "auto", "firstHostId": u.host }),
                },
            }),
            "notifier" => json!({
                "smtpHost": o.notifier.smtp.as_ref().map(|s| s.host.clone()),
            }),
            _ => continue,
        };
        report[name] = section;
    }
    report
}
