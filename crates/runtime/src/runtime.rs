//! `DistributedRuntime`: the process's NATS connection and everything hanging off it (served
//! endpoints with their discovery leases, instance watchers, metrics, health), plus the
//! graceful shutdown sequence: deregister, stop accepting, drain, cancel what is left.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_nats::jetstream;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::addressing::EndpointId;
use crate::config::RuntimeConfig;
use crate::discovery::{self, InstanceMap, InstanceRecord};
use crate::egress::{self, CallOptions, ResponseStream};
use crate::error::RuntimeError;
use crate::events::Events;
use crate::ingress::{self, Handler, Ingress};
use crate::metrics::MetricsRegistry;
use crate::system_status::{self, HealthState, StatusPaths};

/// Handle to the runtime; cheap to clone.
#[derive(Clone)]
pub struct DistributedRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    config: RuntimeConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    metrics: MetricsRegistry,
    health: HealthState,
    /// The engine's `/engine/{route}` handlers, once registered.
    engine_routes: crate::engine_routes::EngineRouteSlot,
    /// Stops accepting requests and stops leases.
    stop: CancellationToken,
    /// Cancels in-flight requests (after the drain grace) and background tasks.
    process_stop: CancellationToken,
    tracker: TaskTracker,
    leases: Mutex<Vec<JoinHandle<()>>>,
    endpoints: Mutex<Vec<String>>,
}

impl DistributedRuntime {
    /// Connect to NATS. Fails (without retrying) if the server does not answer now; after that
    /// the connection reconnects forever.
    pub async fn connect(config: RuntimeConfig, health: HealthState) -> Result<Self, RuntimeError> {
        let start = Instant::now();
        let metrics = MetricsRegistry::new(start);
        let nats_errors = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "dynamo_transport_nats_errors_total",
                "NATS client errors: slow-consumer drops (messages the client discarded because a subscription fell behind; a lower bound), server errors",
            ),
            &["kind"],
        )
        .expect("valid");
        metrics
            .register(Box::new(nats_errors.clone()))
            .expect("unique");
        let connected = health.nats_connected();
        // Credentials ride in the URL (`nats://user:pass@host` or `nats://token@host`); the
        // client gets them as options and the URL without them.
        let (server_url, creds) = split_credentials(&config.nats_url);
        let mut options = match creds {
            Some((user, Some(pass))) => {
                async_nats::ConnectOptions::with_user_and_password(user, pass)
            }
            Some((token, None)) => async_nats::ConnectOptions::with_token(token),
            None => async_nats::ConnectOptions::new(),
        };
        let sec = &config.nats_security;
        if let Some(f) = &sec.creds_file {
            options = options
                .credentials_file(f)
                .await
                .map_err(|e| RuntimeError::Connect {
                    url: redact_url(&config.nats_url),
                    reason: format!("cannot read NATS credentials file {}: {e}", f.display()),
                })?;
        }
        if let Some(ca) = &sec.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &sec.tls_client {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        if server_url.starts_with("tls://") {
            options = options.require_tls(true);
        }
        let client = options
            .max_reconnects(None)
            .subscription_capacity(config.subscription_capacity.max(1))
            .connection_timeout(std::time::Duration::from_secs(5))
            .event_callback(move |ev| {
                let nats_errors = nats_errors.clone();
                let connected = connected.clone();
                async move {
                    match ev {
                        async_nats::Event::Disconnected => {
                            connected.store(false, std::sync::atomic::Ordering::Release);
                            tracing::warn!("NATS disconnected; reconnecting")
                        }
                        async_nats::Event::Connected => {
                            connected.store(true, std::sync::atomic::Ordering::Release);
                            tracing::info!("NATS connected")
                        }
                        async_nats::Event::SlowConsumer(sid) => {
                            nats_errors.with_label_values(&["slow_consumer"]).inc();
                            tracing::warn!(subscription = sid, "NATS slow consumer: the client dropped messages of a subscription that fell behind");
                        }
                        async_nats::Event::ServerError(e) => {
                            nats_errors.with_label_values(&["server_error"]).inc();
                            tracing::warn!(error = %e, "NATS server error");
                        }
                        other => tracing::debug!(event = %other, "NATS event"),
                    }
                }
            })
            .connect(server_url.as_str())
            .await
            .map_err(|e| RuntimeError::Connect {
                url: redact_url(&config.nats_url),
                reason: redact_in(&e.to_string(), &config.nats_url),
            })?;
        let js = jetstream::new(client.clone());
        Ok(DistributedRuntime {
            inner: Arc::new(Inner {
                config,
                client,
                js,
                metrics,
                health,
                engine_routes: Default::default(),
                stop: CancellationToken::new(),
                process_stop: CancellationToken::new(),
                tracker: TaskTracker::new(),
                leases: Mutex::new(Vec::new()),
                endpoints: Mutex::new(Vec::new()),
            }),
        })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// The events plane (KV events, load reports, re-sync queries) of this connection.
    pub fn events(&self) -> Events {
        Events::new(self.inner.client.clone())
    }

    pub fn metrics(&self) -> &MetricsRegistry {
        &self.inner.metrics
    }

    pub fn health(&self) -> &HealthState {
        &self.inner.health
    }

    /// Fires when shutdown begins.
    pub fn stopping(&self) -> CancellationToken {
        self.inner.stop.clone()
    }

    /// Register the engine's `POST /engine/{route}` handlers on the system status server
    /// (once; false when some were registered already).
    pub fn set_engine_routes(&self, routes: Arc<dyn crate::engine_routes::EngineRoutes>) -> bool {
        self.inner.engine_routes.set(routes)
    }

    /// Start the system status server (`/metrics`, `/health`, `/live`, `/engine/{route}`).
    pub async fn start_system_server(
        &self,
        addr: SocketAddr,
        paths: StatusPaths,
    ) -> Result<SocketAddr, RuntimeError> {
        system_status::serve(
            addr,
            paths,
            self.inner.health.clone(),
            self.inner.metrics.clone(),
            self.inner.engine_routes.clone(),
            self.inner.process_stop.clone(),
        )
        .await
    }

    /// Serve `id` with `handler` as a new instance; register it in discovery with `card`.
    /// Returns the instance id once the instance is subscribed and registered.
    pub async fn serve_endpoint<Req, Resp>(
        &self,
        id: EndpointId,
        handler: Arc<dyn Handler<Req, Resp>>,
        card: serde_json::Value,
        system_port: Option<u16>,
    ) -> Result<u64, RuntimeError>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
    {
        let inner = &self.inner;
        if inner.stop.is_cancelled() {
            return Err(RuntimeError::ShuttingDown);
        }
        let instance_id = loop {
            let v: u64 = rand::random();
            if v != 0 {
                break v;
            }
        };
        inner.health.set_endpoint(&id.endpoint, false);
        let client = &inner.client;
        let requests = client
            .subscribe(id.instance_subject(instance_id))
            .await
            .map_err(|e| RuntimeError::Nats(e.to_string()))?;
        let cancels = client
            .subscribe(id.cancel_subject(instance_id))
            .await
            .map_err(|e| RuntimeError::Nats(e.to_string()))?;
        client
            .flush()
            .await
            .map_err(|e| RuntimeError::Nats(e.to_string()))?;
        // Resolving the handles also exports the families at 0 before the first request.
        let metrics = inner.metrics.work_handler().for_endpoint(&id);
        let ing = Arc::new(Ingress {
            client: client.clone(),
            id: id.clone(),
            instance_id,
            handler,
            metrics,
            inflight: Default::default(),
            cancelled_early: Default::default(),
        });
        tokio::spawn(ingress::run(
            ing,
            requests,
            cancels,
            inner.stop.clone(),
            inner.process_stop.clone(),
            inner.tracker.clone(),
        ));

        let record = InstanceRecord {
            namespace: id.namespace.clone(),
            component: id.component.clone(),
            endpoint: id.endpoint.clone(),
            instance_id,
            subject: id.instance_subject(instance_id),
            card,
            system_port,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lease = tokio::spawn(discovery::run_lease(
            discovery::Lease {
                js: inner.js.clone(),
                bucket_name: inner.config.discovery_bucket.clone(),
                lease_ttl: inner.config.lease_ttl,
                heartbeat: inner.config.heartbeat_interval,
                key: id.discovery_key(instance_id),
                record,
            },
            inner.stop.clone(),
            tx,
        ));
        inner.leases.lock().unwrap().push(lease);
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(RuntimeError::ShuttingDown),
        }
        inner.endpoints.lock().unwrap().push(id.endpoint.clone());
        inner.health.set_endpoint(&id.endpoint, true);
        tracing::info!(endpoint = %id, instance_id = %format!("{instance_id:x}"), "serving");
        Ok(instance_id)
    }

    /// Watch live instances whose discovery key starts with `prefix` (e.g. `instances.dynamo`).
    pub fn watch_instances(&self, prefix: &str) -> watch::Receiver<InstanceMap> {
        let (tx, rx) = watch::channel(InstanceMap::default());
        tokio::spawn(discovery::run_watcher(
            self.inner.js.clone(),
            self.inner.config.discovery_bucket.clone(),
            self.inner.config.lease_ttl,
            prefix.to_string(),
            tx,
            self.inner.process_stop.clone(),
        ));
        rx
    }

    /// Call one instance. `alive` is polled while waiting so a request to an instance that
    /// left discovery fails instead of hanging.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        instance: &InstanceRecord,
        request: &Req,
        opts: CallOptions,
        alive: Box<dyn Fn() -> bool + Send + Sync>,
    ) -> Result<ResponseStream<Resp>, RuntimeError> {
        egress::call(
            &self.inner.client,
            &instance.endpoint_id(),
            instance.instance_id,
            request,
            opts,
            self.inner.config.ack_timeout,
            self.inner.config.stream_timeout,
            alive,
        )
        .await
    }

    /// Graceful shutdown: deregister from discovery at once, stop accepting requests, let
    /// in-flight requests finish within the drain grace, then cancel whatever is left.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.stop.cancel();
        for ep in inner.endpoints.lock().unwrap().iter() {
            inner.health.set_endpoint(ep, false);
        }
        let leases: Vec<_> = inner.leases.lock().unwrap().drain(..).collect();
        for l in leases {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(3), l).await;
        }
        inner.tracker.close();
        let n = inner.tracker.len();
        if n > 0 {
            tracing::info!(inflight = n, grace = ?inner.config.drain_grace, "draining in-flight requests");
        }
        if tokio::time::timeout(inner.config.drain_grace, inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = inner.tracker.len(),
                "drain grace expired; cancelling the rest"
            );
        }
        inner.process_stop.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), inner.tracker.wait()).await;
        // Send what is buffered (the last responses, the discovery deletes); with NATS gone
        // the client would wait for a reconnect forever, so give it a bound.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), inner.client.flush()).await;
    }
}

/// `url` without its userinfo, and the userinfo as (user or token, password).
fn split_credentials(url: &str) -> (String, Option<(String, Option<String>)>) {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), url),
    };
    match rest.rsplit_once('@') {
        Some((info, host)) if !info.is_empty() => {
            let creds = match info.split_once(':') {
                Some((u, p)) => (u.to_string(), Some(p.to_string())),
                None => (info.to_string(), None),
            };
            (format!("{scheme}{host}"), Some(creds))
        }
        _ => (url.to_string(), None),
    }
}

/// `url` with any `user:password@` (or token) replaced, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let rest = match rest.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => rest.to_string(),
    };
    match scheme {
        Some(s) => format!("{s}://{rest}"),
        None => rest,
    }
}

/// `text` with the credentials of `url` (if any) removed wherever they appear.
fn redact_in(text: &str, url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.rsplit_once('@') {
        Some((creds, _)) if !creds.is_empty() => text.replace(creds, "***"),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod redact_tests {
    use super::*;

    #[test]
    fn credentials_never_echoed() {
        assert_eq!(
            redact_url("nats://alice:s3cret@host:4222"),
            "nats://***@host:4222"
        );
        assert_eq!(redact_url("nats://host:4222"), "nats://host:4222");
        assert_eq!(redact_url("tok@host:4222"), "***@host:4222");
        let msg = redact_in(
            "cannot connect to alice:s3cret@host",
            "nats://alice:s3cret@host",
        );
        assert!(!msg.contains("s3cret"), "{msg}");
        assert_eq!(
            split_credentials("nats://alice:s3cret@host:4222"),
            (
                "nats://host:4222".to_string(),
                Some(("alice".to_string(), Some("s3cret".to_string())))
            )
        );
        assert_eq!(
            split_credentials("nats://tok@host").1,
            Some(("tok".to_string(), None))
        );
        assert_eq!(split_credentials("nats://host").1, None);
    }

    #[test]
    fn a_missing_creds_file_is_a_clear_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let cfg = RuntimeConfig {
            nats_url: "nats://u:pw@127.0.0.1:1".into(),
            nats_security: crate::NatsSecurity {
                creds_file: Some("/nonexistent/user.creds".into()),
                ..Default::default()
            },
            ..RuntimeConfig::default()
        };
        let health = HealthState::new(Instant::now(), true, vec![]);
        let e = rt
            .block_on(DistributedRuntime::connect(cfg, health))
            .err()
            .expect("fails");
        let msg = e.to_string();
        assert!(msg.contains("/nonexistent/user.creds"), "{msg}");
        assert!(!msg.contains("pw"), "{msg}");
    }
}
