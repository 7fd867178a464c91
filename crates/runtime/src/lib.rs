//! The distributed runtime every process builds on: one NATS connection, endpoint addressing
//! (`namespace/component/endpoint`), the request plane (a request in, a stream of responses
//! out, cancellation), discovery of live instances through a JetStream key-value bucket with
//! heartbeat leases, the events plane (typed publish / subscribe / request-many for KV events,
//! loads and re-sync), the system status server (`/metrics`, `/health`, `/live`) and the
//! `dynamo_component_*` metrics.
//!
//! Configuration comes in as [`RuntimeConfig`]; this crate never reads the environment.

pub mod addressing;
pub mod config;
pub mod discovery;
pub mod egress;
pub mod engine_routes;
pub mod error;
pub mod events;
pub mod ingress;
pub mod metrics;
mod runtime;
pub mod system_status;
pub mod wire;

pub use addressing::EndpointId;
pub use config::{NatsSecurity, RuntimeConfig};
pub use discovery::{InstanceMap, InstanceRecord};
pub use egress::{CallOptions, ResponseStream};
pub use engine_routes::{EngineRouteSlot, EngineRoutes, RouteError, RouteFuture};
pub use error::{HandlerError, RuntimeError};
pub use events::{Events, EventsError, Message, Replier, Subscription};
pub use ingress::{Handler, HandlerStream, RequestContext};
pub use metrics::MetricsRegistry;
pub use runtime::DistributedRuntime;
pub use system_status::{HealthState, StatusPaths};
pub use tokio_util::sync::CancellationToken;
