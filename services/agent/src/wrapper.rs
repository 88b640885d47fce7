//! Who a stop signal goes to when a shell stands between the init and the
//! program.
//!
//! An image's program is often run by a shell that does not pass signals
//! on: a `CMD` in shell form with more than one command (`sh -c 'migrate
//! && exec-less server'`), an entrypoint script that does not `exec` its
//! last command, a shell as PID 1. Signalled, such a shell dies at once
//! (or, as PID 1, ignores the signal) and its program is killed with the
//! container, never having seen the signal: no graceful shutdown, or the
//! whole shutdown delay waited for nothing. Under Docker and Render that
//! is what happens; berth sends the stop signal past such shells to the
//! processes they run, so a program stops as it would alone.
//!
//! A shell that handles the signal itself (a `trap … TERM`) is signalled
//! as usual: it said what it wants done.
//!
//! Node's package managers run a script the same way (`CMD ["npm",
//! "start"]`, `yarn start`: node → `sh -c` → the program) and do no
//! better: signalled, npm passes the signal to its shell, which dies,
//! and npm exits; yarn 1 exits within seconds without passing it on;
//! the program, orphaned, is killed with the container (both seen with
//! npm 10 and yarn 1.22 on Node 20). They are looked past whatever they
//! handle: the program gets the signal, ends, and the package manager
//! exits with it as it would have.

use std::path::Path;

use crate::process;

/// Shells by the name of their executable (or, for a multi-call binary
/// such as busybox, of the name it was run as).
const SHELLS: &[&str] = &["sh", "ash", "dash", "bash", "zsh", "ksh", "mksh", "yash"];

/// Multi-call binaries that are a shell when run as one.
const MULTI_CALL: &[&str] = &["busybox", "toybox"];

/// Runtimes a package manager runs on.
const NODE: &[&str] = &["node", "nodejs"];

/// Package managers by the name of their script (`node …/npm-cli.js`)
/// or the title they give their process (npm's `npm start`).
const RUNNERS: &[(&str, &str)] = &[
    ("npm", "npm"),
    ("npm-cli.js", "npm"),
    ("npx", "npx"),
    ("npx-cli.js", "npx"),
    ("yarn", "yarn"),
    ("yarn.js", "yarn"),
    ("yarn.cjs", "yarn"),
    ("yarnpkg", "yarn"),
    ("pnpm", "pnpm"),
    ("pnpm.cjs", "pnpm"),
];

/// How deep below the container's first process shells are followed.
const MAX_DEPTH: usize = 8;

/// What the stop needs to know of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// A shell (by its executable, or the name a multi-call binary ran as).
    pub shell: bool,
    /// A package manager running a script (`npm`, `yarn`…), by name.
    pub runner: Option<&'static str>,
    /// It handles `signal` itself (caught, not default or ignored).
    pub handles: bool,
    /// Its children's pids.
    pub children: Vec<u32>,
}

/// Where the stop signal goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    pub pids: Vec<u32>,
    /// What the first process looked past is: "the shell", "npm"…
    pub past: Option<&'static str>,
}

/// The processes `signal` should go to, below `roots` (the container's
/// first processes: the init's children, or the container's process when
/// it has no init): each root, unless it is a shell that does not handle
/// the signal or a package manager, and runs other processes, whose
/// place its children take (followed down the same way). Processes gone
/// meanwhile are left out.
pub fn targets(roots: &[u32], look: &impl Fn(u32) -> Option<Proc>) -> Targets {
    let mut out = Targets::default();
    for &root in roots {
        visit(root, look, 0, &mut out);
    }
    out
}

fn visit(pid: u32, look: &impl Fn(u32) -> Option<Proc>, depth: usize, out: &mut Targets) {
    let Some(p) = look(pid) else {
        return;
    };
    let wrapper = match p.runner {
        Some(name) => Some(name),
        None => (p.shell && !p.handles).then_some("the shell"),
    };
    let Some(wrapper) = wrapper.filter(|_| !p.children.is_empty() && depth < MAX_DEPTH) else {
        out.pids.push(pid);
        return;
    };
    out.past.get_or_insert(wrapper);
    for child in p.children {
        visit(child, look, depth + 1, out);
    }
}

/// `pid` as `/proc` shows it, for `signal`; `None` when it is gone.
pub fn look(pid: u32, signal: u8) -> Option<Proc> {
    let dir = Path::new("/proc").join(pid.to_string());
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let exe = std::fs::read_link(dir.join("exe")).ok()?;
    let words = argv(pid);
    let exe = exe.to_string_lossy();
    let argv0 = words.first().map(String::as_str).unwrap_or_default();
    Some(Proc {
        shell: is_shell(&exe, argv0),
        runner: runner(&exe, &words),
        handles: caught(&status, signal),
        children: children(pid),
    })
}

/// The last part of a path, as a name (a login shell's `-` and a
/// replaced executable's ` (deleted)` taken off).
fn base(p: &str) -> String {
    let p = p.trim_end_matches(" (deleted)");
    p.rsplit('/')
        .next()
        .unwrap_or(p)
        .trim_start_matches('-')
        .to_owned()
}

/// The package manager a process running `exe` with `argv` is, if it is
/// one: node running a package manager's script, or titled after one.
fn runner(exe: &str, argv: &[String]) -> Option<&'static str> {
    if !NODE.contains(&base(exe).as_str()) {
        return None;
    }
    let named = |word: &str| {
        let first = word.split(' ').next().unwrap_or(word);
        RUNNERS
            .iter()
            .find(|(script, _)| base(first) == *script)
            .map(|(_, name)| *name)
    };
    let title = argv.first().and_then(|w| named(w));
    title.or_else(|| argv.get(1).and_then(|w| named(w)))
}

/// Whether a process running `exe` as `argv0` is a shell.
fn is_shell(exe: &str, argv0: &str) -> bool {
    let exe = base(exe);
    SHELLS.contains(&exe.as_str())
        || (MULTI_CALL.contains(&exe.as_str()) && SHELLS.contains(&base(argv0).as_str()))
}

/// Whether `/proc/<pid>/status` says `signal` is caught (`SigCgt`).
fn caught(status: &str, signal: u8) -> bool {
    let Some(mask) = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
    else {
        return false;
    };
    (1..=64).contains(&signal) && mask & (1 << (signal - 1)) != 0
}

/// The words `pid` was run with (`/proc/<pid>/cmdline`); none when it is
/// gone.
fn argv(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect()
}

/// The children of `pid`, from every one of its threads.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out: Vec<u32> = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// A process signalled by pid, to be told apart from a later one given
/// the same pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub pid: u32,
    started: u64,
}

impl Target {
    /// `pid` as it is now, if it is in the same pid namespace as
    /// `container` (the container's process): its pid was read a moment
    /// ago, and another process may have it by now. `None` when it is gone.
    pub fn of(pid: u32, container: u32) -> Option<Target> {
        let ns = |p: u32| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
        let started = process::start_time(pid)?;
        let same = ns(container).is_some_and(|c| ns(pid) == Some(c));
        same.then_some(Target { pid, started })
    }

    /// Whether it still runs (a zombie does not).
    pub fn alive(self) -> bool {
        process::alive(self.pid, Some(self.started))
    }

    /// Sends it `signal`, if it is still the same process.
    pub fn signal(self, signal: u8) -> Result<(), String> {
        let sig =
            nix::sys::signal::Signal::try_from(i32::from(signal)).map_err(|e| e.to_string())?;
        let pid = i32::try_from(self.pid).map_err(|e| e.to_string())?;
        if !self.alive() {
            return Ok(());
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(|e| e.to_string())
    }

    /// Its command line as a shell would take it, at most 200 bytes.
    pub fn command(self) -> String {
        let line = crate::logs::command_line(&argv(self.pid));
        match berth_schemas::cut(&line, 200) {
            whole if whole.len() == line.len() => line,
            start => format!("{start}…"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn table(rows: &[(u32, bool, bool, &[u32])]) -> HashMap<u32, Proc> {
        rows.iter()
            .map(|(pid, shell, handles, children)| {
                (
                    *pid,
                    Proc {
                        shell: *shell,
                        runner: None,
                        handles: *handles,
                        children: children.to_vec(),
                    },
                )
            })
            .collect()
    }

    fn targets_in(t: &HashMap<u32, Proc>, roots: &[u32]) -> Vec<u32> {
        targets(roots, &|pid| t.get(&pid).cloned()).pids
    }

    #[test]
    fn a_program_is_signalled_itself() {
        // node, nginx's master with its workers: the top process.
        let t = table(&[
            (10, false, true, &[11, 12]),
            (11, false, true, &[]),
            (12, false, true, &[]),
        ]);
        assert_eq!(targets_in(&t, &[10]), [10]);
    }

    #[test]
    fn shells_that_would_not_pass_it_on_are_looked_past() {
        // sh -c 'migrate; node server.js' → node; an entrypoint script
        // running npm, which passes signals on itself.
        let t = table(&[
            (10, true, false, &[11]),
            (11, false, false, &[]),
            (20, true, false, &[21]),
            (21, true, false, &[22, 23]),
            (22, false, true, &[24]),
            (23, false, false, &[]),
            (24, true, false, &[]),
        ]);
        assert_eq!(targets_in(&t, &[10]), [11]);
        assert_eq!(targets_in(&t, &[20]), [22, 23]);
    }

    #[test]
    fn a_shell_that_handles_it_or_runs_nothing_is_signalled() {
        let t = table(&[
            (10, true, true, &[11]),
            (11, false, false, &[]),
            (20, true, false, &[]),
        ]);
        assert_eq!(targets_in(&t, &[10]), [10]);
        assert_eq!(targets_in(&t, &[20]), [20]);
    }

    #[test]
    fn what_is_gone_is_left_out_and_depth_is_bounded() {
        let t = table(&[(10, true, false, &[11])]);
        assert_eq!(targets_in(&t, &[10, 99]), Vec::<u32>::new());
        // A chain of shells deeper than followed: the one at the limit.
        let rows: Vec<(u32, bool, bool, Vec<u32>)> =
            (0..20).map(|i| (i, true, false, vec![i + 1])).collect();
        let t: HashMap<u32, Proc> = rows
            .into_iter()
            .map(|(p, s, h, c)| {
                (
                    p,
                    Proc {
                        shell: s,
                        runner: None,
                        handles: h,
                        children: c,
                    },
                )
            })
            .collect();
        assert_eq!(targets_in(&t, &[0]), [MAX_DEPTH as u32]);
    }

    #[test]
    fn package_managers_are_looked_past_whatever_they_handle() {
        // npm start → sh -c 'node server.js' → node: npm catches SIGTERM
        // (to pass it to its shell, which dies of it).
        let mut t = table(&[
            (10, false, true, &[11]),
            (11, true, false, &[12]),
            (12, false, true, &[]),
            (20, false, true, &[]),
        ]);
        for pid in [10, 20] {
            if let Some(p) = t.get_mut(&pid) {
                p.runner = Some("npm");
            }
        }
        let got = targets(&[10], &|pid| t.get(&pid).cloned());
        assert_eq!(got.pids, [12]);
        assert_eq!(got.past, Some("npm"), "the first looked past is said");
        // One that runs nothing (yet) is signalled itself.
        assert_eq!(targets_in(&t, &[20]), [20]);
        let shell = targets(&[11], &|pid| t.get(&pid).cloned());
        assert_eq!(shell.past, Some("the shell"));
        assert_eq!(targets(&[12], &|pid| t.get(&pid).cloned()).past, None);
    }

    #[test]
    fn package_managers_are_known_by_their_script_or_their_title() {
        let words = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        // As seen under Node 20: npm titles itself "npm start" (one
        // word); yarn 1 keeps node's argv.
        let npm = vec!["npm start".to_owned()];
        assert_eq!(runner("/usr/local/bin/node", &npm), Some("npm"));
        let yarn = words("node /opt/yarn-v1.22.22/bin/yarn.js start");
        assert_eq!(runner("/usr/local/bin/node", &yarn), Some("yarn"));
        let npx = words("node /usr/local/bin/npx serve");
        assert_eq!(runner("/usr/bin/nodejs", &npx), Some("npx"));
        assert_eq!(
            runner("/usr/local/bin/node", &words("node server.js")),
            None
        );
        assert_eq!(runner("/usr/local/bin/node", &words("npm-server x")), None);
        // Only node runs them: a program called npm is a program.
        assert_eq!(runner("/usr/bin/python3", &words("python3 npm")), None);
        assert_eq!(runner("/usr/local/bin/npm", &npm), None);
    }

    #[test]
    fn shells_are_known_by_executable_or_by_the_name_busybox_ran_as() {
        assert!(is_shell("/usr/bin/dash", "/bin/sh"));
        assert!(is_shell("/bin/bash", "bash"));
        assert!(is_shell("/bin/busybox", "/bin/sh"));
        assert!(is_shell("/bin/busybox", "-sh"));
        assert!(!is_shell("/bin/busybox", "httpd"));
        assert!(!is_shell("/usr/local/bin/node", "node"));
        assert!(!is_shell("/usr/bin/python3.11", "/bin/sh"));
    }

    #[test]
    fn caught_signals_are_read_from_sigcgt() {
        let status = "Name:\tsh\nSigIgn:\t0000000000000004\nSigCgt:\t0000000000004002\n";
        assert!(caught(status, 15));
        assert!(caught(status, 2));
        assert!(!caught(status, 3), "ignored is not caught");
        assert!(!caught(status, 9));
        assert!(!caught("Name:\tsh\n", 15));
    }

    #[test]
    fn this_process_is_seen_as_it_is() {
        let me = std::process::id();
        let p = look(me, 15).unwrap();
        assert!(!p.shell);
        assert!(Target::of(me, me).unwrap().alive());
        assert!(!Target::of(me, me).unwrap().command().is_empty());
        assert_eq!(Target::of(me, u32::MAX), None, "no such container process");
    }
}
