//! The JSONL log line (`DYN_LOGGING_JSONL`): one object per event with `time` (RFC 3339 UTC,
//! microseconds), `level`, `target`, `message`, `file`, `line`, the event's other fields, and
//! for the current span `span_name`, `trace_id`, `span_id` and the fields of the span and its
//! ancestors (innermost wins).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OtelData;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter; pair it with `tracing_subscriber::fmt::format::JsonFields` so span
/// fields are stored as JSON.
pub struct JsonlFormat;

struct Visitor<'a>(&'a mut Map<String, Value>);

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

/// `2025-10-31T21:06:45.397194Z`.
pub fn rfc3339_micros(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

impl<S, N> FormatEvent<S, N> for JsonlFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut obj = Map::new();
        obj.insert("time".into(), rfc3339_micros(SystemTime::now()).into());
        obj.insert("level".into(), meta.level().as_str().into());
        obj.insert("target".into(), meta.target().into());
        let mut fields = Map::new();
        event.record(&mut Visitor(&mut fields));
        obj.insert(
            "message".into(),
            fields
                .remove("message")
                .unwrap_or(Value::String(String::new())),
        );
        if let Some(f) = meta.file() {
            obj.insert("file".into(), f.into());
        }
        if let Some(l) = meta.line() {
            obj.insert("line".into(), l.into());
        }
        let current = ctx.lookup_current();
        if current.is_none() {
            // The span may be one the log filter hides (e.g. `DYN_LOG=warn` and an info
            // span); its ids still belong on the line.
            let span = tracing::Span::current();
            if let Some(meta) = span.metadata() {
                obj.insert("span_name".into(), meta.name().into());
                if let Some(c) = crate::context::span_context(&span) {
                    obj.insert("trace_id".into(), c.trace_id_hex().into());
                    obj.insert("span_id".into(), format!("{:016x}", c.span_id).into());
                }
            }
        }
        if let Some(span) = current {
            obj.insert("span_name".into(), span.name().into());
            // Fields of the root first, so inner spans override.
            for s in span.scope().from_root() {
                let ext = s.extensions();
                if let Some(f) = ext.get::<FormattedFields<N>>() {
                    if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(f) {
                        obj.extend(m);
                    }
                }
            }
            let ext = span.extensions();
            if let Some(otel) = ext.get::<OtelData>() {
                if let Some(t) = otel.trace_id() {
                    obj.insert("trace_id".into(), t.to_string().into());
                }
                if let Some(s) = otel.span_id() {
                    obj.insert("span_id".into(), s.to_string().into());
                }
            }
        }
        obj.extend(fields);
        writeln!(writer, "{}", Value::Object(obj))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        let t = UNIX_EPOCH + Duration::new(1_761_944_805, 397_194_000);
        assert_eq!(rfc3339_micros(t), "2025-10-31T21:06:45.397194Z");
        assert_eq!(rfc3339_micros(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_micros(leap), "2000-02-29T00:00:00.000000Z");
    }
}
