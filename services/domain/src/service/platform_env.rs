//! What an instance finds in its environment besides its image's and its
//! service's variables: the platform variables Render sets in every
//! instance, with berth's values, so an app moved from Render that reads
//! `RENDER_EXTERNAL_URL` or `RENDER_SERVICE_NAME` keeps working.
//!
//! A service's own variable of the same name wins. Not set:
//! `RENDER_DISCOVERY_SERVICE` (berth has no name listing every instance of
//! a service) and the `RENDER_GIT_*` variables (images are prebuilt).

use berth_schemas::ids::{InstanceId, ServiceId};
use berth_schemas::model::{Plan, ServiceType};

use super::ServiceConfig;

/// The public URL of web service `name` when web services answer at
/// `services` (`http(s)://<base-domain>[:port]`): its name in front of
/// the host.
pub fn web_url(services: &str, name: &str) -> String {
    match services.split_once("://") {
        Some((scheme, host)) => format!("{scheme}://{name}.{}", host.trim_end_matches('/')),
        None => format!("http://{name}.{}", services.trim_end_matches('/')),
    }
}

/// Render's name for a service type (`RENDER_SERVICE_TYPE`).
pub fn render_type(t: ServiceType) -> &'static str {
    match t {
        ServiceType::WebService => "web",
        ServiceType::PrivateService => "pserv",
        ServiceType::BackgroundWorker => "worker",
        ServiceType::CronJob => "cron",
    }
}

/// The platform variables for instance `instance` of `service` (settings
/// `cfg`) running with `plan`, web services answering at `services` when
/// known: `RENDER` (`true`), `IS_PULL_REQUEST` (`false`),
/// `RENDER_SERVICE_ID`, `RENDER_SERVICE_NAME`, `RENDER_SERVICE_TYPE`,
/// `RENDER_INSTANCE_ID`, `RENDER_CPU_COUNT` (the plan's CPUs: `0.5`, `2`)
/// and, for a web service, `RENDER_EXTERNAL_URL` and
/// `RENDER_EXTERNAL_HOSTNAME` (empty for other types, as on Render, and
/// when where web services answer is not known).
pub fn platform_env(
    cfg: &ServiceConfig,
    service: &ServiceId,
    instance: &InstanceId,
    plan: &Plan,
    services: Option<&str>,
) -> Vec<(&'static str, String)> {
    let url = services
        .filter(|_| cfg.service_type == ServiceType::WebService)
        .map(|s| web_url(s, &cfg.name))
        .unwrap_or_default();
    let host = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.split(['/', ':']).next())
        .unwrap_or_default()
        .to_owned();
    vec![
        ("RENDER", "true".to_owned()),
        ("IS_PULL_REQUEST", "false".to_owned()),
        ("RENDER_SERVICE_ID", service.to_string()),
        ("RENDER_SERVICE_NAME", cfg.name.clone()),
        (
            "RENDER_SERVICE_TYPE",
            render_type(cfg.service_type).to_owned(),
        ),
        ("RENDER_INSTANCE_ID", instance.to_string()),
        ("RENDER_CPU_COUNT", cpus(plan.cpu_millis)),
        ("RENDER_EXTERNAL_URL", url),
        ("RENDER_EXTERNAL_HOSTNAME", host),
    ]
}

/// Millicores as a number of CPUs: `500` → `0.5`, `2000` → `2`.
fn cpus(millis: u32) -> String {
    let (whole, frac) = (millis / 1000, millis % 1000);
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:03}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cpus_as_render_writes_them() {
        for (m, s) in [
            (500, "0.5"),
            (1000, "1"),
            (2000, "2"),
            (250, "0.25"),
            (1500, "1.5"),
            (1, "0.001"),
        ] {
            assert_eq!(cpus(m), s, "{m}");
        }
    }

    #[test]
    fn web_urls_put_the_name_in_front_of_the_host() {
        assert_eq!(
            web_url("http://localhost:8080", "app"),
            "http://app.localhost:8080"
        );
        assert_eq!(
            web_url("https://apps.example.com/", "app"),
            "https://app.apps.example.com"
        );
        assert_eq!(
            web_url("apps.example.com", "app"),
            "http://app.apps.example.com"
        );
    }
}
