//! The service settings `create` and `update` share, as flags and as the
//! `image`/`serviceDetails`/`envVars` parts of the API's request body.
//! One rule clears an optional setting: give it empty (`--command ""`,
//! `--pre-deploy-command ""`, `--health-check-path ""`, `--credential
//! ""`, `--notify-on-fail ""`), which the API reads as `null`. Env var values may be secrets: a
//! bad line is refused without echoing it.

use clap::Args;
use serde_json::{json, Map, Value};

use super::ClientError;

/// Settings shared by `create` and `update`.
#[derive(Debug, Args)]
pub struct Settings {
    /// Image reference, e.g. `ghcr.io/org/app:1.2`.
    #[arg(long)]
    pub image: Option<String>,
    /// Registry credential (its id `rgc-…` or name) for a private image; ""
    /// removes it.
    #[arg(long)]
    pub credential: Option<String>,
    /// Instance type: free, starter, standard, pro, pro_plus, pro_max, pro_ultra.
    #[arg(long)]
    pub plan: Option<String>,
    /// HTTP path polled before an instance counts as up (web services); ""
    /// removes it (an instance is up once its port accepts connections).
    #[arg(long)]
    pub health_check_path: Option<String>,
    /// Command run once before each deploy goes live; "" removes it.
    #[arg(long)]
    pub pre_deploy_command: Option<String>,
    /// Cron schedule (cron jobs), e.g. `*/5 * * * *`.
    #[arg(long)]
    pub schedule: Option<String>,
    /// Command replacing the image's CMD (its ENTRYPOINT is kept); ""
    /// returns to the image's CMD.
    #[arg(long = "command")]
    pub docker_command: Option<String>,
    /// Environment variable `KEY=VALUE` (repeatable). For secret values use
    /// --env-file, which keeps them out of the process list.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// File of `KEY=VALUE` lines (blank lines and `#` comments skipped).
    #[arg(long)]
    pub env_file: Option<std::path::PathBuf>,
    /// A deploy started while another runs: `wait` (queued; when the
    /// running one ends, only the newest queued one runs) or `cancel` (the
    /// running one is canceled at once).
    #[arg(long, value_parser = ["wait", "cancel"])]
    pub overlap_policy: Option<String>,
    /// Seconds a stopping instance gets between SIGTERM and SIGKILL (1–300).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=300))]
    pub shutdown_delay_seconds: Option<u16>,
    /// Who is told when a deploy fails, in Render's words: `notify`,
    /// `ignore`, or `default` (the owner's setting, `berth notify show`);
    /// "" is `default`.
    #[arg(long, value_parser = notify_on_fail, value_name = "notify|ignore|default")]
    pub notify_on_fail: Option<String>,
    /// Web services: redirect plain HTTP to HTTPS once the router holds a
    /// certificate for the host (and send HSTS when the router does);
    /// `true` by default.
    #[arg(long, value_name = "true|false")]
    pub https_redirect: Option<bool>,
}

/// Render's values for a service's failure notifications, or "" for the
/// owner's setting.
fn notify_on_fail(v: &str) -> Result<String, String> {
    match v {
        "" | "default" | "notify" | "ignore" => Ok(v.to_owned()),
        _ => Err("must be notify, ignore or default (\"\" is default)".to_owned()),
    }
}

/// `KEY=VALUE` lines (arguments, then a file's lines without blanks and
/// `#` comments) as the API's `{key, value}`; a malformed one is refused
/// without echoing it: it may hold a secret value.
pub(crate) fn key_values(
    given: &[String],
    file: Option<&std::path::Path>,
) -> Result<Vec<Value>, ClientError> {
    let mut lines: Vec<String> = given.to_vec();
    if let Some(path) = file {
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
    lines
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok(json!({ "key": k, "value": v })),
            _ => Err(ClientError::Usage(
                "an env var must be KEY=VALUE (one was not)".to_owned(),
            )),
        })
        .collect()
}

pub(crate) fn env_vars(settings: &Settings) -> Result<Option<Vec<Value>>, ClientError> {
    let vars = key_values(&settings.env, settings.env_file.as_deref())?;
    Ok((!vars.is_empty()).then_some(vars))
}

/// A clearable setting's value: empty clears it (`null`).
fn clearable(v: &str) -> Value {
    if v.is_empty() {
        Value::Null
    } else {
        json!(v)
    }
}

/// The `image` and `serviceDetails` parts of a create/update body.
pub(crate) fn settings_body(
    st: &Settings,
    body: &mut Map<String, Value>,
) -> Result<(), ClientError> {
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
    put("plan", st.plan.as_ref().map(|v| json!(v)));
    put(
        "healthCheckPath",
        st.health_check_path.as_deref().map(clearable),
    );
    put(
        "preDeployCommand",
        st.pre_deploy_command.as_deref().map(clearable),
    );
    put("schedule", st.schedule.as_ref().map(|v| json!(v)));
    put(
        "overlapPolicy",
        st.overlap_policy.as_ref().map(|v| json!(v)),
    );
    put(
        "shutdownDelaySeconds",
        st.shutdown_delay_seconds.map(|v| json!(v)),
    );
    put("httpsRedirect", st.https_redirect.map(|v| json!(v)));
    put(
        "envSpecificDetails",
        st.docker_command
            .as_deref()
            .map(|c| json!({ "dockerCommand": clearable(c) })),
    );
    if !d.is_empty() {
        body.insert("serviceDetails".into(), Value::Object(d));
    }
    if let Some(n) = st.notify_on_fail.as_deref() {
        body.insert("notifyOnFail".into(), clearable(n));
    }
    if let Some(env) = env_vars(st)? {
        body.insert("envVars".into(), Value::Array(env));
    }
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
            plan: None,
            health_check_path: None,
            pre_deploy_command: None,
            schedule: None,
            docker_command: None,
            env: env.iter().map(|s| s.to_string()).collect(),
            env_file: file,
            overlap_policy: None,
            shutdown_delay_seconds: None,
            notify_on_fail: None,
            https_redirect: None,
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
        st.docker_command = Some("sh -c x".into());
        st.pre_deploy_command = Some(String::new());
        st.health_check_path = Some(String::new());
        st.overlap_policy = Some("cancel".into());
        st.shutdown_delay_seconds = Some(45);
        st.notify_on_fail = Some(String::new());
        st.https_redirect = Some(false);
        let mut body = Map::new();
        settings_body(&st, &mut body).unwrap();
        assert_eq!(
            Value::Object(body),
            json!({
                "image": {"imagePath": "img:1"},
                "serviceDetails": {
                    "envSpecificDetails": {"dockerCommand": "sh -c x"},
                    "preDeployCommand": null,
                    "healthCheckPath": null,
                    "overlapPolicy": "cancel",
                    "shutdownDelaySeconds": 45,
                    "httpsRedirect": false,
                },
                "notifyOnFail": null,
            }),
            "an empty value clears the setting"
        );
        st.notify_on_fail = Some("ignore".into());
        let mut body = Map::new();
        settings_body(&st, &mut body).unwrap();
        assert_eq!(body["notifyOnFail"], "ignore");
        assert!(notify_on_fail("sometimes").is_err());
    }
}
