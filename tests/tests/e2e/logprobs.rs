//! Log probabilities through the frontend and a real worker, in OpenAI's shapes: chat's
//! `content[] {token, logprob, bytes, top_logprobs}` and completions' `tokens,
//! token_logprobs, top_logprobs, text_offset`, unary and streamed (the streamed entries are
//! the unary ones, split across chunks), consistent with the text and the greedy choice;
//! `null` when not asked; out-of-range values and a model that cannot (the mocker) are 400s
//! naming the field.

use std::time::Duration;

use dynamo_e2e::{error_message, read_sse, requests, Cluster, MODEL};
use serde_json::{json, Value};

fn greedy_chat(stream: bool) -> Value {
    let mut b = requests::chat("Name three colours.", 8, stream);
    b["temperature"] = json!(0);
    b["ignore_eos"] = json!(true);
    b["logprobs"] = json!(true);
    b["top_logprobs"] = json!(3);
    b
}

fn greedy_completion(stream: bool) -> Value {
    let mut b = requests::greedy_completion("The capital of France is", 8);
    b["ignore_eos"] = json!(true);
    b["logprobs"] = json!(2);
    b["stream"] = json!(stream);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_in_openai_shapes_unary_and_streamed() {
    let mut c = Cluster::start(&[]);
    c.add_worker(&["--threads", "2"]);
    c.wait_instances(1, Duration::from_secs(30)).await.unwrap();

    // Chat, unary: one entry per token, each the greedy choice (its top alternative), the
    // tokens spelling the message.
    let (st, _, v) = c.post("/v1/chat/completions", &greedy_chat(false)).await;
    assert_eq!(st, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    let mut text = String::new();
    for e in content {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{e}");
        assert_eq!(top[0]["token"], e["token"], "{e}");
        assert_eq!(top[0]["logprob"], e["logprob"], "{e}");
        assert!(e["logprob"].as_f64().unwrap() <= 0.0);
        let bytes: Vec<u8> = e["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            e["token"].as_str().unwrap()
        );
        text.push_str(e["token"].as_str().unwrap());
    }
    assert_eq!(
        text,
        v["choices"][0]["message"]["content"].as_str().unwrap()
    );
    // Chat, streamed: the same entries, spread over the chunks.
    let (chunks, done) = read_sse(
        c.send("/v1/chat/completions", &greedy_chat(true), &[])
            .await,
    )
    .await;
    assert!(done);
    let streamed: Vec<Value> = chunks
        .iter()
        .filter_map(|ch| ch["choices"][0]["logprobs"]["content"].as_array())
        .flatten()
        .cloned()
        .collect();
    assert_eq!(&streamed, content);

    // Completions, unary: tokens spell the text, offsets advance by each token's length, each
    // top map holds the sampled token with its logprob.
    let (st, _, v) = c.post("/v1/completions", &greedy_completion(false)).await;
    assert_eq!(st, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.len(), 8);
    assert_eq!(tokens.concat(), v["choices"][0]["text"].as_str().unwrap());
    let mut at = 0;
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(lp["text_offset"][i], at, "{lp}");
        at += t.chars().count();
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert!((1..=3).contains(&top.len()), "{top:?}");
        assert_eq!(top[*t], lp["token_logprobs"][i], "{lp}");
        let best = top
            .values()
            .map(|x| x.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert_eq!(best, lp["token_logprobs"][i].as_f64().unwrap(), "greedy");
    }
    // Completions, streamed: the same lists, split across chunks; offsets continue.
    let (chunks, _) = read_sse(
        c.send("/v1/completions", &greedy_completion(true), &[])
            .await,
    )
    .await;
    let mut joined =
        json!({"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []});
    for ch in &chunks {
        let l = &ch["choices"][0]["logprobs"];
        if l.is_null() {
            continue;
        }
        for k in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
            let a = joined[k].as_array_mut().unwrap();
            a.extend(l[k].as_array().unwrap().iter().cloned());
        }
    }
    assert_eq!(&joined, lp);

    // Not asked: null.
    let (_, _, v) = c
        .post("/v1/completions", &requests::completion("Hi", 2))
        .await;
    assert!(v["choices"][0]["logprobs"].is_null(), "{v}");

    // Out of range: 400s naming the field.
    for (path, patch, field) in [
        (
            "/v1/chat/completions",
            json!({"top_logprobs": 21}),
            "top_logprobs",
        ),
        ("/v1/chat/completions", json!({"logprobs": 2}), "logprobs"),
        ("/v1/completions", json!({"logprobs": 6}), "logprobs"),
        (
            "/v1/completions",
            json!({"top_logprobs": 1}),
            "top_logprobs",
        ),
    ] {
        let mut body = if path.contains("chat") {
            greedy_chat(false)
        } else {
            greedy_completion(false)
        };
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (st, _, v) = c.post(path, &body).await;
        assert_eq!(st, 400, "{path} {patch}: {v}");
        assert!(error_message(&v).contains(field), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_cannot_give_logprobs_refuses_them() {
    let mut c = Cluster::start(&[]);
    c.add_mocker(&["--speedup-ratio", "1000"]);
    c.wait_instances(1, Duration::from_secs(20)).await.unwrap();
    let (st, _, v) = c.post("/v1/completions", &greedy_completion(false)).await;
    assert_eq!(st, 400, "{v}");
    let m = error_message(&v);
    assert!(m.contains("logprobs") && m.contains(MODEL), "{v}");
}
