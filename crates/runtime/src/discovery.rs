//! Discovery through a JetStream key-value bucket: each live instance keeps one key, refreshed
//! on a heartbeat (its lease); a clean shutdown deletes the key; a dead worker's key ages out
//! (the bucket's `max_age`, with server delete markers) and watchers also expire entries not
//! refreshed within the lease, so a killed worker disappears even if a marker is missed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::addressing::EndpointId;
use crate::error::RuntimeError;

/// What one live instance publishes about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceRecord {
    pub namespace: String,
    pub component: String,
    pub endpoint: String,
    pub instance_id: u64,
    /// The NATS subject the instance listens on.
    pub subject: String,
    /// Application data (the model card for LLM workers).
    #[serde(default)]
    pub card: serde_json::Value,
    /// The instance's system status port, when it runs one.
    #[serde(default)]
    pub system_port: Option<u16>,
}

impl InstanceRecord {
    /// Whether a record read from the bucket under `key` is well formed: valid names, the
    /// key and subject this runtime would give it (a record cannot point traffic at another
    /// instance's subject, nor hide under another key), and a card that is an object.
    pub fn check(&self, key: &str) -> Result<(), String> {
        let id = EndpointId::new(&self.namespace, &self.component, &self.endpoint)
            .map_err(|e| e.to_string())?;
        if key != id.discovery_key(self.instance_id) {
            return Err(format!("key {key:?} does not match the record's address"));
        }
        if self.subject != id.instance_subject(self.instance_id) {
            return Err(format!(
                "subject {:?} does not match the record's address",
                self.subject
            ));
        }
        if !(self.card.is_object() || self.card.is_null()) {
            return Err("card is not an object".into());
        }
        Ok(())
    }

    pub fn endpoint_id(&self) -> EndpointId {
        EndpointId {
            namespace: self.namespace.clone(),
            component: self.component.clone(),
            endpoint: self.endpoint.clone(),
        }
    }
}

/// The live instances a watcher knows, by instance id.
pub type InstanceMap = Arc<HashMap<u64, InstanceRecord>>;

/// Open (or create) the discovery bucket.
pub(crate) async fn bucket(
    js: &jetstream::Context,
    name: &str,
    lease_ttl: Duration,
) -> Result<kv::Store, RuntimeError> {
    match js.get_key_value(name).await {
        Ok(s) => Ok(s),
        Err(_) => {
            let cfg = kv::Config {
                bucket: name.to_string(),
                history: 1,
                max_age: lease_ttl,
                storage: jetstream::stream::StorageType::Memory,
                limit_markers: Some(Duration::from_secs(1)),
                ..Default::default()
            };
            match js.create_key_value(cfg).await {
                Ok(s) => Ok(s),
                // Another process may have created it in between.
                Err(e) => js
                    .get_key_value(name)
                    .await
                    .map_err(|_| RuntimeError::Discovery(e.to_string())),
            }
        }
    }
}

/// What one discovery lease keeps alive.
pub(crate) struct Lease {
    pub js: jetstream::Context,
    pub bucket_name: String,
    pub lease_ttl: Duration,
    pub heartbeat: Duration,
    pub key: String,
    pub record: InstanceRecord,
}

/// Keep an instance's key alive until `stop` fires, then delete it; the first put's outcome is
/// reported on `first_put`.
pub(crate) async fn run_lease(
    lease: Lease,
    stop: CancellationToken,
    first_put: tokio::sync::oneshot::Sender<Result<(), RuntimeError>>,
) {
    let Lease {
        js,
        bucket_name,
        lease_ttl,
        heartbeat,
        key,
        record,
    } = lease;
    let value: bytes::Bytes = serde_json::to_vec(&record).expect("serializable").into();
    let mut store: Option<kv::Store> = None;
    let mut first_put = Some(first_put);
    let mut ticker = tokio::time::interval(heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let res = async {
            if store.is_none() {
                store = Some(bucket(&js, &bucket_name, lease_ttl).await?);
            }
            let s = store.as_ref().expect("set above");
            s.put(&key, value.clone())
                .await
                .map(|_| ())
                .map_err(|e| RuntimeError::Discovery(format!("put {key}: {e}")))
        }
        .await;
        match res {
            Ok(()) => {
                if let Some(tx) = first_put.take() {
                    let _ = tx.send(Ok(()));
                }
            }
            Err(e) => {
                // The bucket may be gone (NATS restarted without it): reopen next time.
                store = None;
                tracing::warn!(error = %e, "discovery heartbeat failed; retrying");
                if let Some(tx) = first_put.take() {
                    let _ = tx.send(Err(e));
                }
            }
        }
    }
    if let Some(s) = store {
        if let Err(e) = s.delete(&key).await {
            tracing::warn!(error = %e, %key, "could not delete discovery key");
        } else {
            tracing::info!(%key, "deregistered from discovery");
        }
    }
}

/// Watch the instances under `prefix` (a key prefix such as `instances.dynamo`), publishing the
/// live set on a `watch` channel. Re-creates the watch when it fails or falls silent.
pub(crate) async fn run_watcher(
    js: jetstream::Context,
    bucket_name: String,
    lease_ttl: Duration,
    prefix: String,
    tx: watch::Sender<InstanceMap>,
    stop: CancellationToken,
) {
    let mut seen: HashMap<String, (InstanceRecord, Instant)> = HashMap::new();
    let filter = format!("{prefix}.>");
    let publish = |seen: &HashMap<String, (InstanceRecord, Instant)>| {
        let map: HashMap<u64, InstanceRecord> = seen
            .values()
            .map(|(r, _)| (r.instance_id, r.clone()))
            .collect();
        let changed = {
            let cur = tx.borrow();
            cur.len() != map.len()
                || map
                    .iter()
                    .any(|(k, v)| cur.get(k).map(|c| c != v).unwrap_or(true))
        };
        if changed {
            tx.send_replace(Arc::new(map));
        }
    };
    'outer: loop {
        let watch = async {
            let store = bucket(&js, &bucket_name, lease_ttl).await?;
            store
                .watch_with_history(&filter)
                .await
                .map_err(|e| RuntimeError::Discovery(e.to_string()))
        }
        .await;
        let mut watch = match watch {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "discovery watch failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => break 'outer,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue 'outer,
                }
            }
        };
        let mut last_msg = Instant::now();
        let mut sweep = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break 'outer,
                item = watch.next() => {
                    let Some(item) = item else { break };
                    let entry = match item {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::warn!(error = %e, "discovery watch error; re-watching");
                            break;
                        }
                    };
                    last_msg = Instant::now();
                    match entry.operation {
                        kv::Operation::Put => match serde_json::from_slice::<InstanceRecord>(&entry.value)
                            .map_err(|e| e.to_string())
                            .and_then(|r| r.check(&entry.key).map(|()| r))
                        {
                            Ok(rec) => {
                                // Age from the server's timestamp, so a replayed old value
                                // (after re-watching) does not renew a dead instance's lease.
                                let now_ns = std::time::SystemTime::now()
                                    .duration_since(std::time::UNIX_EPOCH)
                                    .map(|d| d.as_nanos() as i128)
                                    .unwrap_or(0);
                                let age_ns = (now_ns - entry.created.unix_timestamp_nanos())
                                    .clamp(0, lease_ttl.as_nanos() as i128);
                                let at = Instant::now()
                                    .checked_sub(Duration::from_nanos(age_ns as u64))
                                    .unwrap_or_else(Instant::now);
                                seen.insert(entry.key.clone(), (rec, at));
                            }
                            Err(e) => tracing::warn!(key = %entry.key, error = %e, "ignoring malformed discovery record"),
                        },
                        kv::Operation::Delete | kv::Operation::Purge => {
                            seen.remove(&entry.key);
                        }
                    }
                    publish(&seen);
                }
                _ = sweep.tick() => {
                    let now = Instant::now();
                    seen.retain(|_, (_, t)| now.duration_since(*t) < lease_ttl);
                    publish(&seen);
                    // A healthy watch sees heartbeats; silence while instances exist means the
                    // consumer was lost (e.g. NATS restarted): watch again.
                    if now.duration_since(last_msg) > lease_ttl / 2 && !seen.is_empty() {
                        tracing::debug!("discovery watch silent; re-watching");
                        break;
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break 'outer,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> InstanceRecord {
        let id = EndpointId::new("dynamo", "backend", "generate").unwrap();
        InstanceRecord {
            namespace: "dynamo".into(),
            component: "backend".into(),
            endpoint: "generate".into(),
            instance_id: 7,
            subject: id.instance_subject(7),
            card: serde_json::json!({}),
            system_port: None,
        }
    }

    #[test]
    fn records_from_the_bucket_are_checked() {
        let key = "instances.dynamo.backend.generate.0000000000000007";
        assert!(rec().check(key).is_ok());
        let mut r = rec();
        r.component = "back\0end".into();
        assert!(r.check(key).unwrap_err().contains("invalid component"));
        let mut r = rec();
        r.subject = "dynamo_backend.generate-8".into();
        assert!(r.check(key).unwrap_err().contains("subject"));
        assert!(rec()
            .check("instances.dynamo.backend.generate.0000000000000008")
            .is_err());
        let mut r = rec();
        r.card = serde_json::json!("a string");
        assert!(r.check(key).is_err());
    }
}
