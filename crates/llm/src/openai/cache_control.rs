//! `nvext.cache_control`: a client's request to keep its prompt's KV cached on the worker that
//! serves it, in Anthropic's and Dynamo's shape `{"type": "ephemeral", "ttl": "5m"}` (`ttl`
//! as `"<n>s"`, `"<n>m"`, `"<n>h"` or a number of seconds; 5 minutes when absent). The worker
//! pins the prompt's blocks for the TTL once they are computed.

use dynamo_protocols::MAX_PIN_TTL_SECS;
use serde_json::Value;

use super::error::ApiError;

/// The TTL when `ttl` is absent.
pub const DEFAULT_TTL_SECS: f64 = 300.0;

fn bad(why: impl std::fmt::Display) -> ApiError {
    ApiError::validation(format!("Validation: nvext.cache_control: {why}"))
}

/// The pin TTL in seconds that `v` asks for.
pub fn ttl_secs(v: &Value) -> Result<f64, ApiError> {
    let obj = v
        .as_object()
        .ok_or_else(|| bad("expected an object like {\"type\": \"ephemeral\", \"ttl\": \"5m\"}"))?;
    if let Some(k) = obj.keys().find(|k| *k != "type" && *k != "ttl") {
        return Err(bad(format!("unknown field {k:?}")));
    }
    match obj.get("type").and_then(Value::as_str) {
        Some("ephemeral") => {}
        other => return Err(bad(format!("type must be \"ephemeral\", got {other:?}"))),
    }
    let secs = match obj.get("ttl") {
        None | Some(Value::Null) => DEFAULT_TTL_SECS,
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        Some(Value::String(s)) => parse_duration(s).ok_or_else(|| {
            bad(format!(
                "ttl {s:?} is not a duration like \"30s\", \"5m\" or \"1h\""
            ))
        })?,
        Some(other) => {
            return Err(bad(format!(
                "ttl must be a string or a number, got {other}"
            )))
        }
    };
    if !(secs > 0.0 && secs <= MAX_PIN_TTL_SECS) {
        return Err(bad(format!(
            "ttl must be more than 0 and at most {MAX_PIN_TTL_SECS} seconds, got {secs}"
        )));
    }
    Ok(secs)
}

fn parse_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().last()? {
        (i, 's') => (&s[..i], 1.0),
        (i, 'm') => (&s[..i], 60.0),
        (i, 'h') => (&s[..i], 3600.0),
        _ => (s, 1.0),
    };
    let n: f64 = num.trim().parse().ok()?;
    n.is_finite().then_some(n * unit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes_and_errors() {
        let t = |v: Value| ttl_secs(&v).map_err(|e| e.to_string());
        assert_eq!(t(json!({"type": "ephemeral"})), Ok(300.0));
        assert_eq!(t(json!({"type": "ephemeral", "ttl": "5m"})), Ok(300.0));
        assert_eq!(t(json!({"type": "ephemeral", "ttl": "1h"})), Ok(3600.0));
        assert_eq!(t(json!({"type": "ephemeral", "ttl": "45s"})), Ok(45.0));
        assert_eq!(t(json!({"type": "ephemeral", "ttl": 12})), Ok(12.0));
        for bad in [
            json!("5m"),
            json!({"type": "persistent"}),
            json!({"type": "ephemeral", "ttl": "soon"}),
            json!({"type": "ephemeral", "ttl": "0s"}),
            json!({"type": "ephemeral", "ttl": "48h"}),
            json!({"type": "ephemeral", "ttl": true}),
            json!({"type": "ephemeral", "extra": 1}),
        ] {
            let e = t(bad.clone()).expect_err(&bad.to_string());
            assert!(e.contains("cache_control"), "{e}");
        }
    }
}
