//! W3C Trace Context `traceparent` header: `00-{32 hex trace id}-{16 hex parent id}-{2 hex flags}`.
//! Malformed input is an error, never a panic; callers then start a new root.

use rand::RngCore;

/// A parsed or freshly made trace context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
    pub flags: u8,
}

/// Why a `traceparent` value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceParentError {
    #[error("traceparent must have 4 dash-separated fields")]
    Shape,
    #[error("unsupported traceparent version")]
    Version,
    #[error("traceparent field is not lowercase hex of the right length")]
    Hex,
    #[error("traceparent trace id or parent id is all zeros")]
    Zero,
}

fn parse_hex(s: &str, len: usize) -> Result<u128, TraceParentError> {
    if s.len() != len
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(TraceParentError::Hex);
    }
    u128::from_str_radix(s, 16).map_err(|_| TraceParentError::Hex)
}

impl TraceContext {
    /// A new root context with random ids, sampled.
    pub fn new_root() -> Self {
        let mut rng = rand::rng();
        let mut trace_id = 0;
        while trace_id == 0 {
            trace_id = ((rng.next_u64() as u128) << 64) | rng.next_u64() as u128;
        }
        TraceContext {
            trace_id,
            span_id: new_span_id(),
            flags: 1,
        }
    }

    /// A child of this context: same trace, new span id.
    pub fn child(&self) -> Self {
        TraceContext {
            span_id: new_span_id(),
            ..*self
        }
    }

    /// Parse a `traceparent` header value.
    pub fn parse(value: &str) -> Result<Self, TraceParentError> {
        let parts: Vec<&str> = value.trim().split('-').collect();
        if parts.len() < 4 {
            return Err(TraceParentError::Shape);
        }
        let version = parse_hex(parts[0], 2)?;
        if version == 0xff || (version == 0 && parts.len() != 4) {
            return Err(TraceParentError::Version);
        }
        let trace_id = parse_hex(parts[1], 32)?;
        let span_id = parse_hex(parts[2], 16)? as u64;
        let flags = parse_hex(parts[3], 2)? as u8;
        if trace_id == 0 || span_id == 0 {
            return Err(TraceParentError::Zero);
        }
        Ok(TraceContext {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The `traceparent` header value for this context.
    pub fn to_header(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

fn new_span_id() -> u64 {
    let mut rng = rand::rng();
    loop {
        let v = rng.next_u64();
        if v != 0 {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, ok: bool) {
        assert_eq!(TraceContext::parse(input).is_ok(), ok, "{input}");
    }

    #[test]
    fn parses_and_rejects() {
        check(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            true,
        );
        check(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            false,
        );
        check(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            false,
        );
        check(
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            false,
        );
        check(
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            false,
        );
        check("garbage", false);
        check("", false);
        check("00-é-é-é", false);
    }

    #[test]
    fn round_trip_and_child() {
        let root = TraceContext::new_root();
        let parsed = TraceContext::parse(&root.to_header()).unwrap();
        assert_eq!(root, parsed);
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
    }
}
