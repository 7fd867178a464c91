//! Block export / import through the executor seam on the default model: a prefilled
//! sequence's blocks moved into a second executor (at other block ids) give the same
//! next-token logits bit for bit, and an export that does not fit is refused with the values
//! of both sides, leaving the cache untouched.

use dynamo_engine::kernels::ComputePool;
use dynamo_engine::model::{load, Logits, SeqInput, Weights};
use dynamo_engine::{CpuExecutor, Executor, TransferError};
use dynamo_protocols::kv_transfer::KvHeaderError;

fn weights() -> Weights {
    load(&dynamo_test_support::default_model()).unwrap()
}

fn executor(blocks: usize, page: usize) -> CpuExecutor {
    CpuExecutor::new(weights(), blocks, page, ComputePool::new(2).unwrap())
}

/// 40 tokens: two full blocks of 16 and a partial third.
fn prompt() -> Vec<u32> {
    (0..40).map(|i| 100 + i * 37).collect()
}

fn step(e: &mut CpuExecutor, tokens: &[u32], start: usize, pages: &[u32]) -> Vec<f32> {
    e.forward(&[SeqInput {
        tokens,
        start,
        pages,
        logits: Logits::Last,
    }])
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn imported_blocks_give_the_same_next_token_logits_bit_for_bit() {
    let p = prompt();
    let mut a = executor(8, 16);
    let pages_a = [0u32, 1, 2];
    let first = step(&mut a, &p, 0, &pages_a);
    let next = dynamo_engine::sampling::argmax(&first);
    let mut export = Vec::new();
    a.export_blocks(&pages_a, &mut export).unwrap();
    assert_eq!(
        export.len(),
        32 + 3 * 16 * a.kv_bytes_per_token(),
        "header + three blocks"
    );
    let want = step(&mut a, &[next], p.len(), &pages_a);

    let mut b = executor(8, 16);
    let pages_b = [5u32, 3, 7];
    b.import_blocks(&pages_b, &export).unwrap();
    // Exporting the imported blocks gives back the same bytes.
    let mut again = Vec::new();
    b.export_blocks(&pages_b, &mut again).unwrap();
    assert!(again == export, "re-export differs");
    let got = step(&mut b, &[next], p.len(), &pages_b);
    assert_eq!(bits(&got), bits(&want), "logits after import differ");
}

#[test]
fn exports_that_do_not_fit_are_refused_and_change_nothing() {
    let p = prompt();
    let mut a = executor(4, 16);
    step(&mut a, &p, 0, &[0, 1, 2]);
    let mut export = Vec::new();
    a.export_blocks(&[0, 1, 2], &mut export).unwrap();

    // Another block size: both layouts are named.
    let mut small = executor(8, 8);
    let err = small.import_blocks(&[0, 1, 2], &export).unwrap_err();
    match &err {
        TransferError::LayoutMismatch { ours, theirs } => {
            assert_eq!((ours.block_size, theirs.block_size), (8, 16));
            assert_eq!(ours.layers, theirs.layers);
        }
        other => panic!("expected a layout mismatch, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("block_size=8") && text.contains("block_size=16"),
        "{text}"
    );

    let mut b = executor(4, 16);
    let mut before = Vec::new();
    b.export_blocks(&[0, 1, 2, 3], &mut before).unwrap();
    let cases: Vec<(Vec<u32>, Vec<u8>, TransferError)> = vec![
        (
            vec![0, 1],
            export.clone(),
            TransferError::CountMismatch {
                given: 2,
                exported: 3,
            },
        ),
        (
            vec![0, 1, 4],
            export.clone(),
            TransferError::BlockOutOfRange {
                block: 4,
                blocks: 4,
            },
        ),
        (
            vec![0, 1, 2],
            export[..export.len() - 2].to_vec(),
            TransferError::Header(KvHeaderError::Length {
                expected: export.len() - 32,
                got: export.len() - 34,
            }),
        ),
    ];
    for (targets, bytes, want) in cases {
        assert_eq!(b.import_blocks(&targets, &bytes).unwrap_err(), want);
    }
    let mut after = Vec::new();
    b.export_blocks(&[0, 1, 2, 3], &mut after).unwrap();
    assert!(after == before, "a refused import wrote into the cache");
    assert_eq!(
        a.export_blocks(&[9], &mut Vec::new()).unwrap_err(),
        TransferError::BlockOutOfRange {
            block: 9,
            blocks: 4
        }
    );
}
