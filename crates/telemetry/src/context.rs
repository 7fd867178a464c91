//! Bridging W3C trace contexts and `tracing` spans: parent a span on a remote context (an
//! incoming `traceparent`), and read the ids a span got, so crates that open spans need no
//! OpenTelemetry types of their own.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::TraceContext;

/// `parent` as an OpenTelemetry remote span context.
pub fn remote_span_context(parent: &TraceContext) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(parent.trace_id.to_be_bytes()),
        SpanId::from_bytes(parent.span_id.to_be_bytes()),
        TraceFlags::new(parent.flags),
        true,
        TraceState::default(),
    )
}

/// Make `span` a child of the remote `parent` (call before the span is first entered).
pub fn set_remote_parent(span: &tracing::Span, parent: &TraceContext) {
    let cx = opentelemetry::Context::new().with_remote_span_context(remote_span_context(parent));
    let _ = span.set_parent(cx);
}

/// The trace and span id `span` has (`None` for a disabled span).
pub fn span_context(span: &tracing::Span) -> Option<TraceContext> {
    let cx = span.context();
    let s = cx.span();
    let sc = s.span_context();
    sc.is_valid().then(|| TraceContext {
        trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
        flags: sc.trace_flags().to_u8(),
    })
}

/// Open `span` under the incoming `traceparent` when it is valid (a malformed one is
/// ignored and the span starts a new trace); returns the parsed parent.
pub fn continue_from(span: &tracing::Span, traceparent: Option<&str>) -> Option<TraceContext> {
    let parent = traceparent.and_then(|v| TraceContext::parse(v).ok());
    if let Some(p) = &parent {
        set_remote_parent(span, p);
    }
    parent
}

/// Set an attribute on `span`'s OpenTelemetry side (for values known only at the end).
pub fn set_attribute(
    span: &tracing::Span,
    key: &'static str,
    value: impl Into<opentelemetry::Value>,
) {
    span.set_attribute(key, value);
}
