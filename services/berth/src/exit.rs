//! How a subcommand ended, and the exit code each outcome maps to.

use std::process::ExitCode;

use berth_runtime::ConfigError;

/// The result of a subcommand.
#[derive(Debug)]
pub enum Outcome {
    /// Done (exit 0).
    Ok,
    /// Bad input from the user, e.g. an unparsable image reference (exit
    /// 64, as every usage error).
    Usage(String),
    /// Bad configuration, found before anything started (exit 64).
    Config(ConfigError),
    /// The machine lacks what the component needs (the node without root or
    /// runc), found before anything started (exit 64: like bad
    /// configuration, starting again unchanged cannot help).
    Unfit(String),
    /// Anything else (exit 1).
    Failed(anyhow::Error),
}

impl Outcome {
    /// Prints what went wrong (stderr) and returns the exit code.
    pub fn report(self) -> ExitCode {
        match self {
            Outcome::Ok => ExitCode::SUCCESS,
            Outcome::Usage(msg) => {
                eprintln!("berth: {msg}");
                ExitCode::from(64)
            }
            Outcome::Config(e) => {
                eprintln!("berth: {e}");
                ExitCode::from(64)
            }
            Outcome::Unfit(msg) => {
                eprintln!("berth: {msg}");
                ExitCode::from(64)
            }
            Outcome::Failed(e) => {
                eprintln!("berth: error: {e:#}");
                ExitCode::from(1)
            }
        }
    }
}

impl From<anyhow::Result<()>> for Outcome {
    fn from(r: anyhow::Result<()>) -> Self {
        match r {
            Ok(()) => Outcome::Ok,
            Err(e) => Outcome::Failed(e),
        }
    }
}
