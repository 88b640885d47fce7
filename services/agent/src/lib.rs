//! # berth-agent: the node side of running a service (SPEC §6, §10, §11)
//!
//! The puller hands the agent an unpacked, verified rootfs and the image
//! config of the exact digest to run; the agent turns them into OCI
//! bundles and runs them with runc, and reports what happens back to the
//! scheduler through an [`AgentEvent`] channel:
//!
//! - [`image`]: Entrypoint/Cmd/custom command (Docker's rules), `User`
//!   resolved against the image's own passwd/group files.
//! - [`runnable`]: why an image's program cannot be run (not there, a
//!   script with Windows line endings or a missing interpreter, another
//!   machine's program, a missing loader), said in the instance's exit.
//! - [`bundle`]: `config.json` (env = image Env + `PORT` + service env,
//!   WorkingDir, limits, Docker's sandbox: capabilities, seccomp, masked
//!   paths, `tini` as PID 1, no new privileges; the instance's network
//!   namespace) and an overlayfs rootfs per instance.
//! - [`net`]: a network namespace per instance on the node's bridge (the
//!   standard CNI plugins), a published port for web instances, berth's
//!   isolation rules, and the hosts file naming the owner's private
//!   services.
//! - [`runtime`]: the narrow [`Runtime`] trait (create, start, kill,
//!   delete, state, list) with [`ContainerStatus`] guards, and [`Runc`].
//! - [`logs`]: stdout/stderr through FIFOs, line by line onto
//!   `subjects.logs(service)` (the control plane keeps them).
//! - [`Agent`]: instances (restarted after crashes with backoff, or in
//!   place on request when they fail their health checks), stop
//!   (SIGTERM, past a shell that would not pass it on ([`wrapper`]),
//!   SIGKILL after the delay), one-off runs with a timeout,
//!   heartbeats on `subjects.heartbeat()` (the schemas crate's
//!   `Heartbeat`), each instance's CPU and memory ([`usage`], from its
//!   cgroup) on `subjects.usage(service, node)`, and on start adoption of the containers a previous
//!   agent process left (anything unrecorded is killed and deleted: no
//!   orphans).
//! - [`disk`]: what instances write kept from filling the node's disk (the
//!   largest writer killed and its writes removed when the disk runs low).

pub mod agent;
pub mod bundle;
pub mod disk;
mod error;
pub mod exec;
pub mod image;
mod lease;
pub mod logs;
pub mod net;
pub(crate) mod netlink;
pub mod netns;
pub mod persistent;
pub mod process;
pub mod runnable;
pub mod runtime;
mod seccomp;
mod supervise;
pub mod terminal;
pub mod usage;
pub mod volumes;
mod wrapper;

pub use agent::{Agent, AgentConfig, AgentEvent, Kind, OneOffOutcome, StopOutcome};
pub use bundle::{ImageRoot, InstanceSpec, Limits, Sandbox};
pub use error::{AgentError, BundleError, RuntimeError};
pub use image::ImageConfig;
pub use logs::{LogLine, Stream};
pub use net::{Attachment, NetworkSpec, Publish};
pub use process::{ExitStatus, RestartPolicy};
pub use runtime::{ContainerState, ContainerStatus, Runc, Runtime, Signal};
