//! The seccomp profile of every container: Docker's default profile for
//! the capabilities containers get ([`crate::bundle::DEFAULT_CAPS`]), so an
//! image that runs under `docker run` finds the same system calls here.
//!
//! Anything not listed fails with `EPERM`. The rules Docker attaches to
//! capabilities a container does not hold (`CAP_SYS_ADMIN`'s `mount`,
//! `unshare`, `setns`, `bpf`; `CAP_SYS_MODULE`'s `init_module`; …) are left
//! out, so those calls are denied; the one Docker attaches to
//! `CAP_SYS_CHROOT`, which containers hold, is kept (`chroot`).
//!
//! Two deliberate differences. On x86-64 the filter covers 64-bit and
//! i386 binaries but not the x32 ABI (see [`ARCHES`]). And Docker allows
//! `ptrace`, `process_vm_readv` and `process_vm_writev` on kernels from
//! 4.8 on (where `ptrace` can no longer be used to escape a seccomp
//! filter). They are denied here: nothing a web service or worker does
//! needs to trace another process, and reading another process's memory
//! is exactly what a compromised instance wants. Debuggers and `strace` do not work inside instances.
//!
//! Names the host's libseccomp does not know (system calls newer than it)
//! are skipped by runc, so the list can name calls of newer kernels.

use serde_json::{json, Value};

/// `EPERM`: what a denied call returns (what Docker returns).
const EPERM: u32 = 1;
/// `ENOSYS`: "not implemented", which makes callers fall back.
const ENOSYS: u32 = 38;

/// `AF_ALG` (the kernel's crypto API, a recurring source of kernel bugs)
/// and `AF_VSOCK` (host–VM sockets): the socket families refused.
const AF_ALG: u64 = 38;
const AF_VSOCK: u64 = 40;

/// `personality(2)` values allowed: the default, 32-bit (`linux32`),
/// `UNAME26`, both, and the query. Anything else (e.g. turning address
/// space randomisation off) is refused.
const PERSONALITIES: &[u64] = &[0x0, 0x0008, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// `CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
/// CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWCGROUP`: `clone` may create
/// threads and processes, never namespaces (that is `CAP_SYS_ADMIN`'s).
const CLONE_NAMESPACE_FLAGS: u64 = 0x7e02_0000;

/// Allowed whatever their arguments (Docker's unconditional list, plus
/// `chroot` for `CAP_SYS_CHROOT`), kept in rows: it is a table.
#[rustfmt::skip]
pub(crate) const ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "cachestat",
    "capget", "capset", "chdir", "chmod", "chown", "chown32", "chroot", "clock_adjtime",
    "clock_adjtime64", "clock_getres", "clock_getres_time64", "clock_gettime",
    "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "close", "close_range",
    "connect", "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create",
    "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2",
    "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat", "exit",
    "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32",
    "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork",
    "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64",
    "fsync", "ftruncate", "ftruncate64", "futex", "futex_requeue", "futex_time64",
    "futex_wait", "futex_waitv", "futex_wake", "futimesat", "getcpu", "getcwd", "getdents",
    "getdents64", "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32",
    "getgroups", "getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid",
    "getppid", "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid",
    "getresuid32", "getrlimit", "get_robust_list", "getrusage", "getsid", "getsockname",
    "getsockopt", "get_thread_area", "gettid", "gettimeofday", "getuid", "getuid32",
    "getxattr", "getxattrat", "inotify_add_watch", "inotify_init", "inotify_init1",
    "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup", "io_submit", "ipc",
    "kill", "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self",
    "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen", "listmount", "listxattr",
    "listxattrat", "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat",
    "lstat64", "madvise", "map_shadow_stack", "membarrier", "memfd_create", "memfd_secret",
    "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap",
    "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap",
    "mseal", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall",
    "munmap", "name_to_handle_at", "nanosleep", "newfstatat", "_newselect", "open", "openat",
    "openat2", "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc",
    "pkey_free", "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64",
    "preadv", "preadv2", "prlimit64", "process_mrelease", "pselect6", "pselect6_time64",
    "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv",
    "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages",
    "removexattr", "removexattrat", "rename", "renameat", "renameat2", "restart_syscall",
    "rmdir", "rseq", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo",
    "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity",
    "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp",
    "select", "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "send",
    "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto", "setfsgid", "setfsgid32",
    "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setitimer",
    "setpgid", "setpriority", "setregid", "setregid32", "setresgid", "setresgid32",
    "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit", "set_robust_list",
    "setsid", "setsockopt", "set_thread_area", "set_tid_address", "setuid", "setuid32",
    "setxattr", "setxattrat", "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack",
    "signalfd", "signalfd4", "sigprocmask", "sigreturn", "socketcall", "socketpair", "splice",
    "stat", "stat64", "statfs", "statfs64", "statmount", "statx", "symlink", "symlinkat",
    "sync", "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create",
    "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime",
    "timer_settime64", "timerfd_create", "timerfd_gettime", "timerfd_gettime64",
    "timerfd_settime", "timerfd_settime64", "times", "tkill", "truncate", "truncate64",
    "ugetrlimit", "umask", "uname", "unlink", "unlinkat", "uretprobe", "utime", "utimensat",
    "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid", "waitpid", "write",
    "writev",
];

/// The architectures a filter covers and the calls only they have.
///
/// On x86-64: 64-bit and 32-bit (i386) binaries, not the x32 ABI, which
/// Docker's profile also names. runc compiles the filter for each
/// architecture at every container start, ~7 ms of CPU apiece here
/// (BENCHMARKS.md); x32 binaries are all but extinct, and their calls
/// (numbers with bit 30 set) match none of the rules, so they get the
/// default action: refused, never allowed.
#[cfg(target_arch = "x86_64")]
const ARCHES: &[&str] = &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"];
#[cfg(target_arch = "x86_64")]
const ARCH_ALLOWED: &[&str] = &["arch_prctl", "modify_ldt"];
#[cfg(target_arch = "aarch64")]
const ARCHES: &[&str] = &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"];
#[cfg(target_arch = "aarch64")]
const ARCH_ALLOWED: &[&str] = &[
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "sync_file_range2",
    "breakpoint",
    "cacheflush",
    "set_tls",
];
// Elsewhere the filter covers the native architecture only (libseccomp
// always includes it).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCHES: &[&str] = &[];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCH_ALLOWED: &[&str] = &[];

/// One rule allowing `name` when argument `index` compares to `value`.
fn allow_if(name: &str, index: u32, op: &str, value: u64) -> Value {
    json!({
        "names": [name],
        "action": "SCMP_ACT_ALLOW",
        "args": [{ "index": index, "value": value, "op": op }],
    })
}

/// The `linux.seccomp` object of the runtime spec.
pub(crate) fn profile() -> Value {
    let mut rules = vec![
        json!({ "names": ALLOWED, "action": "SCMP_ACT_ALLOW" }),
        json!({ "names": ARCH_ALLOWED, "action": "SCMP_ACT_ALLOW" }),
    ];
    // Three rules because seccomp compares one argument once per rule:
    // below AF_ALG, the family between the two, above AF_VSOCK.
    rules.push(allow_if("socket", 0, "SCMP_CMP_LT", AF_ALG));
    rules.push(allow_if("socket", 0, "SCMP_CMP_EQ", AF_ALG + 1));
    rules.push(allow_if("socket", 0, "SCMP_CMP_GT", AF_VSOCK));
    for p in PERSONALITIES {
        rules.push(allow_if("personality", 0, "SCMP_CMP_EQ", *p));
    }
    rules.push(json!({
        "names": ["clone"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{ "index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ" }],
    }));
    // clone3 passes its flags in a struct seccomp cannot look into, so it
    // cannot be limited like clone; ENOSYS (not EPERM) makes glibc and
    // other runtimes fall back to clone, which is checked.
    rules.push(json!({ "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS }));
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": ARCHES,
        "syscalls": rules,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    /// How the profile treats `name` called with first argument `arg0`:
    /// the action of the first matching rule, or the default.
    fn action(p: &Value, name: &str, arg0: u64) -> (String, Option<u64>) {
        for r in p["syscalls"].as_array().unwrap() {
            if !r["names"].as_array().unwrap().iter().any(|n| n == name) {
                continue;
            }
            let matches = r["args"].as_array().is_none_or(|args| {
                args.iter().all(|a| {
                    let v = a["value"].as_u64().unwrap();
                    match a["op"].as_str().unwrap() {
                        "SCMP_CMP_EQ" => arg0 == v,
                        "SCMP_CMP_LT" => arg0 < v,
                        "SCMP_CMP_GT" => arg0 > v,
                        "SCMP_CMP_MASKED_EQ" => arg0 & v == a["valueTwo"].as_u64().unwrap(),
                        op => panic!("unexpected op {op}"),
                    }
                })
            });
            if matches {
                return (r["action"].as_str().unwrap().into(), r["errnoRet"].as_u64());
            }
        }
        (
            p["defaultAction"].as_str().unwrap().into(),
            p["defaultErrnoRet"].as_u64(),
        )
    }

    #[test]
    fn denies_by_default_and_allows_docker_s_list() {
        let p = profile();
        let allow = ("SCMP_ACT_ALLOW".to_string(), None);
        let eperm = ("SCMP_ACT_ERRNO".to_string(), Some(1));
        for name in ["read", "write", "execve", "futex", "epoll_wait", "chroot"] {
            assert_eq!(action(&p, name, 0), allow, "{name}");
        }
        for name in [
            "ptrace",
            "mount",
            "umount2",
            "kexec_load",
            "bpf",
            "unshare",
            "setns",
            "init_module",
            "reboot",
            "swapon",
            "perf_event_open",
            "process_vm_readv",
            "open_by_handle_at",
        ] {
            assert_eq!(action(&p, name, 0), eperm, "{name}");
        }
    }

    #[test]
    fn conditional_rules() {
        let p = profile();
        let allow = ("SCMP_ACT_ALLOW".to_string(), None);
        let eperm = ("SCMP_ACT_ERRNO".to_string(), Some(1));
        // clone: threads and processes yes, namespaces no.
        let clone_thread = 0x003d_0f00; // glibc's pthread_create flags
        assert_eq!(action(&p, "clone", clone_thread), allow);
        assert_eq!(action(&p, "clone", 0x11 /* SIGCHLD: fork */), allow);
        assert_eq!(action(&p, "clone", 0x1000_0011 /* + NEWUSER */), eperm);
        assert_eq!(action(&p, "clone", 0x2000_0011 /* + NEWPID */), eperm);
        assert_eq!(
            action(&p, "clone3", 0),
            ("SCMP_ACT_ERRNO".to_string(), Some(38))
        );
        // socket: every family but AF_ALG and AF_VSOCK.
        for family in [
            1,  /* unix */
            2,  /* inet */
            10, /* inet6 */
            16, /* netlink */
            39, 41,
        ] {
            assert_eq!(action(&p, "socket", family), allow, "family {family}");
        }
        assert_eq!(action(&p, "socket", AF_ALG), eperm);
        assert_eq!(action(&p, "socket", AF_VSOCK), eperm);
        // personality: queries and linux32, not ADDR_NO_RANDOMIZE.
        assert_eq!(action(&p, "personality", 0xffff_ffff), allow);
        assert_eq!(action(&p, "personality", 0x0008), allow);
        assert_eq!(action(&p, "personality", 0x4_0000), eperm);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            p["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]),
            "64-bit and i386 binaries, not x32"
        );
        #[cfg(not(target_arch = "x86_64"))]
        assert_eq!(p["architectures"], json!(ARCHES));
    }

    #[test]
    fn allowed_has_no_duplicates_or_denied_calls() {
        let mut seen = std::collections::HashSet::new();
        for name in ALLOWED {
            assert!(seen.insert(name), "{name} listed twice");
        }
        for denied in [
            "clone",
            "clone3",
            "socket",
            "personality",
            "ptrace",
            "mount",
        ] {
            assert!(!seen.contains(&denied), "{denied} is conditional or denied");
        }
    }
}
