//! The platform variables an instance gets, from a service created
//! through the rules.

use berth_schemas::ids::{DeployId, InstanceId, ServiceId};
use berth_schemas::model::ServiceType;

use super::Scenario;
use crate::service::platform_env::platform_env;

fn env_of(t: ServiceType, services: Option<&str>) -> Vec<(&'static str, String)> {
    let s = Scenario::created(t, &DeployId::generate());
    let cfg = s.state.config.as_ref().expect("created");
    let id = ServiceId::generate();
    let instance = InstanceId::generate();
    let env = platform_env(cfg, &id, &instance, &cfg.plan, services);
    let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    assert_eq!(get("RENDER_SERVICE_ID"), Some(id.to_string()));
    assert_eq!(get("RENDER_INSTANCE_ID"), Some(instance.to_string()));
    assert_eq!(get("RENDER_SERVICE_NAME").as_deref(), Some("app"));
    env
}

fn value<'a>(env: &'a [(&'static str, String)], k: &str) -> &'a str {
    env.iter()
        .find(|(n, _)| *n == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("{k} missing"))
}

#[test]
fn a_web_service_knows_its_public_url_and_type() {
    let env = env_of(
        ServiceType::WebService,
        Some("https://apps.example.com:8443"),
    );
    assert_eq!(value(&env, "RENDER"), "true");
    assert_eq!(value(&env, "IS_PULL_REQUEST"), "false");
    assert_eq!(value(&env, "RENDER_SERVICE_TYPE"), "web");
    assert_eq!(
        value(&env, "RENDER_EXTERNAL_URL"),
        "https://app.apps.example.com:8443"
    );
    assert_eq!(
        value(&env, "RENDER_EXTERNAL_HOSTNAME"),
        "app.apps.example.com"
    );
    assert!(value(&env, "RENDER_CPU_COUNT")
        .parse::<f64>()
        .is_ok_and(|c| c > 0.0));
    // Where web services answer not known: empty, not made up.
    let env = env_of(ServiceType::WebService, None);
    assert_eq!(value(&env, "RENDER_EXTERNAL_URL"), "");
    assert_eq!(value(&env, "RENDER_EXTERNAL_HOSTNAME"), "");
}

#[test]
fn other_types_have_no_public_url() {
    for (t, name) in [
        (ServiceType::PrivateService, "pserv"),
        (ServiceType::BackgroundWorker, "worker"),
        (ServiceType::CronJob, "cron"),
    ] {
        let env = env_of(t, Some("http://localhost"));
        assert_eq!(value(&env, "RENDER_SERVICE_TYPE"), name);
        assert_eq!(value(&env, "RENDER_EXTERNAL_URL"), "", "{name}");
        assert_eq!(value(&env, "RENDER_EXTERNAL_HOSTNAME"), "", "{name}");
    }
}
