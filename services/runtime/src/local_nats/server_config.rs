//! The config file berth starts its nats-server with, and the one setting
//! that needs it: JetStream's fsync policy, which has no command-line flag.
//! Which policy a given server can honour is decided here too (2.9 knows
//! no `sync_interval` and fsyncs every 60 s, fixed).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::{LocalNatsError, NatsServerSpec};

/// The fixed fsync interval of nats-server before 2.10, which cannot be configured.
pub const LEGACY_SYNC: Duration = Duration::from_secs(60);

/// Longest interval accepted: beyond the server's own default (2 minutes)
/// it only widens the window of loss, and an hour catches a typo like `2000m`.
const MAX_SYNC: Duration = Duration::from_secs(3600);

/// When JetStream's file store writes what it acknowledged to disk (fsync).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncInterval {
    /// Before each write is acknowledged: an acknowledged write survives a
    /// machine crash. Costs throughput (BENCHMARKS.md, event log).
    Always,
    /// Every so often: a crash of the machine loses what was acknowledged
    /// since the last sync.
    Every(Duration),
}

impl SyncInterval {
    /// Parses `always` or a whole number with a unit: `500ms`, `30s`, `2m`, `1h`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "always" {
            return Ok(Self::Always);
        }
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (n, unit) = s.split_at(digits);
        let n: u64 = n
            .parse()
            .map_err(|_| format!("{s:?} is not `always` or a duration like 2m, 30s, 500ms"))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => {
                return Err(format!(
                    "{s:?} is not `always` or a duration like 2m, 30s, 500ms (units: ms, s, m, h)"
                ))
            }
        };
        if d.is_zero() || d > MAX_SYNC {
            return Err(format!("{s:?} must be more than 0 and at most 1h"));
        }
        Ok(Self::Every(d))
    }

    /// The value in nats-server's config syntax. A duration is quoted:
    /// unquoted, `2m` is the number 2,000,000 to its parser (read as seconds).
    fn config_value(&self) -> String {
        match self {
            Self::Always => "always".to_owned(),
            Self::Every(_) => format!("\"{self}\""),
        }
    }
}

impl std::fmt::Display for SyncInterval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Always => f.write_str("always"),
            Self::Every(d) => {
                let ms = d.as_millis();
                match ms {
                    _ if ms % 3_600_000 == 0 => write!(f, "{}h", ms / 3_600_000),
                    _ if ms % 60_000 == 0 => write!(f, "{}m", ms / 60_000),
                    _ if ms % 1000 == 0 => write!(f, "{}s", ms / 1000),
                    _ => write!(f, "{ms}ms"),
                }
            }
        }
    }
}

/// The `major.minor.patch` a nats-server binary reports (`nats-server: v2.9.10`),
/// `None` when it cannot be run or read.
pub async fn server_version(binary: &Path) -> Option<(u32, u32, u32)> {
    let out = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.trim().rsplit(' ').next()?.trim_start_matches('v');
    let mut parts = v.split(['.', '-']).map(|p| p.parse::<u32>());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b)), Some(Ok(c))) => Some((a, b, c)),
        _ => None,
    }
}

/// The `sync_interval` to write for `wanted` on a server of `version`
/// (`None`: write none). Before 2.10 the setting makes the server refuse
/// its config and the store fsyncs every 60 s, fixed: an interval of 60 s
/// or more is met by that, anything more frequent cannot be, and is refused.
/// An unknown version gets the setting, and the server says if it minds.
pub(super) fn sync_setting(
    binary: &Path,
    wanted: Option<SyncInterval>,
    version: Option<(u32, u32, u32)>,
) -> Result<Option<SyncInterval>, LocalNatsError> {
    let Some(wanted) = wanted else {
        return Ok(None);
    };
    match version {
        Some((major, minor, patch)) if (major, minor) < (2, 10) => match wanted {
            SyncInterval::Every(d) if d >= LEGACY_SYNC => {
                tracing::info!(
                    nats.version = %format!("{major}.{minor}.{patch}"),
                    sync_interval = %wanted,
                    "nats-server before 2.10 fsyncs every 60 s and cannot be told otherwise; that meets the interval asked for"
                );
                Ok(None)
            }
            _ => Err(LocalNatsError::SyncUnsupported {
                binary: binary.to_owned(),
                version: format!("{major}.{minor}.{patch}"),
                wanted,
            }),
        },
        _ => Ok(Some(wanted)),
    }
}

/// `s` as a double-quoted string of nats-server's config syntax (inside
/// quotes `$VAR` is not expanded); `None` for a control character, which
/// that syntax cannot carry.
fn quoted(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => return None,
            c => out.push(c),
        }
    }
    out.push('"');
    Some(out)
}

/// The config file's text for `spec`, with `sync` as decided for its server.
pub(super) fn config_text(spec: &NatsServerSpec, sync: Option<SyncInterval>) -> Option<String> {
    let store = quoted(spec.store_dir.to_str()?)?;
    let host = quoted(&spec.host)?;
    let sync = match sync {
        Some(s) => format!("  sync_interval: {}\n", s.config_value()),
        None => "  # sync_interval: the server's own default\n".to_owned(),
    };
    Some(format!(
        "# Written by berth at each start of this server; edits are overwritten.\n\
         # Set BERTH_NATS_SYNC_INTERVAL to change how often JetStream fsyncs.\n\
         host: {host}\n\
         port: {port}\n\
         jetstream {{\n\
         \x20 store_dir: {store}\n\
         {sync}\
         }}\n\
         {auth}",
        port = spec.port,
        auth = spec
            .authorization
            .as_deref()
            .unwrap_or("# No authorization block: anonymous clients may do anything.\n"),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sync_intervals_parse_and_print() {
        for (text, want) in [
            ("always", SyncInterval::Always),
            ("2m", SyncInterval::Every(Duration::from_secs(120))),
            ("30s", SyncInterval::Every(Duration::from_secs(30))),
            ("1500ms", SyncInterval::Every(Duration::from_millis(1500))),
            ("1h", SyncInterval::Every(Duration::from_secs(3600))),
        ] {
            assert_eq!(SyncInterval::parse(text), Ok(want), "{text}");
            assert_eq!(want.to_string(), text);
        }
        // Printed in the largest whole unit.
        assert_eq!(SyncInterval::parse("120s").unwrap().to_string(), "2m");
        // Quoted in the config: unquoted `2m` is a number to nats-server.
        assert_eq!(SyncInterval::parse("2m").unwrap().config_value(), "\"2m\"");
        assert_eq!(SyncInterval::Always.config_value(), "always");
        for bad in [
            "", "2", "m", "0ms", "2d", "2M", "61m", "1.5s", "always!", " 2 m",
        ] {
            assert!(SyncInterval::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn servers_before_2_10_get_no_setting_or_are_refused() {
        let bin = Path::new("/usr/sbin/nats-server");
        let every = |s| Some(SyncInterval::Every(Duration::from_secs(s)));
        let always = Some(SyncInterval::Always);
        assert!(matches!(
            sync_setting(bin, always, Some((2, 9, 10))),
            Err(LocalNatsError::SyncUnsupported { .. })
        ));
        assert!(matches!(
            sync_setting(bin, every(59), Some((2, 9, 10))),
            Err(LocalNatsError::SyncUnsupported { .. })
        ));
        // 2.9's fixed 60 s meets an interval of 60 s or more.
        assert!(matches!(
            sync_setting(bin, every(60), Some((2, 9, 10))),
            Ok(None)
        ));
        assert!(matches!(
            sync_setting(bin, every(120), Some((2, 9, 10))),
            Ok(None)
        ));
        assert!(matches!(
            sync_setting(bin, always, Some((2, 10, 0))),
            Ok(Some(_))
        ));
        assert!(matches!(sync_setting(bin, always, None), Ok(Some(_))));
        assert!(matches!(
            sync_setting(bin, None, Some((2, 9, 10))),
            Ok(None)
        ));
    }

    #[test]
    fn versions_and_quoting() {
        assert_eq!(parse_version("nats-server: v2.9.10\n"), Some((2, 9, 10)));
        assert_eq!(parse_version("nats-server: v2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.12.0-RC.1"), Some((2, 12, 0)));
        assert_eq!(parse_version("garbage"), None);
        assert_eq!(
            quoted(r#"/a "b" \c $HOME"#).as_deref(),
            Some(r#""/a \"b\" \\c $HOME""#)
        );
        assert_eq!(quoted("a\nb"), None);
    }
}
