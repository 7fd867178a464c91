//! Flags every process on the runtime shares (NATS, logging, span export, shutdown grace), turned into
//! the runtime's config structs.

use clap::Args;
use dynamo_protocols::names::{defaults, env};
use dynamo_runtime::RuntimeConfig;

#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// NATS server URL.
    #[arg(long, env = env::NATS_SERVER, default_value = defaults::NATS_SERVER)]
    pub nats_server: String,

    /// Seconds in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = env::DYN_GRACEFUL_SHUTDOWN_TIMEOUT, default_value_t = defaults::GRACEFUL_SHUTDOWN_TIMEOUT_S)]
    pub graceful_shutdown_timeout: u64,

    /// Log filter (tracing directives, e.g. `info` or `dynamo_runtime=debug,info`).
    #[arg(long, env = env::DYN_LOG, default_value = defaults::LOG)]
    pub log: String,

    /// Log one JSON object per line (with the current span's trace_id and span_id).
    #[arg(long, env = env::DYN_LOGGING_JSONL, default_value = "false",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub logging_jsonl: bool,

    /// Export this process's spans over OTLP/gRPC.
    #[arg(long, env = env::OTEL_EXPORT_ENABLED, default_value = "false",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub otel_export_enabled: bool,

    /// OTLP/gRPC endpoint URL for span export.
    #[arg(
        long,
        env = env::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
        default_value = defaults::OTLP_TRACES_ENDPOINT
    )]
    pub otel_exporter_otlp_traces_endpoint: String,

    /// `service.name` of this process's spans.
    #[arg(long, env = env::OTEL_SERVICE_NAME, default_value = defaults::SERVICE_NAME)]
    pub otel_service_name: String,

    /// Seconds a caller waits for the next result of a streaming request before giving up on
    /// it (and cancelling it on the worker). Liveness is checked separately: a worker that
    /// stops sending keepalives is taken for lost after 1.5 s.
    #[arg(long, env = env::DYN_STREAM_TIMEOUT, default_value_t = 600)]
    pub stream_timeout: u64,

    /// NATS credentials file (`.creds`: user JWT and nkey seed) for servers using
    /// decentralized auth. User/password or a token go in the URL instead.
    #[arg(long, env = env::DYN_NATS_CREDS_FILE)]
    pub nats_creds_file: Option<std::path::PathBuf>,

    /// CA certificate (PEM) to trust for the NATS server's TLS; implies TLS. A `tls://` URL
    /// also requires TLS (with the system's roots).
    #[arg(long, env = env::DYN_NATS_TLS_CA)]
    pub nats_tls_ca: Option<std::path::PathBuf>,

    /// Client certificate (PEM) for mutual TLS with the NATS server (with --nats-tls-key).
    #[arg(long, env = env::DYN_NATS_TLS_CERT, requires = "nats_tls_key")]
    pub nats_tls_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --nats-tls-cert.
    #[arg(long, env = env::DYN_NATS_TLS_KEY, requires = "nats_tls_cert")]
    pub nats_tls_key: Option<std::path::PathBuf>,
}

impl RuntimeArgs {
    /// Logging and span export; keep the guard and call `shutdown` on it at exit.
    pub fn init_logging(&self) -> anyhow::Result<dynamo_telemetry::TelemetryGuard> {
        let log = dynamo_telemetry::LogConfig {
            filter: self.log.clone(),
            jsonl: self.logging_jsonl,
        };
        let otel = dynamo_telemetry::OtelConfig {
            export: self.otel_export_enabled,
            endpoint: self.otel_exporter_otlp_traces_endpoint.clone(),
            service_name: self.otel_service_name.clone(),
        };
        Ok(dynamo_telemetry::init(&log, &otel)?)
    }

    pub fn runtime_config(&self) -> RuntimeConfig {
        RuntimeConfig {
            nats_url: self.nats_server.clone(),
            drain_grace: std::time::Duration::from_secs(self.graceful_shutdown_timeout),
            stream_timeout: std::time::Duration::from_secs(self.stream_timeout.max(1)),
            nats_security: dynamo_runtime::NatsSecurity {
                creds_file: self.nats_creds_file.clone(),
                tls_ca: self.nats_tls_ca.clone(),
                tls_client: self.nats_tls_cert.clone().zip(self.nats_tls_key.clone()),
            },
            ..RuntimeConfig::default()
        }
    }
}

/// Wait for SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
    }
}
