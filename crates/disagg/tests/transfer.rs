//! Prefill and decode engines in one process on the default model, joined by the real
//! transfer server and client over loopback TCP: greedy output equals an aggregated engine's,
//! token for token; the prefill side exports per finished chunk; the decode side pulls only
//! the blocks it does not cache; a layout mismatch and a lost connection end the request
//! with a clear error, counted, with the reserved blocks freed; unclaimed rooms expire.

use std::sync::Arc;
use std::time::Duration;

use dynamo_disagg::{fetch, FetchConfig, ServerConfig, TransferServer};
use dynamo_engine::disagg::RoomMsg;
use dynamo_engine::metrics::MetricsConfig;
use dynamo_engine::{Engine, EngineConfig};
use dynamo_protocols::kv_transfer::KvBlocksHeader;
use dynamo_protocols::{
    EngineOutput, FinishReason, PreprocessedRequest, SamplingOptions, StopConditions,
};
use tokio::sync::mpsc::UnboundedReceiver;

fn engine(page: usize, chunk: usize) -> Arc<Engine> {
    let mut cfg = EngineConfig::new(dynamo_test_support::default_model());
    cfg.threads = 1;
    cfg.page_size = page;
    cfg.chunked_prefill_size = chunk;
    cfg.max_total_tokens = Some(4096);
    cfg.metrics = Some(MetricsConfig::new("m"));
    Arc::new(Engine::load(cfg).unwrap())
}

fn request(prompt: &[u32], max: u32) -> PreprocessedRequest {
    PreprocessedRequest {
        sampling: SamplingOptions {
            temperature: Some(0.0),
            ..Default::default()
        },
        stop: StopConditions {
            max_tokens: Some(max),
            ignore_eos: true,
            ..Default::default()
        },
        ..PreprocessedRequest::new("m", prompt.to_vec())
    }
}

/// A prompt of `n` tokens from a fixed pseudo-random walk over the vocabulary.
fn prompt(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 200 + (i * 7919 + seed * 104_729) % 40_000)
        .collect()
}

async fn tokens(mut rx: UnboundedReceiver<EngineOutput>) -> Result<Vec<u32>, ()> {
    let mut v = Vec::new();
    while let Some(o) = rx.recv().await {
        v.extend(o.token_ids);
        if let Some(r) = o.finish_reason {
            assert_eq!(r, FinishReason::Length);
            return Ok(v);
        }
    }
    Err(())
}

async fn server(engine: &Arc<Engine>, timeout: Duration) -> TransferServer {
    TransferServer::start(
        engine.clone(),
        ServerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            advertise_host: "127.0.0.1".into(),
            model: "m".into(),
            room_timeout: timeout,
            handshake_timeout: Duration::from_secs(5),
        },
    )
    .await
    .unwrap()
}

/// One disaggregated request: prefill on `p` (served by `srv`), decode on `d`.
async fn disagg(
    p: &Arc<Engine>,
    srv: &TransferServer,
    d: &Arc<Engine>,
    req: PreprocessedRequest,
) -> (Result<Vec<u32>, ()>, Option<String>) {
    let (_out, room_rx) = p.generate_prefill(req.clone(), None).unwrap();
    let room = dynamo_disagg::new_room();
    let info = srv.open_room(room, room_rx, None);
    let (rx, import) = d.generate_decode(req, None).unwrap();
    let failure = import.failure();
    let task = tokio::spawn(fetch(d.clone(), info, import, FetchConfig::new("m")));
    let toks = tokens(rx).await;
    let _ = task.await.unwrap();
    (toks, failure.get().cloned())
}

fn idle(e: &Engine) -> bool {
    let p = e.stats().pool;
    p.shared_in_use + p.private_in_use == 0
}

async fn settle(e: &Engine) {
    for _ in 0..200 {
        if idle(e) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("blocks still held: {:?}", e.stats().pool);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disaggregated_greedy_equals_aggregated_and_reuses_prefixes() {
    let agg = engine(16, 64);
    let pre = engine(16, 64);
    let dec = engine(16, 64);
    let srv = server(&pre, Duration::from_secs(30)).await;
    let bb = dec.info().kv_layout.block_bytes();
    // 150 tokens: 9 full blocks and a partial 10th, prefilled in three chunks.
    let first = prompt(150, 1);
    let want = tokens(agg.generate(request(&first, 12)).unwrap())
        .await
        .unwrap();
    let (got, err) = disagg(&pre, &srv, &dec, request(&first, 12)).await;
    assert_eq!(got, Ok(want), "disaggregated output differs: {err:?}");
    let m = &dec.metrics().unwrap().disagg;
    assert_eq!(
        m.total_mb.get(),
        (10 * bb) as f64 / 1e6,
        "all ten blocks pulled"
    );
    assert!(m.speed_gb_s.get() > 0.0 && m.latency_ms.get() > 0.0);
    let text = dec.metrics().unwrap().render();
    for stage in [
        "decode_prepare",
        "decode_bootstrap",
        "decode_waiting",
        "decode_transferred",
    ] {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("sglang:per_stage_req_latency_seconds_count")
                    && l.contains(&format!("stage=\"{stage}\""))
            })
            .unwrap_or_else(|| panic!("no {stage} count"));
        assert!(line.ends_with(" 1"), "{line}");
    }

    // The next turn: the first prompt, its answer, and more. The decode side caches the
    // first prompt's nine full blocks, so only the rest crosses the wire.
    let mut second = first.clone();
    second.extend(prompt(70, 2));
    let want = tokens(agg.generate(request(&second, 8)).unwrap())
        .await
        .unwrap();
    let (got, err) = disagg(&pre, &srv, &dec, request(&second, 8)).await;
    assert_eq!(got, Ok(want), "second turn differs: {err:?}");
    let blocks = second.len().div_ceil(16);
    assert_eq!(
        m.total_mb.get(),
        ((blocks - 9) * bb) as f64 / 1e6,
        "cached blocks skipped"
    );
    assert_eq!(m.transfer_failed.get() + m.bootstrap_failed.get(), 0);
    settle(&dec).await;
    settle(&pre).await;
    assert_eq!(srv.open_rooms(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefill_exports_each_chunk_as_it_completes() {
    let pre = engine(16, 64);
    let p = prompt(150, 3);
    let (_out, mut room) = pre.generate_prefill(request(&p, 5), None).unwrap();
    let mut frames = Vec::new();
    loop {
        match room.recv().await.unwrap() {
            RoomMsg::Blocks { first, data } => {
                let (h, _) = KvBlocksHeader::decode(&data).unwrap();
                frames.push((first, h.blocks));
            }
            RoomMsg::Done { blocks, .. } => {
                assert_eq!(blocks, 10);
                break;
            }
        }
    }
    // Chunks of 64 tokens: blocks 0..4 after the first, 4..8 after the second, the rest
    // (two full, one partial) when the prompt is done.
    assert_eq!(frames, vec![(0, 4), (4, 4), (8, 2)]);
    settle(&pre).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_mismatch_is_refused_naming_both_sides() {
    let pre = engine(16, 256);
    let dec = engine(32, 256);
    let srv = server(&pre, Duration::from_secs(30)).await;
    let (got, err) = disagg(&pre, &srv, &dec, request(&prompt(40, 4), 4)).await;
    assert!(got.is_err());
    let err = err.expect("a failure message");
    assert!(
        err.contains("block_size=16") && err.contains("block_size=32"),
        "{err}"
    );
    assert_eq!(dec.metrics().unwrap().disagg.bootstrap_failed.get(), 1);
    settle(&dec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_fails_the_request_and_frees_its_blocks() {
    use tokio::io::AsyncReadExt;
    let dec = engine(16, 256);
    // A prefill side that accepts, answers the hello with the right layout, then dies.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let layout = dec.info().kv_layout;
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let _ = dynamo_disagg::wire::read_frame(&mut s).await.unwrap();
        let w = dynamo_protocols::disagg::TransferWelcome {
            model: "m".into(),
            layout,
            error: None,
        };
        dynamo_disagg::wire::write_json(&mut s, dynamo_disagg::wire::WELCOME, &w)
            .await
            .unwrap();
        let mut b = [0u8; 64];
        let _ = s.read(&mut b).await;
        drop(s);
    });
    let req = request(&prompt(40, 5), 4);
    let (rx, import) = dec.generate_decode(req, None).unwrap();
    let failure = import.failure();
    let info = dynamo_protocols::BootstrapInfo {
        bootstrap_host: "127.0.0.1".into(),
        bootstrap_port: port,
        bootstrap_room: 7,
        room_traceparent: None,
    };
    let res = fetch(dec.clone(), info, import, FetchConfig::new("m")).await;
    assert!(res.is_err());
    assert!(
        tokens(rx).await.is_err(),
        "the stream ends without a finish"
    );
    let msg = failure.get().cloned().unwrap();
    assert!(msg.contains("room 0x7") && msg.contains("closed"), "{msg}");
    assert_eq!(dec.metrics().unwrap().disagg.transfer_failed.get(), 1);
    settle(&dec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclaimed_rooms_expire_and_are_counted() {
    let pre = engine(16, 256);
    let srv = server(&pre, Duration::from_millis(300)).await;
    let (_out, room_rx) = pre
        .generate_prefill(request(&prompt(40, 6), 4), None)
        .unwrap();
    srv.open_room(dynamo_disagg::new_room(), room_rx, None);
    assert_eq!(srv.open_rooms(), 1);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(srv.open_rooms(), 0);
    let m = &pre.metrics().unwrap().disagg;
    assert_eq!(m.bootstrap_failed.get(), 1);
    assert_eq!(m.prefill_inflight_queue.get(), 0);
    settle(&pre).await;
}

/// A prefill request cancelled before any decode worker claimed its room closes the room at
/// once (not at its expiry, seconds later): nothing stays counted or held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_prefill_closes_its_unclaimed_room() {
    let pre = engine(16, 32);
    let srv = server(&pre, Duration::from_secs(60)).await;
    let (out, room_rx) = pre
        .generate_prefill(request(&prompt(400, 7), 4), None)
        .unwrap();
    srv.open_room(dynamo_disagg::new_room(), room_rx, None);
    assert_eq!(srv.open_rooms(), 1);
    drop(out); // the caller is gone
    for _ in 0..200 {
        if srv.open_rooms() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        srv.open_rooms(),
        0,
        "the room outlived its cancelled prefill"
    );
    let m = &pre.metrics().unwrap().disagg;
    assert_eq!(m.prefill_inflight_queue.get(), 0);
    assert_eq!(
        m.bootstrap_failed.get(),
        0,
        "a cancellation is not a failure"
    );
    settle(&pre).await;
}

/// A finished prefill's room waits for its decode worker even though the engine's end is
/// closed: the reaper tells finished from abandoned by the `Done` it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_prefill_keeps_its_room_for_the_decode_worker() {
    let pre = engine(16, 256);
    let dec = engine(16, 256);
    let srv = server(&pre, Duration::from_secs(60)).await;
    let req = request(&prompt(40, 8), 4);
    let (out, room_rx) = pre.generate_prefill(req.clone(), None).unwrap();
    let room = dynamo_disagg::new_room();
    let info = srv.open_room(room, room_rx, None);
    // The prompt is done (its first token came out) and the reaper has looked at the room.
    tokens(out).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(srv.open_rooms(), 1);
    let (rx, import) = dec.generate_decode(req.clone(), None).unwrap();
    let task = tokio::spawn(fetch(dec.clone(), info, import, FetchConfig::new("m")));
    let got = tokens(rx).await.unwrap();
    task.await.unwrap().unwrap();
    let want = tokens(dec.generate(req).unwrap()).await.unwrap();
    assert_eq!(got, want);
}

/// Log probabilities through a disaggregated pair: the first token's come from the prefill
/// side with the room's `Done`, the rest from the decode side; all as an aggregated engine
/// gives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_cross_the_transfer_with_the_first_token() {
    let agg = engine(16, 64);
    let pre = engine(16, 64);
    let dec = engine(16, 64);
    let srv = server(&pre, Duration::from_secs(30)).await;
    let mut req = request(&prompt(40, 9), 5);
    req.logprobs = Some(3);
    let all = async |mut rx: UnboundedReceiver<EngineOutput>| {
        let mut v = vec![];
        while let Some(o) = rx.recv().await {
            v.extend(o.token_ids.into_iter().zip(o.logprobs));
        }
        v
    };
    let want = all(agg.generate(req.clone()).unwrap()).await;
    let (_out, room_rx) = pre.generate_prefill(req.clone(), None).unwrap();
    let info = srv.open_room(dynamo_disagg::new_room(), room_rx, None);
    let (rx, import) = dec.generate_decode(req, None).unwrap();
    let task = tokio::spawn(fetch(dec.clone(), info, import, FetchConfig::new("m")));
    let got = all(rx).await;
    task.await.unwrap().unwrap();
    assert_eq!(got.len(), 5);
    assert_eq!(got, want);
}

/// `n` choices of a disaggregated request: the decode side imports the prompt once, computes
/// its last position again for the logits the choices share, and forks them there: each
/// choice is the aggregated engine's choice of the same index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_fork_on_the_decode_side() {
    let agg = engine(16, 64);
    let pre = engine(16, 64);
    let dec = engine(16, 64);
    let srv = server(&pre, Duration::from_secs(30)).await;
    let mut req = request(&prompt(40, 11), 6);
    req.n = 3;
    req.sampling.temperature = Some(0.9);
    req.sampling.seed = Some(4);
    let per_choice = async |mut rx: UnboundedReceiver<EngineOutput>| {
        let mut v: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
        while let Some(o) = rx.recv().await {
            v.entry(o.index).or_default().extend(o.token_ids);
        }
        v
    };
    let want = per_choice(agg.generate(req.clone()).unwrap()).await;
    assert_eq!(want.len(), 3);
    assert!(want.values().all(|t| t.len() == 6), "{want:?}");
    let (_out, room_rx) = pre.generate_prefill(req.clone(), None).unwrap();
    let info = srv.open_room(dynamo_disagg::new_room(), room_rx, None);
    let (rx, import) = dec.generate_decode(req, None).unwrap();
    let task = tokio::spawn(fetch(dec.clone(), info, import, FetchConfig::new("m")));
    let got = per_choice(rx).await;
    task.await.unwrap().unwrap();
    assert_eq!(got, want);
    settle(&dec).await;
    assert_eq!(
        dec.stats().prefill_tokens,
        1,
        "only the last prompt position, again"
    );
}
