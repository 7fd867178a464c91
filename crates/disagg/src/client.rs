//! The decode worker's side of a transfer: connect to the prefill worker's bootstrap port,
//! agree on model and KV layout, wait for the local engine's reservation, ask for the blocks
//! it does not cache, and write each block frame into the engine as it arrives. The
//! handshake is async; the block frames are read on a blocking thread (see [`receive`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::io::Read as _;

use dynamo_engine::disagg::{FramePool, KvImport};
use dynamo_engine::metrics::DisaggStage;
use dynamo_engine::Engine;
use dynamo_protocols::disagg::{
    compatibility, TransferDone, TransferHello, TransferStart, TransferWelcome,
};
use dynamo_protocols::kv_transfer::HEADER_BYTES;
use dynamo_protocols::BootstrapInfo;
use tokio::net::TcpStream;

use crate::wire;
use crate::TransferFailure;

/// How the client behaves.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Served model name (the prefill side must serve the same).
    pub model: String,
    pub connect_timeout: Duration,
    /// Longest silence from the prefill side (it sends a heartbeat every second).
    pub idle_timeout: Duration,
}

impl FetchConfig {
    pub fn new(model: impl Into<String>) -> Self {
        FetchConfig {
            model: model.into(),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Fetch the KV of `info`'s room into `import`. On failure the import is failed with a
/// message naming the prefill worker and the room (the request ends with it), the matching
/// failure counter counts it, and the error is returned.
pub async fn fetch(
    engine: Arc<Engine>,
    info: BootstrapInfo,
    mut import: KvImport,
    cfg: FetchConfig,
) -> Result<(), TransferFailure> {
    let metrics = engine.metrics().map(|m| &m.disagg);
    let peer = format!("{}:{}", info.bootstrap_host, info.bootstrap_port);
    let describe = |e: &TransferFailure| {
        format!(
            "KV transfer from prefill worker {peer} (room {:#x}) failed: {e}",
            info.bootstrap_room
        )
    };
    let t0 = Instant::now();
    let mut sock = match bootstrap(&engine, &info, &peer, &cfg).await {
        Ok(s) => s,
        Err(e) => {
            if let Some(m) = metrics {
                m.bootstrap_failed.inc();
            }
            import.fail(describe(&e));
            return Err(e);
        }
    };
    if let Some(m) = metrics {
        let took = t0.elapsed();
        m.stage(DisaggStage::DecodeBootstrap, took);
        m.bootstrap_ms.set(took.as_secs_f64() * 1e3);
    }
    let received = match start(&mut sock, &mut import).await {
        Ok(()) => receive(sock, import, engine.frame_pool().clone(), cfg.idle_timeout).await,
        Err(e) => (Err(e), Some(import)),
    };
    match received {
        (Ok(r), Some(import)) => {
            if let Some(m) = metrics {
                m.transfer(r.bytes, r.took, r.wire);
            }
            import
                .finish(r.first_token, r.logprob)
                .map_err(|_| TransferFailure::EngineStopped)
        }
        (Err(e), import) => {
            if let Some(m) = metrics {
                m.transfer_failed.inc();
            }
            if let Some(import) = import {
                import.fail(describe(&e));
            }
            Err(e)
        }
        (Ok(_), None) => unreachable!("a completed transfer returns its import"),
    }
}

/// Connect and agree on model and layout.
async fn bootstrap(
    engine: &Engine,
    info: &BootstrapInfo,
    peer: &str,
    cfg: &FetchConfig,
) -> Result<TcpStream, TransferFailure> {
    let mut sock = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(peer))
        .await
        .map_err(|_| {
            TransferFailure::Connect(format!("no answer within {:?}", cfg.connect_timeout))
        })?
        .map_err(|e| TransferFailure::Connect(e.to_string()))?;
    let _ = sock.set_nodelay(true);
    let ours = engine.info().kv_layout;
    let hello = TransferHello {
        room: info.bootstrap_room,
        model: cfg.model.clone(),
        layout: ours,
    };
    wire::write_json(&mut sock, wire::HELLO, &hello)
        .await
        .map_err(TransferFailure::io)?;
    let (kind, body) = read(&mut sock, cfg.idle_timeout).await?;
    match kind {
        wire::WELCOME => {}
        wire::ERROR => return Err(wire::remote_error(&body)),
        k => {
            return Err(TransferFailure::Protocol(format!(
                "expected a welcome frame, got kind {k}"
            )))
        }
    }
    let w: TransferWelcome = wire::parse(kind, &body)?;
    if let Some(e) = w.error {
        return Err(TransferFailure::Refused(format!(
            "the prefill worker refused: {e}"
        )));
    }
    if let Some(e) = compatibility(&cfg.model, &ours, &w.model, &w.layout) {
        return Err(TransferFailure::Incompatible(e));
    }
    Ok(sock)
}

async fn read(sock: &mut TcpStream, idle: Duration) -> Result<(u8, Vec<u8>), TransferFailure> {
    tokio::time::timeout(idle, wire::read_frame(sock))
        .await
        .map_err(|_| TransferFailure::Timeout(idle))?
}

/// Wait for the engine's reservation and tell the peer which blocks to skip.
async fn start(sock: &mut TcpStream, import: &mut KvImport) -> Result<(), TransferFailure> {
    let skip = import
        .reserved()
        .await
        .map_err(|_| TransferFailure::EngineStopped)?;
    wire::write_json(sock, wire::START, &TransferStart { skip_blocks: skip })
        .await
        .map_err(TransferFailure::io)
}

/// A finished transfer: KV bytes received (headers excluded), the time since the start
/// frame, the time the block payloads spent on the wire, and the prefill side's token.
struct Received {
    bytes: usize,
    took: Duration,
    wire: Duration,
    first_token: u32,
    logprob: Option<dynamo_protocols::TokenLogprob>,
}

/// Shuts the socket down when the fetch is dropped mid-transfer (the client cancelled), so
/// the receiving thread's read returns at once and the import is abandoned.
struct ShutdownOnDrop(Option<std::net::TcpStream>);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Receive block frames until the prefill side's first token arrives, on a blocking thread:
/// a multi-megabyte frame read with plain blocking reads into a reused buffer arrives at
/// loopback speed, where the async reactor's wake-up per socket-buffer fill costs a third or
/// more of it. Returns the import unless it was dropped (on a cancel, which aborts it).
async fn receive(
    sock: TcpStream,
    import: KvImport,
    pool: FramePool,
    idle: Duration,
) -> (Result<Received, TransferFailure>, Option<KvImport>) {
    let setup = sock.into_std().and_then(|s| {
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(idle))?;
        let guard = s.try_clone()?;
        Ok((s, guard))
    });
    let (mut sock, guard) = match setup {
        Ok(v) => v,
        Err(e) => return (Err(TransferFailure::io(e)), Some(import)),
    };
    let mut guard = ShutdownOnDrop(Some(guard));
    let t0 = Instant::now();
    let job = tokio::task::spawn_blocking(move || {
        let r = receive_blocking(&mut sock, &import, &pool, idle, t0);
        (r, Some(import))
    });
    let out = match job.await {
        Ok(out) => out,
        Err(e) => (
            Err(TransferFailure::Protocol(format!(
                "the receiving thread failed: {e}"
            ))),
            None,
        ),
    };
    guard.0 = None;
    out
}

fn receive_blocking(
    sock: &mut std::net::TcpStream,
    import: &KvImport,
    pool: &FramePool,
    idle: Duration,
    t0: Instant,
) -> Result<Received, TransferFailure> {
    let fail = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            TransferFailure::Timeout(idle)
        }
        _ => TransferFailure::io(e),
    };
    let (mut bytes, mut wire) = (0usize, Duration::ZERO);
    loop {
        let mut head = [0u8; 5];
        sock.read_exact(&mut head).map_err(fail)?;
        let (kind, len) = wire::check_header(head)?;
        if kind == wire::BLOCKS {
            if len < 4 + HEADER_BYTES {
                return Err(TransferFailure::Protocol("short block frame".into()));
            }
            let mut first = [0u8; 4];
            sock.read_exact(&mut first).map_err(fail)?;
            let mut buf = pool.take(len - 4);
            let t = Instant::now();
            sock.read_exact(&mut buf).map_err(fail)?;
            wire += t.elapsed();
            bytes += buf.len() - HEADER_BYTES;
            import
                .write(u32::from_le_bytes(first), buf)
                .map_err(|_| TransferFailure::EngineStopped)?;
            continue;
        }
        let mut body = vec![0u8; len];
        sock.read_exact(&mut body).map_err(fail)?;
        match kind {
            wire::HEARTBEAT => {}
            wire::DONE => {
                let d: TransferDone = wire::parse(kind, &body)?;
                if d.blocks != import.prompt_blocks {
                    return Err(TransferFailure::Protocol(format!(
                        "the prefill side has {} prompt blocks, this side {}",
                        d.blocks, import.prompt_blocks
                    )));
                }
                return Ok(Received {
                    bytes,
                    took: t0.elapsed(),
                    wire,
                    first_token: d.first_token,
                    logprob: d.logprob,
                });
            }
            wire::ERROR => return Err(wire::remote_error(&body)),
            k => {
                return Err(TransferFailure::Protocol(format!(
                    "unexpected frame kind {k} during the transfer"
                )))
            }
        }
    }
}
