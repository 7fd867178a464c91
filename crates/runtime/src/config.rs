//! Runtime configuration, filled in by binaries from flags and environment.

use std::time::Duration;

/// Everything the runtime needs to know; binaries build it from `NATS_SERVER`, `DYN_SYSTEM_*`.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// NATS URL, e.g. `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// Discovery lease: a worker whose key is not refreshed within this time is gone.
    pub lease_ttl: Duration,
    /// How often a worker refreshes its discovery key.
    pub heartbeat_interval: Duration,
    /// On SIGTERM, how long in-flight requests may take to finish.
    pub drain_grace: Duration,
    /// How long a caller waits for a worker to acknowledge a request.
    pub ack_timeout: Duration,
    /// How long a caller waits between two streamed messages before giving up.
    pub stream_timeout: Duration,
    /// Name of the JetStream key-value bucket used for discovery.
    pub discovery_bucket: String,
    /// NATS security: a `.creds` file (JWT + nkey seed), a CA to trust for the server's TLS
    /// certificate, and a client certificate and key (mutual TLS).
    pub nats_security: NatsSecurity,
    /// Messages one subscription may hold before the client drops new ones (a slow consumer,
    /// logged at warn and counted in `dynamo_transport_nats_errors_total{kind="slow_consumer"}`).
    pub subscription_capacity: usize,
}

/// How this process authenticates to NATS beyond the URL's `user:password@` / `token@`.
#[derive(Debug, Clone, Default)]
pub struct NatsSecurity {
    pub creds_file: Option<std::path::PathBuf>,
    pub tls_ca: Option<std::path::PathBuf>,
    pub tls_client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            nats_url: "nats://127.0.0.1:4222".into(),
            lease_ttl: Duration::from_secs(6),
            heartbeat_interval: Duration::from_secs(2),
            drain_grace: Duration::from_secs(30),
            ack_timeout: Duration::from_secs(5),
            stream_timeout: Duration::from_secs(600),
            discovery_bucket: "dynamo_discovery".into(),
            nats_security: NatsSecurity::default(),
            subscription_capacity: 64 * 1024,
        }
    }
}
