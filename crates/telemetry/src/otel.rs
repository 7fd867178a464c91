//! OpenTelemetry tracer providers: the process's Dynamo-side provider (`OTEL_EXPORT_ENABLED`,
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_SERVICE_NAME`) bridged from `tracing` spans, and
//! providers for other services in the process (the engine's `sglang`). Export is OTLP/gRPC
//! through a bounded batch queue: when the collector is slow or down, spans are dropped (and
//! failed exports counted), requests never wait and memory never grows. Without export the
//! provider still assigns W3C ids, so JSONL logs carry `trace_id`/`span_id` either way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
};
use opentelemetry_sdk::Resource;

/// Spans waiting for export at most; more are dropped.
const MAX_QUEUE: usize = 4096;
const MAX_BATCH: usize = 512;

/// Where and whether to export spans.
#[derive(Debug, Clone)]
pub struct OtelConfig {
    /// `OTEL_EXPORT_ENABLED`.
    pub export: bool,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, a URL such as `http://localhost:4317`.
    pub endpoint: String,
    /// `OTEL_SERVICE_NAME`.
    pub service_name: String,
}

impl Default for OtelConfig {
    fn default() -> Self {
        OtelConfig {
            export: false,
            endpoint: "http://localhost:4317".into(),
            service_name: "dynamo".into(),
        }
    }
}

/// The exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP exporter for {endpoint}: {reason}")]
pub struct ExporterError {
    pub endpoint: String,
    pub reason: String,
}

/// Spans that did not reach the collector (failed exports), shared with the exporter.
#[derive(Debug, Clone, Default)]
pub struct ExportStats {
    failed_spans: Arc<AtomicU64>,
    exported_spans: Arc<AtomicU64>,
}

impl ExportStats {
    pub fn failed_spans(&self) -> u64 {
        self.failed_spans.load(Ordering::Relaxed)
    }
    pub fn exported_spans(&self) -> u64 {
        self.exported_spans.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct Counting<E> {
    inner: E,
    stats: ExportStats,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let r = self.inner.export(batch).await;
        let c = if r.is_ok() {
            &self.stats.exported_spans
        } else {
            &self.stats.failed_spans
        };
        c.fetch_add(n, Ordering::Relaxed);
        r
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

/// A tracer provider for `service_name`, exporting to `endpoint` (gRPC URL) when given.
/// Must be called inside a tokio runtime when exporting (the gRPC channel lives there).
pub fn provider(
    service_name: &str,
    endpoint: Option<&str>,
) -> Result<(SdkTracerProvider, ExportStats), ExporterError> {
    let stats = ExportStats::default();
    let resource = Resource::builder()
        .with_service_name(service_name.to_string())
        .build();
    let mut b = SdkTracerProvider::builder().with_resource(resource);
    if let Some(ep) = endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(ep)
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ExporterError {
                endpoint: ep.to_string(),
                reason: e.to_string(),
            })?;
        let exporter = Counting {
            inner: exporter,
            stats: stats.clone(),
        };
        let cfg = BatchConfigBuilder::default()
            .with_max_queue_size(MAX_QUEUE)
            .with_max_export_batch_size(MAX_BATCH)
            .with_scheduled_delay(Duration::from_millis(500))
            .build();
        b = b.with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(cfg)
                .build(),
        );
    }
    Ok((b.build(), stats))
}

/// The Dynamo-side provider: flushes its spans when shut down.
pub struct TelemetryGuard {
    pub(crate) provider: SdkTracerProvider,
    pub stats: ExportStats,
}

impl TelemetryGuard {
    /// Export what is queued and stop (call once, at shutdown).
    pub fn shutdown(&self) {
        let _ = self.provider.force_flush();
        let _ = self.provider.shutdown();
    }

    pub(crate) fn tracer(&self) -> opentelemetry_sdk::trace::Tracer {
        self.provider.tracer("dynamo")
    }
}
