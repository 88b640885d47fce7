//! Why an image's program cannot be run, in words a user can act on.
//!
//! When the kernel cannot run a container's first program, the user sees
//! the same few words whatever the cause — `exec /entrypoint.sh failed:
//! No such file or directory`, as under Docker — and a script saved with
//! Windows line endings, a `#!/bin/bash` script in an image without bash,
//! a program linked against glibc in an Alpine or scratch image and a
//! program that is not there at all all read alike. An arm64 program in an
//! amd64 image is worse: the shell that execvp falls back to prints its
//! bytes. Before an instance starts, the agent looks at the program in the
//! image's tree as execvp and the kernel will ([`why_not`]), and when it
//! finds one of these, the instance's exit says it.
//!
//! The image is hostile: paths are resolved inside its tree (symlinks
//! followed there, never out of it, at most [`MAX_LINKS`]), only regular
//! files are opened (non-blocking, not following a last symlink), and at
//! most a few KiB of each are read.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

/// Symlinks followed while resolving one path, as the kernel's limit.
const MAX_LINKS: usize = 40;

/// Where the kernel reads a script's `#!` line from (`BINPRM_BUF_SIZE`).
const SHEBANG_MAX: usize = 256;

/// Program headers looked at in an ELF file.
const MAX_PHDRS: usize = 64;

/// ELF machines this node runs (x86-64, and i386 as Docker allows).
const X86_64: u16 = 62;
const I386: u16 = 3;

/// The top directories the container gets from elsewhere than the image:
/// a path into them cannot be judged from the image.
const MOUNTED: &[&str] = &["proc", "sys", "dev"];

/// Why `args[0]` cannot be run in the image whose tree is at `root`, with
/// the process's `PATH` and working directory `cwd`; `None` when it can
/// as far as can be told (a program that runs and fails is its own
/// business).
pub fn why_not(root: &Path, args: &[String], path: &str, cwd: &str) -> Option<String> {
    let program = args.first()?;
    if program.is_empty() {
        return None;
    }
    let found = if program.contains('/') {
        match resolve(root, &absolute(program, cwd)) {
            Found::File(f) => f,
            Found::Missing => return Some(format!("{program} is not in the image")),
            Found::Unknown => return None,
        }
    } else {
        match search(root, program, path, cwd) {
            Found::File(f) => f,
            Found::Missing => {
                return Some(format!(
                    "{program} is in none of the directories of its PATH in the image ({})",
                    berth_schemas::cut(path, 120)
                ))
            }
            Found::Unknown => return None,
        }
    };
    judge(root, program, &found, cwd, 0)
}

/// What a path leads to in the image.
enum Found {
    /// A regular file (its path on the host).
    File(PathBuf),
    /// Nothing: not there, a loop, not a regular file.
    Missing,
    /// Somewhere the container gets from elsewhere than the image
    /// (`/proc`, `/sys`, `/dev`): not the image's to judge.
    Unknown,
}

/// `program` looked up in each directory of `path` (an empty entry is the
/// working directory), as execvp does: the first executable regular file,
/// else the first regular file (which execvp then fails to run).
fn search(root: &Path, program: &str, path: &str, cwd: &str) -> Found {
    let mut first = None;
    for dir in path.split(':') {
        let dir = if dir.is_empty() { cwd } else { dir };
        let at = absolute(&format!("{}/{program}", dir.trim_end_matches('/')), cwd);
        match resolve(root, &at) {
            Found::File(f) if executable(&f) => return Found::File(f),
            Found::File(f) => {
                first.get_or_insert(f);
            }
            Found::Unknown => return Found::Unknown,
            Found::Missing => {}
        }
    }
    first.map_or(Found::Missing, Found::File)
}

/// Whether the file at `f` has an execute bit.
fn executable(f: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(f).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

/// `p` made absolute against `cwd`.
fn absolute(p: &str, cwd: &str) -> String {
    if p.starts_with('/') {
        p.to_owned()
    } else {
        format!("{}/{p}", cwd.trim_end_matches('/'))
    }
}

/// What `path` leads to in the tree at `root`, symlinks followed inside
/// the tree (an absolute target starts again at `root`, `..` stops at
/// it).
fn resolve(root: &Path, path: &str) -> Found {
    let mut todo: Vec<String> = components(path);
    todo.reverse();
    let mut at: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(name) = todo.pop() {
        match name.as_str() {
            "." => continue,
            ".." => {
                at.pop();
                continue;
            }
            _ => {}
        }
        at.push(name);
        if at.len() == 1 && MOUNTED.contains(&at[0].as_str()) {
            return Found::Unknown;
        }
        let here = at.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        let Ok(meta) = std::fs::symlink_metadata(&here) else {
            return Found::Missing;
        };
        if meta.file_type().is_symlink() {
            links += 1;
            let Some(target) = std::fs::read_link(&here)
                .ok()
                .filter(|_| links <= MAX_LINKS)
            else {
                return Found::Missing;
            };
            let target = target.to_string_lossy();
            at.pop();
            if target.starts_with('/') {
                at.clear();
            }
            let mut more = components(&target);
            more.reverse();
            todo.extend(more);
        } else if !todo.is_empty() && !meta.is_dir() {
            return Found::Missing;
        }
    }
    let file = at.iter().fold(root.to_path_buf(), |p, c| p.join(c));
    match std::fs::symlink_metadata(&file) {
        Ok(m) if m.is_file() => Found::File(file),
        _ => Found::Missing,
    }
}

/// The names of `path`'s parts, root and empty parts left out.
fn components(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            Component::CurDir => Some(".".to_owned()),
            Component::ParentDir => Some("..".to_owned()),
            Component::RootDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Judges the regular file `file` (in the image at `root`), run as
/// `shown`: not executable, a script whose interpreter cannot run, or an
/// ELF program for another machine or missing its loader. `depth` counts
/// interpreters followed (the kernel allows a few; one is judged here).
fn judge(root: &Path, shown: &str, file: &Path, cwd: &str, depth: usize) -> Option<String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOFOLLOW)
        .open(file)
        .ok()?;
    let meta = f.metadata().ok().filter(|m| m.is_file())?;
    let mode = meta.permissions().mode();
    if mode & 0o111 == 0 {
        return Some(format!(
            "{shown} is not executable (mode {:o}): make it so in the image (chmod +x)",
            mode & 0o7777
        ));
    }
    let mut head = Vec::with_capacity(SHEBANG_MAX);
    (&mut f)
        .take(SHEBANG_MAX as u64)
        .read_to_end(&mut head)
        .ok()?;
    if let Some(line) = head.strip_prefix(b"#!") {
        return script(root, shown, line, cwd, depth);
    }
    if head.starts_with(b"\x7fELF") {
        return elf(root, shown, &head, &mut f);
    }
    // Anything else execvp hands to /bin/sh as a script.
    None
}

/// Judges a script by its `#!` line (`line`: what follows `#!`).
fn script(root: &Path, shown: &str, line: &[u8], cwd: &str, depth: usize) -> Option<String> {
    let line = line.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let named = line.trim_start_matches([' ', '\t']);
    let interpreter = named.split([' ', '\t']).next().unwrap_or_default();
    if line.ends_with('\r') {
        let first = named.trim_end_matches('\r');
        return Some(format!(
            "{shown} has Windows (CRLF) line endings: its first line names `{first}` followed by a carriage return, which is not in the image; save it with LF line endings"
        ));
    }
    if interpreter.is_empty() {
        return Some(format!("{shown} starts with #! but names no interpreter"));
    }
    let found = match resolve(root, &absolute(interpreter, cwd)) {
        Found::File(f) => f,
        Found::Unknown => return None,
        Found::Missing => {
            let hint = if interpreter.ends_with("/bash") {
                " (Alpine and BusyBox images have /bin/sh, not bash: install bash or use #!/bin/sh)"
            } else {
                ""
            };
            return Some(format!(
                "the interpreter {shown} names, {interpreter}, is not in the image{hint}"
            ));
        }
    };
    if depth > 0 {
        return None;
    }
    judge(
        root,
        &format!("{interpreter} (the interpreter of {shown})"),
        &found,
        cwd,
        depth + 1,
    )
}

/// Judges an ELF program by its header (`head`, its first bytes) and its
/// `PT_INTERP` (its program headers read from `f`).
fn elf(root: &Path, shown: &str, head: &[u8], f: &mut std::fs::File) -> Option<String> {
    let wide = match head.get(4)? {
        1 => false,
        2 => true,
        _ => return None,
    };
    let little = *head.get(5)? == 1;
    let field = |at: std::ops::Range<usize>| head.get(at).map(|b| number(b, little));
    let machine = field(18..20)?;
    if machine != u64::from(X86_64) && machine != u64::from(I386) {
        return Some(format!(
            "{shown} is built for {}, and this node runs x86-64 programs: build the image for linux/amd64 (docker build --platform linux/amd64)",
            machine_name(u16::try_from(machine).ok()?)
        ));
    }
    let (phoff, entsize, count) = if wide {
        (field(32..40)?, field(54..56)?, field(56..58)?)
    } else {
        (field(28..32)?, field(42..44)?, field(44..46)?)
    };
    let loader = interp(f, wide, little, phoff, entsize, count)?;
    if !matches!(resolve(root, &loader), Found::Missing) {
        return None;
    }
    let built = if loader.contains("musl") {
        "it was built for Alpine (musl)"
    } else {
        "it was built for a system with glibc"
    };
    Some(format!(
        "{shown} needs the dynamic loader {loader}, which the image does not have: {built}; build it static (Go: CGO_ENABLED=0) or on the image's own base"
    ))
}

/// The unsigned number in the bytes `b` (an ELF field), in the file's
/// byte order.
fn number(b: &[u8], little: bool) -> u64 {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate() {
        let shift = if little { i } else { b.len() - 1 - i };
        v |= u64::from(*byte) << (8 * shift);
    }
    v
}

/// The path an ELF program's `PT_INTERP` header names, if it has one,
/// from its program header table (`count` entries of `entsize` bytes at
/// `phoff`).
fn interp(
    f: &mut std::fs::File,
    wide: bool,
    little: bool,
    phoff: u64,
    entsize: u64,
    count: u64,
) -> Option<String> {
    let num = |b: &[u8]| number(b, little);
    let entsize = usize::try_from(entsize).ok()?;
    if entsize < if wide { 56 } else { 32 } || entsize > 256 {
        return None;
    }
    let count = usize::try_from(count).ok()?.min(MAX_PHDRS);
    let mut table = vec![0u8; entsize * count];
    f.seek(SeekFrom::Start(phoff)).ok()?;
    f.read_exact(&mut table).ok()?;
    for ph in table.chunks(entsize) {
        if num(&ph[0..4]) != 3 {
            continue;
        }
        let (offset, size) = if wide {
            (num(&ph[8..16]), num(&ph[32..40]))
        } else {
            (num(&ph[4..8]), num(&ph[16..20]))
        };
        let mut path = vec![0u8; usize::try_from(size.min(4096)).ok()?];
        f.seek(SeekFrom::Start(offset)).ok()?;
        f.read_exact(&mut path).ok()?;
        let end = path.iter().position(|b| *b == 0).unwrap_or(path.len());
        return Some(String::from_utf8_lossy(&path[..end]).into_owned());
    }
    None
}

/// A user's name for ELF machine `m`.
fn machine_name(m: u16) -> String {
    match m {
        183 => "arm64 (aarch64)".to_owned(),
        40 => "32-bit ARM".to_owned(),
        243 => "RISC-V".to_owned(),
        21 => "64-bit PowerPC".to_owned(),
        22 => "s390x".to_owned(),
        8 => "MIPS".to_owned(),
        other => format!("another machine (ELF machine {other})"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

    fn file(root: &Path, rel: &str, data: &[u8], mode: u32) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn why(root: &Path, program: &str) -> Option<String> {
        why_not(root, &[program.to_owned()], PATH, "/app")
    }

    /// A minimal 64-bit little-endian ELF header for `machine` with one
    /// `PT_INTERP` naming `loader`.
    fn elf_bytes(machine: u16, loader: &str) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        b[ph..ph + 4].copy_from_slice(&3u32.to_le_bytes());
        let at = b.len() as u64;
        b[ph + 8..ph + 16].copy_from_slice(&at.to_le_bytes());
        let mut name = loader.as_bytes().to_vec();
        name.push(0);
        b[ph + 32..ph + 40].copy_from_slice(&(name.len() as u64).to_le_bytes());
        b.extend(name);
        b
    }

    #[test]
    fn a_program_that_can_run_says_nothing() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        file(root, "bin/busybox", &elf_bytes(X86_64, "/lib/ld.so"), 0o755);
        file(root, "lib/ld.so", b"", 0o755);
        symlink("busybox", root.join("bin/sh")).unwrap();
        file(root, "app/run.sh", b"#!/bin/sh\nexec true\n", 0o755);
        file(root, "app/plain", b"echo run by sh\n", 0o755);
        assert_eq!(why(root, "sh"), None);
        assert_eq!(why(root, "/bin/sh"), None);
        assert_eq!(
            why(root, "./run.sh"),
            None,
            "relative to the working directory"
        );
        assert_eq!(why(root, "/app/plain"), None, "execvp runs it with sh");
        assert_eq!(
            why(root, "/proc/self/exe"),
            None,
            "not the image's to judge"
        );
        symlink("/proc/self/fd/3", root.join("bin/fd")).unwrap();
        assert_eq!(why(root, "fd"), None, "a link out of the image's tree");
        // As execvp: a file without an execute bit earlier on the PATH is
        // passed over for an executable one later.
        file(root, "usr/local/bin/tool", b"#!/bin/sh\n", 0o644);
        file(root, "bin/tool", b"#!/bin/sh\n", 0o755);
        assert_eq!(why(root, "tool"), None);
        file(root, "usr/local/bin/only", b"#!/bin/sh\n", 0o644);
        assert_eq!(
            why(root, "only").unwrap(),
            "only is not executable (mode 644): make it so in the image (chmod +x)"
        );
        // A static program (no loader) for i386.
        let mut i386 = elf_bytes(I386, "");
        i386[4] = 1;
        file(root, "bin/old", &i386[..52], 0o755);
        assert_eq!(why(root, "old"), None);
    }

    #[test]
    fn a_missing_program_is_said_missing() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        assert_eq!(why(root, "/nope").unwrap(), "/nope is not in the image");
        assert_eq!(
            why(root, "gunicorn").unwrap(),
            "gunicorn is in none of the directories of its PATH in the image (/usr/local/bin:/usr/bin:/bin)"
        );
        // A directory is not a program.
        assert!(why(root, "/bin").unwrap().ends_with("is not in the image"));
    }

    #[test]
    fn symlinks_are_followed_inside_the_image_only() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        file(outside.path(), "prog", b"#!/bin/true\n", 0o755);
        let root = t.path();
        file(root, "real/prog", &elf_bytes(X86_64, "/ld.so"), 0o755);
        file(root, "ld.so", b"", 0o755);
        std::fs::create_dir_all(root.join("bin")).unwrap();
        // Absolute and relative links, resolved in the tree.
        symlink("/real/prog", root.join("bin/abs")).unwrap();
        symlink("../real/prog", root.join("bin/rel")).unwrap();
        assert_eq!(why(root, "/bin/abs"), None);
        assert_eq!(why(root, "/bin/rel"), None);
        // `..` stops at the image's root; a link out of it is read as in it.
        symlink("../../../../real/prog", root.join("bin/up")).unwrap();
        assert_eq!(why(root, "/bin/up"), None);
        let host = outside.path().join("prog");
        symlink(&host, root.join("bin/out")).unwrap();
        assert_eq!(
            why(root, "/bin/out").unwrap(),
            "/bin/out is not in the image",
            "a link to the host's file is not followed there"
        );
        // A loop ends.
        symlink("/bin/b", root.join("bin/a")).unwrap();
        symlink("/bin/a", root.join("bin/b")).unwrap();
        assert!(why(root, "/bin/a")
            .unwrap()
            .ends_with("is not in the image"));
        // A FIFO is not opened (it would block).
        nix::unistd::mkfifo(&root.join("bin/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(why(root, "/bin/fifo")
            .unwrap()
            .ends_with("is not in the image"));
    }

    #[test]
    fn scripts_that_cannot_run_say_why() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        file(root, "bin/sh", &elf_bytes(X86_64, "/bin/sh"), 0o755);
        let cases: [(&str, &[u8], u32, &str); 5] = [
            (
                "/crlf.sh",
                b"#!/bin/sh\r\necho hi\r\n",
                0o755,
                "/crlf.sh has Windows (CRLF) line endings: its first line names `/bin/sh` followed by a carriage return, which is not in the image; save it with LF line endings",
            ),
            (
                "/bash.sh",
                b"#!/bin/bash -e\necho hi\n",
                0o755,
                "the interpreter /bash.sh names, /bin/bash, is not in the image (Alpine and BusyBox images have /bin/sh, not bash: install bash or use #!/bin/sh)",
            ),
            (
                "/py.sh",
                b"#! /usr/bin/python3\n",
                0o755,
                "the interpreter /py.sh names, /usr/bin/python3, is not in the image",
            ),
            (
                "/none.sh",
                b"#!\n",
                0o755,
                "/none.sh starts with #! but names no interpreter",
            ),
            (
                "/off.sh",
                b"#!/bin/sh\n",
                0o644,
                "/off.sh is not executable (mode 644): make it so in the image (chmod +x)",
            ),
        ];
        for (name, data, mode, said) in cases {
            file(root, name.trim_start_matches('/'), data, mode);
            assert_eq!(why(root, name).as_deref(), Some(said));
        }
        // The interpreter itself is judged: one for another machine.
        file(
            root,
            "usr/bin/node",
            &elf_bytes(183, "/lib/ld-linux-aarch64.so.1"),
            0o755,
        );
        file(root, "app.js", b"#!/usr/bin/node\n", 0o755);
        assert_eq!(
            why(root, "/app.js").unwrap(),
            "/usr/bin/node (the interpreter of /app.js) is built for arm64 (aarch64), and this node runs x86-64 programs: build the image for linux/amd64 (docker build --platform linux/amd64)"
        );
    }

    #[test]
    fn programs_for_another_machine_or_missing_their_loader_say_why() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        file(
            root,
            "arm",
            &elf_bytes(183, "/lib/ld-linux-aarch64.so.1"),
            0o755,
        );
        assert!(why(root, "/arm")
            .unwrap()
            .starts_with("/arm is built for arm64 (aarch64), and this node runs x86-64 programs"));
        file(
            root,
            "glibc",
            &elf_bytes(X86_64, "/lib64/ld-linux-x86-64.so.2"),
            0o755,
        );
        assert_eq!(
            why(root, "/glibc").unwrap(),
            "/glibc needs the dynamic loader /lib64/ld-linux-x86-64.so.2, which the image does not have: it was built for a system with glibc; build it static (Go: CGO_ENABLED=0) or on the image's own base"
        );
        file(
            root,
            "musl",
            &elf_bytes(X86_64, "/lib/ld-musl-x86_64.so.1"),
            0o755,
        );
        assert!(why(root, "/musl")
            .unwrap()
            .contains("which the image does not have: it was built for Alpine (musl);"));
        // A truncated or malformed header is not guessed at.
        file(root, "short", b"\x7fELF\x02\x01", 0o755);
        assert_eq!(why(root, "/short"), None);
        let mut bad = elf_bytes(X86_64, "/x");
        bad[54..56].copy_from_slice(&60000u16.to_le_bytes());
        file(root, "bad", &bad, 0o755);
        assert_eq!(why(root, "/bad"), None);
    }
}
