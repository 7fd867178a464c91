//! Flags of a worker's system status server (`DYN_SYSTEM_*`), turned into the runtime's health
//! state, bind address and paths.

use std::net::SocketAddr;

use clap::Args;
use dynamo_protocols::names::{defaults, env};
use dynamo_runtime::{HealthState, StatusPaths};

/// Flags of the system status server of a worker process.
#[derive(Debug, Clone, Args)]
pub struct SystemArgs {
    /// Port of the system status server (/metrics, /health, /live); -1 or unset disables it.
    #[arg(long, env = env::DYN_SYSTEM_PORT, allow_negative_numbers = true)]
    pub system_port: Option<i32>,

    /// Host the system status server binds.
    #[arg(long, env = env::DYN_SYSTEM_HOST, default_value = defaults::SYSTEM_HOST)]
    pub system_host: String,

    /// Health status before any endpoint is served: `notready` or `ready`.
    #[arg(long, env = env::DYN_SYSTEM_STARTING_HEALTH_STATUS, default_value = "notready",
          value_parser = ["notready", "ready"])]
    pub starting_health_status: String,

    /// JSON list of endpoint names that must be served before /health turns ready
    /// (default: every served endpoint).
    #[arg(long, env = env::DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS)]
    pub use_endpoint_health_status: Option<String>,

    /// Path of the health route.
    #[arg(long, env = env::DYN_SYSTEM_HEALTH_PATH, default_value = defaults::HEALTH_PATH)]
    pub system_health_path: String,

    /// Path of the liveness route.
    #[arg(long, env = env::DYN_SYSTEM_LIVE_PATH, default_value = defaults::LIVE_PATH)]
    pub system_live_path: String,
}

impl SystemArgs {
    pub fn health_state(&self) -> anyhow::Result<HealthState> {
        let required: Vec<String> = match &self.use_endpoint_health_status {
            Some(s) if !s.trim().is_empty() => serde_json::from_str(s).map_err(|e| {
                anyhow::anyhow!(
                    "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS must be a JSON list of names: {e}"
                )
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
            Some(p) => {
                anyhow::bail!("--system-port / DYN_SYSTEM_PORT must be -1 or 0..=65535, got {p}")
            }
        }
    }

    pub fn status_paths(&self) -> StatusPaths {
        StatusPaths {
            health: self.system_health_path.clone(),
            live: self.system_live_path.clone(),
        }
    }
}
