//! Fuzz targets: every reader of bytes a client or a NATS peer controls. Each must return an
//! error, never panic, hang or allocate far beyond its input. Under `cargo test` each runs on
//! random inputs for a moment (`BOLERO_RANDOM_TEST_TIME_MS` / `BOLERO_RANDOM_ITERATIONS` make
//! it longer); `tests/fuzz.sh` runs them for a bounded time, with libFuzzer when
//! `cargo bolero` and a nightly toolchain are installed.

use std::path::Path;

use dynamo_kv_router::RadixIndex;
use dynamo_llm::openai::request::{normalize_messages, CommonParams};
use dynamo_protocols::kv_events::{stored_blocks, RouterEvent};
use dynamo_protocols::{EngineOutput, PreprocessedRequest};
use dynamo_runtime::wire::Envelope;
use dynamo_telemetry::TraceContext;

/// OpenAI request bodies: parse, validate, normalize messages.
#[test]
fn openai_request() {
    bolero::check!().for_each(|bytes: &[u8]| {
        if let Ok(r) = serde_json::from_slice::<CommonParams>(bytes) {
            let _ = r.validate(false, true);
            let _ = r.validate(true, false);
            if let Some(m) = &r.messages {
                let _ = normalize_messages(m);
            }
        }
    });
}

/// The same, from inputs that are JSON objects more often than random bytes are.
#[test]
fn openai_request_shaped() {
    const KEYS: [&str; 12] = [
        "model",
        "prompt",
        "messages",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "stream",
        "stream_options",
        "nvext",
        "logprobs",
        "n",
    ];
    bolero::check!()
        .with_type::<Vec<(u8, String, i64)>>()
        .for_each(|fields| {
            let mut obj = serde_json::Map::new();
            for (k, s, n) in fields {
                let key = KEYS[*k as usize % KEYS.len()];
                let v = match n.rem_euclid(5) {
                    0 => serde_json::json!(s),
                    1 => serde_json::json!(n),
                    2 => serde_json::json!([n, s]),
                    3 => serde_json::json!({"role": s, "content": s}),
                    _ => serde_json::json!(*n as f64 / 1e3),
                };
                obj.insert(key.to_string(), v);
            }
            let body = serde_json::to_vec(&obj).unwrap();
            if let Ok(r) = serde_json::from_slice::<CommonParams>(&body) {
                let _ = r.validate(false, false);
                let _ = r.validate(false, true);
                if let Some(m) = &r.messages {
                    let _ = normalize_messages(m);
                }
            }
        });
}

/// W3C `traceparent` (and `tracestate` as text).
#[test]
fn traceparent() {
    bolero::check!().for_each(|bytes: &[u8]| {
        if let Ok(s) = std::str::from_utf8(bytes) {
            if let Ok(c) = TraceContext::parse(s) {
                // What parses must print back to something that parses to the same.
                let again = TraceContext::parse(&c.to_header()).expect("round trip");
                assert_eq!(again.trace_id_hex(), c.trace_id_hex());
            }
        }
    });
}

/// KV events as they arrive on NATS, decoded and applied to the router's index.
#[test]
fn kv_event_decode() {
    bolero::check!().for_each(|bytes: &[u8]| {
        if let Ok(ev) = serde_json::from_slice::<RouterEvent>(bytes) {
            let mut idx = RadixIndex::new();
            let _ = idx.apply((ev.worker_id, ev.event.dp_rank), &ev.event.data);
        }
    });
}

/// The radix index under any sequence of stores, removes, clears and departures (few
/// workers and hashes, so collisions and duplicates are common): no panic, and it empties
/// when every worker leaves.
#[test]
fn kv_index_operations() {
    bolero::check!().for_each(|bytes: &[u8]| {
        let mut idx = RadixIndex::new();
        for op in bytes.chunks_exact(4) {
            let w = ((op[1] % 3) as u64, 0);
            let (h, parent) = ((op[2] % 6) as u64, (op[3] % 7) as u64);
            match op[0] % 5 {
                0 => {
                    let _ = idx.store(w, None, &stored_blocks(&[h], &[h + 100]));
                }
                1 => {
                    let p = (parent < 6).then_some(parent + 100);
                    let _ = idx.store(w, p, &stored_blocks(&[h, h + 1], &[h + 200, h + 300]));
                }
                2 => {
                    idx.remove(w, &[h + 100, h + 200, h + 300]);
                }
                3 => idx.clear(w),
                _ => idx.remove_worker(w),
            }
            let _ = idx.find_matches(&[h, h + 1]);
        }
        for w in 0..3 {
            idx.remove_worker((w, 0));
        }
        assert_eq!(idx.node_count(), 0, "nodes left after every worker left");
    });
}

/// The request-plane envelope of replies, and the request a worker decodes.
#[test]
fn request_plane_envelope() {
    bolero::check!().for_each(|bytes: &[u8]| {
        if let Ok(e) = serde_json::from_slice::<Envelope<EngineOutput>>(bytes) {
            let _ = e.seq();
        }
        let _ = serde_json::from_slice::<PreprocessedRequest>(bytes);
    });
}

/// GGUF metadata from arbitrary bytes (a GGUF header prefix makes deep paths likely).
#[test]
fn gguf_metadata() {
    bolero::check!().for_each(|bytes: &[u8]| {
        let mut input = b"GGUF\x03\x00\x00\x00".to_vec();
        input.extend_from_slice(bytes);
        let _ = dynamo_preprocessor::model::GgufMetadata::read_from(&input[..], Path::new("fuzz"));
        let _ = dynamo_preprocessor::model::GgufMetadata::read_from(bytes, Path::new("fuzz"));
    });
}
