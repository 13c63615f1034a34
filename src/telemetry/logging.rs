//! Structured logs with `tracing`. JSON by default (one object per line, for log pipelines);
//! `CAPTUREFLEET_LOG_FORMAT=text` for people at a terminal. The level comes from `RUST_LOG`
//! (default `info`). Never log message text, phone numbers, e-mail addresses or Secret values:
//! log row ids, GUIDs, counts and object names instead.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Output format of the logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

impl LogFormat {
    /// From `CAPTUREFLEET_LOG_FORMAT` (`json` or `text`), defaulting to JSON.
    pub fn from_env() -> Self {
        match std::env::var("CAPTUREFLEET_LOG_FORMAT").as_deref() {
            Ok("text") => LogFormat::Text,
            _ => LogFormat::Json,
        }
    }
}

/// Install the global subscriber, writing to stderr. Safe to call more than once (later calls
/// are ignored), so tests and subcommands can all call it.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => registry.with(fmt::layer().with_writer(std::io::stderr)).try_init(),
    };
    let _ = result;
}
