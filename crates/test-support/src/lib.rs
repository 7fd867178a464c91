//! Test helpers shared by crate tests and the e2e suite: a real `nats-server` on a free port
//! with its own JetStream store (killed on drop), child processes with readiness polling, and
//! helpers to find the workspace's binaries. No test assumes a service is already running.

pub mod nats;
pub mod process;

pub use nats::NatsServer;
pub use process::{wait_until, Child};
