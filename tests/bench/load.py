#!/usr/bin/env python3
"""The benchmarks' load client: a closed loop of OpenAI chat completions against one server.

Keeps `-c` requests in flight until `-n` have completed (after `--warmup` unmeasured ones),
streaming or not, each with a synthetic prompt of about `--prompt-tokens` tokens, and prints
one JSON line:

    requests_per_s, output_tokens_per_s, ttft_ms_p50, ttft_ms_p99, itl_ms_p50,
    e2e_ms_p50, e2e_ms_p99, errors, error_samples, client_cpu_s

Output tokens are the server's `usage.completion_tokens` (streams ask for the usage chunk);
a server that sends none is counted by content-bearing chunks. Exits 1 when any measured
request failed (the JSON line still comes first). Needs aiohttp (`ensure_aiohttp` in
launch/lib.sh installs it).

    python3 tests/bench/load.py --url http://127.0.0.1:8000 --model SmolLM2-135M-Instruct \
        -n 400 -c 16 --stream --prompt-tokens 64 --max-tokens 16
"""
import argparse
import asyncio
import json
import random
import resource
import statistics
import time

import aiohttp

VOCAB = ("river stone cloud amber field lantern harbor meadow quiet signal copper orbit "
         "garden thunder pillow canyon whisper marble falcon winter").split()


def prompt_text(rng, tokens):
    # Common English words are about one token each for BPE vocabularies.
    return " ".join(rng.choice(VOCAB) for _ in range(max(1, tokens)))


def percentile(values, q):
    if not values:
        return 0.0
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100.0 * (len(s) - 1))))
    return s[k]


class Result:
    __slots__ = ("ok", "error", "ttft", "itls", "e2e", "tokens")

    def __init__(self):
        self.ok, self.error, self.ttft, self.itls, self.e2e, self.tokens = False, None, None, [], 0.0, 0


async def one_request(session, args, body):
    r = Result()
    t0 = time.perf_counter()
    try:
        async with session.post(args.url.rstrip("/") + args.path, json=body) as resp:
            if resp.status != 200:
                r.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return r
            if not args.stream:
                data = await resp.json()
                r.e2e = time.perf_counter() - t0
                r.ttft = r.e2e
                r.tokens = (data.get("usage") or {}).get("completion_tokens", 0)
                r.ok = True
                return r
            last, chunks, usage_tokens = None, 0, None
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    break
                msg = json.loads(payload)
                if msg.get("usage"):
                    usage_tokens = msg["usage"].get("completion_tokens")
                choices = msg.get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content"):
                    now = time.perf_counter()
                    if last is None:
                        r.ttft = now - t0
                    else:
                        r.itls.append(now - last)
                    last = now
                    chunks += 1
            r.e2e = time.perf_counter() - t0
            r.tokens = usage_tokens if usage_tokens is not None else chunks
            r.ok = r.ttft is not None or r.tokens == 0
            if not r.ok:
                r.error = "stream ended without content"
    except Exception as e:  # a failed request is counted, never fatal to the run
        r.error = f"{type(e).__name__}: {e}"
    return r


def make_body(args, rng, i):
    seed_rng = rng if args.unique_prompts else random.Random(args.seed)
    body = {
        "model": args.model,
        "messages": [{"role": "user", "content": prompt_text(seed_rng, args.prompt_tokens)
                      + (f" #{i}" if args.unique_prompts else "")}],
        "max_tokens": args.max_tokens,
        "stream": args.stream,
    }
    if args.stream:
        body["stream_options"] = {"include_usage": True}
    if args.ignore_eos:
        body["ignore_eos"] = True
    if args.temperature is not None:
        body["temperature"] = args.temperature
    if args.choices > 1:
        body["n"] = args.choices
    if args.logprobs is not None:
        if args.path.endswith("chat/completions"):
            body["logprobs"] = True
            body["top_logprobs"] = args.logprobs
        else:
            body["logprobs"] = args.logprobs
    return body


async def run(args):
    rng = random.Random(args.seed)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:
        async def drain(count, start):
            results, next_i = [], start
            lock = asyncio.Lock()

            async def worker():
                nonlocal next_i
                while True:
                    async with lock:
                        if next_i >= start + count:
                            return
                        i = next_i
                        next_i += 1
                    results.append(await one_request(session, args, make_body(args, rng, i)))

            await asyncio.gather(*(worker() for _ in range(min(args.concurrency, max(count, 1)))))
            return results

        if args.warmup > 0:
            await drain(args.warmup, 0)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        results = await drain(args.n, args.warmup)
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    ok = [r for r in results if r.ok]
    errors = [r.error for r in results if not r.ok]
    ms = lambda xs: [1e3 * x for x in xs]
    report = {
        "requests": len(results),
        "concurrency": args.concurrency,
        "wall_s": round(wall, 3),
        "requests_per_s": len(ok) / wall if wall > 0 else 0.0,
        "output_tokens_per_s": sum(r.tokens for r in ok) / wall if wall > 0 else 0.0,
        "ttft_ms_p50": percentile(ms([r.ttft for r in ok if r.ttft is not None]), 50),
        "ttft_ms_p99": percentile(ms([r.ttft for r in ok if r.ttft is not None]), 99),
        "itl_ms_p50": percentile(ms([x for r in ok for x in r.itls]), 50),
        "e2e_ms_p50": percentile(ms([r.e2e for r in ok]), 50),
        "e2e_ms_p99": percentile(ms([r.e2e for r in ok]), 99),
        "e2e_ms_mean": statistics.fmean(ms([r.e2e for r in ok])) if ok else 0.0,
        "errors": len(errors),
        "error_samples": errors[:3],
        "client_cpu_s": round((cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime), 3),
    }
    print(json.dumps(report), flush=True)
    return 1 if errors else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--path", default="/v1/chat/completions")
    ap.add_argument("--model", required=True)
    ap.add_argument("-n", "--num-requests", dest="n", type=int, default=200)
    ap.add_argument("-c", "--concurrency", type=int, default=16)
    ap.add_argument("--stream", dest="stream", action="store_true", default=True)
    ap.add_argument("--no-stream", dest="stream", action="store_false")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--unique-prompts", action="store_true", help="a different prompt per request")
    ap.add_argument("--ignore-eos", action="store_true")
    ap.add_argument("--temperature", type=float, default=None)
    ap.add_argument("--warmup", type=int, default=8, help="unmeasured requests first (0: none)")
    ap.add_argument("--timeout", type=float, default=300.0, help="per-request timeout, seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--logprobs", type=int, default=None,
                    help="ask for log probabilities with this many alternatives per token")
    ap.add_argument("--choices", type=int, default=1,
                    help="choices per request (`n`); output tokens count every choice's")
    args = ap.parse_args()
    if args.n < 1 or args.concurrency < 1:
        ap.error("-n and -c must be at least 1")
    raise SystemExit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
