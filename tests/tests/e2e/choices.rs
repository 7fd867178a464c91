//! Several results per request through the frontend and a real worker: `n` choices (one
//! prefill on the worker, each choice indexed, streamed by index, reproducible with `seed`,
//! usage counting the prompt once), `best_of` (the best by cumulative log probability),
//! `echo` with the prompt's log probabilities (first `null`), batch prompts (strings and
//! token-id lists, indexes prompt by prompt), and the bad values refused with 400s.

use std::collections::BTreeMap;
use std::time::Duration;

use dynamo_e2e::{error_message, read_sse, requests, Cluster, MODEL};
use serde_json::{json, Value};

fn sampled_chat(n: u32, stream: bool) -> Value {
    let mut b = requests::chat("Write a line about the sea.", 10, stream);
    b["n"] = json!(n);
    b["temperature"] = json!(0.9);
    b["seed"] = json!(7);
    b["ignore_eos"] = json!(true);
    b
}

fn texts(v: &Value, field: &str) -> Vec<String> {
    v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, ch)| {
            assert_eq!(ch["index"], i, "{v}");
            let t = if field == "message" {
                &ch["message"]["content"]
            } else {
                &ch["text"]
            };
            t.as_str().unwrap().to_string()
        })
        .collect()
}

/// The engine's prompt-token counter once the requests it has answered are counted (the
/// count lands just after the last token is sent): two reads 200 ms apart agree.
async fn prompt_tokens_total(c: &Cluster) -> f64 {
    let read = async || {
        c.worker_metric(0, "sglang:prompt_tokens_total")
            .await
            .unwrap_or(0.0)
    };
    let mut last = read().await;
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = read().await;
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the prompt-token counter does not settle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_best_of_echo_and_batches() {
    let mut c = Cluster::start(&[]);
    c.add_worker(&["--threads", "2", "--enable-metrics"]);
    c.wait_instances(1, Duration::from_secs(30)).await.unwrap();

    // n = 3, unary: three indexed choices; the prompt counted once in the usage and in the
    // engine's prompt-token counter; the same seed gives the same three again.
    let (st, _, one) = c
        .post("/v1/chat/completions", &sampled_chat(1, false))
        .await;
    assert_eq!(st, 200, "{one}");
    let prompt = one["usage"]["prompt_tokens"].as_u64().unwrap();
    let before = prompt_tokens_total(&c).await;
    let (st, _, v) = c
        .post("/v1/chat/completions", &sampled_chat(3, false))
        .await;
    assert_eq!(st, 200, "{v}");
    let three = texts(&v, "message");
    assert_eq!(three.len(), 3);
    assert!(three[0] != three[1] || three[1] != three[2], "{three:?}");
    assert_eq!(v["usage"]["prompt_tokens"], prompt, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 30, "{v}");
    assert_eq!(v["usage"]["total_tokens"], prompt + 30, "{v}");
    assert_eq!(
        prompt_tokens_total(&c).await - before,
        prompt as f64,
        "the engine counted the prompt once"
    );
    let (_, _, again) = c
        .post("/v1/chat/completions", &sampled_chat(3, false))
        .await;
    assert_eq!(texts(&again, "message"), three, "seeded choices repeat");

    // n = 3, streamed: each chunk one choice by index; joined per index, the unary texts;
    // one finish per choice; the usage chunk sums them.
    let mut body = sampled_chat(3, true);
    body["stream_options"] = json!({"include_usage": true});
    let (chunks, done) = read_sse(c.send("/v1/chat/completions", &body, &[]).await).await;
    assert!(done);
    let mut joined: BTreeMap<u64, String> = BTreeMap::new();
    let mut finishes: BTreeMap<u64, usize> = BTreeMap::new();
    for ch in &chunks {
        let choices = ch["choices"].as_array().unwrap();
        assert!(choices.len() <= 1, "{ch}");
        if let Some(x) = choices.first() {
            let i = x["index"].as_u64().unwrap();
            joined
                .entry(i)
                .or_default()
                .push_str(x["delta"]["content"].as_str().unwrap_or(""));
            if !x["finish_reason"].is_null() {
                *finishes.entry(i).or_default() += 1;
            }
        }
    }
    assert_eq!(joined.into_values().collect::<Vec<_>>(), three);
    assert_eq!(finishes, BTreeMap::from([(0, 1), (1, 1), (2, 1)]));
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 30, "{usage}");
    assert_eq!(usage["prompt_tokens"], prompt, "{usage}");

    // best_of = 3, n = 1: of the three seeded choices, the one with the highest cumulative
    // log probability (the logprobs are shown here to check; the choice does not need them).
    // A seed whose best is not the first choice, so that taking the first would fail.
    let mut found = None;
    for seed in 1..20 {
        let mut all = requests::completion("The sea is", 6);
        all["temperature"] = json!(1.0);
        all["seed"] = json!(seed);
        all["ignore_eos"] = json!(true);
        all["n"] = json!(3);
        all["logprobs"] = json!(0);
        let (st, _, v) = c.post("/v1/completions", &all).await;
        assert_eq!(st, 200, "{v}");
        let sums: Vec<f64> = v["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ch| {
                ch["logprobs"]["token_logprobs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .sum()
            })
            .collect();
        let best = (0..3).max_by(|&a, &b| sums[a].total_cmp(&sums[b])).unwrap();
        if best != 0 {
            found = Some((all, v, best, sums));
            break;
        }
    }
    let (all, v, best, sums) = found.expect("some seed's best choice is not its first");
    let mut pick = all.clone();
    pick["n"] = json!(1);
    pick["best_of"] = json!(3);
    pick.as_object_mut().unwrap().remove("logprobs");
    let (st, _, p) = c.post("/v1/completions", &pick).await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["choices"].as_array().unwrap().len(), 1);
    assert_eq!(
        p["choices"][0]["text"], v["choices"][best]["text"],
        "{sums:?}"
    );
    assert!(
        p["choices"][0]["logprobs"].is_null(),
        "not asked, not shown"
    );
    assert_eq!(
        p["usage"]["completion_tokens"], 18,
        "every generated choice is counted"
    );

    // echo with logprobs: the prompt's text starts the choice, its tokens lead the lists
    // (the first without a log probability), offsets run through both.
    let mut echo = requests::greedy_completion("The capital of France is", 4);
    echo["echo"] = json!(true);
    echo["logprobs"] = json!(1);
    echo["ignore_eos"] = json!(true);
    let (st, _, e) = c.post("/v1/completions", &echo).await;
    assert_eq!(st, 200, "{e}");
    let text = e["choices"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("The capital of France is"), "{e}");
    let lp = &e["choices"][0]["logprobs"];
    let n_prompt = e["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    let toks = lp["tokens"].as_array().unwrap();
    assert_eq!(toks.len(), n_prompt + 4, "{lp}");
    assert!(
        lp["token_logprobs"][0].is_null() && lp["top_logprobs"][0].is_null(),
        "{lp}"
    );
    for i in 1..toks.len() {
        let x = lp["token_logprobs"][i].as_f64().unwrap();
        assert!(x <= 0.0, "{lp}");
    }
    let spelled: String = toks.iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(spelled, text, "{lp}");
    // Streamed echo: the prompt comes first, then the same continuation.
    echo["stream"] = json!(true);
    echo.as_object_mut().unwrap().remove("logprobs");
    let (chunks, _) = read_sse(c.send("/v1/completions", &echo, &[]).await).await;
    let streamed: String = chunks
        .iter()
        .filter_map(|ch| ch["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, text);

    // echo with max_tokens 0 scores the prompt alone: its text, its tokens' log
    // probabilities (the same as above), nothing generated or counted.
    let mut score = requests::greedy_completion("The capital of France is", 0);
    score["echo"] = json!(true);
    score["logprobs"] = json!(1);
    let (st, _, s0) = c.post("/v1/completions", &score).await;
    assert_eq!(st, 200, "{s0}");
    assert_eq!(s0["choices"][0]["text"], "The capital of France is", "{s0}");
    assert_eq!(s0["choices"][0]["finish_reason"], "length", "{s0}");
    assert_eq!(s0["usage"]["completion_tokens"], 0, "{s0}");
    let scored = &s0["choices"][0]["logprobs"]["token_logprobs"];
    assert_eq!(scored.as_array().unwrap().len(), n_prompt, "{s0}");
    assert_eq!(
        scored.as_array().unwrap()[..],
        lp["token_logprobs"].as_array().unwrap()[..n_prompt],
        "the prompt scores as it did when it was echoed before a completion"
    );

    // Batch: two prompts (a string and token ids) × n = 2 at temperature 0; indexes prompt by
    // prompt, each choice the prompt's own greedy answer; usage sums the prompts.
    let single = |p: Value| async {
        let (_, _, v) = c
            .post("/v1/completions", &requests::greedy_completion(p, 5))
            .await;
        (
            v["choices"][0]["text"].as_str().unwrap().to_string(),
            v["usage"]["prompt_tokens"].as_u64().unwrap(),
        )
    };
    let (a, pa) = single(json!("One, two, three,")).await;
    let (b, pb) = single(json!([504, 3458, 314])).await;
    let mut batch = requests::greedy_completion(json!(["One, two, three,", [504, 3458, 314]]), 5);
    batch["n"] = json!(2);
    let (st, _, v) = c.post("/v1/completions", &batch).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(texts(&v, "text"), vec![a.clone(), a, b.clone(), b]);
    assert_eq!(v["usage"]["prompt_tokens"], pa + pb, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 20, "{v}");

    // Bad values: 400s naming the field.
    let chat = requests::chat("Hi", 2, false);
    let comp = requests::completion("Hi", 2);
    for (path, base, patch, field) in [
        ("/v1/chat/completions", &chat, json!({"n": 0}), "n"),
        ("/v1/chat/completions", &chat, json!({"n": 129}), "n"),
        (
            "/v1/completions",
            &comp,
            json!({"n": 3, "best_of": 2}),
            "best_of",
        ),
        (
            "/v1/completions",
            &comp,
            json!({"best_of": 2, "stream": true}),
            "best_of",
        ),
        (
            "/v1/chat/completions",
            &chat,
            json!({"best_of": 2}),
            "best_of",
        ),
        ("/v1/chat/completions", &chat, json!({"echo": true}), "echo"),
        (
            "/v1/completions",
            &comp,
            json!({"prompt": [1, "a"]}),
            "prompt",
        ),
        ("/v1/completions", &comp, json!({"prompt": []}), "prompt"),
        (
            "/v1/completions",
            &comp,
            json!({"prompt": vec!["x"; 257]}),
            "prompt",
        ),
    ] {
        let mut body = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (st, _, v) = c.post(path, &body).await;
        assert_eq!(st, 400, "{path} {patch}: {v}");
        assert!(error_message(&v).contains(field), "{patch}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_cannot_fork_refuses_several_choices() {
    let mut c = Cluster::start(&[]);
    c.add_mocker(&["--speedup-ratio", "1000"]);
    c.wait_instances(1, Duration::from_secs(20)).await.unwrap();
    let mut body = requests::completion("Hi", 2);
    body["n"] = json!(2);
    let (st, _, v) = c.post("/v1/completions", &body).await;
    assert_eq!(st, 400, "{v}");
    assert!(error_message(&v).contains(MODEL), "{v}");
    // A batch needs no fork: each prompt is its own request.
    let body = requests::completion(json!(["a", "b"]), 2);
    let (st, _, v) = c.post("/v1/completions", &body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
}
