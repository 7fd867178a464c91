//! NATS decentralized (operator/JWT) authentication for tests, without `nsc`: an operator,
//! a system account and an application account with JetStream, and users whose `.creds`
//! files a fleet connects with. The JWTs are the NATS v2 format: a
//! `{"typ":"JWT","alg":"ed25519-nkey"}` header, JSON claims naming the issuer's and the
//! subject's public nkeys, and an ed25519 signature by the issuer's key, each part base64url
//! without padding. The server gets them through a config file with the memory resolver.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use nkeys::KeyPair;
use serde_json::{json, Value};

/// "No limit" in NATS claims; a zero limit means none is allowed.
const NO_LIMIT: i64 = -1;

/// An operator with a system account and one application account.
pub struct Operator {
    operator: KeyPair,
    system: KeyPair,
    account: KeyPair,
}

impl Default for Operator {
    fn default() -> Self {
        Self::new()
    }
}

impl Operator {
    pub fn new() -> Operator {
        Operator {
            operator: KeyPair::new_operator(),
            system: KeyPair::new_account(),
            account: KeyPair::new_account(),
        }
    }

    /// Write the server config (operator JWT, memory resolver preloaded with both accounts)
    /// into `dir`; pass it to nats-server with `-c`.
    pub fn server_config(&self, dir: &Path) -> PathBuf {
        let op = self.operator_jwt();
        let sys = self.account_jwt(&self.system, "SYS", false);
        let app = self.account_jwt(&self.account, "APP", true);
        let conf = format!(
            "operator: {op}\nsystem_account: {sys_pub}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {sys_pub}: {sys}\n  {app_pub}: {app}\n}}\n",
            sys_pub = self.system.public_key(),
            app_pub = self.account.public_key(),
        );
        let path = dir.join("operator.conf");
        std::fs::write(&path, conf).expect("write nats operator config");
        path
    }

    /// Make a user of the application account and write its `.creds` file into `dir`.
    pub fn user_creds(&self, dir: &Path, name: &str) -> PathBuf {
        let user = KeyPair::new_user();
        let claims = json!({
            "type": "user",
            "version": 2,
            "pub": {},
            "sub": {},
            "subs": NO_LIMIT,
            "data": NO_LIMIT,
            "payload": NO_LIMIT,
        });
        let jwt = sign(&self.account, &user, name, claims);
        let seed = user.seed().expect("user seed");
        let text = format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        );
        let path = dir.join(format!("{name}.creds"));
        std::fs::write(&path, text).expect("write creds file");
        path
    }

    fn operator_jwt(&self) -> String {
        let claims = json!({"type": "operator", "version": 2});
        sign(&self.operator, &self.operator, "test-operator", claims)
    }

    fn account_jwt(&self, account: &KeyPair, name: &str, jetstream: bool) -> String {
        let mut limits = json!({
            "subs": NO_LIMIT, "conn": NO_LIMIT, "leaf": NO_LIMIT, "imports": NO_LIMIT,
            "exports": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT, "wildcards": true,
        });
        if jetstream {
            for k in ["mem_storage", "disk_storage", "streams", "consumer"] {
                limits[k] = json!(NO_LIMIT);
            }
        }
        let claims = json!({"type": "account", "version": 2, "limits": limits});
        sign(&self.operator, account, name, claims)
    }
}

/// A JWT for `subject` issued (signed) by `issuer`, with `nats` as its NATS claims.
fn sign(issuer: &KeyPair, subject: &KeyPair, name: &str, nats: Value) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let claims = json!({
        "jti": format!("{:X}{}", now, &subject.public_key()[1..9]),
        "iat": (now / 1_000_000_000) as u64,
        "iss": issuer.public_key(),
        "sub": subject.public_key(),
        "name": name,
        "nats": nats,
    });
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{body}");
    let sig = issuer.sign(signed.as_bytes()).expect("sign JWT");
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
}
