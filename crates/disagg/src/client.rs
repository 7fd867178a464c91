//! The decode worker's side of a transfer: connect to the prefill worker's bootstrap port,
//! agree on model and KV layout, wait for the local engine's reservation, ask for the blocks
//! it does not cache, and write each block frame into the engine as it arrives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dynamo_engine::disagg::KvImport;
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
    let res = receive(&mut sock, &mut import, &cfg).await;
    match res {
        Ok((bytes, took, wire, first_token)) => {
            if let Some(m) = metrics {
                m.transfer(bytes, took, wire);
            }
            import
                .finish(first_token)
                .map_err(|_| TransferFailure::EngineStopped)
        }
        Err(e) => {
            if let Some(m) = metrics {
                m.transfer_failed.inc();
            }
            import.fail(describe(&e));
            Err(e)
        }
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

/// Reserve, start, and write blocks until the prefill side's first token arrives. Returns
/// the KV bytes received (headers excluded), the time since the start frame, the time the
/// block payloads spent on the wire, and the token.
async fn receive(
    sock: &mut TcpStream,
    import: &mut KvImport,
    cfg: &FetchConfig,
) -> Result<(usize, Duration, Duration, u32), TransferFailure> {
    let skip = import
        .reserved()
        .await
        .map_err(|_| TransferFailure::EngineStopped)?;
    wire::write_json(sock, wire::START, &TransferStart { skip_blocks: skip })
        .await
        .map_err(TransferFailure::io)?;
    let t0 = Instant::now();
    let (mut bytes, mut wire) = (0usize, Duration::ZERO);
    loop {
        let idle = cfg.idle_timeout;
        let (kind, body, took) = tokio::time::timeout(idle, wire::read_frame_timed(sock))
            .await
            .map_err(|_| TransferFailure::Timeout(idle))??;
        match kind {
            wire::HEARTBEAT => {}
            wire::BLOCKS => {
                if body.len() < 4 {
                    return Err(TransferFailure::Protocol("short block frame".into()));
                }
                let first = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
                bytes += (body.len() - 4).saturating_sub(HEADER_BYTES);
                wire += took;
                import
                    .write(first, body[4..].to_vec())
                    .map_err(|_| TransferFailure::EngineStopped)?;
            }
            wire::DONE => {
                let d: TransferDone = wire::parse(kind, &body)?;
                if d.blocks != import.prompt_blocks {
                    return Err(TransferFailure::Protocol(format!(
                        "the prefill side has {} prompt blocks, this side {}",
                        d.blocks, import.prompt_blocks
                    )));
                }
                return Ok((bytes, t0.elapsed(), wire, d.first_token));
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
