//! Log setup: human-readable or JSON lines on standard error, level from a flag or RUST_LOG.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(
        "invalid log filter \"{filter}\": {reason}; expected a level such as info or a directive such as streamgate=debug"
    )]
    Filter { filter: String, reason: String },
    #[error("logging was already initialised")]
    AlreadySet,
}

/// Installs the global subscriber. `level` (from the command line) wins over RUST_LOG; without
/// either, `info`.
pub fn init(level: Option<&str>, format: LogFormat) -> Result<(), LogError> {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).map_err(|e| LogError::Filter {
            filter: l.to_string(),
            reason: e.to_string(),
        })?,
        None => match std::env::var("RUST_LOG") {
            Ok(v) if !v.is_empty() => EnvFilter::try_new(&v).map_err(|e| LogError::Filter {
                filter: v.clone(),
                reason: e.to_string(),
            })?,
            _ => EnvFilter::new("info"),
        },
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    result.map_err(|_| LogError::AlreadySet)
}
