//! Flags every process on the runtime shares (NATS, system status server, logging), turned into
//! the runtime's config structs. Included by each binary with `#[path]`.

use std::net::SocketAddr;

use clap::Args;
use dynamo_runtime::{HealthState, RuntimeConfig, StatusPaths};

#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// NATS server URL.
    #[arg(long, env = "NATS_SERVER", default_value = "nats://127.0.0.1:4222")]
    pub nats_server: String,

    /// Port of the system status server (/metrics, /health, /live); -1 or unset disables it.
    #[arg(long, env = "DYN_SYSTEM_PORT", allow_negative_numbers = true)]
    pub system_port: Option<i32>,

    /// Host the system status server binds.
    #[arg(long, env = "DYN_SYSTEM_HOST", default_value = "0.0.0.0")]
    pub system_host: String,

    /// Health status before any endpoint is served: `notready` or `ready`.
    #[arg(long, env = "DYN_SYSTEM_STARTING_HEALTH_STATUS", default_value = "notready",
          value_parser = ["notready", "ready"])]
    pub starting_health_status: String,

    /// JSON list of endpoint names that must be served before /health turns ready
    /// (default: every served endpoint).
    #[arg(long, env = "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS")]
    pub use_endpoint_health_status: Option<String>,

    /// Path of the health route.
    #[arg(long, env = "DYN_SYSTEM_HEALTH_PATH", default_value = "/health")]
    pub system_health_path: String,

    /// Path of the liveness route.
    #[arg(long, env = "DYN_SYSTEM_LIVE_PATH", default_value = "/live")]
    pub system_live_path: String,

    /// Seconds in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "DYN_GRACEFUL_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    pub graceful_shutdown_timeout: u64,

    /// Log filter (tracing directives, e.g. `info` or `dynamo_runtime=debug,info`).
    #[arg(long, env = "DYN_LOG", default_value = "info")]
    pub log: String,

    /// Log one JSON object per line.
    #[arg(long, env = "DYN_LOGGING_JSONL", default_value = "false",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub logging_jsonl: bool,
}

impl RuntimeArgs {
    pub fn init_logging(&self) -> anyhow::Result<()> {
        dynamo_telemetry::init_logging(&dynamo_telemetry::LogConfig {
            filter: self.log.clone(),
            jsonl: self.logging_jsonl,
        })?;
        Ok(())
    }

    pub fn runtime_config(&self) -> RuntimeConfig {
        RuntimeConfig {
            nats_url: self.nats_server.clone(),
            drain_grace: std::time::Duration::from_secs(self.graceful_shutdown_timeout),
            ..RuntimeConfig::default()
        }
    }

    pub fn health_state(&self) -> anyhow::Result<HealthState> {
        let required: Vec<String> = match &self.use_endpoint_health_status {
            Some(s) if !s.trim().is_empty() => serde_json::from_str(s).map_err(|e| {
                anyhow::anyhow!("DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS must be a JSON list of names: {e}")
            })?,
            _ => vec![],
        };
        Ok(HealthState::new(
            std::time::Instant::now(),
            self.starting_health_status == "ready",
            required,
        ))
    }

    /// The status server address, or `None` when disabled.
    pub fn system_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        match self.system_port {
            None | Some(-1) => Ok(None),
            Some(p) if (0..=65535).contains(&p) => {
                let addr = format!("{}:{p}", self.system_host);
                Ok(Some(addr.parse().map_err(|e| {
                    anyhow::anyhow!("--system-host/--system-port {addr:?}: {e}")
                })?))
            }
            Some(p) => anyhow::bail!("--system-port / DYN_SYSTEM_PORT must be -1 or 0..=65535, got {p}"),
        }
    }

    pub fn status_paths(&self) -> StatusPaths {
        StatusPaths {
            health: self.system_health_path.clone(),
            live: self.system_live_path.clone(),
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
