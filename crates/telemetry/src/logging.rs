//! Process-wide `tracing` subscriber: a filter (from `DYN_LOG`, read by the binary), readable
//! text or one JSON object per line on stderr, and `tracing` spans bridged to OpenTelemetry.

use tracing_subscriber::{fmt, EnvFilter};

use crate::jsonl::JsonlFormat;
use crate::otel::{OtelConfig, TelemetryGuard};

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
    #[error(transparent)]
    Exporter(#[from] crate::otel::ExporterError),
}

/// Install the global subscriber: the filter, text or JSONL output on stderr, and the bridge
/// from `tracing` spans to OpenTelemetry (ids always; OTLP export when `otel.export`). Call
/// once, early in `main`, inside the tokio runtime; keep the guard and call
/// [`TelemetryGuard::shutdown`] at exit so queued spans are exported.
pub fn init(cfg: &LogConfig, otel: &OtelConfig) -> Result<TelemetryGuard, LoggingError> {
    use tracing_subscriber::layer::{Layer as _, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_new(&cfg.filter).map_err(|e| LoggingError::Filter {
        filter: cfg.filter.clone(),
        reason: e.to_string(),
    })?;
    let endpoint = otel.export.then_some(otel.endpoint.as_str());
    let (provider, stats) =
        crate::otel::provider(&otel.service_name, endpoint).map_err(LoggingError::Exporter)?;
    let guard = TelemetryGuard { provider, stats };
    // Spans reach OpenTelemetry whatever `DYN_LOG` says (a `warn` log level must not switch
    // tracing off); log events stay out of spans. `DYN_LOG` filters only the log output.
    let spans_only = tracing_subscriber::filter::filter_fn(|m| {
        m.is_span() && *m.level() <= tracing::Level::INFO
    });
    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(guard.tracer())
        .with_filter(spans_only);
    let registry = tracing_subscriber::registry().with(otel_layer);
    let res = if cfg.jsonl {
        registry
            .with(
                fmt::layer()
                    .event_format(JsonlFormat)
                    .fmt_fields(fmt::format::JsonFields::new())
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init()
    } else {
        registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init()
    };
    res.map_err(|_| LoggingError::AlreadySet)?;
    Ok(guard)
}

/// [`init`] without span export.
pub fn init_logging(cfg: &LogConfig) -> Result<TelemetryGuard, LoggingError> {
    init(cfg, &OtelConfig::default())
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
