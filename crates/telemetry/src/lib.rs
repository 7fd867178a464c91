//! Telemetry shared by every process: logging setup (human text or JSON lines) and W3C
//! trace-context (`traceparent`) parsing and building.

pub mod logging;
pub mod traceparent;

pub use logging::{init_logging, LogConfig, LoggingError};
pub use traceparent::{TraceContext, TraceParentError};
