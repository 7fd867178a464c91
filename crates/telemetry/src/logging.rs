//! Process-wide `tracing` subscriber: a filter (from `DYN_LOG`, read by the binary) and either
//! readable text or one JSON object per line on stderr.

use tracing_subscriber::{fmt, EnvFilter};

/// How a binary wants its logs.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `tracing` filter directives, e.g. `info` or `dynamo_runtime=debug,info`.
    pub filter: String,
    /// One JSON object per line instead of text.
    pub jsonl: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: "info".into(),
            jsonl: false,
        }
    }
}

/// Logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid log filter {filter:?}: {reason}")]
    Filter { filter: String, reason: String },
    #[error("a global logger is already installed")]
    AlreadySet,
}

/// Install the global subscriber. Call once, early in `main`.
pub fn init_logging(cfg: &LogConfig) -> Result<(), LoggingError> {
    let filter = EnvFilter::try_new(&cfg.filter).map_err(|e| LoggingError::Filter {
        filter: cfg.filter.clone(),
        reason: e.to_string(),
    })?;
    let res = if cfg.jsonl {
        fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(true)
            .with_span_list(false)
            .with_file(true)
            .with_line_number(true)
            .with_writer(std::io::stderr)
            .try_init()
    } else {
        fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init()
    };
    res.map_err(|_| LoggingError::AlreadySet)
}

/// Parse a boolean environment-style value (`1`, `true`, `yes`, `on`).
pub fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_filter_is_a_typed_error() {
        let cfg = LogConfig {
            filter: "foo=notalevel".into(),
            jsonl: false,
        };
        assert!(matches!(
            init_logging(&cfg),
            Err(LoggingError::Filter { .. })
        ));
    }

    #[test]
    fn truthy_values() {
        for v in ["1", "true", "TRUE", " yes", "on"] {
            assert!(truthy(v), "{v}");
        }
        for v in ["0", "false", "", "no"] {
            assert!(!truthy(v), "{v}");
        }
    }
}
