//! The process's Prometheus registry: `dynamo_component_uptime_seconds`, the work-handler
//! metrics of each served endpoint, refresh hooks run before each scrape (gauges read from
//! an engine's state), and extra text sources (an engine's own registry) appended on every
//! scrape.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::addressing::EndpointId;

const NAMESPACE: &str = "dynamo_namespace";
const COMPONENT: &str = "dynamo_component";
const ENDPOINT: &str = "dynamo_endpoint";

type TextSource = Box<dyn Fn() -> String + Send + Sync>;
type Refresh = Box<dyn Fn() + Send + Sync>;

/// A registry plus the uptime gauge, shared by everything in one process.
#[derive(Clone)]
pub struct MetricsRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    uptime: Gauge,
    start: Instant,
    extra: Mutex<Vec<TextSource>>,
    refresh: Mutex<Vec<Refresh>>,
    handler: Mutex<Option<WorkHandlerMetrics>>,
}

impl MetricsRegistry {
    pub fn new(start: Instant) -> Self {
        let registry = Registry::new();
        let uptime = Gauge::new(
            "dynamo_component_uptime_seconds",
            "Seconds since the distributed runtime started",
        )
        .expect("valid metric");
        registry
            .register(Box::new(uptime.clone()))
            .expect("first registration");
        MetricsRegistry {
            inner: Arc::new(Inner {
                registry,
                uptime,
                start,
                extra: Mutex::new(Vec::new()),
                refresh: Mutex::new(Vec::new()),
                handler: Mutex::new(None),
            }),
        }
    }

    /// The underlying registry, for registering more collectors.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Register a collector; a name registered twice is a programming error reported as `Err`.
    pub fn register(
        &self,
        c: Box<dyn prometheus::core::Collector>,
    ) -> Result<(), prometheus::Error> {
        self.inner.registry.register(c)
    }

    /// Append the text of another registry on every scrape (e.g. an engine's `sglang:` metrics).
    pub fn add_text_source(&self, f: impl Fn() -> String + Send + Sync + 'static) {
        self.inner.extra.lock().unwrap().push(Box::new(f));
    }

    /// Run `f` before every scrape (to set gauges from state owned elsewhere).
    pub fn on_scrape(&self, f: impl Fn() + Send + Sync + 'static) {
        self.inner.refresh.lock().unwrap().push(Box::new(f));
    }

    /// The work-handler metric families (created on first use, shared by all endpoints).
    pub fn work_handler(&self) -> WorkHandlerMetrics {
        let mut h = self.inner.handler.lock().unwrap();
        if let Some(m) = h.as_ref() {
            return m.clone();
        }
        let m = WorkHandlerMetrics::new(&self.inner.registry);
        *h = Some(m.clone());
        m
    }

    /// Prometheus text exposition of everything in this process.
    pub fn render(&self) -> String {
        self.inner
            .uptime
            .set(self.inner.start.elapsed().as_secs_f64());
        for f in self.inner.refresh.lock().unwrap().iter() {
            f();
        }
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.inner.registry.gather(), &mut buf)
            .expect("text encoding of valid metrics");
        let mut out = String::from_utf8(buf).expect("utf-8 text");
        for src in self.inner.extra.lock().unwrap().iter() {
            out.push_str(&src());
        }
        out
    }
}

/// `dynamo_component_*` metrics recorded around every request an endpoint serves.
#[derive(Clone)]
pub struct WorkHandlerMetrics {
    pub requests: IntCounterVec,
    pub request_bytes: IntCounterVec,
    pub response_bytes: IntCounterVec,
    pub inflight: IntGaugeVec,
    pub duration: HistogramVec,
    pub errors: IntCounterVec,
}

impl WorkHandlerMetrics {
    fn new(r: &Registry) -> Self {
        let l = &[NAMESPACE, COMPONENT, ENDPOINT];
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let requests = counter(
            "dynamo_component_requests_total",
            "Requests handled by the endpoint",
            l,
        );
        let request_bytes = counter(
            "dynamo_component_request_bytes_total",
            "Request payload bytes received",
            l,
        );
        let response_bytes = counter(
            "dynamo_component_response_bytes_total",
            "Response payload bytes sent",
            l,
        );
        let errors = counter(
            "dynamo_component_errors_total",
            "Errors in the work handler, by error_type",
            &[NAMESPACE, COMPONENT, ENDPOINT, "error_type"],
        );
        let inflight = IntGaugeVec::new(
            Opts::new(
                "dynamo_component_inflight_requests",
                "Requests currently being processed",
            ),
            l,
        )
        .expect("valid metric");
        r.register(Box::new(inflight.clone()))
            .expect("unique metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "dynamo_component_request_duration_seconds",
                "Handler time from receipt to final response",
            ),
            l,
        )
        .expect("valid metric");
        r.register(Box::new(duration.clone()))
            .expect("unique metric");
        WorkHandlerMetrics {
            requests,
            request_bytes,
            response_bytes,
            inflight,
            duration,
            errors,
        }
    }

    /// The handles of one endpoint, resolved once (no label lookup per request or message).
    pub fn for_endpoint(&self, id: &EndpointId) -> EndpointMetrics {
        let l = Self::labels(id);
        // Every error type exists from the start at 0, so the first error of a kind is an
        // increase that `rate()` and `increase()` see (a series born at 1 shows none).
        for t in ERROR_TYPES {
            let [n, c, e] = &l;
            self.errors
                .with_label_values(&[n.as_str(), c.as_str(), e.as_str(), t]);
        }
        EndpointMetrics {
            requests: self.requests.with_label_values(&l),
            request_bytes: self.request_bytes.with_label_values(&l),
            response_bytes: self.response_bytes.with_label_values(&l),
            inflight: self.inflight.with_label_values(&l),
            duration: self.duration.with_label_values(&l),
            errors: self.errors.clone(),
            labels: l,
        }
    }

    /// Label values for one endpoint.
    pub fn labels(id: &EndpointId) -> [String; 3] {
        [
            id.namespace.clone(),
            id.component.clone(),
            id.endpoint.clone(),
        ]
    }
}

/// The `error_type` values of `dynamo_component_errors_total`: a request that cannot be
/// decoded, a second request with a running id, the handler's error, a message without a
/// reply subject, and a reply (stream item or final marker) that could not be published.
pub const ERROR_TYPES: [&str; 6] = [
    "deserialization",
    "duplicate_request",
    "generate",
    "invalid_message",
    "publish_response",
    "publish_final",
];

/// Work-handler metric handles of one endpoint.
#[derive(Clone)]
pub struct EndpointMetrics {
    pub requests: prometheus::IntCounter,
    pub request_bytes: prometheus::IntCounter,
    pub response_bytes: prometheus::IntCounter,
    pub inflight: prometheus::IntGauge,
    pub duration: prometheus::Histogram,
    errors: IntCounterVec,
    labels: [String; 3],
}

impl EndpointMetrics {
    /// Count an error of `error_type` (rare: looked up by label).
    pub fn error(&self, error_type: &str) {
        debug_assert!(ERROR_TYPES.contains(&error_type), "{error_type}");
        let [n, c, e] = &self.labels;
        self.errors
            .with_label_values(&[n.as_str(), c.as_str(), e.as_str(), error_type])
            .inc();
    }
}

impl MetricsRegistry {
    /// `dynamo_tracing_exported_spans_total` and `dynamo_tracing_export_failed_spans_total`:
    /// what this process's span exporter delivered and what it could not (collector down or
    /// slow); read from `stats` at every scrape. Both stay 0 while export is off.
    pub fn track_span_export(
        &self,
        stats: dynamo_telemetry::otel::ExportStats,
    ) -> Result<(), prometheus::Error> {
        let exported = prometheus::IntCounter::new(
            "dynamo_tracing_exported_spans_total",
            "Spans this process exported over OTLP",
        )?;
        let failed = prometheus::IntCounter::new(
            "dynamo_tracing_export_failed_spans_total",
            "Spans this process could not export (collector down or too slow); requests never wait for export",
        )?;
        self.register(Box::new(exported.clone()))?;
        self.register(Box::new(failed.clone()))?;
        self.on_scrape(move || {
            let catch_up = |c: &prometheus::IntCounter, now: u64| {
                c.inc_by(now.saturating_sub(c.get()));
            };
            catch_up(&exported, stats.exported_spans());
            catch_up(&failed, stats.failed_spans());
        });
        Ok(())
    }
}
