#!/usr/bin/env python3
"""Writes the Grafana dashboards of grafana_dashboards/ (the JSON files are this script's
output; edit here, run `python3 deploy/observability/dashboards.py`, commit both; `--check`
only compares and exits non-zero naming the files that differ).

Every expression names families that dynamo-frontend and dynamo-worker emit (see
docs/observability/metrics.md), except the DCGM dashboard's, which are the DCGM exporter's.
tests/tests/e2e/dashboards.rs evaluates every expression against a real Prometheus scraping
real processes and checks that these files are what this script writes.
"""

import json
import pathlib

PROM = {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}
OUT = pathlib.Path(__file__).resolve().parent / "grafana_dashboards"
RATE = "$__rate_interval"


def target(expr, legend):
    return {"datasource": PROM, "expr": expr, "legendFormat": legend, "range": True}


def quantiles(metric, sel, by=""):
    """p99/p90/p50 and the average of a histogram, optionally split by a label."""
    group = f"le, {by}" if by else "le"
    suffix = f" {{{{{by}}}}}" if by else ""
    out = [
        target(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{sel}[{RATE}])))",
            f"p{int(q * 100)}{suffix}",
        )
        for q in (0.99, 0.9, 0.5)
    ]
    avg_by = f" by ({by})" if by else ""
    out.append(
        target(
            f"sum{avg_by} (rate({metric}_sum{sel}[{RATE}])) / sum{avg_by} (rate({metric}_count{sel}[{RATE}]))",
            f"avg{suffix}",
        )
    )
    return out


def by_role(expr):
    """Label a per-instance series with its worker's engine_type (per-request sglang families
    carry only model_name; the per-iteration gauges carry the role)."""
    return (
        f"({expr}) * on (instance) group_left (engine_type) "
        "group by (instance, engine_type) (sglang:num_running_reqs)"
    )


def role_quantiles(metric, sel):
    """Per-role p90/p50 of a per-request sglang histogram."""
    return [
        target(
            f"histogram_quantile({q}, sum by (le, engine_type) ("
            + by_role(f"rate({metric}_bucket{sel}[{RATE}])")
            + "))",
            f"p{int(q * 100)} {{{{engine_type}}}}",
        )
        for q in (0.9, 0.5)
    ]


class Board:
    def __init__(self, uid, title, tags, description, variables=()):
        self.uid, self.title, self.tags, self.description = uid, title, tags, description
        self.variables = list(variables)
        self.panels = []
        self.next_id = 1
        self.y = 0
        self.x = 0

    def _id(self):
        i = self.next_id
        self.next_id += 1
        return i

    def row(self, title):
        if self.x:
            self.y += 8
            self.x = 0
        self.panels.append(
            {
                "type": "row",
                "id": self._id(),
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def panel(self, title, description, targets, unit, width=8, stack=False, lo=None, hi=None):
        if self.x + width > 24:
            self.y += 8
            self.x = 0
        defaults = {"unit": unit, "custom": {"fillOpacity": 35 if stack else 10}}
        if stack:
            defaults["custom"]["stacking"] = {"mode": "normal", "group": "A"}
        if lo is not None:
            defaults["min"] = lo
        if hi is not None:
            defaults["max"] = hi
        for i, t in enumerate(targets):
            t["refId"] = chr(ord("A") + i)
        self.panels.append(
            {
                "type": "timeseries",
                "id": self._id(),
                "title": title,
                "description": description,
                "datasource": PROM,
                "gridPos": {"h": 8, "w": width, "x": self.x, "y": self.y},
                "fieldConfig": {"defaults": defaults, "overrides": []},
                "options": {
                    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"},
                },
                "targets": targets,
            }
        )
        self.x += width

    def json(self):
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": self.tags,
            "editable": True,
            "graphTooltip": 1,
            "refresh": "10s",
            "schemaVersion": 41,
            "time": {"from": "now-1h", "to": "now"},
            "timepicker": {},
            "timezone": "browser",
            "annotations": {"list": []},
            "links": [],
            "templating": {"list": self.variables},
            "panels": self.panels,
        }


def variable(name, label, query):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": PROM,
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


SG = '{model_name=~"$model", instance=~"$instance"}'
SG_VARS = [
    variable("model", "Model", "label_values(sglang:num_running_reqs, model_name)"),
    variable("instance", "Worker", "label_values(sglang:num_running_reqs, instance)"),
]


def sglang():
    b = Board(
        "sglang-engine",
        "SGLang Engine",
        ["sglang", "hicache"],
        "Engine metrics of dynamo-worker (sglang: families): latency, throughput, cache, memory pressure.",
        SG_VARS,
    )
    b.row("Request Latency")
    b.panel("E2E Request Latency", "Submission to the engine until the last token.",
            quantiles("sglang:e2e_request_latency_seconds", SG), "s")
    b.panel("Time-To-First-Token", "Submission to the engine until the first output token.",
            quantiles("sglang:time_to_first_token_seconds", SG), "s")
    b.panel("Inter-Token Latency", "Gap between consecutive output tokens of a request.",
            quantiles("sglang:inter_token_latency_seconds", SG), "s")
    b.row("Throughput & Queue")
    b.panel("Token Generation Throughput (tokens/s)", "Decode tokens per second, per worker.",
            [target(f"sglang:gen_throughput{SG}", "{{instance}}")], "none")
    b.panel("Running & Queued Requests",
            "Requests in the running batch and waiting for admission (retracted ones included).",
            [target(f"sum(sglang:num_running_reqs{SG})", "Running"),
             target(f"sum(sglang:num_queue_reqs{SG})", "Queued")], "none")
    b.panel("Request Rate", "Requests finished per second (stop, EOS or length).",
            [target(f"sum(rate(sglang:num_requests_total{SG}[{RATE}]))", "Requests/s"),
             target(f"sum(rate(sglang:num_aborted_requests_total{SG}[{RATE}]))", "Aborted/s")],
            "reqps")
    b.row("Cache & PIN")
    b.panel("Cache Hit Rate",
            "Prompt tokens served from the prefix cache / prompt tokens (last interval with admissions), per worker.",
            [target(f"sglang:cache_hit_rate{SG}", "{{instance}}")], "percentunit", lo=0, hi=1)
    b.panel("Active Pinned KV (tokens)",
            "KV tokens held by running requests (cannot be evicted), and tokens of blocks pinned "
            "by /engine/pin_blocks, nvext.cache_control or the router's pin TTL (kept in some "
            "tier until the pin expires), per worker.",
            [target(f"sglang:kv_used_tokens{SG}", "{{instance}} in use"),
             target(f"sglang:pinned_tokens{SG}", "{{instance}} pinned")], "short", lo=0)
    b.panel("Retractions",
            "Requests whose KV was released under memory pressure and re-queued (recomputed later).",
            [target(f"sum(rate(sglang:num_retracted_requests_total{SG}[{RATE}]))", "Retractions/s"),
             target(f"sum(rate(sglang:num_retracted_output_tokens_total{SG}[{RATE}]))",
                    "Recomputed output tokens/s")], "none")
    b.row("Memory Pressure")
    b.panel("GPU KV Cache Usage %", "KV tokens held by running requests / KV pool capacity.",
            [target(f"sglang:token_usage{SG} * 100", "{{instance}}")], "percent", lo=0, hi=100)
    b.panel("KV Physical Usage %",
            "Pool slots not free: pinned + evictable (cached prefixes) over the pool.",
            [target(f"100 * (1 - sglang:kv_available_tokens{SG} / clamp_min(sglang:kv_available_tokens{SG}"
                    f" + sglang:kv_evictable_tokens{SG} + sglang:kv_used_tokens{SG}, 1))", "{{instance}}")],
            "percent", lo=0, hi=100)
    b.panel("KV Pool Breakdown",
            "Pinned (held by requests) + evictable (cached, unheld) + available = the pool.",
            [target(f"sum(sglang:kv_used_tokens{SG})", "Pinned"),
             target(f"sum(sglang:kv_evictable_tokens{SG})", "Evictable"),
             target(f"sum(sglang:kv_available_tokens{SG})", "Available")],
            "short", stack=True, lo=0)
    b.panel("Host (CPU) KV Cache Usage %", "Host KV tier: tokens used / capacity.",
            [target(f"sglang:hicache_host_used_tokens{SG} / sglang:hicache_host_total_tokens{SG} * 100",
                    "{{instance}}")], "percent", width=12, lo=0, hi=100)
    b.panel("Eviction & Load-back Rate (tokens/s)",
            "Tokens moved from device to the host tier (eviction) and back (load-back).",
            [target(f"sum(rate(sglang:evicted_tokens_total{SG}[{RATE}]))", "Eviction"),
             target(f"sum(rate(sglang:load_back_tokens_total{SG}[{RATE}]))", "Load-back")],
            "none", width=12)
    b.row("HiCache Latency")
    b.panel("Eviction P99 Latency", "p99 time to write evicted KV to the host tier.",
            [target(f"histogram_quantile(0.99, sum by (le) (rate(sglang:eviction_duration_seconds_bucket{SG}[{RATE}])))", "p99")],
            "s", width=12)
    b.panel("Load-back P99 Latency", "p99 time to load KV back from the host tier.",
            [target(f"histogram_quantile(0.99, sum by (le) (rate(sglang:load_back_duration_seconds_bucket{SG}[{RATE}])))", "p99")],
            "s", width=12)
    return b


FE = '{model=~"$model"}'
COMP = '{instance=~"$instance"}'


def dynamo():
    b = Board(
        "dynamo-frontend",
        "Dynamo Dashboard",
        ["dynamo"],
        "dynamo-frontend (HTTP, KV router) and the workers' request-plane components.",
        [variable("model", "Model", "label_values(dynamo_frontend_requests_total, model)"),
         variable("instance", "Worker", "label_values(dynamo_component_requests_total, instance)")],
    )
    b.row("Frontend")
    b.panel("Request Rate by Status",
            "Requests finished per second by status and error type (overload, validation, ...).",
            [target(f"sum by (status, error_type) (rate(dynamo_frontend_requests_total{FE}[{RATE}]))",
                    "{{status}} {{error_type}}")], "reqps")
    b.panel("Inflight & Queued Requests",
            "Inflight: handler start until the response ends; queued: until the first token.",
            [target(f"sum(dynamo_frontend_inflight_requests{FE})", "Inflight"),
             target(f"sum(dynamo_frontend_queued_requests{FE})", "Queued")], "none")
    b.panel("Output Tokens/s", "Output tokens streamed to clients per second.",
            [target(f"sum by (model) (rate(dynamo_frontend_output_tokens_total{FE}[{RATE}]))",
                    "{{model}}")], "none")
    b.panel("Time To First Token", "At the frontend, request arrival to first token.",
            quantiles("dynamo_frontend_time_to_first_token_seconds", FE), "s")
    b.panel("Inter-Token Latency", "Gap between tokens as they stream to the client.",
            quantiles("dynamo_frontend_inter_token_latency_seconds", FE), "s")
    b.panel("Request Duration", "Whole request at the frontend.",
            quantiles("dynamo_frontend_request_duration_seconds", FE), "s")
    b.panel("Input / Output Sequence Length (avg)", "Average prompt and output tokens per request.",
            [target(f"sum(rate(dynamo_frontend_input_sequence_tokens_sum{FE}[{RATE}])) / sum(rate(dynamo_frontend_input_sequence_tokens_count{FE}[{RATE}]))", "ISL"),
             target(f"sum(rate(dynamo_frontend_output_sequence_tokens_sum{FE}[{RATE}])) / sum(rate(dynamo_frontend_output_sequence_tokens_count{FE}[{RATE}]))", "OSL")],
            "short")
    b.panel("Cached Prompt Tokens (avg)", "Prompt tokens per request served from the worker's prefix cache.",
            [target(f"sum(rate(dynamo_frontend_cached_tokens_sum{FE}[{RATE}])) / sum(rate(dynamo_frontend_cached_tokens_count{FE}[{RATE}]))", "cached tokens")],
            "short")
    b.panel("Tokenizer Latency (p99)", "Tokenize and detokenize time per request.",
            [target(f"histogram_quantile(0.99, sum by (le, operation) (rate(dynamo_frontend_tokenizer_latency_ms_bucket[{RATE}])))", "{{operation}}")],
            "ms")
    b.row("Components")
    b.panel("Component Request Rate", "Requests per second each worker endpoint handled.",
            [target(f"sum by (instance, dynamo_component, dynamo_endpoint) (rate(dynamo_component_requests_total{COMP}[{RATE}]))",
                    "{{instance}} {{dynamo_component}}/{{dynamo_endpoint}}")], "reqps")
    b.panel("Component Request Duration", "Receipt until the final response, per worker endpoint.",
            [target(f"histogram_quantile({q}, sum by (le, instance) (rate(dynamo_component_request_duration_seconds_bucket{COMP}[{RATE}])))",
                    f"p{int(q * 100)} {{{{instance}}}}") for q in (0.99, 0.5)], "s")
    b.panel("Component Bytes", "Request and response payload bytes per second.",
            [target(f"sum by (instance) (rate(dynamo_component_request_bytes_total{COMP}[{RATE}]))", "in {{instance}}"),
             target(f"sum by (instance) (rate(dynamo_component_response_bytes_total{COMP}[{RATE}]))", "out {{instance}}")],
            "Bps")
    b.panel("Component Errors", "Handler errors per second by type.",
            [target(f"sum by (instance, error_type) (rate(dynamo_component_errors_total{COMP}[{RATE}]))",
                    "{{instance}} {{error_type}}")], "none")
    b.panel("Component Inflight", "Requests each worker is processing.",
            [target(f"dynamo_component_inflight_requests{COMP}", "{{instance}} {{dynamo_component}}")], "none")
    b.panel("KV Usage per Worker", "Fraction of the worker's KV blocks held by requests.",
            [target(f"dynamo_component_gpu_cache_usage_percent{COMP}", "{{instance}}")],
            "percentunit", lo=0, hi=1)
    b.row("KV Router")
    b.panel("Router Overhead (p99)", "Time of each routing step and of the whole decision.",
            [target(f"histogram_quantile(0.99, sum by (le) (rate(dynamo_router_overhead_{step}_ms_bucket[{RATE}])))", step)
             for step in ("total", "block_hashing", "seq_hashing", "indexer_find_matches", "scheduling")],
            "ms")
    b.panel("Predicted vs Actual Hit Rate",
            "Predicted: the chosen worker's overlap blocks / prompt blocks (router). Actual: cached prompt tokens / prompt tokens (workers).",
            [target(f"sum(rate(dynamo_router_kv_hit_rate_sum[{RATE}])) / sum(rate(dynamo_router_kv_hit_rate_count[{RATE}]))", "predicted"),
             target(f"sum(rate(sglang:cached_tokens_total[{RATE}])) / sum(rate(sglang:prompt_tokens_total[{RATE}]))", "actual")],
            "percentunit", lo=0, hi=1)
    b.panel("Active Blocks per Worker",
            "Router's view: decode blocks and pending prefill tokens it has routed to each worker.",
            [target("sum by (worker_id, worker_type) (dynamo_frontend_worker_active_decode_blocks)",
                    "blocks {{worker_type}} {{worker_id}}"),
             target("sum by (worker_id, worker_type) (dynamo_frontend_worker_active_prefill_tokens)",
                    "prefill tokens {{worker_type}} {{worker_id}}")], "short")
    b.panel("KV Events Applied", "KV events from workers applied to the router's index.",
            [target(f"sum by (event_type, status) (rate(dynamo_component_kv_cache_events_applied[{RATE}]))",
                    "{{event_type}} {{status}}")], "none")
    return b


def disagg():
    b = Board(
        "dynamo-disagg",
        "Disaggregated Serving",
        ["dynamo", "sglang", "disagg"],
        "Prefill and decode workers side by side: rates, latency, queues and the KV transfer.",
        SG_VARS,
    )
    b.row("Requests per Role")
    b.panel("Request Rate per Role", "Requests each role's workers handled per second.",
            [target(f"sum by (dynamo_component) (rate(dynamo_component_requests_total{{dynamo_endpoint=\"generate\"}}[{RATE}]))",
                    "{{dynamo_component}}")], "reqps")
    b.panel("Time-To-First-Token per Role",
            "Prefill: the prompt's one token; decode: until the transferred request streams its first token.",
            role_quantiles("sglang:time_to_first_token_seconds", SG), "s")
    b.panel("Inter-Token Latency per Role", "Decode workers generate all tokens after the first.",
            role_quantiles("sglang:inter_token_latency_seconds", SG), "s")
    b.row("Queues")
    b.panel("Prefill Queues", "Waiting to be prefilled; rooms waiting for or sending to a decode worker.",
            [target(f"sum(sglang:num_prefill_prealloc_queue_reqs{SG})", "prealloc"),
             target(f"sum(sglang:num_prefill_inflight_queue_reqs{SG})", "inflight")], "none")
    b.panel("Decode Queues", "Waiting for blocks to be reserved; reserved and receiving KV.",
            [target(f"sum(sglang:num_decode_prealloc_queue_reqs{SG})", "prealloc"),
             target(f"sum(sglang:num_decode_transfer_queue_reqs{SG})", "transfer"),
             target(f"sum(sglang:num_running_reqs{{engine_type=\"decode\"}})", "running")], "none")
    b.panel("Pending Prealloc Token Usage", "Decode: prompt tokens waiting for reservation / KV pool.",
            [target(f"sglang:pending_prealloc_token_usage{SG}", "{{instance}}")], "percentunit", lo=0)
    b.row("KV Transfer")
    b.panel("Transfer Speed", "Last transfer's KV bytes / time on the wire.",
            [target(f"sglang:kv_transfer_speed_gb_s{SG}", "{{engine_type}} {{instance}}")], "none")
    b.panel("Transfer Latency", "Last transfer: start to the prefill's token (includes overlapped prefill); bootstrap and block reservation.",
            [target(f"sglang:kv_transfer_latency_ms{SG}", "latency {{engine_type}}"),
             target(f"sglang:kv_transfer_bootstrap_ms{SG}", "bootstrap {{engine_type}}"),
             target(f"sglang:kv_transfer_alloc_ms{SG}", "alloc {{engine_type}}")], "ms")
    b.panel("Transfer Size", "Last transfer's KV megabytes (blocks the decode worker cached are not sent).",
            [target(f"sglang:kv_transfer_total_mb{SG}", "{{engine_type}} {{instance}}")], "decmbytes")
    b.panel("Transfer Failures", "Transfers that could not start (bootstrap) or broke off (transfer).",
            [target(f"sum by (engine_type) (rate(sglang:num_bootstrap_failed_reqs_total{SG}[{RATE}]))", "bootstrap {{engine_type}}"),
             target(f"sum by (engine_type) (rate(sglang:num_transfer_failed_reqs_total{SG}[{RATE}]))", "transfer {{engine_type}}")],
            "none", width=12)
    b.panel("Stage Latency (p90)", "Time in each disaggregation stage.",
            [target(f"histogram_quantile(0.9, sum by (le, stage) (rate(sglang:per_stage_req_latency_seconds_bucket{{stage=~\"prefill_bootstrap|prefill_transfer_kv_cache|decode_.*\"}}[{RATE}])))",
                    "{{stage}}")], "s", width=12)
    return b


def kvbm():
    b = Board(
        "dynamo-kvbm",
        "KV Cache Tiers",
        ["dynamo", "kvbm"],
        "The KV cache hierarchy per worker: device pool and the host tier.",
        SG_VARS,
    )
    b.row("Device")
    b.panel("Device KV Usage %", "KV tokens held by running requests / pool.",
            [target(f"sglang:token_usage{SG} * 100", "{{instance}}")], "percent", lo=0, hi=100)
    b.panel("Device KV Pool", "Pinned, evictable (cached) and available tokens.",
            [target(f"sum by (instance) (sglang:kv_used_tokens{SG})", "pinned {{instance}}"),
             target(f"sum by (instance) (sglang:kv_evictable_tokens{SG})", "evictable {{instance}}"),
             target(f"sum by (instance) (sglang:kv_available_tokens{SG})", "available {{instance}}")],
            "short", stack=True, lo=0)
    b.panel("Device Hit Rate", "Prompt tokens served from the device prefix cache / prompt tokens.",
            [target(f"sum by (instance) (rate(sglang:cached_tokens_total{SG}[{RATE}])) / sum by (instance) (rate(sglang:prompt_tokens_total{SG}[{RATE}]))",
                    "{{instance}}")], "percentunit", lo=0, hi=1)
    b.row("Host Tier")
    b.panel("Host KV Usage %", "Host tier tokens used / capacity.",
            [target(f"sglang:hicache_host_used_tokens{SG} / sglang:hicache_host_total_tokens{SG} * 100", "{{instance}}")],
            "percent", lo=0, hi=100)
    b.panel("Evictions & Load-backs (tokens/s)", "Device to host (eviction), host to device (load-back).",
            [target(f"sum by (instance) (rate(sglang:evicted_tokens_total{SG}[{RATE}]))", "evicted {{instance}}"),
             target(f"sum by (instance) (rate(sglang:load_back_tokens_total{SG}[{RATE}]))", "loaded back {{instance}}")],
            "none")
    b.panel("Host Hit Rate", "Prompt tokens served from the host tier / prompt tokens.",
            [target(f"sum by (instance) (rate(sglang:cached_tokens_total{{cache_source=\"host\", model_name=~\"$model\", instance=~\"$instance\"}}[{RATE}])) / sum by (instance) (rate(sglang:prompt_tokens_total{SG}[{RATE}]))",
                    "{{instance}}")], "percentunit", lo=0, hi=1)
    return b


def dcgm():
    gpu = '{Hostname=~"$host", gpu=~"$gpu"}'
    b = Board(
        "dynamo-dcgm",
        "GPU (DCGM)",
        ["dynamo", "gpu", "dcgm"],
        "NVIDIA DCGM exporter metrics (docker-observability.yml --profile nvidia).",
        [variable("host", "Host", "label_values(DCGM_FI_DEV_GPU_UTIL, Hostname)"),
         variable("gpu", "GPU", "label_values(DCGM_FI_DEV_GPU_UTIL, gpu)")],
    )
    b.row("GPU")
    b.panel("GPU Utilization", "Fraction of time a kernel ran.",
            [target(f"DCGM_FI_DEV_GPU_UTIL{gpu}", "GPU {{gpu}} {{Hostname}}")], "percent", lo=0, hi=100)
    b.panel("Framebuffer Memory Used", "Device memory in use.",
            [target(f"DCGM_FI_DEV_FB_USED{gpu}", "GPU {{gpu}} {{Hostname}}")], "mbytes", lo=0)
    b.panel("Memory Used %", "Used / (used + free).",
            [target(f"100 * DCGM_FI_DEV_FB_USED{gpu} / (DCGM_FI_DEV_FB_USED{gpu} + DCGM_FI_DEV_FB_FREE{gpu})",
                    "GPU {{gpu}} {{Hostname}}")], "percent", lo=0, hi=100)
    b.panel("Power", "Board power draw.",
            [target(f"DCGM_FI_DEV_POWER_USAGE{gpu}", "GPU {{gpu}} {{Hostname}}")], "watt", lo=0)
    b.panel("Temperature", "GPU die temperature.",
            [target(f"DCGM_FI_DEV_GPU_TEMP{gpu}", "GPU {{gpu}} {{Hostname}}")], "celsius")
    b.panel("Clocks", "SM and memory clocks.",
            [target(f"DCGM_FI_DEV_SM_CLOCK{gpu} * 1000000", "SM {{gpu}}"),
             target(f"DCGM_FI_DEV_MEM_CLOCK{gpu} * 1000000", "memory {{gpu}}")], "hertz")
    return b


BOARDS = {
    "sglang.json": sglang,
    "dynamo.json": dynamo,
    "disagg-dashboard.json": disagg,
    "kvbm.json": kvbm,
    "dcgm-metrics.json": dcgm,
}


def render(make):
    return json.dumps(make().json(), indent=2) + "\n"


if __name__ == "__main__":
    import sys

    check = sys.argv[1:] == ["--check"]
    stale = []
    for name, make in BOARDS.items():
        path = OUT / name
        text = render(make)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        sys.exit(f"not what dashboards.py writes (run it and commit): {', '.join(stale)}")
