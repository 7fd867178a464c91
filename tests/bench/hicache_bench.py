#!/usr/bin/env python3
"""The KV cache hierarchy benchmark (docs/kv-cache.md), driven by tests/bench/hicache.sh.

Part 1, multi-turn chat shaped like LMCache's LMBenchmark: USERS users share a system prompt;
each turn a user asks a short question on top of their whole history and gets a short answer;
users take turns in order, INFLIGHT at a time, so between two turns of one user every other
user passes through the worker. The working set (system prompt + every history) is about 4x
the KV pool. The same workload runs against one worker per configuration (hierarchy off; host
tier; host tier + file storage with a host tier too small for the working set; pins without
tiers) and reports TTFT p50/p99, output tokens/s, and the share of prompt tokens each tier
served (from the worker's sglang:cached_tokens_total{cache_source} and prompt_tokens_total),
plus the load-back and storage-prefetch bandwidth the worker measured.

Part 2, storage hit vs recomputation: for each prompt length, the time to first token of a new
prompt on a worker without tiers, and of the same prompt on a worker restarted on the
directory a first worker wrote it to (page cache dropped first when running as root).

Prints one JSON object. Needs aiohttp.
"""
import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import aiohttp


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(v, q):
    if not v:
        return 0.0
    v = sorted(v)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]


class Fleet:
    """One worker and one frontend in a namespace of their own."""

    def __init__(self, args, worker_args, tag):
        self.ns = f"hicache-bench-{tag.replace('+', '-')}-{os.getpid()}"
        self.http = free_port()
        self.sys = free_port()
        env = dict(os.environ, DYN_NAMESPACE=self.ns, DYN_SYSTEM_PORT=str(self.sys))
        log = open(os.path.join(args.log_dir, f"{tag}-worker.log"), "w")
        self.worker = subprocess.Popen(
            [os.path.join(args.bin, "dynamo-worker"), "--model", args.model, "--enable-metrics",
             "--threads", str(args.threads)] + worker_args,
            env=env, stdout=log, stderr=subprocess.STDOUT)
        flog = open(os.path.join(args.log_dir, f"{tag}-frontend.log"), "w")
        self.frontend = subprocess.Popen(
            [os.path.join(args.bin, "dynamo-frontend"), "--http-port", str(self.http),
             "--namespace", self.ns],
            env=dict(os.environ), stdout=flog, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.http}"
        self.model = None

    async def ready(self, session):
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                async with session.get(self.url + "/v1/models") as r:
                    data = (await r.json()).get("data", [])
                    if data:
                        self.model = data[0]["id"]
                        return
            except (aiohttp.ClientError, json.JSONDecodeError):
                pass
            if self.worker.poll() is not None:
                raise RuntimeError("worker exited; see its log")
            await asyncio.sleep(0.3)
        raise RuntimeError("fleet not ready")

    async def metrics(self, session):
        async with session.get(f"http://127.0.0.1:{self.sys}/metrics") as r:
            text = await r.text()
        out = {}
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            key, val = line.rsplit(" ", 1)
            name = key.split("{")[0]
            label = ""
            if "cache_source=" in key:
                label = key.split('cache_source="')[1].split('"')[0]
            try:
                out[(name, label)] = out.get((name, label), 0.0) + float(val)
            except ValueError:
                pass
        return out

    def stop(self):
        for p in (self.frontend, self.worker):
            p.terminate()
        for p in (self.frontend, self.worker):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


async def complete(session, fleet, tokens, max_tokens, nvext=None):
    """Stream one completion of `tokens`; (ttft_s, output tokens, cached tokens)."""
    body = {"model": fleet.model, "prompt": tokens, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    if nvext:
        body["nvext"] = nvext
    t0 = time.perf_counter()
    ttft, out, cached = None, [], 0
    async with session.post(fleet.url + "/v1/completions", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"{r.status}: {await r.text()}")
        async for raw in r.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            for c in chunk.get("choices", []):
                if c.get("text") and ttft is None:
                    ttft = time.perf_counter() - t0
            if chunk.get("usage"):
                out = chunk["usage"]["completion_tokens"]
                cached = (chunk["usage"].get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return ttft or (time.perf_counter() - t0), out, cached


def words(rng, n, vocab=40000):
    return [rng.randrange(1000, vocab) for _ in range(n)]


async def multiturn(session, fleet, args, pin):
    rng = random.Random(7)
    system = words(rng, args.system_tokens)
    history = [list(system) for _ in range(args.users)]
    ttfts, out_tokens = [], 0
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(args.inflight)

    async def turn(u):
        nonlocal out_tokens
        async with sem:
            history[u] += words(rng, args.question_tokens)
            nv = {"cache_control": {"type": "ephemeral", "ttl": "10m"}} if pin else None
            ttft, n, _ = await complete(session, fleet, history[u], args.answer_tokens, nv)
            ttfts.append(ttft)
            out_tokens += n
            # The answer joins the history (its tokens stand in for the generated ones).
            history[u] += words(rng, args.answer_tokens)

    for _ in range(args.turns):
        await asyncio.gather(*(turn(u) for u in range(args.users)))
    wall = time.perf_counter() - t0
    working_set = args.system_tokens + sum(len(h) - args.system_tokens for h in history)
    return ttfts, out_tokens / wall, working_set


def delta(after, before, name, label=""):
    return after.get((name, label), 0.0) - before.get((name, label), 0.0)


async def part1(args, session):
    pool = args.pool_tokens
    configs = [
        ("off", []),
        ("host", ["--enable-hierarchical-cache", "--hicache-ratio", str(args.host_ratio)]),
        ("host+storage", ["--enable-hierarchical-cache", "--hicache-ratio", "1",
                          "--hicache-storage-backend", "file", "--hicache-storage-dir", None,
                          "--hicache-storage-prefetch-policy", "wait_complete"]),
        ("pins", []),
    ]
    rows = []
    for name, extra in configs:
        d = tempfile.mkdtemp(prefix="hicache-bench-")
        extra = [d if a is None else a for a in extra]
        fleet = Fleet(args, ["--max-total-tokens", str(pool)] + extra, name)
        try:
            await fleet.ready(session)
            before = await fleet.metrics(session)
            ttfts, tok_s, ws = await multiturn(session, fleet, args, pin=(name == "pins"))
            await asyncio.sleep(1.5)
            after = await fleet.metrics(session)
        finally:
            fleet.stop()
            shutil.rmtree(d, ignore_errors=True)
        prompt = delta(after, before, "sglang:prompt_tokens_total") or 1.0
        lb_bytes = delta(after, before, "sglang:load_back_bytes_total")
        lb_secs = delta(after, before, "sglang:load_back_duration_seconds_sum")
        pf_n = delta(after, before, "sglang:prefetch_bandwidth_count")
        rows.append({
            "config": name,
            "ttft_ms_p50": round(pct(ttfts, 50) * 1000, 1),
            "ttft_ms_p99": round(pct(ttfts, 99) * 1000, 1),
            "output_tok_s": round(tok_s, 1),
            "hit_device": round(delta(after, before, "sglang:cached_tokens_total", "device") / prompt, 3),
            "hit_host": round(delta(after, before, "sglang:cached_tokens_total", "host") / prompt, 3),
            "hit_storage": round(delta(after, before, "sglang:cached_tokens_total", "storage_file") / prompt, 3),
            "load_back_gb_s": round(lb_bytes / lb_secs / 1e9, 2) if lb_secs > 0 else None,
            "prefetch_gb_s_mean": round(delta(after, before, "sglang:prefetch_bandwidth_sum") / pf_n, 2)
            if pf_n else None,
            "pinned_tokens_end": after.get(("sglang:pinned_tokens", ""), 0.0),
            "working_set_tokens": ws,
            "requests": len(ttfts),
        })
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def drop_page_cache():
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


async def part2(args, session):
    rows = []
    for n in args.lengths:
        rng = random.Random(1000 + n)
        tokens = words(rng, n)
        # Recomputation: a worker with no tiers; the prompt is new to it.
        fleet = Fleet(args, [], f"recompute-{n}")
        try:
            await fleet.ready(session)
            await complete(session, fleet, words(rng, 32), 1)  # warm-up
            recompute, _, cached = await complete(session, fleet, tokens, 1)
            assert cached == 0, cached
        finally:
            fleet.stop()
        d = tempfile.mkdtemp(prefix="hicache-bench-")
        tier = ["--enable-hierarchical-cache", "--hicache-storage-backend", "file",
                "--hicache-storage-dir", d, "--hicache-storage-prefetch-policy", "wait_complete"]
        writer = Fleet(args, tier, f"write-{n}")
        try:
            await writer.ready(session)
            await complete(session, writer, tokens, 1)
            want = n // 16
            for _ in range(300):
                if len([f for f in os.listdir(d) if f.endswith(".kv")]) >= want:
                    break
                await asyncio.sleep(0.1)
        finally:
            writer.stop()
        cold = drop_page_cache()
        reader = Fleet(args, tier, f"read-{n}")
        try:
            await reader.ready(session)
            await complete(session, reader, words(rng, 32), 1)  # warm-up
            served, _, cached = await complete(session, reader, tokens, 1)
        finally:
            reader.stop()
            shutil.rmtree(d, ignore_errors=True)
        rows.append({"prompt_tokens": n, "recompute_ttft_ms": round(recompute * 1000, 1),
                     "storage_ttft_ms": round(served * 1000, 1), "storage_cached_tokens": cached,
                     "page_cache_dropped": cold,
                     "ratio": round(served / recompute, 3)})
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def bandwidth(tmp):
    """This machine's memory-copy and direct-I/O disk bandwidth, GB/s."""
    src, dst = bytearray(512 << 20), bytearray(512 << 20)
    dst[:] = src  # both touched before timing
    t0 = time.perf_counter()
    for _ in range(4):
        dst[:] = src
    mem = 4 * len(src) / (time.perf_counter() - t0) / 1e9
    path = os.path.join(tmp, "dd.bin")
    out = {}
    for what, cmd in [("disk_write_gb_s", ["dd", "if=/dev/zero", f"of={path}", "bs=4M", "count=128",
                                             "oflag=direct"]),
                      ("disk_read_gb_s", ["dd", f"if={path}", "of=/dev/null", "bs=4M",
                                          "iflag=direct"])]:
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True)
        dt = time.perf_counter() - t0
        out[what] = round((512 << 20) / dt / 1e9, 2) if r.returncode == 0 else None
    if os.path.exists(path):
        os.remove(path)
    return {"memory_copy_gb_s": round(mem, 2), **out}


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-dir", default=tempfile.gettempdir())
    ap.add_argument("--users", type=int, default=12)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--inflight", type=int, default=2)
    ap.add_argument("--system-tokens", type=int, default=300)
    ap.add_argument("--question-tokens", type=int, default=60)
    ap.add_argument("--answer-tokens", type=int, default=16)
    ap.add_argument("--pool-tokens", type=int, default=1536)
    ap.add_argument("--host-ratio", type=float, default=4.0)
    ap.add_argument("--lengths", type=int, nargs="*", default=[512, 1024, 2048, 4096])
    ap.add_argument("--only", choices=["multiturn", "storage"], default=None)
    args = ap.parse_args()
    result = {}
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        tmp = tempfile.mkdtemp(prefix="hicache-bw-")
        result["bandwidth"] = bandwidth(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if args.only in (None, "multiturn"):
            result["multiturn"] = await part1(args, session)
        if args.only in (None, "storage"):
            result["storage_vs_recompute"] = await part2(args, session)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
