//! API compatibility where it matters most, with the official `openai` Python client
//! (`tests/openai/client_features.py`, installed by tests/run.sh) against a frontend and a real
//! worker: every check of the script must pass.

use std::process::Command;
use std::time::Duration;

use dynamo_e2e::{Cluster, MODEL};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_client_gets_what_it_asks_for() {
    let mut c = Cluster::start(&[]);
    c.add_worker(&["--threads", "2"]);
    c.wait_instances(1, Duration::from_secs(30)).await.unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openai/client_features.py");
    let url = format!("{}/v1", c.url());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(url)
            .arg(MODEL)
            .output()
            .expect("python3 runs (tests/run.sh installs the openai client)")
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    assert!(text.matches("ok ").count() >= 22, "{text}");
}
