//! Test helpers shared by crate tests and the e2e suite: a real `nats-server` on a free port
//! with its own JetStream store (killed on drop), child processes with readiness polling, the
//! default model's location, and helpers to find the workspace's binaries. No test assumes a service is already running.

pub mod model;
pub mod nats;
pub mod process;

pub use model::{default_model, model_cache};
pub use nats::NatsServer;
pub use process::{wait_until, Child};
