//! What the agent reads from an image: the config's process settings, the
//! service's custom command split like a shell would (no expansion), and
//! `User` resolved against the image's own `/etc/passwd` and `/etc/group`.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::BundleError;

/// The process settings of an OCI/Docker image config (`config` object).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `Entrypoint`.
    #[serde(default, rename = "Entrypoint")]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(default, rename = "Cmd")]
    pub cmd: Option<Vec<String>>,
    /// `Env` (`KEY=value`).
    #[serde(default, rename = "Env")]
    pub env: Option<Vec<String>>,
    /// `WorkingDir`.
    #[serde(default, rename = "WorkingDir")]
    pub working_dir: Option<String>,
    /// `User` (`uid`, `uid:gid`, `name`, `name:group`).
    #[serde(default, rename = "User")]
    pub user: Option<String>,
    /// `ExposedPorts` (`"8080/tcp": {}`).
    #[serde(
        default,
        rename = "ExposedPorts",
        skip_serializing_if = "Option::is_none"
    )]
    pub exposed_ports: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    /// `StopSignal` (`SIGQUIT`, `QUIT`, `3`, `SIGRTMIN+3`): what asks the
    /// program to stop (`STOPSIGNAL SIGQUIT` in nginx's and php-fpm's
    /// images: a graceful stop, where SIGTERM drops requests in flight).
    #[serde(
        default,
        rename = "StopSignal",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_signal: Option<String>,
    /// `Volumes` (`"/data": {}`): directories made when the image lacks
    /// them ([`crate::volumes`]).
    #[serde(default, rename = "Volumes", skip_serializing_if = "Option::is_none")]
    pub volumes: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

/// SIGTERM: what asks a program to stop unless its image says otherwise.
pub const SIGTERM: u8 = 15;

#[derive(Deserialize)]
struct RawImage {
    #[serde(default)]
    config: Option<ImageConfig>,
}

impl ImageConfig {
    /// Parse an image config blob (the `config` object is optional).
    pub fn from_json(bytes: &[u8]) -> Result<Self, BundleError> {
        let raw: RawImage =
            serde_json::from_slice(bytes).map_err(|e| BundleError::ImageConfig(e.to_string()))?;
        Ok(raw.config.unwrap_or_default())
    }

    /// The port the image's own environment names (`ENV PORT=5000`, as
    /// images built for Heroku or Cloud Run often do), if it is a port.
    pub fn env_port(&self) -> Option<u16> {
        self.env
            .iter()
            .flatten()
            .rev()
            .find_map(|kv| kv.strip_prefix("PORT="))
            .and_then(|p| p.trim().parse::<u16>().ok())
            .filter(|p| *p > 0)
    }

    /// The one TCP port the image exposes (`EXPOSE 8080`), if it exposes
    /// exactly one: the port its server listens on when `PORT` is unset.
    pub fn single_tcp_port(&self) -> Option<u16> {
        let mut tcp = self.exposed_ports.iter().flatten().filter_map(|(k, _)| {
            let (port, proto) = k.split_once('/').unwrap_or((k.as_str(), "tcp"));
            proto
                .eq_ignore_ascii_case("tcp")
                .then(|| port.parse::<u16>().ok())?
        });
        match (tcp.next(), tcp.next()) {
            (Some(p), None) if p > 0 => Some(p),
            _ => None,
        }
    }

    /// The signal that asks the image's program to stop, as Docker reads
    /// `StopSignal`: a number from 1 to 64, or a name with or without
    /// `SIG` in any case, `RTMIN+n` and `RTMAX-n` included; SIGTERM when
    /// unset. `Err` carries a value that names no signal.
    pub fn stop_signal(&self) -> Result<u8, &str> {
        let Some(raw) = self.stop_signal.as_deref().map(str::trim) else {
            return Ok(SIGTERM);
        };
        parse_signal(raw).ok_or(raw)
    }

    /// The process arguments Docker would run: Entrypoint followed by the
    /// custom command when one is set (it replaces Cmd), else by Cmd.
    pub fn args(&self, command: Option<&str>) -> Result<Vec<String>, BundleError> {
        let mut args = self.entrypoint.clone().unwrap_or_default();
        match command.map(str::trim).filter(|c| !c.is_empty()) {
            Some(c) => args.extend(split_command(c)?),
            None => args.extend(self.cmd.clone().unwrap_or_default()),
        }
        if args.is_empty() {
            return Err(BundleError::NoCommand);
        }
        Ok(args)
    }
}

/// Split `s` into words as a POSIX shell would, without any expansion
/// ([`berth_schemas::command_line::words`]).
pub fn split_command(s: &str) -> Result<Vec<String>, BundleError> {
    berth_schemas::command_line::words(s).ok_or_else(|| BundleError::CommandSyntax(s.to_string()))
}

/// A resolved process identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessUser {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary groups: those the image's `/etc/group` lists the user
    /// in, when `User` names no group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_gids: Vec<u32>,
}

/// Resolve an image's `User` inside `rootfs` as Docker does: empty → root;
/// a numeric uid without a group takes the passwd entry's gid when there
/// is one, else 0; names must exist in the image's files. Without a group
/// the user also gets the groups `/etc/group` lists it in (`adduser app
/// www-data`); with one (`app:staff`), that group only.
pub fn resolve_user(user: Option<&str>, rootfs: &Path) -> Result<ProcessUser, BundleError> {
    let spec = user.map(str::trim).unwrap_or("");
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None if spec.is_empty() => ("0", None),
        None => (spec, None),
    };
    let passwd = read_db(rootfs, "etc/passwd");
    let unknown = || BundleError::UnknownUser(spec.to_string());
    // passwd: name:x:uid:gid:…
    let entry = passwd.iter().find(|f| match u.parse::<u32>() {
        Ok(n) => f.get(2).and_then(|x| x.parse::<u32>().ok()) == Some(n),
        Err(_) => f.first().map(String::as_str) == Some(u),
    });
    let uid = match u.parse::<u32>() {
        Ok(n) => n,
        Err(_) => entry
            .and_then(|f| f.get(2))
            .and_then(|x| x.parse().ok())
            .ok_or_else(unknown)?,
    };
    let groups = || read_db(rootfs, "etc/group");
    let (gid, additional_gids) = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => (n, Vec::new()),
            Err(_) => groups()
                .iter()
                .find(|f| f.first().map(String::as_str) == Some(g))
                .and_then(|f| f.get(2))
                .and_then(|x| x.parse().ok())
                .map(|n| (n, Vec::new()))
                .ok_or_else(unknown)?,
        },
        None => {
            let gid = entry
                .and_then(|f| f.get(3))
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
            let name = entry.and_then(|f| f.first());
            (
                gid,
                name.map(|n| member_of(&groups(), n)).unwrap_or_default(),
            )
        }
    };
    Ok(ProcessUser {
        uid,
        gid,
        additional_gids,
    })
}

/// The gids of the groups whose member lists (group: `name:x:gid:a,b`)
/// name `user`, each once.
fn member_of(groups: &[Vec<String>], user: &str) -> Vec<u32> {
    let mut gids = Vec::new();
    for f in groups {
        let listed = f
            .get(3)
            .is_some_and(|members| members.split(',').any(|m| m.trim() == user));
        match f.get(2).and_then(|x| x.parse::<u32>().ok()) {
            Some(gid) if listed && !gids.contains(&gid) => gids.push(gid),
            _ => {}
        }
    }
    gids
}

/// Linux's signals by name, without `SIG` (x86-64 and arm64 numbering),
/// kept in rows: it is a table.
#[rustfmt::skip]
const SIGNALS: [(&str, u8); 33] = [
    ("HUP", 1), ("INT", 2), ("QUIT", 3), ("ILL", 4), ("TRAP", 5), ("ABRT", 6), ("IOT", 6),
    ("BUS", 7), ("FPE", 8), ("KILL", 9), ("USR1", 10), ("SEGV", 11), ("USR2", 12),
    ("PIPE", 13), ("ALRM", 14), ("TERM", 15), ("STKFLT", 16), ("CHLD", 17), ("CLD", 17),
    ("CONT", 18), ("STOP", 19), ("TSTP", 20), ("TTIN", 21), ("TTOU", 22), ("URG", 23),
    ("XCPU", 24), ("XFSZ", 25), ("VTALRM", 26), ("PROF", 27), ("WINCH", 28), ("IO", 29),
    ("PWR", 30), ("SYS", 31),
];

/// The first and last real-time signals as the C library numbers them
/// (it keeps 32 and 33 for itself), as Docker does.
const SIGRTMIN: u8 = 34;
const SIGRTMAX: u8 = 64;

/// A signal's number from `3`, `QUIT`, `SIGQUIT`, `sigquit`, `RTMIN+3` or
/// `SIGRTMAX-1`; `None` for anything else (0 and numbers past 64 too).
fn parse_signal(raw: &str) -> Option<u8> {
    if let Ok(n) = raw.parse::<u8>() {
        return (1..=SIGRTMAX).contains(&n).then_some(n);
    }
    let upper = raw.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some((_, n)) = SIGNALS.iter().find(|(s, _)| *s == name) {
        return Some(*n);
    }
    let rt = |base: u8, rest: &str, sign: char| -> Option<u8> {
        if rest.is_empty() {
            return Some(base);
        }
        let k: u8 = rest.strip_prefix(sign)?.parse().ok()?;
        let n = if sign == '+' {
            base.checked_add(k)?
        } else {
            base.checked_sub(k)?
        };
        (SIGRTMIN..=SIGRTMAX).contains(&n).then_some(n)
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return rt(SIGRTMIN, rest, '+');
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return rt(SIGRTMAX, rest, '-');
    }
    None
}

/// At most this much of a passwd-style file is read: a real one is a few
/// KiB, and an image's could be made large enough to fill the node's
/// memory. Records past it are not seen.
const DB_MAX_BYTES: u64 = 1 << 20;

/// Colon-separated records of a passwd-style file (its first
/// [`DB_MAX_BYTES`]); missing → empty. The file is read by path inside the
/// rootfs; a symlink there, the file or a directory on its way, could
/// point at the host's files, so only a regular file under plain
/// directories is read.
fn read_db(rootfs: &Path, rel: &str) -> Vec<Vec<String>> {
    let path = rootfs.join(rel);
    let dirs_plain = Path::new(rel)
        .ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .all(|a| std::fs::symlink_metadata(rootfs.join(a)).is_ok_and(|m| m.is_dir()));
    let regular = dirs_plain && std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
    let mut text = String::new();
    if regular {
        if let Ok(f) = std::fs::File::open(&path) {
            // Not UTF-8 (or cut mid-character at the limit): what was read
            // up to there is kept.
            let mut bytes = Vec::new();
            let _ = f.take(DB_MAX_BYTES).read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(':').map(str::to_string).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cfg(ep: Option<&[&str]>, cmd: Option<&[&str]>) -> ImageConfig {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        ImageConfig {
            entrypoint: ep.map(v),
            cmd: cmd.map(v),
            ..ImageConfig::default()
        }
    }

    #[test]
    fn one_exposed_tcp_port_is_the_served_port() {
        let with = |ports: &[&str]| {
            let c: ImageConfig = serde_json::from_value(serde_json::json!({
                "ExposedPorts": ports.iter().map(|p| (p.to_string(), serde_json::json!({})))
                    .collect::<serde_json::Map<_, _>>(),
            }))
            .unwrap();
            c.single_tcp_port()
        };
        assert_eq!(with(&["8080/tcp"]), Some(8080));
        assert_eq!(with(&["8080"]), Some(8080), "no protocol means tcp");
        assert_eq!(
            with(&["8080/tcp", "53/udp"]),
            Some(8080),
            "udp is not served"
        );
        assert_eq!(with(&["8080/tcp", "9090/tcp"]), None, "two: PORT decides");
        assert_eq!(with(&["53/udp"]), None);
        assert_eq!(with(&["x/tcp"]), None);
        assert_eq!(ImageConfig::default().single_tcp_port(), None);
    }

    #[test]
    fn args_like_docker() {
        let c = cfg(Some(&["/entry"]), Some(&["serve", "--x"]));
        assert_eq!(c.args(None).unwrap(), ["/entry", "serve", "--x"]);
        assert_eq!(
            c.args(Some("migrate 'a b'")).unwrap(),
            ["/entry", "migrate", "a b"]
        );
        assert_eq!(c.args(Some("  ")).unwrap(), ["/entry", "serve", "--x"]);
        let c = cfg(None, Some(&["/bin/sh"]));
        assert_eq!(c.args(Some("echo hi")).unwrap(), ["echo", "hi"]);
        assert!(matches!(
            cfg(None, None).args(None),
            Err(BundleError::NoCommand)
        ));
    }

    #[test]
    fn a_command_line_that_cannot_be_read_says_so() {
        assert_eq!(split_command("a 'b c'").unwrap(), ["a", "b c"]);
        assert!(matches!(
            split_command("echo 'open"),
            Err(BundleError::CommandSyntax(c)) if c == "echo 'open"
        ));
    }

    #[test]
    fn users() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nstaff:x:50:\nwww-data:x:33:web, app\napp:x:1001:app\nwheel:x:10:root\n",
        )
        .unwrap();
        let r = |u: &str| resolve_user(Some(u), dir.path()).unwrap();
        let user = |uid, gid, additional_gids: &[u32]| ProcessUser {
            uid,
            gid,
            additional_gids: additional_gids.to_vec(),
        };
        // No group named: the groups that list the user, by name or as
        // the uid's passwd entry.
        assert_eq!(r(""), user(0, 0, &[10]));
        assert_eq!(r("app"), user(1000, 1001, &[33, 1001]));
        assert_eq!(r("1000"), user(1000, 1001, &[33, 1001]));
        // A group named: that one only.
        assert_eq!(r("app:staff"), user(1000, 50, &[]));
        assert_eq!(r("app:50"), user(1000, 50, &[]));
        assert_eq!(r("4242:7"), user(4242, 7, &[]));
        assert_eq!(r("4242"), user(4242, 0, &[]));
        let err = |u: &str| resolve_user(Some(u), dir.path()).is_err();
        assert!(err("nobody"));
        assert!(err("app:nogroup"));
    }

    #[test]
    fn user_files_through_symlinks_or_past_the_limit_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host");
        std::fs::create_dir(&host).unwrap();
        std::fs::write(host.join("passwd"), "app:x:1000:1000::/:/bin/sh\n").unwrap();
        // `/etc` a symlink to a directory outside the image.
        let image = dir.path().join("image");
        std::fs::create_dir(&image).unwrap();
        std::os::unix::fs::symlink(&host, image.join("etc")).unwrap();
        assert!(resolve_user(Some("app"), &image).is_err());
        // The file itself a symlink.
        let image = dir.path().join("image2");
        std::fs::create_dir_all(image.join("etc")).unwrap();
        std::os::unix::fs::symlink(host.join("passwd"), image.join("etc/passwd")).unwrap();
        assert!(resolve_user(Some("app"), &image).is_err());
        // A user listed only past the first MiB is not found.
        let image = dir.path().join("image3");
        std::fs::create_dir_all(image.join("etc")).unwrap();
        let mut big = "# padding\n".repeat((DB_MAX_BYTES / 10) as usize + 1);
        big.push_str("app:x:1000:1000::/:/bin/sh\n");
        std::fs::write(image.join("etc/passwd"), &big).unwrap();
        assert!(resolve_user(Some("app"), &image).is_err());
        std::fs::write(image.join("etc/passwd"), "app:x:1000:1000::/:/bin/sh\n").unwrap();
        assert_eq!(resolve_user(Some("app"), &image).unwrap().uid, 1000);
    }

    #[test]
    fn the_port_the_images_environment_names() {
        let env = |e: &[&str]| ImageConfig {
            env: Some(e.iter().map(|s| (*s).to_owned()).collect()),
            ..ImageConfig::default()
        };
        assert_eq!(env(&["PATH=/bin", "PORT=5000"]).env_port(), Some(5000));
        assert_eq!(
            env(&["PORT=1", "PORT=8080"]).env_port(),
            Some(8080),
            "the last wins"
        );
        for not_a_port in ["PORT=", "PORT=0", "PORT=http", "PORT=70000", "XPORT=5000"] {
            assert_eq!(env(&[not_a_port]).env_port(), None, "{not_a_port}");
        }
        assert_eq!(ImageConfig::default().env_port(), None);
    }

    #[test]
    fn stop_signal_as_docker_reads_it() {
        let stop = |raw: Option<&str>| {
            ImageConfig {
                stop_signal: raw.map(str::to_string),
                ..ImageConfig::default()
            }
            .stop_signal()
            .map_err(str::to_string)
        };
        assert_eq!(stop(None), Ok(SIGTERM));
        for (raw, n) in [
            ("SIGQUIT", 3),
            ("QUIT", 3),
            ("sigquit", 3),
            (" 3 ", 3),
            ("SIGWINCH", 28),
            ("SIGKILL", 9),
            ("SIGRTMIN", 34),
            ("SIGRTMIN+3", 37),
            ("RTMAX-1", 63),
            ("SIGRTMAX", 64),
            ("64", 64),
            (" SIGQUIT ", 3),
        ] {
            assert_eq!(stop(Some(raw)), Ok(n), "{raw}");
        }
        let refused = [
            "",
            "0",
            "65",
            "300",
            "-15",
            "SIG",
            "SIGFOO",
            "SIGRTMIN+31",
            "SIGRTMIN-1",
            "RTMAX+1",
        ];
        for raw in refused {
            assert_eq!(stop(Some(raw)), Err(raw.to_string()), "{raw:?}");
        }
        // Read from a config blob.
        let c = ImageConfig::from_json(br#"{"config":{"StopSignal":"SIGQUIT"}}"#).unwrap();
        assert_eq!(c.stop_signal(), Ok(3));
    }
}
