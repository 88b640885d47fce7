//! Tracing set-up: one subscriber per process, writing to stderr (stdout is
//! for command output), filtered by `BERTH_LOG` / `RUST_LOG`.

use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The filter did not parse (config validation normally catches this first).
    #[error("bad log filter: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// A global subscriber was already installed (a second init in one process).
    #[error("tracing already initialised: {0}")]
    AlreadySet(String),
}

/// Installs the global subscriber described by `config`.
pub fn init_tracing(config: &Config) -> Result<(), TelemetryError> {
    init_with(&config.log_filter, config.log_format)
}

/// Installs the global subscriber with an explicit filter and format.
pub fn init_with(filter: &str, format: LogFormat) -> Result<(), TelemetryError> {
    let filter = EnvFilter::try_new(filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    result.map_err(|e| TelemetryError::AlreadySet(e.to_string()))
}
