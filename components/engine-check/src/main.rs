//! `dynamo-engine-check`: flags → `dynamo_engine::check::run_check` → one JSON report on
//! stdout. Run by `tests/gpu/run.sh` on a GPU (`--device cuda`); here with `--device
//! reference` it checks the device path's host side against the same reference.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use dynamo_engine::check::{run_check, CheckConfig};
use dynamo_engine::executor::{probe, Device};

#[derive(Parser)]
#[command(
    version,
    about = "The engine half of the device check: one JSON report on stdout"
)]
struct Cli {
    /// The model (a GGUF file or a Hugging Face directory).
    #[arg(long)]
    model: PathBuf,
    /// `cpu`, `cuda`, `cuda:N` or `reference`.
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Reference logits (the JSON `tests/fixtures/smollm2-transformers/generate.py` writes).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Prompt lengths to time prefill at (comma-separated; empty: none).
    #[arg(long, value_delimiter = ',', default_value = "512,4096")]
    prefill: Vec<usize>,
    /// Batch sizes to time decode at (comma-separated; empty: none).
    #[arg(long, value_delimiter = ',', default_value = "1,8,64,256")]
    decode: Vec<usize>,
    /// Tokens each decode sequence generates.
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Host threads (sampling; the CPU device's compute).
    #[arg(long, default_value_t = 4)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let device: Device = cli.device.parse().map_err(anyhow::Error::msg)?;
    probe(device).map_err(anyhow::Error::msg)?;
    let reference = match &cli.reference {
        Some(p) => Some(serde_json::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("--reference {}", p.display()))?,
        )?),
        None => None,
    };
    let report = run_check(&CheckConfig {
        model: cli.model,
        device,
        reference,
        prefill_lengths: cli.prefill,
        decode_batches: cli.decode,
        decode_tokens: cli.decode_tokens,
        threads: cli.threads,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
