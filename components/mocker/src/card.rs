//! What the mocker tells the rest of the system: the model card registered in discovery (the
//! real model's name and context length, the simulated pool's size) and its load reports.

use std::path::Path;

use dynamo_mocker::{MockEngine, MockerConfig};
use dynamo_protocols::{LoadReport, ModelCard};

pub fn model_card(served: &str, source: &Path, cfg: &MockerConfig) -> ModelCard {
    ModelCard {
        served_model_name: served.to_string(),
        source: source.display().to_string(),
        context_length: cfg.context_length as u32,
        kv_cache_block_size: cfg.block_size as u32,
        total_kv_blocks: cfg.num_blocks as u64,
        max_num_seqs: cfg.max_num_seqs as u64,
        max_num_batched_tokens: cfg.max_num_batched_tokens as u64,
        disaggregation_mode: Default::default(),
        model_id: format!(
            "mocker context={} block={}",
            cfg.context_length, cfg.block_size
        ),
        // Simulated tokens have no distribution.
        logprobs: false,
        parallel_sampling: false,
    }
}

pub fn load_report(engine: &MockEngine) -> LoadReport {
    let s = engine.stats();
    LoadReport {
        active_blocks: s.active_blocks as u64,
        total_blocks: s.total_blocks as u64,
        running: s.running as u64,
        waiting: s.waiting as u64,
        ..LoadReport::default()
    }
}
