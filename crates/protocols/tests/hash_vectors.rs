//! The block hashes every side uses (engine, mocker, router) against vectors generated with
//! Python's `xxhash` package (an independent XXH3 implementation), checked in beside this file.

use dynamo_protocols::hashing::{block_hashes, sequence_hashes};

#[test]
fn hashes_match_the_checked_in_vectors() {
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("hash_vectors.json")).expect("vector file parses");
    let cases = doc["cases"].as_array().expect("cases");
    assert!(cases.len() >= 5);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let bs = c["block_size"].as_u64().unwrap() as usize;
        let toks: Vec<u32> = c["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        let want_local: Vec<u64> = c["local_hashes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_u64().unwrap())
            .collect();
        let want_seq: Vec<u64> = c["sequence_hashes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_u64().unwrap())
            .collect();
        let local = block_hashes(&toks, bs);
        assert_eq!(local, want_local, "local hashes: {name}");
        assert_eq!(sequence_hashes(&local), want_seq, "sequence hashes: {name}");
    }
}
