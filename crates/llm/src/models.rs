//! The models the frontend serves, derived from discovery: which models have live instances,
//! their model cards, and their preprocessors (loaded once, off the async threads, when the
//! first instance of a model appears).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use dynamo_protocols::ModelCard;
use dynamo_runtime::{InstanceMap, InstanceRecord};
use tokio::sync::watch;

use crate::http::metrics::FrontendMetrics;
use crate::preprocess::Preprocessor;
use dynamo_preprocessor::model::{LoadedModel, ModelSource};

/// Turns a model card's `source` (or, failing that, its served name) into a model on this
/// host. The binary supplies it: it decides where the model cache is and whether a missing
/// default model is fetched.
pub type ModelResolver = Arc<
    dyn Fn(&str) -> Result<ModelSource, Box<dyn std::error::Error + Send + Sync>> + Send + Sync,
>;

/// The `model` label of requests for models no worker serves.
pub const UNKNOWN_MODEL_LABEL: &str = "unknown";

/// One served model.
pub struct ModelEntry {
    pub card: ModelCard,
    pub pre: Arc<Preprocessor>,
}

/// A consistent view: models with at least one live instance, and their instances.
#[derive(Default)]
pub struct Snapshot {
    pub instances: HashMap<String, Vec<Arc<InstanceRecord>>>,
}

/// Tracks models and instances; cheap to clone.
#[derive(Clone)]
pub struct ModelManager {
    inner: Arc<Inner>,
}

struct Inner {
    rx: watch::Receiver<InstanceMap>,
    snapshot: RwLock<Arc<Snapshot>>,
    loaded: RwLock<HashMap<String, Arc<ModelEntry>>>,
    resolve: ModelResolver,
    metrics: FrontendMetrics,
    /// Models whose preprocessor is being loaded now (so updates do not load twice).
    loading: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Instances already reported as serving another identity (warned once each).
    warned: std::sync::Mutex<std::collections::HashSet<u64>>,
}

/// Outcome of looking a model up.
pub enum Lookup {
    Ready(Arc<ModelEntry>, Vec<Arc<InstanceRecord>>),
    /// Instances exist but the preprocessor is still loading (or failed to load).
    Loading,
    /// Known earlier, no live instance now.
    NoInstances,
    Unknown,
}

fn card_of(rec: &InstanceRecord) -> Option<ModelCard> {
    serde_json::from_value(rec.card.clone()).ok()
}

impl ModelManager {
    /// Start tracking `rx`; models are loaded from their card's `source` (or served name)
    /// through `resolve`.
    pub fn start(
        rx: watch::Receiver<InstanceMap>,
        resolve: ModelResolver,
        metrics: FrontendMetrics,
    ) -> Self {
        let mm = ModelManager {
            inner: Arc::new(Inner {
                rx: rx.clone(),
                snapshot: RwLock::default(),
                loaded: RwLock::default(),
                resolve,
                metrics,
                loading: Default::default(),
                warned: Default::default(),
            }),
        };
        let this = mm.clone();
        tokio::spawn(async move {
            let mut rx = rx;
            loop {
                let map = rx.borrow_and_update().clone();
                this.apply(&map);
                if rx.changed().await.is_err() {
                    break;
                }
            }
        });
        mm
    }

    fn apply(&self, map: &InstanceMap) {
        let mut instances: HashMap<String, Vec<Arc<InstanceRecord>>> = HashMap::new();
        let mut cards: HashMap<String, ModelCard> = HashMap::new();
        let mut sorted: Vec<&InstanceRecord> = map.values().collect();
        sorted.sort_by_key(|r| r.instance_id);
        // Each model's identity: the card it was loaded from, else its first instance's.
        {
            let loaded = self.inner.loaded.read().unwrap();
            for (name, e) in loaded.iter() {
                cards.insert(name.clone(), e.card.clone());
            }
        }
        for rec in sorted {
            let Some(card) = card_of(rec) else { continue };
            let name = card.served_model_name.clone();
            let reference = cards.entry(name.clone()).or_insert_with(|| card.clone());
            if reference.model_id != card.model_id {
                if self.inner.warned.lock().unwrap().insert(rec.instance_id) {
                    tracing::warn!(
                        model = %name,
                        instance = %format!("{:x}", rec.instance_id),
                        serves = %card.model_id,
                        expected = %reference.model_id,
                        "instance serves something else under this model's name; not routed to"
                    );
                }
                continue;
            }
            instances
                .entry(name)
                .or_default()
                .push(Arc::new(rec.clone()));
        }
        cards.retain(|name, _| instances.contains_key(name));
        // Forget instances that left, so the set follows discovery instead of growing with
        // every id a peer ever registered.
        let mut warned = self.inner.warned.lock().unwrap();
        if !warned.is_empty() {
            let live: std::collections::HashSet<u64> =
                map.values().map(|r| r.instance_id).collect();
            warned.retain(|id| live.contains(id));
        }
        drop(warned);
        *self.inner.snapshot.write().unwrap() = Arc::new(Snapshot { instances });
        for (name, card) in cards {
            if self.inner.loaded.read().unwrap().contains_key(&name) {
                continue;
            }
            self.load(name, card);
        }
    }

    fn load(&self, name: String, card: ModelCard) {
        if !self.inner.loading.lock().unwrap().insert(name.clone()) {
            return;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let resolve = &this.inner.resolve;
            type BoxError = Box<dyn std::error::Error + Send + Sync>;
            let src = resolve(&card.source).or_else(|by_source| {
                resolve(&card.served_model_name).map_err(|by_name| -> BoxError {
                    format!("source: {by_source}; served name: {by_name}").into()
                })
            });
            let res = src.and_then(|s| Ok(LoadedModel::load(s)?));
            match res {
                Ok(m) => {
                    let pre = Arc::new(Preprocessor::new(m, Some(card.context_length)));
                    let met = &this.inner.metrics;
                    let set = |g: &prometheus::IntGaugeVec, v: u64| {
                        g.with_label_values(&[name.as_str()]).set(v as i64)
                    };
                    set(&met.model_total_kv_blocks, card.total_kv_blocks);
                    set(&met.model_max_num_seqs, card.max_num_seqs);
                    set(
                        &met.model_max_num_batched_tokens,
                        card.max_num_batched_tokens,
                    );
                    set(&met.model_context_length, card.context_length as u64);
                    set(
                        &met.model_kv_cache_block_size,
                        card.kv_cache_block_size as u64,
                    );
                    met.model_ready(&name);
                    tracing::info!(model = %name, source = %card.source, "model ready");
                    this.inner
                        .loaded
                        .write()
                        .unwrap()
                        .insert(name.clone(), Arc::new(ModelEntry { card, pre }));
                }
                Err(e) => {
                    tracing::error!(model = %name, error = %e, "cannot load model for preprocessing")
                }
            }
            this.inner.loading.lock().unwrap().remove(&name);
        });
    }

    /// The discovery watch this manager follows (for the KV router's worker tracking).
    pub fn instances_rx(&self) -> watch::Receiver<InstanceMap> {
        self.inner.rx.clone()
    }

    /// Models with at least one live instance and a loaded preprocessor, sorted.
    pub fn list(&self) -> Vec<String> {
        let snap = self.inner.snapshot.read().unwrap().clone();
        let loaded = self.inner.loaded.read().unwrap();
        let mut v: Vec<String> = snap
            .instances
            .keys()
            .filter(|k| loaded.contains_key(*k))
            .cloned()
            .collect();
        v.sort();
        v
    }

    pub fn lookup(&self, model: &str) -> Lookup {
        let snap = self.inner.snapshot.read().unwrap().clone();
        let entry = self.inner.loaded.read().unwrap().get(model).cloned();
        match (entry, snap.instances.get(model)) {
            (Some(e), Some(i)) if !i.is_empty() => Lookup::Ready(e, i.clone()),
            (None, Some(_)) => Lookup::Loading,
            (Some(_), _) => Lookup::NoInstances,
            (None, None) => Lookup::Unknown,
        }
    }

    /// The `model` label for a request naming `model`: itself when a worker serves (or served)
    /// it, else `"unknown"`, so made-up names cannot grow the frontend's series without bound.
    pub fn metric_label<'a>(&self, model: &'a str) -> &'a str {
        let known = self.inner.loaded.read().unwrap().contains_key(model)
            || self
                .inner
                .snapshot
                .read()
                .unwrap()
                .instances
                .contains_key(model);
        if known {
            model
        } else {
            UNKNOWN_MODEL_LABEL
        }
    }

    /// Every live instance of a model that is ready (its tokenizer and chat template loaded):
    /// what `/health` lists. An instance whose model is still loading, or cannot load, is not
    /// one a request can use yet.
    pub fn ready_instances(&self) -> Vec<Arc<InstanceRecord>> {
        let snap = self.inner.snapshot.read().unwrap().clone();
        let loaded = self.inner.loaded.read().unwrap();
        let mut v: Vec<_> = snap
            .instances
            .iter()
            .filter(|(model, _)| loaded.contains_key(*model))
            .flat_map(|(_, i)| i.iter().cloned())
            .collect();
        v.sort_by_key(|r| r.instance_id);
        v
    }

    /// Whether an instance is still in discovery.
    pub fn is_alive(&self, instance_id: u64) -> bool {
        self.inner.rx.borrow().contains_key(&instance_id)
    }

    /// A closure answering [`Self::is_alive`] for one instance.
    pub fn alive_fn(&self, instance_id: u64) -> Box<dyn Fn() -> bool + Send + Sync> {
        let rx = self.inner.rx.clone();
        Box::new(move || rx.borrow().contains_key(&instance_id))
    }
}
