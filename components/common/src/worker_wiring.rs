//! Wiring both worker binaries (`dynamo-worker`, `dynamo-mocker`) share: the model and
//! endpoint flags, connecting to the runtime and starting the system status server, publishing
//! KV events and load for the router, and turning an engine's output channel (or its refusal)
//! into a request-plane handler stream.

use std::path::PathBuf;

use clap::Args;
use dynamo_kv_router::publisher;
use dynamo_preprocessor::model;
use dynamo_protocols::names::{defaults, env};
use dynamo_runtime::EndpointId;

use dynamo_protocols::{EngineOutput, KvCacheEvent, LoadReport};
use dynamo_runtime::error::ErrorKind;
use dynamo_runtime::{DistributedRuntime, HandlerError, HandlerStream};
use futures::StreamExt;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::runtime_args::RuntimeArgs;
use crate::system_args::SystemArgs;

/// Which model a worker serves, under what name, and where it registers.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model: a .gguf file, a Hugging Face directory (config.json, tokenizer.json, and for
    /// dynamo-worker *.safetensors), or `SmolLM2-135M-Instruct` (fetched into the model cache
    /// when missing).
    #[arg(long, default_value = defaults::MODEL)]
    pub model: String,
    /// Name clients use in `model` (default: the model name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Model cache directory (default ~/.cache/dynamo/models).
    #[arg(long, env = env::DYN_MODEL_CACHE)]
    pub model_cache: Option<PathBuf>,
    /// Namespace the worker registers in (frontends serve the workers of their namespace).
    #[arg(long, env = env::DYN_NAMESPACE, default_value = defaults::NAMESPACE)]
    pub namespace: String,
    /// Component the worker registers as (routers keep one KV index per component).
    #[arg(long, default_value = defaults::COMPONENT)]
    pub component: String,
    /// Endpoint the worker serves requests on.
    #[arg(long, default_value = defaults::ENDPOINT)]
    pub endpoint: String,
}

impl ModelArgs {
    pub fn endpoint_id(&self) -> anyhow::Result<EndpointId> {
        Ok(EndpointId::new(
            &self.namespace,
            &self.component,
            &self.endpoint,
        )?)
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.model_cache
            .clone()
            .unwrap_or_else(|| model::default_cache_dir(std::env::var_os("HOME")))
    }

    /// `--served-model-name`, else the default model's name, else `loaded_name`.
    pub fn served_name(&self, loaded_name: impl FnOnce() -> String) -> String {
        match &self.served_model_name {
            Some(n) => n.clone(),
            None if model::is_default_name(&self.model) => model::DEFAULT_MODEL_NAME.to_string(),
            None => loaded_name(),
        }
    }
}

/// Connect to NATS and, when a system port is configured, serve `/metrics`, `/health`, `/live`.
pub async fn connect(
    rt: &RuntimeArgs,
    system: &SystemArgs,
) -> anyhow::Result<(DistributedRuntime, Option<u16>)> {
    let addr = system.system_addr()?;
    let drt = DistributedRuntime::connect(rt.runtime_config(), system.health_state()?).await?;
    let port = match addr {
        Some(addr) => Some(
            drt.start_system_server(addr, system.status_paths())
                .await?
                .port(),
        ),
        None => None,
    };
    Ok((drt, port))
}

/// Publish an engine's KV events and load (once a second) for the KV router, and answer its
/// re-sync queries, as instance `instance_id` of the worker's component, until shutdown.
pub fn spawn_kv_publisher(
    drt: &DistributedRuntime,
    m: &ModelArgs,
    instance_id: u64,
    events: UnboundedReceiver<KvCacheEvent>,
    load: impl Fn() -> LoadReport + Send + 'static,
) {
    tokio::spawn(publisher::run_publisher(
        drt.events(),
        publisher::PublisherConfig {
            namespace: m.namespace.clone(),
            component: m.component.clone(),
            instance_id,
            load_interval: std::time::Duration::from_secs(1),
        },
        events,
        load,
        drt.stopping(),
    ));
}

/// Stream what the engine sends; dropping the stream drops the receiver, which cancels.
pub fn channel_stream(rx: UnboundedReceiver<EngineOutput>) -> HandlerStream<EngineOutput> {
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|o| (Ok(o), rx)) },
    )
    .boxed()
}

/// A stream of one error (the engine refused the request).
pub fn error_stream(kind: ErrorKind, message: String) -> HandlerStream<EngineOutput> {
    futures::stream::once(async move { Err(HandlerError::new(kind, message)) }).boxed()
}
