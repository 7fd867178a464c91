//! `dynamo-trace`'s library (feature `receiver`): an OTLP/gRPC trace receiver for machines
//! without a collector or Tempo. It keeps the spans it receives grouped by trace, hands out
//! finished traces (no new span for a quiet period), renders a trace as an indented tree and
//! serializes spans as JSON lines. The e2e tests use it as their collector.

pub mod span;
pub mod tree;

pub use span::Span;
pub use tree::render;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio_util::sync::CancellationToken;

use span::attrs;

/// The receiver could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {reason}")]
pub struct ReceiverError {
    pub addr: String,
    pub reason: String,
}

#[derive(Default)]
struct Store {
    traces: HashMap<String, Entry>,
}

struct Entry {
    spans: Vec<Span>,
    last: Instant,
    taken: bool,
}

#[derive(Clone)]
struct Service {
    store: Arc<Mutex<Store>>,
}

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let now = Instant::now();
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        for rs in &request.get_ref().resource_spans {
            let res = rs
                .resource
                .as_ref()
                .map(|r| attrs(&r.attributes))
                .unwrap_or_default();
            let service = res
                .get("service.name")
                .and_then(|v| v.as_str())
                .unwrap_or("unknown")
                .to_string();
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    let span = Span::from_proto(&service, s);
                    let e = store
                        .traces
                        .entry(span.trace_id.clone())
                        .or_insert_with(|| Entry {
                            spans: vec![],
                            last: now,
                            taken: false,
                        });
                    e.spans.push(span);
                    e.last = now;
                    e.taken = false;
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A running receiver.
pub struct Receiver {
    addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    stop: CancellationToken,
}

impl Receiver {
    /// Listen on `addr` (port 0 picks a free one) and serve until dropped.
    pub async fn start(addr: SocketAddr) -> Result<Receiver, ReceiverError> {
        let err = |e: std::io::Error| ReceiverError {
            addr: addr.to_string(),
            reason: e.to_string(),
        };
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
        let local = listener.local_addr().map_err(err)?;
        let store = Arc::new(Mutex::new(Store::default()));
        let stop = CancellationToken::new();
        let svc = TraceServiceServer::new(Service {
            store: store.clone(),
        });
        let s = stop.clone();
        tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let r = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, s.cancelled_owned())
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "trace receiver stopped");
            }
        });
        Ok(Receiver {
            addr: local,
            store,
            stop,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The gRPC URL exporters point at (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `host:port`, the form SGLang's `--otlp-traces-endpoint` takes.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.store()
            .traces
            .values()
            .flat_map(|e| e.spans.iter().cloned())
            .collect()
    }

    /// The spans of one trace (hex id).
    pub fn trace(&self, trace_id: &str) -> Vec<Span> {
        self.store()
            .traces
            .get(trace_id)
            .map(|e| e.spans.clone())
            .unwrap_or_default()
    }

    /// Trace ids received so far.
    pub fn trace_ids(&self) -> Vec<String> {
        self.store().traces.keys().cloned().collect()
    }

    /// Traces that received no span for `quiet` and were not handed out since their last
    /// span, oldest first.
    pub fn take_finished(&self, quiet: Duration) -> Vec<Vec<Span>> {
        let now = Instant::now();
        let mut store = self.store();
        let mut done: Vec<(Instant, Vec<Span>)> = store
            .traces
            .values_mut()
            .filter(|e| !e.taken && now.duration_since(e.last) >= quiet)
            .map(|e| {
                e.taken = true;
                (e.last, e.spans.clone())
            })
            .collect();
        done.sort_by_key(|(t, _)| *t);
        done.into_iter().map(|(_, s)| s).collect()
    }

    /// Forget traces handed out more than `keep` ago (bounds memory in long runs).
    pub fn forget_taken(&self, keep: Duration) {
        let now = Instant::now();
        self.store()
            .traces
            .retain(|_, e| !e.taken || now.duration_since(e.last) < keep);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
