#!/usr/bin/env python3
"""Prefix-heavy synthetic trace for router benchmarks: --groups shared prefixes of
--prefix-blocks blocks (popularity Zipf(--zipf)), each request the group's prefix plus a unique
tail, sent as token ids to /v1/completions (streaming, usage included) with -c in flight.
Prints one JSON line: requests/s, output tokens/s, TTFT and e2e p50/p99 (ms), the engines'
actual prefix hit rate (sum cached_tokens / sum prompt_tokens from usage), errors.
Needs aiohttp."""
import argparse
import asyncio
import json
import random
import time

import aiohttp


def pct(v, p):
    if not v:
        return None
    s = sorted(v)
    return s[min(len(s) - 1, int(round((len(s) - 1) * p / 100.0)))]


async def one(session, url, body, out):
    t0 = time.perf_counter()
    ttft = None
    usage = None
    try:
        async with session.post(url, json=body) as r:
            if r.status != 200:
                out["errors"] += 1
                await r.read()
                return
            async for line in r.content:
                line = line.strip()
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                if ttft is None:
                    ttft = time.perf_counter() - t0
                v = json.loads(line[6:])
                if v.get("usage"):
                    usage = v["usage"]
    except Exception:  # noqa: BLE001 - counted, not fatal
        out["errors"] += 1
        return
    out["ttft"].append(ttft or 0.0)
    out["e2e"].append(time.perf_counter() - t0)
    if usage:
        out["prompt"] += usage["prompt_tokens"]
        out["cached"] += (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        out["output"] += usage["completion_tokens"]


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", required=True)
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("-c", type=int, default=64)
    ap.add_argument("--groups", type=int, default=64)
    ap.add_argument("--prefix-blocks", type=int, default=32)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--tail-tokens", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--zipf", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default=None)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    prefix_len = a.prefix_blocks * a.block_size
    prefixes = [[rng.randrange(1000, 45000) for _ in range(prefix_len)] for _ in range(a.groups)]
    weights = [1.0 / (g + 1) ** a.zipf for g in range(a.groups)]
    reqs = []
    for i in range(a.n):
        g = rng.choices(range(a.groups), weights)[0]
        tail = [rng.randrange(1000, 45000) for _ in range(a.tail_tokens)]
        reqs.append({"model": a.model, "prompt": prefixes[g] + tail, "max_tokens": a.max_tokens,
                     "stream": True, "stream_options": {"include_usage": True}})
    out = {"ttft": [], "e2e": [], "errors": 0, "prompt": 0, "cached": 0, "output": 0}
    url = a.url + "/v1/completions"
    conn = aiohttp.TCPConnector(limit=a.c)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=300)) as s:
        q = asyncio.Queue()
        for r in reqs:
            q.put_nowait(r)

        async def worker():
            while not q.empty():
                await one(s, url, q.get_nowait(), out)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(a.c)))
        wall = time.perf_counter() - t0
    ms = lambda v: None if v is None else round(v * 1e3, 2)  # noqa: E731
    print(json.dumps({
        "label": a.label, "requests": a.n, "concurrency": a.c, "wall_s": round(wall, 2),
        "requests_per_s": round(len(out["e2e"]) / wall, 1),
        "output_tokens_per_s": round(out["output"] / wall, 1),
        "ttft_ms_p50": ms(pct(out["ttft"], 50)), "ttft_ms_p99": ms(pct(out["ttft"], 99)),
        "e2e_ms_p50": ms(pct(out["e2e"], 50)), "e2e_ms_p99": ms(pct(out["e2e"], 99)),
        "actual_hit_rate": round(out["cached"] / max(1, out["prompt"]), 4),
        "errors": out["errors"],
    }))


asyncio.run(main())
