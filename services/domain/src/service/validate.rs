//! Field rules for creating and updating services (SPEC §4, §10, §14).
//! Each check names the field in the API's camelCase so the 400 says which
//! part of the body is wrong.

use berth_schemas::command_line;
use berth_schemas::model::{EnvVars, Plan, ServiceType};

use crate::error::DomainError;
use crate::reference::Reference;

/// Longest service name: it is a DNS label (`<name>.<base-domain>`, `<name>:<port>`).
pub const NAME_MAX: usize = 63;
/// Shutdown delay bounds in seconds, and the default (SPEC §6).
pub const SHUTDOWN_DELAY_MIN: u16 = 1;
pub const SHUTDOWN_DELAY_MAX: u16 = 300;
pub const SHUTDOWN_DELAY_DEFAULT: u16 = 30;
/// Longest command line, health check path or region we accept.
const TEXT_MAX: usize = 4096;
const ENV_NAME_MAX: usize = 256;
/// Most env vars a service may have.
pub const ENV_VARS_MAX: usize = 200;

type Result<T> = std::result::Result<T, DomainError>;

/// A service name: a DNS label, since it names the route and the internal host.
pub fn name(name: &str) -> Result<()> {
    let bad = |why: &str| Err(DomainError::invalid("name", format!("{name:?} {why}")));
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > NAME_MAX {
        return bad(&format!("is longer than {NAME_MAX} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("may contain only lowercase letters, digits and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("may not start or end with '-'");
    }
    Ok(())
}

/// Parses and normalises an image reference; the message says which part is wrong.
pub fn image(image: &str) -> Result<Reference> {
    Reference::parse(image).map_err(|e| DomainError::invalid("imagePath", e.to_string()))
}

/// Region: a short lowercase slug such as `oregon`.
pub fn region(region: &str) -> Result<()> {
    if region.is_empty()
        || region.len() > 64
        || !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(DomainError::invalid(
            "region",
            "must be 1–64 lowercase letters, digits or '-'",
        ));
    }
    Ok(())
}

/// An instance type must have a name and non-zero limits.
pub fn plan(plan: &Plan) -> Result<()> {
    if plan.name.is_empty() || plan.cpu_millis == 0 || plan.memory_mib == 0 {
        return Err(DomainError::invalid(
            "plan",
            "needs a name and non-zero CPU and memory",
        ));
    }
    Ok(())
}

/// Instance count: at least one, at most the operator's cap.
pub fn num_instances(n: u32, max: u32) -> Result<()> {
    if n == 0 || n > max {
        return Err(DomainError::invalid(
            "numInstances",
            format!("must be between 1 and {max}, got {n}"),
        ));
    }
    Ok(())
}

/// Why a service with a disk runs one instance.
pub const DISK_ONE_INSTANCE: &str = "a service with a disk runs one instance (the disk is mounted in one container, on one node); numInstances must be 1";

/// Largest disk, GB.
pub const DISK_MAX_GB: u32 = 1024;

/// A disk: a name, an absolute mount path that is not the whole
/// filesystem nor the kernel's, a size in whole GB, and a service that
/// runs one long-lived instance (web, private, worker).
pub fn disk(d: &berth_schemas::model::Disk, ty: ServiceType, num_instances: u32) -> Result<()> {
    if ty == ServiceType::CronJob {
        return Err(DomainError::invalid(
            "disk",
            "a cron job cannot have a disk: each run is a new container, possibly on another node",
        ));
    }
    if num_instances != 1 {
        return Err(DomainError::invalid("numInstances", DISK_ONE_INSTANCE));
    }
    let name_ok = !d.name.is_empty()
        && d.name.len() <= 64
        && d.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_. ".contains(&b));
    if !name_ok {
        return Err(DomainError::invalid(
            "disk.name",
            "1–64 letters, digits, spaces, '-', '_' or '.'",
        ));
    }
    mount_path(&d.mount_path)?;
    if !(1..=DISK_MAX_GB).contains(&d.size_gb) {
        return Err(DomainError::invalid(
            "disk.sizeGB",
            format!("must be a whole number of GB from 1 to {DISK_MAX_GB}"),
        ));
    }
    Ok(())
}

/// A disk's mount path: absolute, without `.`/`..` or empty parts, at
/// most 255 bytes of printable ASCII, not `/` and not below `/proc`,
/// `/sys` or `/dev` (the kernel's, which runc mounts).
fn mount_path(p: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(DomainError::invalid(
            "disk.mountPath",
            format!("{why}, e.g. /var/data"),
        ))
    };
    if !p.starts_with('/') || p.len() > 255 || !p.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("must be an absolute path of at most 255 printable characters");
    }
    let parts: Vec<&str> = p[1..].trim_end_matches('/').split('/').collect();
    if parts
        .iter()
        .any(|x| x.is_empty() || *x == "." || *x == "..")
    {
        return bad("must not hold empty, '.' or '..' parts");
    }
    if matches!(parts[0], "proc" | "sys" | "dev") {
        return bad("must not be the filesystem's root nor below /proc, /sys or /dev");
    }
    Ok(())
}

/// Shutdown delay: 1–300 seconds.
pub fn shutdown_delay(secs: u16) -> Result<()> {
    if !(SHUTDOWN_DELAY_MIN..=SHUTDOWN_DELAY_MAX).contains(&secs) {
        return Err(DomainError::invalid(
            "maxShutdownDelaySeconds",
            format!("must be between {SHUTDOWN_DELAY_MIN} and {SHUTDOWN_DELAY_MAX}, got {secs}"),
        ));
    }
    Ok(())
}

/// A command line (custom command, pre-deploy command, a job's): not
/// blank, bounded, its quotes balanced, and free of shell syntax it is not
/// run with ([`berth_schemas::command_line`]).
pub fn command(field: &'static str, cmd: &str) -> Result<()> {
    if cmd.trim().is_empty() {
        return Err(DomainError::invalid(field, "is blank"));
    }
    if cmd.len() > TEXT_MAX || cmd.contains('\0') {
        return Err(DomainError::invalid(
            field,
            format!("must be at most {TEXT_MAX} bytes without NUL"),
        ));
    }
    if command_line::words(cmd).is_none() {
        return Err(DomainError::invalid(
            field,
            "has an unbalanced quote or a trailing backslash",
        ));
    }
    if let Some(found) = command_line::shell_syntax(cmd) {
        let found = berth_schemas::cut(&found, 40);
        return Err(DomainError::invalid(
            field,
            format!(
                "has shell syntax (`{found}`), but a command is run without a shell, as Docker runs one in exec form: \
                 to have a shell run it, write it as sh -c '…' (for example sh -c 'npm run migrate && npm start')"
            ),
        ));
    }
    Ok(())
}

/// Health check path: an absolute URL path without whitespace.
pub fn health_check_path(path: &str) -> Result<()> {
    if !path.starts_with('/')
        || path.len() > TEXT_MAX
        || path.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(DomainError::invalid(
            "healthCheckPath",
            "must be an absolute path such as /healthz, without spaces",
        ));
    }
    Ok(())
}

/// Environment variable names: `[A-Za-z_][A-Za-z0-9_]*`, as shells accept.
pub fn env_vars(vars: &EnvVars) -> Result<()> {
    if vars.len() > ENV_VARS_MAX {
        return Err(DomainError::invalid(
            "envVars",
            format!("too many variables (at most {ENV_VARS_MAX})"),
        ));
    }
    for key in vars.keys() {
        let mut bytes = key.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        if !first_ok
            || key.len() > ENV_NAME_MAX
            || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            let shown: String = key.chars().take(40).collect();
            return Err(DomainError::invalid(
                "envVars",
                format!("{shown:?} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)"),
            ));
        }
    }
    Ok(())
}

/// Most secret files a service may have.
pub const SECRET_FILES_MAX: usize = 50;
/// Most content of a service's secret files together, in KiB: every file
/// travels, sealed, in each of its instances' work items.
pub const SECRET_FILES_KIB_MAX: usize = 256;
/// Longest secret file name.
const SECRET_FILE_NAME_MAX: usize = 255;

/// Secret file names: a file name in `/etc/secrets` (letters, digits,
/// `.`, `_`, `-`; not `.` or `..`), at most [`SECRET_FILES_MAX`] files.
/// (Their sizes are checked in clear, before they are sealed.)
pub fn secret_files(files: &berth_schemas::model::SecretFiles) -> Result<()> {
    if files.len() > SECRET_FILES_MAX {
        return Err(DomainError::invalid(
            "secretFiles",
            format!("too many files (at most {SECRET_FILES_MAX})"),
        ));
    }
    for name in files.keys() {
        secret_file_name(name)?;
    }
    // Sealed: base64 of a 24-byte nonce, the content and a 16-byte tag.
    let content: usize = files
        .values()
        .map(|s| (s.ciphertext.len() / 4 * 3).saturating_sub(40))
        .sum();
    if content > SECRET_FILES_KIB_MAX * 1024 {
        return Err(DomainError::invalid(
            "secretFiles",
            format!(
                "the files hold more than {SECRET_FILES_KIB_MAX} KiB in all (each instance carries them)"
            ),
        ));
    }
    Ok(())
}

/// One secret file's name (see [`secret_files`]).
fn secret_file_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= SECRET_FILE_NAME_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        let shown: String = name.chars().take(40).collect();
        return Err(DomainError::invalid(
            "secretFiles",
            format!("{shown:?} is not a file name: 1–255 letters, digits, '.', '_' or '-'"),
        ));
    }
    Ok(())
}

/// Only a web service is served by the router, so only a web service has
/// an HTTPS redirect to set (either way).
pub fn https_redirect(service_type: ServiceType) -> Result<()> {
    if service_type != ServiceType::WebService {
        return Err(DomainError::invalid(
            "httpsRedirect",
            "only web services are served over HTTP and HTTPS",
        ));
    }
    Ok(())
}

/// The longest maintenance page address taken.
pub const MAX_MAINTENANCE_URI: usize = 2000;

/// A maintenance mode a service of `service_type` may have: web services
/// only (the router serves them), and a page address that is `""` or an
/// absolute `http(s)://` URL of printable characters that need no quoting
/// in HTML.
pub fn maintenance_mode(
    service_type: ServiceType,
    m: &berth_schemas::model::MaintenanceMode,
) -> Result<()> {
    if service_type != ServiceType::WebService {
        return Err(DomainError::invalid(
            "maintenanceMode",
            "only web services are served by the router, so only they have a maintenance mode",
        ));
    }
    let uri = m.uri.as_str();
    if uri.is_empty() {
        return Ok(());
    }
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"));
    let plain = uri
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'<' | b'>' | b'\\' | b'`'));
    if rest.is_none_or(|r| r.is_empty() || r.starts_with('/'))
        || !plain
        || uri.len() > MAX_MAINTENANCE_URI
    {
        return Err(DomainError::invalid(
            "maintenanceMode.uri",
            format!(
                "must be empty (berth's page) or an absolute http:// or https:// address of at most {MAX_MAINTENANCE_URI} printable characters without spaces, quotes, < or >"
            ),
        ));
    }
    Ok(())
}

/// The most entries an IP allow list holds.
pub const MAX_ALLOW_LIST: usize = 100;
/// The longest description of an allow list entry.
pub const MAX_ALLOW_DESCRIPTION: usize = 200;

/// An IP allow list a service of `service_type` may have: web services
/// only (the router serves them), at most [`MAX_ALLOW_LIST`] address
/// blocks, each written as the router reads it (a bare address becomes
/// its own block: `/32`, `/128`).
pub fn ip_allow_list(
    service_type: ServiceType,
    list: &[berth_schemas::model::CidrBlock],
) -> Result<Vec<berth_schemas::model::CidrBlock>> {
    if service_type != ServiceType::WebService {
        return Err(DomainError::invalid(
            "ipAllowList",
            "only web services are served by the router, so only they have an IP allow list",
        ));
    }
    if list.len() > MAX_ALLOW_LIST {
        return Err(DomainError::invalid(
            "ipAllowList",
            format!("has {} entries; at most {MAX_ALLOW_LIST}", list.len()),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, b)| {
            let cidr = b
                .cidr_block
                .parse::<berth_schemas::cidr::Cidr>()
                .map_err(|e| {
                    DomainError::invalid(
                        "ipAllowList",
                        format!("entry {i}: {:?} {e}", b.cidr_block),
                    )
                })?;
            let d = &b.description;
            if d.chars().count() > MAX_ALLOW_DESCRIPTION || d.chars().any(char::is_control) {
                return Err(DomainError::invalid(
                    "ipAllowList",
                    format!(
                        "entry {i}: a description must be at most {MAX_ALLOW_DESCRIPTION} characters on one line"
                    ),
                ));
            }
            Ok(berth_schemas::model::CidrBlock {
                cidr_block: cidr.to_string(),
                description: d.clone(),
            })
        })
        .collect()
}

/// Which type-specific fields a service type accepts.
pub fn type_fields(
    service_type: ServiceType,
    health_check_path: Option<&str>,
    schedule: Option<&str>,
    pre_deploy_command: Option<&str>,
) -> Result<()> {
    if health_check_path.is_some() && service_type != ServiceType::WebService {
        return Err(DomainError::invalid(
            "healthCheckPath",
            "only web services have a health check path",
        ));
    }
    if schedule.is_some() && service_type != ServiceType::CronJob {
        return Err(DomainError::invalid(
            "schedule",
            "only cron jobs have a schedule",
        ));
    }
    if pre_deploy_command.is_some() && service_type == ServiceType::CronJob {
        return Err(DomainError::invalid(
            "preDeployCommand",
            "cron jobs have no pre-deploy command",
        ));
    }
    Ok(())
}

/// A 5-field cron schedule in UTC: minute hour day-of-month month day-of-week.
/// Each field is a list of `*`, `N`, `N-M`, each optionally `/STEP`; months
/// and weekdays also take English three-letter names; weekday 7 is Sunday.
pub fn schedule(schedule: &str) -> Result<()> {
    crate::schedule::Schedule::parse(schedule)
        .map(drop)
        .map_err(|e| DomainError::invalid("schedule", e.reason().to_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for ok in ["a", "web-1", "x".repeat(63).as_str()] {
            assert!(name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Web", "a_b", "-a", "a-", "a.b", &"x".repeat(64)] {
            assert!(name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cron_schedules_are_parsed_by_the_cron_grammar() {
        // The grammar itself is tested in `crate::schedule`; here: a stored
        // schedule is exactly one the cron runner parses, and a refusal
        // names the field and the part that is wrong.
        assert!(schedule("15,45 0-23/2 1 JAN,jul 0").is_ok());
        let e = schedule("60 * * * *").unwrap_err().to_string();
        assert!(e.contains("schedule") && e.contains("minute"), "{e}");
        let e = schedule("@daily").unwrap_err().to_string();
        assert!(e.contains("needs 5 fields"), "{e}");
    }

    #[test]
    fn env_var_names() {
        let mut vars = EnvVars::new();
        let sealed = berth_schemas::model::Sealed {
            kid: "k".into(),
            ciphertext: "c".into(),
        };
        vars.insert("DATABASE_URL".into(), sealed.clone());
        vars.insert("_x1".into(), sealed.clone());
        assert!(env_vars(&vars).is_ok());
        vars.insert("1BAD".into(), sealed.clone());
        assert!(env_vars(&vars).is_err());

        let mut many = EnvVars::new();
        for i in 0..ENV_VARS_MAX {
            many.insert(format!("K{i}"), sealed.clone());
        }
        assert!(env_vars(&many).is_ok(), "200 is allowed");
        many.insert("ONE_MORE".into(), sealed);
        assert!(env_vars(&many).is_err(), "201 is not");
    }
}
