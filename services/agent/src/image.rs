//! What the agent reads from an image: the config's process settings, the
//! service's custom command split like a shell would (no expansion), and
//! `User` resolved against the image's own `/etc/passwd` and `/etc/group`.

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
}

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

/// Split `s` into words as a POSIX shell would, without any expansion:
/// single quotes are literal, double quotes allow `\"`, `\\`, `\$` and
/// `` \` ``, a backslash outside quotes escapes the next character.
pub fn split_command(s: &str) -> Result<Vec<String>, BundleError> {
    let bad = || BundleError::CommandSyntax(s.to_string());
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next().ok_or_else(bad)? {
                        '\'' => break,
                        c => word.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next().ok_or_else(bad)? {
                        '"' => break,
                        '\\' => match chars.next().ok_or_else(bad)? {
                            c @ ('"' | '\\' | '$' | '`') => word.push(c),
                            '\n' => {}
                            c => {
                                word.push('\\');
                                word.push(c);
                            }
                        },
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next().ok_or_else(bad)? {
                    '\n' => {}
                    c => word.push(c),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// A resolved process identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessUser {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
}

/// Resolve an image's `User` inside `rootfs` as Docker does: empty → root;
/// a numeric uid without a group takes the passwd entry's gid when there
/// is one, else 0; names must exist in the image's files.
pub fn resolve_user(user: Option<&str>, rootfs: &Path) -> Result<ProcessUser, BundleError> {
    let spec = user.map(str::trim).unwrap_or("");
    if spec.is_empty() {
        return Ok(ProcessUser { uid: 0, gid: 0 });
    }
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
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
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => read_db(rootfs, "etc/group")
                .iter()
                .find(|f| f.first().map(String::as_str) == Some(g))
                .and_then(|f| f.get(2))
                .and_then(|x| x.parse().ok())
                .ok_or_else(unknown)?,
        },
        None => entry
            .and_then(|f| f.get(3))
            .and_then(|x| x.parse().ok())
            .unwrap_or(0),
    };
    Ok(ProcessUser { uid, gid })
}

/// Colon-separated records of a passwd-style file; missing → empty. The
/// file is read by path inside the rootfs; a symlink there could point at
/// the host's file, so only regular files are read.
fn read_db(rootfs: &Path, rel: &str) -> Vec<Vec<String>> {
    let path = rootfs.join(rel);
    let regular = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
    let text = if regular {
        std::fs::read_to_string(&path).unwrap_or_default()
    } else {
        String::new()
    };
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
    fn shell_words() {
        let w = split_command(r#"sh -c "echo \"$X\" \n" 'it''s' a\ b "" x"y"z"#).unwrap();
        assert_eq!(w, ["sh", "-c", "echo \"$X\" \\n", "its", "a b", "", "xyz"]);
        assert!(split_command("echo 'open").is_err());
        assert!(split_command("echo \"open").is_err());
        assert!(split_command("trail\\").is_err());
        assert!(split_command("").unwrap().is_empty());
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
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let r = |u: &str| resolve_user(Some(u), dir.path());
        assert_eq!(r("").unwrap(), ProcessUser { uid: 0, gid: 0 });
        assert_eq!(
            r("app").unwrap(),
            ProcessUser {
                uid: 1000,
                gid: 1001
            }
        );
        assert_eq!(
            r("1000").unwrap(),
            ProcessUser {
                uid: 1000,
                gid: 1001
            }
        );
        assert_eq!(r("app:staff").unwrap(), ProcessUser { uid: 1000, gid: 50 });
        assert_eq!(r("4242:7").unwrap(), ProcessUser { uid: 4242, gid: 7 });
        assert_eq!(r("4242").unwrap(), ProcessUser { uid: 4242, gid: 0 });
        assert!(r("nobody").is_err());
        assert!(r("app:nogroup").is_err());
    }
}
