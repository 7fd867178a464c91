//! Engine spans (`--enable-trace`, service `sglang`), in SGLang's shape: `Bootstrap Room 0x0`
//! (child of the caller's `traceparent`) → `" Req <rid[:8]>"` → one span per thread
//! (`Scheduler [TP 0] (host:… | pid:…)`, `Tokenizer (host:… | pid:…)`) → stage slices
//! (`request_process`, `prefill_forward` with `chunked_prefill` children when chunked,
//! `decode_loop` per decode iteration with `bid`/`batch_size` events, `tokenize`, `dispatch`),
//! each slice linked to the previous slice of its thread. The scheduler only appends
//! timestamps to the request's [`SeqTrace`]; spans are built on the `engine-trace` thread when
//! the request ends, so exporters never run inside the forward loop.

use dynamo_protocols::names::spans;
use std::sync::mpsc;
use std::time::{Instant, SystemTime};

use dynamo_telemetry::TraceContext;
use opentelemetry::trace::{Link, Span as _, SpanContext, SpanKind, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};

/// What the caller hands the engine for one request.
#[derive(Debug, Clone)]
pub struct TraceRequest {
    /// The caller's span (the worker's `handle_payload`).
    pub parent: TraceContext,
    /// Request id; Dynamo uses the trace id.
    pub rid: String,
    /// Which side of a bootstrap room the request is.
    pub room: RoomTrace,
}

/// The request's `Bootstrap Room` span and role prefix.
#[derive(Debug, Clone, Default)]
pub enum RoomTrace {
    /// Aggregated: its own `Bootstrap Room 0x0`, request span `" Req …"`.
    #[default]
    Unified,
    /// Prefill side: opens `Bootstrap Room 0x<room>` with span id `span_id` (handed to the
    /// decode side beforehand), request span `"prefill Req …"`.
    Prefill { room: u64, span_id: u64 },
    /// Decode side: `"decode Req …"` under the prefill side's room span, or under its own
    /// room span when the prefill side does not trace.
    Decode {
        room: u64,
        room_span: Option<TraceContext>,
    },
}

impl RoomTrace {
    fn role(&self) -> &'static str {
        match self {
            RoomTrace::Unified => "",
            RoomTrace::Prefill { .. } => "prefill",
            RoomTrace::Decode { .. } => "decode",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Slice {
    RequestProcess,
    PrefillForward,
    ChunkedPrefill,
    Decode { bid: u32, batch: u32 },
}

/// Timestamps of one request, appended by the scheduler.
pub(crate) struct SeqTrace {
    pub req: TraceRequest,
    pub submitted: Instant,
    pub received: Option<Instant>,
    pub slices: Vec<(Slice, Instant, Instant)>,
    pub first_token: Option<Instant>,
    pub admitted: Option<Instant>,
    pub max_tokens: usize,
    pub temperature: f64,
    pub top_p: f64,
}

impl SeqTrace {
    pub(crate) fn new(req: TraceRequest, max_tokens: usize, temperature: f64, top_p: f64) -> Self {
        SeqTrace {
            req,
            submitted: Instant::now(),
            received: None,
            slices: Vec::new(),
            first_token: None,
            admitted: None,
            max_tokens,
            temperature,
            top_p,
        }
    }
}

/// A finished request's record plus its outcome.
pub(crate) struct Finished {
    pub trace: SeqTrace,
    pub end: Instant,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// The `engine-trace` thread's handle.
pub(crate) struct TraceSink {
    tx: mpsc::Sender<Finished>,
}

impl TraceSink {
    /// Start the thread that turns finished requests into spans of `provider`.
    pub(crate) fn start(provider: SdkTracerProvider, model: String) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Finished>();
        use opentelemetry::trace::TracerProvider as _;
        let tracer = provider.tracer("sglang server");
        let host = host_id();
        let pid = std::process::id();
        let base = (SystemTime::now(), Instant::now());
        std::thread::Builder::new()
            .name("engine-trace".into())
            .spawn(move || {
                let b = Builder {
                    tracer,
                    host,
                    pid,
                    base,
                    model,
                };
                while let Ok(f) = rx.recv() {
                    b.build(f);
                }
                let _ = provider.force_flush();
            })?;
        Ok(TraceSink { tx })
    }

    pub(crate) fn send(&self, f: Finished) {
        let _ = self.tx.send(f);
    }
}

fn host_id() -> String {
    let id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let id = id.trim();
    if id.len() >= 8 {
        id[..8].to_string()
    } else {
        format!("{:08x}", rand_u32())
    }
}

fn rand_u32() -> u32 {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    (t.subsec_nanos() ^ std::process::id().rotate_left(16)) | 1
}

struct Builder {
    tracer: Tracer,
    host: String,
    pid: u32,
    base: (SystemTime, Instant),
    model: String,
}

impl Builder {
    fn wall(&self, t: Instant) -> SystemTime {
        match t.checked_duration_since(self.base.1) {
            Some(d) => self.base.0 + d,
            None => self.base.0 - self.base.1.duration_since(t),
        }
    }

    /// Start a span under `parent` at `start`; returns it with its context.
    fn open(
        &self,
        name: String,
        parent: &SpanContext,
        start: Instant,
        attrs: Vec<KeyValue>,
        links: Vec<Link>,
    ) -> (opentelemetry_sdk::trace::Span, SpanContext) {
        self.open_as(name, parent, start, attrs, links, None)
    }

    /// [`Builder::open`] with a chosen span id.
    fn open_as(
        &self,
        name: String,
        parent: &SpanContext,
        start: Instant,
        attrs: Vec<KeyValue>,
        links: Vec<Link>,
        span_id: Option<u64>,
    ) -> (opentelemetry_sdk::trace::Span, SpanContext) {
        let cx = Context::new().with_remote_span_context(parent.clone());
        let mut b = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(self.wall(start))
            .with_attributes(attrs)
            .with_links(links);
        if let Some(id) = span_id {
            b = b.with_span_id(opentelemetry::trace::SpanId::from_bytes(id.to_be_bytes()));
        }
        let span = self.tracer.build_with_context(b, &cx);
        let sc = span.span_context().clone();
        (span, sc)
    }

    fn build(&self, f: Finished) {
        let t = &f.trace;
        let parent = dynamo_telemetry::context::remote_span_context(&t.req.parent);
        let (start, end) = (t.submitted, f.end);
        let (mut room, room_cx) = match &t.req.room {
            RoomTrace::Decode {
                room_span: Some(c), ..
            } => (None, dynamo_telemetry::context::remote_span_context(c)),
            r => {
                let (no, id) = match *r {
                    RoomTrace::Prefill { room, span_id } => (room, Some(span_id)),
                    RoomTrace::Decode { room, .. } => (room, None),
                    RoomTrace::Unified => (0, None),
                };
                let hex = format!("{no:#x}");
                let (s, c) = self.open_as(
                    format!("{}{hex}", spans::BOOTSTRAP_ROOM_PREFIX),
                    &parent,
                    start,
                    vec![KeyValue::new("bootstrap_room", hex)],
                    vec![],
                    id,
                );
                (Some(s), c)
            }
        };
        let short: String = t.req.rid.chars().take(8).collect();
        let secs = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64();
        let mut req_attrs = vec![
            KeyValue::new("rid", t.req.rid.clone()),
            KeyValue::new("gen_ai.request.id", t.req.rid.clone()),
            KeyValue::new("gen_ai.usage.prompt_tokens", f.prompt_tokens as i64),
            KeyValue::new("gen_ai.usage.completion_tokens", f.completion_tokens as i64),
            KeyValue::new("gen_ai.latency.e2e", secs(start, end)),
            KeyValue::new("gen_ai.request.max_tokens", t.max_tokens as i64),
            KeyValue::new("gen_ai.request.temperature", t.temperature),
            KeyValue::new("gen_ai.request.top_p", t.top_p),
            KeyValue::new("gen_ai.response.model", self.model.clone()),
        ];
        if let Some(ft) = t.first_token {
            req_attrs.push(KeyValue::new(
                "gen_ai.latency.time_to_first_token",
                secs(start, ft),
            ));
        }
        if let Some(a) = t.admitted {
            req_attrs.push(KeyValue::new(
                "gen_ai.latency.time_in_queue",
                secs(t.received.unwrap_or(start), a),
            ));
        }
        let (mut req, req_cx) = self.open(
            format!("{}{}{short}", t.req.room.role(), spans::REQ_PREFIX),
            &room_cx,
            start,
            req_attrs,
            vec![],
        );

        // Tokenizer thread: token ids arrive tokenized, so `tokenize` is instantaneous;
        // `dispatch` runs until the scheduler thread takes the request.
        let received = t.received.unwrap_or(start);
        let thread_attrs = |label: &str, tp: bool| {
            let mut v = vec![
                KeyValue::new("host_id", self.host.clone()),
                KeyValue::new("pid", i64::from(self.pid)),
                KeyValue::new("thread_label", label.to_string()),
            ];
            if tp {
                v.push(KeyValue::new("tp_rank", 0i64));
            }
            v
        };
        let (mut tok, tok_cx) = self.open(
            format!(
                "{} (host:{} | pid:{})",
                spans::TOKENIZER_THREAD,
                self.host,
                self.pid
            ),
            &req_cx,
            start,
            thread_attrs("Tokenizer", false),
            vec![],
        );
        let (mut s1, c1) = self.open(spans::TOKENIZE.into(), &tok_cx, start, vec![], vec![]);
        s1.end_with_timestamp(self.wall(start));
        let (mut s2, _) = self.open(
            spans::DISPATCH.into(),
            &tok_cx,
            start,
            vec![],
            vec![Link::with_context(c1)],
        );
        s2.end_with_timestamp(self.wall(received));
        tok.end_with_timestamp(self.wall(received));

        // Scheduler thread and its slices, each linked to the previous one.
        let (mut sched, sched_cx) = self.open(
            format!(
                "{} (host:{} | pid:{})",
                spans::SCHEDULER_THREAD,
                self.host,
                self.pid
            ),
            &req_cx,
            received,
            thread_attrs("Scheduler", true),
            vec![],
        );
        // By start time; `prefill_forward` (from admission) opens before its chunks, which
        // nest under it, and closes when the prompt is done.
        let mut slices = t.slices.clone();
        slices.sort_by_key(|&(k, a, _)| (a, !matches!(k, Slice::PrefillForward)));
        let mut prev: Option<SpanContext> = None;
        let mut prefill: Option<(opentelemetry_sdk::trace::Span, SpanContext, Instant)> = None;
        for (kind, a, b) in slices {
            let links: Vec<Link> = prev.iter().map(|c| Link::with_context(c.clone())).collect();
            if !matches!(kind, Slice::ChunkedPrefill) {
                if let Some((mut s, _, e)) = prefill.take() {
                    s.end_with_timestamp(self.wall(e));
                }
            }
            let (name, parent) = match kind {
                Slice::RequestProcess => (spans::REQUEST_PROCESS, &sched_cx),
                Slice::PrefillForward => (spans::PREFILL_FORWARD, &sched_cx),
                Slice::ChunkedPrefill => (
                    spans::CHUNKED_PREFILL,
                    prefill.as_ref().map_or(&sched_cx, |(_, c, _)| c),
                ),
                Slice::Decode { .. } => (spans::DECODE_LOOP, &sched_cx),
            };
            let (mut s, c) = self.open(name.into(), parent, a, vec![], links);
            prev = Some(c.clone());
            match kind {
                Slice::PrefillForward => prefill = Some((s, c, b)),
                Slice::Decode { bid, batch } => {
                    s.add_event_with_timestamp(
                        "batch",
                        self.wall(a),
                        vec![
                            KeyValue::new("bid", format!("{bid:08x}")),
                            KeyValue::new("batch_size", i64::from(batch)),
                        ],
                    );
                    s.end_with_timestamp(self.wall(b));
                }
                _ => s.end_with_timestamp(self.wall(b)),
            }
        }
        if let Some((mut s, _, e)) = prefill.take() {
            s.end_with_timestamp(self.wall(e));
        }
        sched.end_with_timestamp(self.wall(end));
        req.end_with_timestamp(self.wall(end));
        if let Some(room) = room.as_mut() {
            room.end_with_timestamp(self.wall(end));
        }
    }
}

/// Tracing settings of the engine.
#[derive(Debug, Clone)]
pub struct TraceConfig {
    /// The `sglang` provider (built by the caller inside its tokio runtime).
    pub provider: SdkTracerProvider,
    /// `gen_ai.response.model`: the served model name.
    pub model: String,
}
