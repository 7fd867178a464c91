//! Telemetry shared by every process: logging setup (human text or JSON lines with trace
//! ids), OpenTelemetry span export over OTLP/gRPC, and W3C trace-context (`traceparent`)
//! parsing and building.

pub mod context;
pub mod jsonl;
pub mod logging;
pub mod otel;
#[cfg(feature = "receiver")]
pub mod receiver;
pub mod traceparent;

pub use logging::{init, init_logging, LogConfig, LoggingError};
pub use otel::{OtelConfig, TelemetryGuard};
pub use traceparent::{TraceContext, TraceParentError};
