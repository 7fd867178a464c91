//! How the decode side should read a block frame, measured against loopback TCP in the same
//! run: one connection streaming 1 GiB with blocking 4 MiB reads (what `tests/bench/disagg.sh`
//! calls loopback bandwidth) is the baseline; each strategy then receives 60 frames of one
//! 512-token prefill chunk of SmolLM2-135M (31 blocks, 11.4 MB) from an async writer, timed
//! from the frame header to its last byte as `sglang:kv_transfer_speed_gb_s` times it:
//!   - `async-fresh`: async reads into a freshly allocated, zeroed buffer (the first design);
//!   - `async-reused`: async reads into a buffer that was written before;
//!   - `blocking-reused`: blocking reads on a thread of their own into a reused buffer (the
//!     client's design: `dynamo_engine::disagg::FramePool` plus `spawn_blocking`).
//!
//! `cargo bench -p dynamo-disagg --bench frame_read` prints GB/s and the share of the
//! baseline, three rounds.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const FRAME: usize = 31 * 368_640;
const FRAMES: usize = 60;

/// Loopback TCP: 1 GiB through one connection, blocking 4 MiB writes and reads.
fn loopback() -> f64 {
    const CHUNK: usize = 4 << 20;
    const N: usize = 256;
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let sink = std::thread::spawn(move || {
        let (mut c, _) = l.accept().expect("accept");
        let mut buf = vec![0u8; CHUNK];
        while c.read(&mut buf).expect("read") > 0 {}
    });
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let data = vec![1u8; CHUNK];
    let t0 = Instant::now();
    for _ in 0..N {
        s.write_all(&data).expect("write");
    }
    drop(s);
    sink.join().expect("sink");
    (N * CHUNK) as f64 / t0.elapsed().as_secs_f64() / 1e9
}

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = TcpStream::connect(l.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (b, _) = l.accept().await.expect("accept");
    a.set_nodelay(true).expect("nodelay");
    (a, b)
}

/// Write the frames (5-byte header, payload) from an async task.
fn writer(mut tx: TcpStream) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let data = vec![7u8; FRAME];
        for _ in 0..FRAMES {
            tx.write_all(&[4, 0, 0, 0, 0]).await.expect("head");
            tx.write_all(&data).await.expect("frame");
        }
    })
}

async fn read_async(fresh: bool) -> f64 {
    let (tx, mut rx) = pair().await;
    let w = writer(tx);
    let (mut wire, mut reused) = (Duration::ZERO, vec![0u8; FRAME]);
    for _ in 0..FRAMES {
        let mut head = [0u8; 5];
        rx.read_exact(&mut head).await.expect("head");
        let t0 = Instant::now();
        if fresh {
            let mut buf = vec![0u8; FRAME];
            rx.read_exact(&mut buf).await.expect("frame");
            std::hint::black_box(&buf);
        } else {
            rx.read_exact(&mut reused).await.expect("frame");
        }
        wire += t0.elapsed();
    }
    w.await.expect("writer");
    (FRAMES * FRAME) as f64 / wire.as_secs_f64() / 1e9
}

async fn read_blocking() -> f64 {
    let (tx, rx) = pair().await;
    let rx = rx.into_std().expect("std socket");
    rx.set_nonblocking(false).expect("blocking");
    let w = writer(tx);
    let wire = tokio::task::spawn_blocking(move || {
        let (mut rx, mut wire, mut buf) = (rx, Duration::ZERO, vec![0u8; FRAME]);
        for _ in 0..FRAMES {
            let mut head = [0u8; 5];
            rx.read_exact(&mut head).expect("head");
            let t0 = Instant::now();
            rx.read_exact(&mut buf).expect("frame");
            wire += t0.elapsed();
        }
        wire
    })
    .await
    .expect("reader");
    w.await.expect("writer");
    (FRAMES * FRAME) as f64 / wire.as_secs_f64() / 1e9
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("| round | loopback GB/s | async-fresh | async-reused | blocking-reused |");
    println!("|---|---|---|---|---|");
    for round in 1..=3 {
        let base = loopback();
        let (fresh, reused, blocking) = rt.block_on(async {
            (
                read_async(true).await,
                read_async(false).await,
                read_blocking().await,
            )
        });
        let cell = |g: f64| format!("{g:.2} ({:.0} %)", 100.0 * g / base);
        println!(
            "| {round} | {base:.2} | {} | {} | {} |",
            cell(fresh),
            cell(reused),
            cell(blocking)
        );
    }
}
