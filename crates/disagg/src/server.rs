//! The prefill worker's bootstrap/transfer server: rooms opened by prefill requests, one TCP
//! connection per decode request that claims a room, blocks streamed as the engine exports
//! them (with a heartbeat while the prompt is still computing), and a reaper that closes rooms
//! whose prefill ended unfinished (its request cancelled) and expires rooms nobody claims, so
//! neither a cancelled request nor an absent decode worker leaves anything behind.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dynamo_engine::disagg::RoomMsg;
use dynamo_engine::metrics::DisaggStage;
use dynamo_engine::Engine;
use dynamo_protocols::disagg::{
    compatibility, TransferDone, TransferHello, TransferStart, TransferWelcome,
};
use dynamo_protocols::BootstrapInfo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::wire::{self, ErrorMsg};
use crate::{skip_blocks, TransferFailure};

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen (`--host`, `--disaggregation-bootstrap-port`).
    pub bind: SocketAddr,
    /// The host decode workers connect to (in the bootstrap info).
    pub advertise_host: String,
    /// Served model name (checked against the decode side's).
    pub model: String,
    /// A room nobody claims within this long expires (its KV is dropped).
    pub room_timeout: Duration,
    /// Bound on each handshake read.
    pub handshake_timeout: Duration,
}

struct Room {
    rx: UnboundedReceiver<RoomMsg>,
    /// What the reaper read off `rx` to see whether the prefill finished, in order: sent
    /// before anything still in `rx`.
    pending: VecDeque<RoomMsg>,
    opened: Instant,
}

impl Room {
    /// The engine dropped its end without the prompt's `Done` (the prefill request was
    /// cancelled): no decode worker can be served from this room.
    fn abandoned(&mut self) -> bool {
        if !self.rx.is_closed() {
            return false;
        }
        while let Ok(m) = self.rx.try_recv() {
            self.pending.push_back(m);
        }
        !self
            .pending
            .iter()
            .any(|m| matches!(m, RoomMsg::Done { .. }))
    }
}

struct Inner {
    cfg: ServerConfig,
    port: u16,
    engine: Arc<Engine>,
    rooms: Mutex<HashMap<u64, Room>>,
    /// Rooms open or being sent (`sglang:num_prefill_inflight_queue_reqs`).
    inflight: std::sync::atomic::AtomicI64,
}

/// A running server; cheap to clone.
#[derive(Clone)]
pub struct TransferServer {
    inner: Arc<Inner>,
}

impl TransferServer {
    /// Bind and start accepting; the reaper runs until the process ends.
    pub async fn start(engine: Arc<Engine>, cfg: ServerConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(cfg.bind).await?;
        let port = listener.local_addr()?.port();
        let inner = Arc::new(Inner {
            cfg,
            port,
            engine,
            rooms: Mutex::new(HashMap::new()),
            inflight: Default::default(),
        });
        let acc = inner.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((sock, peer)) => {
                        let _ = sock.set_nodelay(true);
                        let inner = acc.clone();
                        tokio::spawn(async move {
                            if let Err(e) = inner.serve(sock).await {
                                tracing::warn!(%peer, error = %e, "KV transfer to a decode worker failed");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "transfer server accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        let reap = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let period = Duration::from_millis(250);
            loop {
                tokio::time::sleep(period).await;
                let Some(inner) = reap.upgrade() else { return };
                inner.expire();
            }
        });
        Ok(TransferServer { inner })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// Open a room for a prefill request's exports; returns what the decode side needs.
    pub fn open_room(
        &self,
        room: u64,
        rx: UnboundedReceiver<RoomMsg>,
        room_traceparent: Option<String>,
    ) -> BootstrapInfo {
        let i = &self.inner;
        i.rooms.lock().expect("rooms lock").insert(
            room,
            Room {
                rx,
                pending: VecDeque::new(),
                opened: Instant::now(),
            },
        );
        i.gauge(1);
        BootstrapInfo {
            bootstrap_host: i.cfg.advertise_host.clone(),
            bootstrap_port: i.port,
            bootstrap_room: room,
            room_traceparent,
        }
    }

    /// Rooms not yet claimed.
    pub fn open_rooms(&self) -> usize {
        self.inner.rooms.lock().expect("rooms lock").len()
    }
}

impl Inner {
    fn metrics(&self) -> Option<&dynamo_engine::metrics::DisaggMetrics> {
        self.engine.metrics().map(|m| &m.disagg)
    }

    fn gauge(&self, delta: i64) {
        use std::sync::atomic::Ordering;
        let v = self.inflight.fetch_add(delta, Ordering::Relaxed) + delta;
        if let Some(m) = self.metrics() {
            m.prefill_inflight_queue.set(v);
        }
    }

    fn expire(&self) {
        let timeout = self.cfg.room_timeout;
        let (gone, abandoned): (Vec<u64>, Vec<u64>) = {
            let mut rooms = self.rooms.lock().expect("rooms lock");
            let abandoned: Vec<u64> = rooms
                .iter_mut()
                .filter_map(|(k, r)| r.abandoned().then_some(*k))
                .collect();
            for k in &abandoned {
                rooms.remove(k);
            }
            let old: Vec<u64> = rooms
                .iter()
                .filter(|(_, r)| r.opened.elapsed() >= timeout)
                .map(|(k, _)| *k)
                .collect();
            for k in &old {
                rooms.remove(k);
            }
            (old, abandoned)
        };
        for room in abandoned {
            tracing::debug!(room = %format!("{room:#x}"), "the prefill ended unfinished before a decode worker claimed its room; closed");
            self.gauge(-1);
        }
        for room in gone {
            tracing::warn!(room = %format!("{room:#x}"), timeout_s = timeout.as_secs_f64(), "no decode worker claimed the room; its KV is dropped");
            self.gauge(-1);
            if let Some(m) = self.metrics() {
                m.bootstrap_failed.inc();
            }
        }
    }

    /// Tell the peer why (best effort: it may be gone).
    async fn tell(sock: &mut TcpStream, message: &str) {
        let msg = ErrorMsg {
            message: message.to_string(),
        };
        let _ = wire::write_json(sock, wire::ERROR, &msg).await;
    }

    async fn refuse(sock: &mut TcpStream, message: String) -> TransferFailure {
        Self::tell(sock, &message).await;
        TransferFailure::Incompatible(message)
    }

    async fn read_control(&self, sock: &mut TcpStream) -> Result<(u8, Vec<u8>), TransferFailure> {
        let t = self.cfg.handshake_timeout;
        tokio::time::timeout(t, wire::read_frame(sock))
            .await
            .map_err(|_| TransferFailure::Timeout(t))?
    }

    /// One decode worker's connection: handshake, claim, stream.
    async fn serve(self: Arc<Self>, mut sock: TcpStream) -> Result<(), TransferFailure> {
        let bootstrap_fail = |e: TransferFailure| {
            if let Some(m) = self.metrics() {
                m.bootstrap_failed.inc();
            }
            e
        };
        let (kind, body) = self.read_control(&mut sock).await.map_err(bootstrap_fail)?;
        if kind != wire::HELLO {
            return Err(bootstrap_fail(TransferFailure::Protocol(format!(
                "expected a hello frame, got kind {kind}"
            ))));
        }
        let hello: TransferHello = wire::parse(kind, &body).map_err(bootstrap_fail)?;
        let ours = self.engine.info().kv_layout;
        let mismatch = compatibility(&self.cfg.model, &ours, &hello.model, &hello.layout);
        let welcome = TransferWelcome {
            model: self.cfg.model.clone(),
            layout: ours,
            error: mismatch.clone(),
        };
        wire::write_json(&mut sock, wire::WELCOME, &welcome)
            .await
            .map_err(|e| bootstrap_fail(TransferFailure::io(e)))?;
        if let Some(m) = mismatch {
            // The room stays open: a compatible decode worker may still claim it.
            return Err(bootstrap_fail(TransferFailure::Incompatible(m)));
        }
        let claimed = self.rooms.lock().expect("rooms lock").remove(&hello.room);
        let Some(room) = claimed else {
            let msg = format!(
                "room {:#x} is unknown here or expired (rooms live {:?})",
                hello.room, self.cfg.room_timeout
            );
            return Err(bootstrap_fail(Self::refuse(&mut sock, msg).await));
        };
        let _inflight = InflightGuard(&self);
        let claimed_at = Instant::now();
        if let Some(m) = self.metrics() {
            m.stage(
                DisaggStage::PrefillBootstrap,
                claimed_at.duration_since(room.opened),
            );
        }
        let res = self
            .stream(&mut sock, room.pending, room.rx, hello.room)
            .await;
        match &res {
            Ok((bytes, wire)) => {
                if let Some(m) = self.metrics() {
                    let took = claimed_at.elapsed();
                    m.stage(DisaggStage::PrefillTransferKvCache, took);
                    m.transfer(*bytes, took, *wire);
                }
            }
            Err(_) => {
                if let Some(m) = self.metrics() {
                    m.transfer_failed.inc();
                }
            }
        }
        res.map(|_| ())
    }

    /// Send the room's blocks past the peer's cached prefix, then the first token. Returns
    /// the KV bytes sent and the time spent writing them.
    async fn stream(
        &self,
        sock: &mut TcpStream,
        mut pending: VecDeque<RoomMsg>,
        mut rx: UnboundedReceiver<RoomMsg>,
        room: u64,
    ) -> Result<(usize, Duration), TransferFailure> {
        // The decode side sends the start frame once its engine has reserved the blocks,
        // which may wait for memory: bounded by the room's lifetime, not the handshake's.
        let t = self.cfg.room_timeout;
        let (kind, body) = tokio::time::timeout(t, wire::read_frame(sock))
            .await
            .map_err(|_| TransferFailure::Timeout(t))??;
        if kind != wire::START {
            return Err(TransferFailure::Protocol(format!(
                "expected a start frame, got kind {kind}"
            )));
        }
        let start: TransferStart = wire::parse(kind, &body)?;
        let skip = start.skip_blocks;
        let (mut sent, mut wire) = (0usize, Duration::ZERO);
        let mut beat = tokio::time::interval(Duration::from_secs(1));
        beat.tick().await;
        loop {
            let next = async {
                match pending.pop_front() {
                    Some(m) => Some(m),
                    None => rx.recv().await,
                }
            };
            let msg = tokio::select! {
                m = next => m,
                _ = beat.tick() => {
                    wire::write_frame(sock, wire::HEARTBEAT, &[]).await.map_err(TransferFailure::io)?;
                    continue;
                }
            };
            match msg {
                Some(RoomMsg::Blocks { first, data }) => {
                    let (h, _) = dynamo_protocols::kv_transfer::KvBlocksHeader::decode(&data)
                        .map_err(|e| TransferFailure::Protocol(e.to_string()))?;
                    if first + h.blocks <= skip {
                        continue;
                    }
                    let (first, data) = if first < skip {
                        let cut = skip_blocks(&data, skip - first)
                            .map_err(|e| TransferFailure::Protocol(e.to_string()))?;
                        (skip, cut)
                    } else {
                        (first, data)
                    };
                    let t0 = Instant::now();
                    wire::write_blocks(sock, first, &data)
                        .await
                        .map_err(TransferFailure::io)?;
                    wire += t0.elapsed();
                    sent += data.len() - dynamo_protocols::kv_transfer::HEADER_BYTES;
                    self.engine.frame_pool().put(data);
                }
                Some(RoomMsg::Done {
                    first_token,
                    blocks,
                    logprob,
                }) => {
                    let done = TransferDone {
                        first_token,
                        blocks,
                        logprob,
                    };
                    wire::write_json(sock, wire::DONE, &done)
                        .await
                        .map_err(TransferFailure::io)?;
                    return Ok((sent, wire));
                }
                None => {
                    let msg =
                        format!("the prefill of room {room:#x} ended before its KV was complete");
                    Self::tell(sock, &msg).await;
                    return Err(TransferFailure::Refused(msg));
                }
            }
        }
    }
}

/// Keeps `num_prefill_inflight_queue_reqs` right on every exit of a claimed room.
struct InflightGuard<'a>(&'a Inner);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.gauge(-1);
    }
}
