//! The device executor's host side, run on the plain-Rust reference kernels (`HostOps`): the
//! step plan, block tables and slot mapping, the layer sequence, logit-row selection, block
//! copies and KV export / import. Every family's tiny model against Hugging Face
//! `transformers` (the same fixtures and tolerance as `families.rs`), on pages scattered
//! through the cache; the real model against the CPU executor, batched and chunked; and KV
//! exported from one executor kind imported into the other.

use std::path::{Path, PathBuf};

use dynamo_engine::executor::device::HostOps;
use dynamo_engine::executor::{CpuExecutor, DeviceExecutor, Executor};
use dynamo_engine::kernels::ComputePool;
use dynamo_engine::model::{load, Logits, SeqInput};
use dynamo_engine::sampling::argmax;
use serde_json::Value;

/// As in `families.rs`: the largest difference from transformers' logits allowed.
const TOLERANCE: f32 = 0.05;

/// As in `reference.rs`: logit gaps this small are decided by where an evaluation rounds.
const NOISE: f32 = 0.35;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn device(path: &Path, blocks: usize) -> DeviceExecutor<HostOps> {
    let w = load(path).unwrap();
    DeviceExecutor::new(HostOps, w, blocks, 16, ComputePool::new(1).unwrap())
}

fn cpu(path: &Path, blocks: usize) -> CpuExecutor {
    let w = load(path).unwrap();
    CpuExecutor::new(w, blocks, 16, ComputePool::new(2).unwrap())
}

/// Last-position logits of `prompt`, then `steps` greedy tokens, on pages `7, 6, 5, …`.
fn run(e: &mut dyn Executor, prompt: &[u32], steps: usize) -> (Vec<f32>, Vec<u32>) {
    let pages: Vec<u32> = (0..8).rev().collect();
    let mut toks = prompt.to_vec();
    let (mut start, mut first) = (0, None);
    for _ in 0..steps {
        let logits = e.forward(&[SeqInput {
            tokens: &toks[start..],
            start,
            pages: &pages,
            logits: Logits::Last,
        }]);
        start = toks.len();
        toks.push(argmax(&logits));
        first.get_or_insert(logits);
    }
    (first.unwrap(), toks[prompt.len()..].to_vec())
}

#[test]
fn each_family_matches_transformers_through_the_device_executor() {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
    let r: Value = serde_json::from_str(&text).unwrap();
    for (family, want) in r["families"].as_object().unwrap() {
        for src in [
            fixtures().join(family),
            fixtures().join(format!("{family}.gguf")),
        ] {
            let mut e = device(&src, 8);
            for (i, case) in want["cases"].as_array().unwrap().iter().enumerate() {
                let greedy = ids(&case["greedy"]);
                let (logits, got) = run(&mut e, &ids(&case["tokens"]), greedy.len());
                let worst = logits
                    .iter()
                    .zip(case["logits"].as_array().unwrap())
                    .map(|(a, b)| (a - b.as_f64().unwrap() as f32).abs())
                    .fold(0f32, f32::max);
                eprintln!("{family} {} prompt {i}: worst {worst}", src.display());
                assert!(
                    worst <= TOLERANCE,
                    "{family} {} prompt {i}: {worst}",
                    src.display()
                );
                assert_eq!(got, greedy, "{family} {} prompt {i}", src.display());
            }
        }
    }
}

fn smollm() -> PathBuf {
    dynamo_test_support::default_model()
}

/// One batched step over several sequences: returns each wanted row.
fn step(e: &mut dyn Executor, seqs: &[SeqInput<'_>]) -> Vec<Vec<f32>> {
    let vocab = e.model().vocab;
    e.forward(seqs).chunks(vocab).map(<[f32]>::to_vec).collect()
}

/// The real model against `transformers` (f32, from the same GGUF, dequantized;
/// `fixtures/smollm2-transformers/generate.py`): every position of two prompts computed in one
/// prefill with every row's logits (`Logits::All`); at each position the reference's five best
/// tokens have logits within `REAL_TOLERANCE` of its own, and where its best two are more than
/// NOISE apart, ours is the same best. The CPU executor's figures (8-bit activations) are
/// printed beside, for the record.
#[test]
fn the_device_executor_matches_transformers_on_the_real_model() {
    // Seen 2026-12-08: at most 0.016 (the CPU executor: up to 0.80).
    const REAL_TOLERANCE: f32 = 0.05;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2-transformers");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let path = smollm();
    let mut d = device(&path, 8);
    let mut c = cpu(&path, 8);
    for case in r["cases"].as_array().unwrap() {
        let toks = ids(&case["tokens"]);
        let pages: Vec<u32> = (0..8).rev().collect();
        let inp = [SeqInput {
            tokens: &toks,
            start: 0,
            pages: &pages,
            logits: Logits::All,
        }];
        let ours = step(&mut d, &inp);
        let theirs_cpu = step(&mut c, &inp);
        assert_eq!(ours.len(), toks.len());
        let (mut worst, mut worst_cpu, mut top1, mut decided) = (0f32, 0f32, 0, 0);
        for (pos, top) in case["top"].as_array().unwrap().iter().enumerate() {
            let top: Vec<(usize, f32)> = top
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e[0].as_u64().unwrap() as usize,
                        e[1].as_f64().unwrap() as f32,
                    )
                })
                .collect();
            for &(id, v) in &top {
                worst = worst.max((ours[pos][id] - v).abs());
                worst_cpu = worst_cpu.max((theirs_cpu[pos][id] - v).abs());
            }
            if top[0].1 - top[1].1 > NOISE {
                decided += 1;
                top1 += usize::from(argmax(&ours[pos]) as usize == top[0].0);
            }
        }
        eprintln!(
            "{} tokens: device worst {worst}, cpu worst {worst_cpu}; device top-1 {top1} of {decided} decided positions",
            toks.len()
        );
        assert!(worst <= REAL_TOLERANCE, "{worst}");
        assert_eq!(top1, decided);
    }
}

/// The real model, batched: one prompt prefilled in two chunks (the second crossing a block
/// boundary) beside another prompt, then decode steps of both together, on interleaved pages.
/// The device executor (f16 weights, f32 activations) and the CPU executor (quantized weights,
/// 8-bit activations) pick the same tokens with close logits.
#[test]
fn the_device_executor_agrees_with_the_cpu_executor_batched_and_chunked() {
    let path = smollm();
    let mut d = device(&path, 16);
    let mut c = cpu(&path, 16);
    let tok = dynamo_preprocessor::model::LoadedModel::load(
        dynamo_preprocessor::model::ModelSource::Gguf(path.clone()),
    )
    .unwrap()
    .tokenizer;
    let a = tok
        .encode(
            "The history of the printing press begins in the fifteenth century, when a goldsmith \
             in Mainz combined a screw press, movable metal type and an oil-based ink into a way \
             of making",
        )
        .unwrap();
    let b = tok
        .encode("Three facts about the moon: it has no air,")
        .unwrap();
    assert!(a.len() > 33 && b.len() < 16, "{} {}", a.len(), b.len());
    let (pa, pb): (Vec<u32>, Vec<u32>) = (
        (0..8).map(|i| 2 * i).collect(),
        (0..8).map(|i| 2 * i + 1).collect(),
    );
    let (mut worst, mut agree) = (0f32, 0);
    let mut compare = |x: &[Vec<f32>], y: &[Vec<f32>]| {
        assert_eq!(x.len(), y.len());
        for (u, v) in x.iter().zip(y) {
            // The same token, or one the other side ranks within rounding of its best (as the
            // reference test allows: the two evaluations round differently).
            let (i, j) = (argmax(u) as usize, argmax(v) as usize);
            assert!(
                v[j] - v[i] <= NOISE && u[i] - u[j] <= NOISE,
                "tokens {i} / {j}: gaps {} / {}",
                v[j] - v[i],
                u[i] - u[j]
            );
            agree += usize::from(i == j);
            let w = u
                .iter()
                .zip(v)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            worst = worst.max(w);
        }
    };
    // Chunk 1 of `a` (no logits) with all of `b`; chunk 2 of `a`.
    let s1 = |e: &mut dyn Executor| {
        step(
            e,
            &[
                SeqInput {
                    tokens: &a[..24],
                    start: 0,
                    pages: &pa,
                    logits: Logits::None,
                },
                SeqInput {
                    tokens: &b,
                    start: 0,
                    pages: &pb,
                    logits: Logits::Last,
                },
            ],
        )
    };
    compare(&s1(&mut d), &s1(&mut c));
    let s2 = |e: &mut dyn Executor| {
        step(
            e,
            &[SeqInput {
                tokens: &a[24..],
                start: 24,
                pages: &pa,
                logits: Logits::Last,
            }],
        )
    };
    let (x, y) = (s2(&mut d), s2(&mut c));
    compare(&x, &y);
    let (mut ta, mut tb) = (a.clone(), b.clone());
    ta.push(argmax(&y[0]));
    tb.push(1234);
    for _ in 0..4 {
        let (la, lb) = (ta.len(), tb.len());
        let s = |e: &mut dyn Executor| {
            step(
                e,
                &[
                    SeqInput {
                        tokens: &ta[la - 1..],
                        start: la - 1,
                        pages: &pa,
                        logits: Logits::Last,
                    },
                    SeqInput {
                        tokens: &tb[lb - 1..],
                        start: lb - 1,
                        pages: &pb,
                        logits: Logits::Last,
                    },
                ],
            )
        };
        let (x, y) = (s(&mut d), s(&mut c));
        compare(&x, &y);
        ta.push(argmax(&y[0]));
        tb.push(argmax(&y[1]));
    }
    // Measured 2026-12-08: 9 of 11 rows pick the same token (the others within NOISE), and
    // logits differ by up to 0.87; the device path's accuracy is checked against
    // transformers below.
    eprintln!("device (host reference) vs cpu: {agree} of 11 rows pick the same token; largest logit difference {worst}");
    assert!(agree >= 8, "{agree} of 11");
    assert!(worst < 1.5, "{worst}");
}

/// Export `pages` from `from`, import them at `there` in `to`, and compute the prompt's last
/// position there: the next token.
fn hand_over(
    from: &dyn Executor,
    to: &mut dyn Executor,
    prompt: &[u32],
    pages: &[u32],
    there: &[u32],
) -> u32 {
    let mut bytes = Vec::new();
    from.export_blocks(pages, &mut bytes).unwrap();
    to.import_blocks(there, &bytes).unwrap();
    let last = prompt.len() - 1;
    let l = to.forward(&[SeqInput {
        tokens: &prompt[last..],
        start: last,
        pages: there,
        logits: Logits::Last,
    }]);
    argmax(&l)
}

/// KV blocks exported by one executor kind import into the other (same byte format, same
/// layout) at other block ids, and the importer continues with the same next token; a block
/// copy (`copy_prefix`) on the device executor serves a prompt like its source.
#[test]
fn kv_blocks_cross_between_executor_kinds() {
    let path = smollm();
    let prompt: Vec<u32> = (0..37).map(|i| 500 + i * 41).collect();
    let pages = [3u32, 9, 4];
    let mut d = device(&path, 12);
    let mut c = cpu(&path, 12);
    let full = |e: &mut dyn Executor| {
        argmax(&e.forward(&[SeqInput {
            tokens: &prompt,
            start: 0,
            pages: &pages,
            logits: Logits::Last,
        }]))
    };
    let want = full(&mut c);
    assert_eq!(full(&mut d), want);
    assert_eq!(
        hand_over(&d, &mut c, &prompt, &pages, &[7, 1, 10]),
        want,
        "device → cpu"
    );
    assert_eq!(
        hand_over(&c, &mut d, &prompt, &pages, &[0, 2, 5]),
        want,
        "cpu → device"
    );
    // The first 4 slots of block 5 (positions 32..36) copied into block 6: a page table
    // ending in the copy serves the last position the same.
    d.copy_prefix(5, 6, 4);
    let l = d.forward(&[SeqInput {
        tokens: &prompt[36..],
        start: 36,
        pages: &[0, 2, 6],
        logits: Logits::Last,
    }]);
    assert_eq!(argmax(&l), want, "a copied block serves like its source");
}

/// Decode steps padded to a graph bucket and run from persistent buffers (what a captured CUDA
/// graph replays) give the logits of the same steps run as they come, bit for bit; prefill
/// steps and batches past the largest bucket keep the direct path.
#[test]
fn bucketed_decode_steps_equal_direct_ones() {
    let path = fixtures().join("qwen3");
    let mut direct = device(&path, 32);
    let mut bucketed = device(&path, 32);
    bucketed.enable_graphs(256);
    let prompts: Vec<Vec<u32>> = (0..3)
        .map(|i| (0..20 + 7 * i).map(|j| (j * 13 + i) % 90 + 5).collect())
        .collect();
    let pages: Vec<Vec<u32>> = (0..3)
        .map(|i| (0..8).map(|j| (i * 8 + j) as u32).collect())
        .collect();
    let mut toks = prompts.clone();
    for step in 0..4 {
        let inputs: Vec<SeqInput<'_>> = toks
            .iter()
            .zip(&pages)
            .map(|(t, p)| {
                let start = if step == 0 { 0 } else { t.len() - 1 };
                SeqInput {
                    tokens: &t[start..],
                    start,
                    pages: p,
                    logits: Logits::Last,
                }
            })
            .collect();
        let a = step_rows(&mut direct, &inputs);
        let b = step_rows(&mut bucketed, &inputs);
        assert_eq!(a, b, "step {step}");
        assert!(!bucketed.graph_ran(), "the reference ops capture no graph");
        for (t, row) in toks.iter_mut().zip(&a) {
            t.push(argmax(row));
        }
    }
    assert_eq!(
        bucketed.bucketed_steps(),
        3,
        "the three decode steps ran in bucket 4"
    );
    assert_eq!(direct.bucketed_steps(), 0);
}

fn step_rows(e: &mut dyn Executor, seqs: &[SeqInput<'_>]) -> Vec<Vec<f32>> {
    step(e, seqs)
}
