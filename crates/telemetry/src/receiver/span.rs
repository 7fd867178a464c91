//! One received span, flattened from OTLP protobuf into plain fields.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;
use serde::Serialize;

/// A span as the receiver stores it (ids as lowercase hex; attributes as JSON values).
#[derive(Debug, Clone, Serialize)]
pub struct Span {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root.
    pub parent_span_id: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// Names of the span's events, in order, with their attributes.
    pub events: Vec<(String, BTreeMap<String, serde_json::Value>)>,
    /// Span ids this span links to.
    pub links: Vec<String>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn value(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> serde_json::Value {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone().into(),
        Some(AnyValue::BoolValue(b)) => (*b).into(),
        Some(AnyValue::IntValue(i)) => (*i).into(),
        Some(AnyValue::DoubleValue(d)) => (*d).into(),
        Some(AnyValue::ArrayValue(a)) => a
            .values
            .iter()
            .map(|v| value(&Some(v.clone())))
            .collect::<Vec<_>>()
            .into(),
        Some(AnyValue::BytesValue(b)) => hex(b).into(),
        Some(AnyValue::KvlistValue(kv)) => attrs(&kv.values).into_iter().collect(),
        None => serde_json::Value::Null,
    }
}

pub(crate) fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, serde_json::Value> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value(&kv.value)))
        .collect()
}

impl Span {
    pub(crate) fn from_proto(service: &str, s: &ProtoSpan) -> Self {
        Span {
            service: service.to_string(),
            name: s.name.clone(),
            trace_id: hex(&s.trace_id),
            span_id: hex(&s.span_id),
            parent_span_id: hex(&s.parent_span_id),
            start_ns: s.start_time_unix_nano,
            end_ns: s.end_time_unix_nano,
            attributes: attrs(&s.attributes),
            events: s
                .events
                .iter()
                .map(|e| (e.name.clone(), attrs(&e.attributes)))
                .collect(),
            links: s.links.iter().map(|l| hex(&l.span_id)).collect(),
        }
    }

    pub fn duration_ms(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e6
    }

    /// A string attribute, if present.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(|v| v.as_str())
    }
}
