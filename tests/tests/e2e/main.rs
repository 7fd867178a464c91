//! The end-to-end suite as one test binary (one link of the whole stack instead of one per
//! file): real nats-server, the real binaries, the real model and Prometheus, talking to the
//! frontend over HTTP like a user. Each module is one area; the harness is `dynamo_e2e`.

mod api;
mod choices;
mod dashboards;
mod dashboards_live;
mod disagg;
mod disagg_trace;
mod engine_failure;
mod faults;
mod hicache;
mod hostile_client;
mod hostile_peer;
mod logprobs;
mod metrics;
mod migration;
mod nats_outage;
mod openai_client;
mod overload;
mod router;
mod router_engine;
mod tidy;
mod tracing;
mod worker;
