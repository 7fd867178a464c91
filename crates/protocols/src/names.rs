//! Names users see: environment variables, flag defaults, span names, metric names and label
//! names. Defined once here: the binaries' flags use them (`env = names::env::…`), the code
//! that records spans and metrics uses them, and the tidy test checks them against the
//! project's reference pages in `docs/` (which other tests keep equal to the live endpoints).

/// Environment variables the binaries read (libraries never read the environment).
pub mod env {
    pub const NATS_SERVER: &str = "NATS_SERVER";
    pub const DYN_HTTP_PORT: &str = "DYN_HTTP_PORT";
    pub const DYN_HTTP_HOST: &str = "DYN_HTTP_HOST";
    pub const DYN_HTTP_BODY_LIMIT_MB: &str = "DYN_HTTP_BODY_LIMIT_MB";
    pub const DYN_HTTP_MAX_INFLIGHT_REQUESTS: &str = "DYN_HTTP_MAX_INFLIGHT_REQUESTS";
    pub const DYN_HTTP_OVERLOAD_STATUS_CODE: &str = "DYN_HTTP_OVERLOAD_STATUS_CODE";
    pub const DYN_HTTP_REQUEST_TIMEOUT: &str = "DYN_HTTP_REQUEST_TIMEOUT";
    pub const DYN_MIGRATION_LIMIT: &str = "DYN_MIGRATION_LIMIT";
    pub const DYN_HTTP_API_KEY: &str = "DYN_HTTP_API_KEY";
    pub const DYN_NATS_CREDS_FILE: &str = "DYN_NATS_CREDS_FILE";
    pub const DYN_STREAM_TIMEOUT: &str = "DYN_STREAM_TIMEOUT";
    pub const DYN_NATS_TLS_CA: &str = "DYN_NATS_TLS_CA";
    pub const DYN_NATS_TLS_CERT: &str = "DYN_NATS_TLS_CERT";
    pub const DYN_NATS_TLS_KEY: &str = "DYN_NATS_TLS_KEY";
    pub const DYN_HTTP_HEADER_TIMEOUT: &str = "DYN_HTTP_HEADER_TIMEOUT";
    pub const DYN_HTTP_BODY_TIMEOUT: &str = "DYN_HTTP_BODY_TIMEOUT";
    pub const DYN_HTTP_MAX_CONNECTIONS: &str = "DYN_HTTP_MAX_CONNECTIONS";
    pub const DYN_SYSTEM_PORT: &str = "DYN_SYSTEM_PORT";
    pub const DYN_SYSTEM_HOST: &str = "DYN_SYSTEM_HOST";
    pub const DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS: &str = "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS";
    pub const DYN_GRACEFUL_SHUTDOWN_TIMEOUT: &str = "DYN_GRACEFUL_SHUTDOWN_TIMEOUT";
    pub const DYN_SYSTEM_STARTING_HEALTH_STATUS: &str = "DYN_SYSTEM_STARTING_HEALTH_STATUS";
    pub const DYN_SYSTEM_HEALTH_PATH: &str = "DYN_SYSTEM_HEALTH_PATH";
    pub const DYN_SYSTEM_LIVE_PATH: &str = "DYN_SYSTEM_LIVE_PATH";
    pub const DYN_LOG: &str = "DYN_LOG";
    pub const DYN_LOGGING_JSONL: &str = "DYN_LOGGING_JSONL";
    pub const DYN_ROUTER_MODE: &str = "DYN_ROUTER_MODE";
    pub const DYN_KV_OVERLAP_SCORE_WEIGHT: &str = "DYN_KV_OVERLAP_SCORE_WEIGHT";
    pub const DYN_ROUTER_TEMPERATURE: &str = "DYN_ROUTER_TEMPERATURE";
    pub const DYN_KV_EVENTS: &str = "DYN_KV_EVENTS";
    pub const DYN_KV_CACHE_BLOCK_SIZE: &str = "DYN_KV_CACHE_BLOCK_SIZE";
    pub const DYN_NAMESPACE: &str = "DYN_NAMESPACE";
    pub const DYN_MODEL_CACHE: &str = "DYN_MODEL_CACHE";
    pub const DYN_ENABLE_FORCE_INCLUDE_USAGE: &str = "DYN_ENABLE_FORCE_INCLUDE_USAGE";
    /// The worker's `--kernels` (`auto` or `portable`).
    pub const DYN_ENGINE_KERNELS: &str = "DYN_ENGINE_KERNELS";
    pub const OTEL_EXPORT_ENABLED: &str = "OTEL_EXPORT_ENABLED";
    pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
    pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
}

/// Defaults of flags shared by several binaries (and by the launch scripts and tests).
pub mod defaults {
    pub const NATS_SERVER: &str = "nats://127.0.0.1:4222";
    pub const HTTP_PORT: u16 = 8000;
    pub const HTTP_HOST: &str = "0.0.0.0";
    pub const SYSTEM_HOST: &str = "0.0.0.0";
    pub const NAMESPACE: &str = "dynamo";
    /// Component of aggregated (and decode) workers.
    pub const COMPONENT: &str = "backend";
    /// Component of prefill workers.
    pub const PREFILL_COMPONENT: &str = "prefill";
    pub const ENDPOINT: &str = "generate";
    pub const HEALTH_PATH: &str = "/health";
    pub const LIVE_PATH: &str = "/live";
    pub const LOG: &str = "info";
    pub const OTLP_TRACES_ENDPOINT: &str = "http://localhost:4317";
    /// `service.name` of a process's runtime spans unless `OTEL_SERVICE_NAME` says otherwise.
    pub const SERVICE_NAME: &str = "dynamo";
    pub const GRACEFUL_SHUTDOWN_TIMEOUT_S: u64 = 30;
    pub const HTTP_BODY_LIMIT_MB: usize = 45;
    /// `--migration-limit`: as Dynamo's default.
    pub const MIGRATION_LIMIT: u32 = 3;
    /// `--model` of the worker binaries.
    pub const MODEL: &str = "SmolLM2-135M-Instruct";
    /// The frontend's `--router-mode`.
    pub const ROUTER_MODE: &str = "round-robin";
    /// The frontend's `--router-ttl-secs` (approximate KV routing).
    pub const ROUTER_TTL_SECS: f64 = 120.0;
    /// `dynamo-trace --listen`: where the OTLP/gRPC receiver binds.
    pub const TRACE_LISTEN: &str = "127.0.0.1:4317";
}

/// `dynamo-mocker` flag defaults.
pub mod mocker {
    pub const SPEEDUP_RATIO: f64 = 1.0;
    pub const MAX_NUM_SEQS: usize = 256;
    pub const MAX_NUM_BATCHED_TOKENS: usize = 8192;
    pub const NUM_GPU_BLOCKS: usize = 16384;
    pub const BLOCK_SIZE: usize = 16;
}

/// `dynamo-worker` flag defaults (SGLang's names) and the engine's span service.
pub mod worker {
    pub const PAGE_SIZE: usize = 16;
    pub const MAX_RUNNING_REQUESTS: usize = 64;
    /// `--max-queued-requests`: the waiting queue's bound.
    pub const MAX_QUEUED_REQUESTS: usize = 1024;
    pub const KV_CACHE_MEMORY_MB: usize = 1024;
    pub const CHUNKED_PREFILL_SIZE: usize = 512;
    /// `--otlp-traces-endpoint` (host:port, as SGLang takes it).
    pub const OTLP_TRACES_ENDPOINT: &str = "localhost:4317";
    /// `service.name` of the engine's spans.
    pub const ENGINE_SERVICE_NAME: &str = "sglang";
    /// `--disaggregation-bootstrap-port`: the prefill worker's KV transfer server.
    pub const DISAGGREGATION_BOOTSTRAP_PORT: u16 = 12345;
    /// `--disaggregation-bootstrap-timeout`: seconds an unclaimed room keeps its KV.
    pub const DISAGGREGATION_BOOTSTRAP_TIMEOUT_S: f64 = 30.0;
    /// `--host`: the interface the bootstrap server binds.
    pub const HOST: &str = "0.0.0.0";
}

/// Span names (runtime spans; the engine's are built in `dynamo-engine`'s trace module).
pub mod spans {
    pub const HTTP_REQUEST: &str = "http-request";
    pub const HANDLE_PAYLOAD: &str = "handle_payload";
    pub const ROUTE_REQUEST: &str = "kv_router.route_request";
    pub const COMPUTE_BLOCK_HASHES: &str = "kv_router.compute_block_hashes";
    pub const COMPUTE_SEQ_HASHES: &str = "kv_router.compute_seq_hashes";
    pub const FIND_MATCHES: &str = "kv_router.find_matches";
    pub const SELECT_WORKER: &str = "kv_router.select_worker";
    pub const SCHEDULE: &str = "kv_router.schedule";
    /// The engine's root span of a request (aggregated serving: room 0).
    pub const BOOTSTRAP_ROOM_0: &str = "Bootstrap Room 0x0";
    /// Disaggregated requests' room spans are `"Bootstrap Room 0x<room in hex>"`.
    pub const BOOTSTRAP_ROOM_PREFIX: &str = "Bootstrap Room ";
    /// Request spans of disaggregated requests: `"prefill Req …"`, `"decode Req …"`.
    pub const PREFILL_REQ_PREFIX: &str = "prefill Req ";
    pub const DECODE_REQ_PREFIX: &str = "decode Req ";
    /// The engine's request span is `" Req <first 8 of rid>"` (SGLang's leading space).
    pub const REQ_PREFIX: &str = " Req ";
    /// Thread spans are `"<label> (host:<host> | pid:<pid>)"`.
    pub const TOKENIZER_THREAD: &str = "Tokenizer";
    pub const SCHEDULER_THREAD: &str = "Scheduler [TP 0]";
    /// Stage slices under the thread spans.
    pub const TOKENIZE: &str = "tokenize";
    pub const DISPATCH: &str = "dispatch";
    pub const REQUEST_PROCESS: &str = "request_process";
    pub const PREFILL_FORWARD: &str = "prefill_forward";
    pub const CHUNKED_PREFILL: &str = "chunked_prefill";
    pub const DECODE_LOOP: &str = "decode_loop";
}

/// Prometheus label names.
pub mod labels {
    pub const NAMESPACE: &str = "dynamo_namespace";
    pub const COMPONENT: &str = "dynamo_component";
    pub const ENDPOINT: &str = "dynamo_endpoint";
    pub const MODEL: &str = "model";
    pub const ERROR_TYPE: &str = "error_type";
}

/// `dynamo_component_*`: work-handler metrics of every served endpoint.
pub mod component {
    pub const REQUESTS_TOTAL: &str = "dynamo_component_requests_total";
    pub const REQUEST_BYTES_TOTAL: &str = "dynamo_component_request_bytes_total";
    pub const RESPONSE_BYTES_TOTAL: &str = "dynamo_component_response_bytes_total";
    pub const INFLIGHT_REQUESTS: &str = "dynamo_component_inflight_requests";
    pub const REQUEST_DURATION_SECONDS: &str = "dynamo_component_request_duration_seconds";
    pub const ERRORS_TOTAL: &str = "dynamo_component_errors_total";
    pub const UPTIME_SECONDS: &str = "dynamo_component_uptime_seconds";
    pub const TOTAL_BLOCKS: &str = "dynamo_component_total_blocks";
    pub const GPU_CACHE_USAGE_PERCENT: &str = "dynamo_component_gpu_cache_usage_percent";
    pub const MODEL_LOAD_TIME_SECONDS: &str = "dynamo_component_model_load_time_seconds";
    pub const KV_CACHE_EVENTS_APPLIED: &str = "dynamo_component_kv_cache_events_applied";
}

/// `dynamo_frontend_*`: HTTP-level metrics of the frontend.
pub mod frontend {
    pub const REQUESTS_TOTAL: &str = "dynamo_frontend_requests_total";
    pub const INFLIGHT_REQUESTS: &str = "dynamo_frontend_inflight_requests";
    pub const QUEUED_REQUESTS: &str = "dynamo_frontend_queued_requests";
    pub const DISCONNECTED_CLIENTS: &str = "dynamo_frontend_disconnected_clients";
    pub const REQUEST_DURATION_SECONDS: &str = "dynamo_frontend_request_duration_seconds";
    pub const TIME_TO_FIRST_TOKEN_SECONDS: &str = "dynamo_frontend_time_to_first_token_seconds";
    pub const INTER_TOKEN_LATENCY_SECONDS: &str = "dynamo_frontend_inter_token_latency_seconds";
    pub const INPUT_SEQUENCE_TOKENS: &str = "dynamo_frontend_input_sequence_tokens";
    pub const OUTPUT_SEQUENCE_TOKENS: &str = "dynamo_frontend_output_sequence_tokens";
    pub const OUTPUT_TOKENS_TOTAL: &str = "dynamo_frontend_output_tokens_total";
    pub const CACHED_TOKENS: &str = "dynamo_frontend_cached_tokens";
    pub const TOKENIZER_LATENCY_MS: &str = "dynamo_frontend_tokenizer_latency_ms";
    pub const MODEL_TOTAL_KV_BLOCKS: &str = "dynamo_frontend_model_total_kv_blocks";
    pub const MODEL_MAX_NUM_SEQS: &str = "dynamo_frontend_model_max_num_seqs";
    pub const MODEL_MAX_NUM_BATCHED_TOKENS: &str = "dynamo_frontend_model_max_num_batched_tokens";
    pub const MODEL_CONTEXT_LENGTH: &str = "dynamo_frontend_model_context_length";
    pub const MODEL_KV_CACHE_BLOCK_SIZE: &str = "dynamo_frontend_model_kv_cache_block_size";
    pub const MODEL_MIGRATION_TOTAL: &str = "dynamo_frontend_model_migration_total";
    pub const WORKER_ACTIVE_DECODE_BLOCKS: &str = "dynamo_frontend_worker_active_decode_blocks";
    pub const WORKER_ACTIVE_PREFILL_TOKENS: &str = "dynamo_frontend_worker_active_prefill_tokens";
}

/// `dynamo_router_*` (frontend, `--router-mode kv`), labelled by `router_id`.
pub mod router {
    pub const REQUESTS_TOTAL: &str = "dynamo_router_requests_total";
    pub const TIME_TO_FIRST_TOKEN_SECONDS: &str = "dynamo_router_time_to_first_token_seconds";
    pub const INTER_TOKEN_LATENCY_SECONDS: &str = "dynamo_router_inter_token_latency_seconds";
    pub const INPUT_SEQUENCE_TOKENS: &str = "dynamo_router_input_sequence_tokens";
    pub const OUTPUT_SEQUENCE_TOKENS: &str = "dynamo_router_output_sequence_tokens";
    pub const KV_HIT_RATE: &str = "dynamo_router_kv_hit_rate";
    pub const OVERHEAD_BLOCK_HASHING_MS: &str = "dynamo_router_overhead_block_hashing_ms";
    pub const OVERHEAD_SEQ_HASHING_MS: &str = "dynamo_router_overhead_seq_hashing_ms";
    pub const OVERHEAD_INDEXER_FIND_MATCHES_MS: &str =
        "dynamo_router_overhead_indexer_find_matches_ms";
    pub const OVERHEAD_SCHEDULING_MS: &str = "dynamo_router_overhead_scheduling_ms";
    pub const OVERHEAD_TOTAL_MS: &str = "dynamo_router_overhead_total_ms";
}

/// Every metric name defined above, for the spec check.
pub const ALL_METRICS: &[&str] = &[
    component::REQUESTS_TOTAL,
    component::REQUEST_BYTES_TOTAL,
    component::RESPONSE_BYTES_TOTAL,
    component::INFLIGHT_REQUESTS,
    component::REQUEST_DURATION_SECONDS,
    component::ERRORS_TOTAL,
    component::UPTIME_SECONDS,
    component::TOTAL_BLOCKS,
    component::GPU_CACHE_USAGE_PERCENT,
    component::MODEL_LOAD_TIME_SECONDS,
    component::KV_CACHE_EVENTS_APPLIED,
    frontend::REQUESTS_TOTAL,
    frontend::INFLIGHT_REQUESTS,
    frontend::QUEUED_REQUESTS,
    frontend::DISCONNECTED_CLIENTS,
    frontend::REQUEST_DURATION_SECONDS,
    frontend::TIME_TO_FIRST_TOKEN_SECONDS,
    frontend::INTER_TOKEN_LATENCY_SECONDS,
    frontend::INPUT_SEQUENCE_TOKENS,
    frontend::OUTPUT_SEQUENCE_TOKENS,
    frontend::OUTPUT_TOKENS_TOTAL,
    frontend::CACHED_TOKENS,
    frontend::TOKENIZER_LATENCY_MS,
    frontend::MODEL_TOTAL_KV_BLOCKS,
    frontend::MODEL_MAX_NUM_SEQS,
    frontend::MODEL_MAX_NUM_BATCHED_TOKENS,
    frontend::MODEL_CONTEXT_LENGTH,
    frontend::MODEL_KV_CACHE_BLOCK_SIZE,
    frontend::MODEL_MIGRATION_TOTAL,
    frontend::WORKER_ACTIVE_DECODE_BLOCKS,
    frontend::WORKER_ACTIVE_PREFILL_TOKENS,
    router::REQUESTS_TOTAL,
    router::TIME_TO_FIRST_TOKEN_SECONDS,
    router::INTER_TOKEN_LATENCY_SECONDS,
    router::INPUT_SEQUENCE_TOKENS,
    router::OUTPUT_SEQUENCE_TOKENS,
    router::KV_HIT_RATE,
    router::OVERHEAD_BLOCK_HASHING_MS,
    router::OVERHEAD_SEQ_HASHING_MS,
    router::OVERHEAD_INDEXER_FIND_MATCHES_MS,
    router::OVERHEAD_SCHEDULING_MS,
    router::OVERHEAD_TOTAL_MS,
];

/// Every span name defined above, for the spec check.
pub const ALL_SPANS: &[&str] = &[
    spans::HTTP_REQUEST,
    spans::HANDLE_PAYLOAD,
    spans::ROUTE_REQUEST,
    spans::COMPUTE_BLOCK_HASHES,
    spans::COMPUTE_SEQ_HASHES,
    spans::FIND_MATCHES,
    spans::SELECT_WORKER,
    spans::SCHEDULE,
    spans::BOOTSTRAP_ROOM_0,
    spans::TOKENIZE,
    spans::DISPATCH,
    spans::REQUEST_PROCESS,
    spans::PREFILL_FORWARD,
    spans::CHUNKED_PREFILL,
    spans::DECODE_LOOP,
];

/// Every env var defined above, for the spec check.
pub const ALL_ENV: &[&str] = &[
    env::NATS_SERVER,
    env::DYN_HTTP_PORT,
    env::DYN_HTTP_HOST,
    env::DYN_SYSTEM_HOST,
    env::DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS,
    env::DYN_GRACEFUL_SHUTDOWN_TIMEOUT,
    env::DYN_NAMESPACE,
    env::DYN_MODEL_CACHE,
    env::DYN_ENGINE_KERNELS,
    env::DYN_HTTP_BODY_LIMIT_MB,
    env::DYN_HTTP_MAX_INFLIGHT_REQUESTS,
    env::DYN_HTTP_OVERLOAD_STATUS_CODE,
    env::DYN_HTTP_REQUEST_TIMEOUT,
    env::DYN_MIGRATION_LIMIT,
    env::DYN_HTTP_API_KEY,
    env::DYN_NATS_CREDS_FILE,
    env::DYN_STREAM_TIMEOUT,
    env::DYN_NATS_TLS_CA,
    env::DYN_NATS_TLS_CERT,
    env::DYN_NATS_TLS_KEY,
    env::DYN_HTTP_HEADER_TIMEOUT,
    env::DYN_HTTP_BODY_TIMEOUT,
    env::DYN_HTTP_MAX_CONNECTIONS,
    env::DYN_SYSTEM_PORT,
    env::DYN_SYSTEM_STARTING_HEALTH_STATUS,
    env::DYN_SYSTEM_HEALTH_PATH,
    env::DYN_SYSTEM_LIVE_PATH,
    env::DYN_LOG,
    env::DYN_LOGGING_JSONL,
    env::DYN_ROUTER_MODE,
    env::DYN_KV_OVERLAP_SCORE_WEIGHT,
    env::DYN_ROUTER_TEMPERATURE,
    env::DYN_KV_EVENTS,
    env::DYN_KV_CACHE_BLOCK_SIZE,
    env::DYN_ENABLE_FORCE_INCLUDE_USAGE,
    env::OTEL_EXPORT_ENABLED,
    env::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    env::OTEL_SERVICE_NAME,
];
