//! `dynamo-trace`: an OTLP/gRPC trace receiver for machines without Tempo. Prints each finished
//! trace (no new span for `--quiet-ms`) as an indented tree on stdout, and with `--jsonl FILE`
//! appends every span as one JSON object per line. Flags → library.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "dynamo-trace",
    version,
    about = "OTLP/gRPC trace receiver: prints finished traces as trees"
)]
struct Cli {
    /// Address to receive OTLP/gRPC spans on.
    #[arg(long, default_value = dynamo_protocols::names::defaults::TRACE_LISTEN)]
    listen: SocketAddr,
    /// Also append every span to FILE as JSON lines.
    #[arg(long, value_name = "FILE")]
    jsonl: Option<std::path::PathBuf>,
    /// A trace is printed once no span arrived for this long (ms).
    #[arg(long, default_value_t = 2000)]
    quiet_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rx = dynamo_telemetry::receiver::Receiver::start(cli.listen).await?;
    let mut jsonl = match &cli.jsonl {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("--jsonl {}", p.display()))?,
        ),
        None => None,
    };
    eprintln!("dynamo-trace listening on {} (OTLP/gRPC)", rx.endpoint());
    let quiet = Duration::from_millis(cli.quiet_ms);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        for trace in rx.take_finished(quiet) {
            print!("{}", dynamo_telemetry::receiver::render(&trace));
            if let Some(f) = jsonl.as_mut() {
                for s in &trace {
                    writeln!(f, "{}", serde_json::to_string(s)?)?;
                }
                f.flush()?;
            }
        }
        std::io::stdout().flush()?;
        rx.forget_taken(Duration::from_secs(600));
    }
    Ok(())
}
