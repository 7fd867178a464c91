//! NATS as an unreliable or guarded dependency: with user/password authentication the whole
//! fleet serves when `NATS_SERVER` carries the credentials, and a wrong password is a clear
//! error that never echoes the secret; while NATS is down the frontend's and the worker's
//! `/health` answer 503, and both are healthy and serving again once it is back. TLS (with a
//! CA made by openssl) and operator-mode `.creds` files (JWTs signed here) are exercised too.

use std::process::Command;
use std::time::{Duration, Instant};

use dynamo_e2e::{bin, blocking_get, model_cache, requests, run_ok, Child, Cluster};
use dynamo_protocols::names::env;

/// Start a frontend on `nats_url` with `extra` environment that must fail to connect: it exits
/// non-zero; its log, for checks of what it says (and does not say).
fn frontend_that_cannot_connect(
    c: &Cluster,
    name: &str,
    nats_url: &str,
    extra: &[(&str, &str)],
) -> String {
    let mut cmd = Command::new(bin("dynamo-frontend"));
    cmd.env(env::NATS_SERVER, nats_url)
        .env(env::DYN_HTTP_PORT, "0")
        .env(env::DYN_MODEL_CACHE, model_cache())
        .envs(extra.iter().copied());
    let mut bad = Child::spawn(name, cmd, c.dir.path()).unwrap();
    let status = bad.wait_timeout(Duration::from_secs(20)).expect("exits");
    let log = bad.log_text();
    assert!(!status.success(), "{log}");
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_nats_server_work_and_are_never_echoed() {
    let mut c = Cluster::start_with_nats(
        &[],
        &["--user", "fleet", "--pass", "s3cret-pw"],
        Some("fleet:s3cret-pw"),
    );
    c.add_mocker(&["--speedup-ratio", "100"]);
    c.wait_instances(1, Duration::from_secs(20)).await.unwrap();
    let (st, _, v) = c
        .post("/v1/completions", &requests::completion("Hi", 2))
        .await;
    assert_eq!(st, 200, "{v}");
    for log in [c.frontend_log(), c.workers[0].child.log_text()] {
        assert!(!log.contains("s3cret-pw"), "{log}");
    }
    // A wrong password: the process exits with an error that names the server, not the secret.
    let bad_url = format!("nats://fleet:wrong-pw@127.0.0.1:{}", c.nats.port);
    let log = frontend_that_cannot_connect(&c, "frontend-bad-pw", &bad_url, &[]);
    assert!(log.contains(&format!("127.0.0.1:{}", c.nats.port)), "{log}");
    assert!(!log.contains("wrong-pw"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_ready_while_nats_is_down() {
    let mut c = Cluster::start(&[]);
    c.add_mocker(&["--speedup-ratio", "100"]);
    c.wait_instances(1, Duration::from_secs(20)).await.unwrap();
    let frontend = format!("{}/health", c.url());
    let worker = format!("http://127.0.0.1:{}/health", c.workers[0].system_port);
    let status = |url: &str| blocking_get(url).map(|r| r.0);
    assert_eq!(status(&frontend), Some(200));
    assert_eq!(status(&worker), Some(200));

    c.nats.stop();
    let until = |want: u16| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if status(&frontend) == Some(want) && status(&worker) == Some(want) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    };
    assert!(until(503), "both report not-ready while NATS is down");
    c.nats.restart();
    assert!(until(200), "both ready again once NATS is back");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (st, _, _) = c
            .post("/v1/completions", &requests::completion("Hi", 2))
            .await;
        if st == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not serving after NATS came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A CA and a server certificate for 127.0.0.1, made with openssl in `dir`.
fn tls_files(dir: &std::path::Path) -> (String, String, String) {
    let p = |n: &str| dir.join(n).display().to_string();
    let run = |args: &[&str]| {
        run_ok(Command::new("openssl").args(args));
    };
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &p("server.key"),
        "-out",
        &p("server.csr"),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &p("san.ext"),
        "-out",
        &p("server.pem"),
    ]);
    (p("ca.pem"), p("server.pem"), p("server.key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_serves_over_nats_tls() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_files(certs.path());
    let tls = [
        "--tls",
        "--tlscert",
        cert.as_str(),
        "--tlskey",
        key.as_str(),
    ];
    let ca_env = [(env::DYN_NATS_TLS_CA, ca.as_str())];
    let mut c = Cluster::start_with_nats(&ca_env, &tls, None);
    c.spawn(
        dynamo_e2e::WorkerSpec::new(dynamo_e2e::WorkerKind::Mocker)
            .args(&["--speedup-ratio", "100"])
            .env(&ca_env),
    );
    c.wait_instances(1, Duration::from_secs(20)).await.unwrap();
    let (st, _, v) = c
        .post("/v1/completions", &requests::completion("Hi", 2))
        .await;
    assert_eq!(st, 200, "{v}");
    // Without the CA, the server's certificate is not trusted: a clear connect error.
    let log = frontend_that_cannot_connect(&c, "frontend-no-ca", &c.nats.url(), &[]);
    assert!(log.contains("cannot connect to NATS"), "{log}");
}

/// Decentralized authentication (operator mode): the server trusts an operator and knows its
/// accounts; each process connects as a user with a `.creds` file (JWT + nkey seed). The fleet
/// serves, including discovery over JetStream in the account; a process without creds, or with
/// a user signed by another operator's account, is refused with a clear error that never prints
/// the seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_serves_with_a_creds_file_in_operator_mode() {
    use dynamo_e2e::nats_jwt::Operator;
    let keys = tempfile::tempdir().unwrap();
    let op = Operator::new();
    let conf = op.server_config(keys.path());
    let creds = op.user_creds(keys.path(), "fleet");
    let seed = std::fs::read_to_string(&creds).unwrap();
    let seed = seed
        .lines()
        .find(|l| l.starts_with("SU"))
        .expect("user seed in creds")
        .to_string();
    let creds = creds.display().to_string();
    let creds_env = [(env::DYN_NATS_CREDS_FILE, creds.as_str())];
    let mut c = Cluster::start_with_nats(&creds_env, &["-c", &conf.display().to_string()], None);
    c.spawn(
        dynamo_e2e::WorkerSpec::new(dynamo_e2e::WorkerKind::Mocker)
            .args(&["--speedup-ratio", "100"])
            .env(&creds_env),
    );
    c.wait_instances(1, Duration::from_secs(20)).await.unwrap();
    let (st, _, v) = c
        .post("/v1/completions", &requests::completion("Hi", 2))
        .await;
    assert_eq!(st, 200, "{v}");

    let refused = |name: &str, extra: &[(&str, &str)]| {
        let log = frontend_that_cannot_connect(&c, name, &c.nats.url(), extra);
        assert!(log.contains("cannot connect to NATS"), "{log}");
        assert!(log.contains("authorization violation"), "{log}");
        log
    };
    refused("frontend-no-creds", &[]);
    let stranger = Operator::new().user_creds(keys.path(), "stranger");
    let stranger_seed = std::fs::read_to_string(&stranger).unwrap();
    let stranger = stranger.display().to_string();
    let log = refused(
        "frontend-stranger",
        &[(env::DYN_NATS_CREDS_FILE, stranger.as_str())],
    );
    for line in stranger_seed.lines().filter(|l| l.starts_with("SU")) {
        assert!(!log.contains(line), "{log}");
    }
    for log in [c.frontend_log(), c.workers[0].child.log_text()] {
        assert!(!log.contains(&seed), "{log}");
    }
}
