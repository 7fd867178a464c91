//! Wiring both worker binaries (`dynamo-worker`, `dynamo-mocker`) share: connect to the
//! runtime and start the system status server, and turn an engine's output channel (or its
//! refusal) into a request-plane handler stream. Included by each binary with `#[path]`.

use dynamo_protocols::EngineOutput;
use dynamo_runtime::error::ErrorKind;
use dynamo_runtime::{DistributedRuntime, HandlerError, HandlerStream};
use futures::StreamExt;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::runtime_args::RuntimeArgs;
use crate::system_args::SystemArgs;

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
