//! The worker's disaggregation flags (SGLang's names): the role, the prefill side's bootstrap
//! server (port, bind and advertised host, how long unclaimed rooms live) and the transfer
//! backend; and the address decode workers are told to connect to.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::Args;
use dynamo_disagg::TransferBackend;
use dynamo_protocols::names::worker as d;
use dynamo_protocols::DisaggregationMode;

#[derive(Debug, Clone, Args)]
pub struct DisaggArgs {
    /// Role: `null` (aggregated), `prefill` (computes prompts' KV for decode workers; registers
    /// under component `prefill` unless --component says otherwise) or `decode` (pulls the
    /// KV from a prefill worker and generates; component `backend`).
    #[arg(long, default_value = "null")]
    pub disaggregation_mode: DisaggregationMode,
    /// Prefill side: port of the KV bootstrap/transfer server decode workers connect to
    /// (0: any free port).
    #[arg(long, default_value_t = d::DISAGGREGATION_BOOTSTRAP_PORT)]
    pub disaggregation_bootstrap_port: u16,
    /// How KV moves between prefill and decode workers: `tcp`.
    #[arg(long, default_value = "tcp")]
    pub disaggregation_transfer_backend: TransferBackend,
    /// Prefill side: the interface the bootstrap server binds.
    #[arg(long, default_value = d::HOST)]
    pub host: String,
    /// Prefill side: the host decode workers are told to connect to (default: --host, or
    /// this machine's address when --host is 0.0.0.0).
    #[arg(long)]
    pub disaggregation_bootstrap_host: Option<String>,
    /// Prefill side: seconds a prefill's KV waits for its decode worker before it is
    /// dropped (counted in sglang:num_bootstrap_failed_reqs_total).
    #[arg(long, default_value_t = d::DISAGGREGATION_BOOTSTRAP_TIMEOUT_S)]
    pub disaggregation_bootstrap_timeout: f64,
}

impl DisaggArgs {
    /// The bootstrap server's bind address.
    pub fn bind(&self) -> anyhow::Result<SocketAddr> {
        let ip: IpAddr = self
            .host
            .parse()
            .map_err(|e| anyhow::anyhow!("--host {:?}: {e}", self.host))?;
        Ok(SocketAddr::new(ip, self.disaggregation_bootstrap_port))
    }

    pub fn room_timeout(&self) -> anyhow::Result<Duration> {
        let t = self.disaggregation_bootstrap_timeout;
        if !(t.is_finite() && t > 0.0) {
            anyhow::bail!(
                "--disaggregation-bootstrap-timeout must be a positive number of seconds, got {t}"
            );
        }
        Ok(Duration::from_secs_f64(t))
    }

    /// The host in the bootstrap info.
    pub fn advertise_host(&self) -> String {
        if let Some(h) = &self.disaggregation_bootstrap_host {
            return h.clone();
        }
        match self.host.parse::<IpAddr>() {
            Ok(ip) if !ip.is_unspecified() => self.host.clone(),
            _ => local_ip().unwrap_or_else(|| "127.0.0.1".into()),
        }
    }
}

/// The address this machine's default route leaves from (a UDP connect sends nothing).
fn local_ip() -> Option<String> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then(|| ip.to_string())
}
