"""Load on `danlu serve` (issue 20): concurrent streaming chat clients, malformed requests, a disconnect.

Starts `danlu serve MODEL` on 127.0.0.1 (a free port), then for --duration seconds (and at most
--max-requests requests) runs --clients asyncio clients, each sending streaming /v1/chat/completions
requests one after another (httpx, SSE parsed by hand; greedy, --max-tokens each, the end of a reply may
stop it earlier). Beside them:

- a prober sends a malformed request every --bad-every seconds, cycling through bad JSON, a negative
  max_tokens and an unknown model; each must get a 4xx with an OpenAI-shaped error, and /health must
  still answer 200 right after
- once, a third of the way in, a client reads a few chunks of a long stream and closes the connection;
  the server's danlu_cancelled_requests_total (/metrics) must rise by one within 20 s, and when the load
  is over, /metrics must show no running and no queued requests (a slot that was not freed would still
  count as running)

Prints one table: requests, errors, dropped streams (a 200 stream that ended without its finish_reason
and [DONE]), p50/p99 time to first token (request sent -> first content chunk) and inter-token latency
(gaps between content chunks; the server sends one chunk per token with text), aggregate tokens/s
(completion tokens of all finished requests / the load's wall time, clients and server on the same
cores), the malformed-request and disconnect checks, and the machine. Every socket is on loopback;
the server is stopped (SIGTERM, then SIGKILL) at the end.

    python benchmarks/serve_load.py --model /path/to/smollm2      # a model dir
    python benchmarks/serve_load.py                               # imports SmolLM2 into a temp dir
    python benchmarks/serve_load.py --quick                       # 4 clients, 10 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUESTIONS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain photosynthesis in two sentences.",
    "Give me three tips for learning a new language.",
    "What is the difference between a list and a tuple in Python?",
    "Describe a rainy afternoon in a small town.",
    "How do vaccines work?",
    "Summarize the plot of Romeo and Juliet.",
    "Why is the sky blue?",
    "Suggest a name for a friendly robot.",
    "What should I cook for dinner tonight?",
    "Tell me a fun fact about octopuses.",
]


@dataclass
class Stats:
    requests: int = 0
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    dropped: int = 0
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    bad: dict[str, list[int]] = field(default_factory=dict)
    health_after_bad: list[bool] = field(default_factory=list)
    disconnect: dict[str, Any] = field(default_factory=dict)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`danlu serve` as a child process; its log is kept in a file and shown when it fails."""

    def __init__(self, model: Path, port: int, max_batch: int, max_queue: int):
        cmd = [sys.executable, "-m", "danlu.cli", "serve", str(model), "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--max-batch", str(max_batch), "--max-queue", str(max_queue)]
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop())
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("DANLU_API_KEY", None)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, text=True, env=env)

    def wait_ready(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"danlu serve exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise SystemExit(f"danlu serve did not answer /health within {timeout:.0f} s:\n{self.tail()}")

    def tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-3000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r"([a-z_]+) ([0-9.eE+-]+)", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


async def metrics(client: Any, url: str) -> dict[str, float]:
    return parse_metrics((await client.get(url + "/metrics")).text)


async def stream_chat(
    client: Any, url: str, body: dict[str, Any], stats: Stats | None, close_after: int | None = None
) -> int:
    """One streaming chat request; its timings go into stats. close_after: leave after that many
    content chunks (the disconnect test). Returns the number of content chunks read."""
    t0 = time.perf_counter()
    last = None
    chunks = 0
    finished = done = False
    usage = None
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            text = (await r.aread()).decode(errors="replace")[:200]
            if stats is not None:
                stats.errors.append(f"HTTP {r.status_code}: {text}")
            return 0
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            event = json.loads(line[6:])
            if "error" in event:
                if stats is not None:
                    stats.errors.append(f"stream error: {event['error']}")
                return chunks
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices", []):
                if choice.get("delta", {}).get("content"):
                    now = time.perf_counter()
                    if stats is not None:
                        if last is None:
                            stats.ttft.append(now - t0)
                        else:
                            stats.itl.append(now - last)
                    last = now
                    chunks += 1
                if choice.get("finish_reason"):
                    finished = True
            if close_after is not None and chunks >= close_after:
                return chunks  # leaving the block closes the connection mid-stream
    if stats is not None:
        if finished and done:
            stats.ok += 1
            stats.tokens += usage["completion_tokens"] if usage else chunks
        else:
            stats.dropped += 1
    return chunks


def chat_body(model: str, i: int, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def client_loop(
    cid: int, client: Any, url: str, model: str, args: argparse.Namespace, stats: Stats, deadline: float
) -> None:
    i = cid
    while time.monotonic() < deadline and stats.requests < args.max_requests:
        stats.requests += 1
        try:
            await stream_chat(client, url, chat_body(model, i, args.max_tokens), stats)
        except Exception as e:  # a reset connection or a timeout is an error of this request
            stats.errors.append(f"{type(e).__name__}: {e}")
        i += args.clients


BAD_REQUESTS = {
    "bad JSON": lambda model: {
        "content": b'{"model": "x", "messages": [',
        "headers": {"content-type": "application/json"},
    },
    "negative max_tokens": lambda model: {
        "json": {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}
    },
    "unknown model": lambda model: {
        "json": {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    },
}


async def prober(client: Any, url: str, model: str, every: float, stats: Stats, deadline: float) -> None:
    kinds = list(BAD_REQUESTS)
    n = 0
    while time.monotonic() + every < deadline:
        await asyncio.sleep(every)
        kind = kinds[n % len(kinds)]
        n += 1
        try:
            r = await client.post(url + "/v1/chat/completions", **BAD_REQUESTS[kind](model))
            shaped = "error" in r.json() and "message" in r.json()["error"]
            stats.bad.setdefault(kind, []).append(r.status_code if shaped else -r.status_code)
            health = await client.get(url + "/health")
            stats.health_after_bad.append(health.status_code == 200)
        except Exception as e:
            stats.errors.append(f"prober {kind}: {type(e).__name__}: {e}")


async def disconnecter(client: Any, url: str, model: str, at: float, stats: Stats) -> None:
    await asyncio.sleep(at)
    before = (await metrics(client, url)).get("danlu_cancelled_requests_total", 0)
    body = chat_body(model, 0, 1000)
    body["messages"][0]["content"] = "Tell me a very long story about a dragon."
    read = await stream_chat(client, url, body, None, close_after=3)
    t0 = time.monotonic()
    after = before
    while time.monotonic() - t0 < 20:
        after = (await metrics(client, url)).get("danlu_cancelled_requests_total", 0)
        if after >= before + 1:
            break
        await asyncio.sleep(0.2)
    stats.disconnect = {
        "chunks read": read,
        "cancelled +1": after >= before + 1,
        "seconds to cancel": round(time.monotonic() - t0, 2),
    }


async def run_load(url: str, model: str, args: argparse.Namespace) -> tuple[Stats, float, dict[str, float]]:
    import httpx

    stats = Stats()
    limits = httpx.Limits(max_connections=args.clients + 8, max_keepalive_connections=args.clients + 8)
    timeout = httpx.Timeout(args.request_timeout)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        start_metrics = await metrics(client, url)
        t0 = time.monotonic()
        deadline = t0 + args.duration
        tasks = [client_loop(c, client, url, model, args, stats, deadline) for c in range(args.clients)]
        tasks.append(prober(client, url, model, args.bad_every, stats, deadline))
        tasks.append(disconnecter(client, url, model, args.duration / 3, stats))
        await asyncio.gather(*tasks)
        wall = time.monotonic() - t0
        end_metrics = await metrics(client, url)
        # the engine finishes cancelled requests at its next step: give it a moment
        for _ in range(50):
            if (
                end_metrics.get("danlu_running_requests", 1) == 0
                and end_metrics.get("danlu_queue_depth", 1) == 0
            ):
                break
            await asyncio.sleep(0.2)
            end_metrics = await metrics(client, url)
        end_metrics["server generated tokens"] = end_metrics.get("danlu_generation_tokens_total", 0) - (
            start_metrics.get("danlu_generation_tokens_total", 0)
        )
        stats.health_after_bad.append((await client.get(url + "/health")).status_code == 200)
    return stats, wall, end_metrics


def pct(xs: list[float], q: float) -> str:
    if not xs:
        return "-"
    xs = sorted(xs)
    return f"{1000 * xs[min(len(xs) - 1, int(q * len(xs)))]:.0f} ms"


def model_dir(args: argparse.Namespace) -> Path:
    if args.model:
        return Path(args.model)
    from danlu.interop.gguf import import_gguf, registry_gguf

    out = Path(tempfile.mkdtemp(prefix="danlu-bench-serve-")) / "smollm2"
    return import_gguf(registry_gguf("smollm2-135m-instruct"), out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", help="a danlu model dir (default: SmolLM2-135M-Instruct imported into a temp dir)"
    )
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    p.add_argument("--max-requests", type=int, default=5000, help="at most this many chat requests in all")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each chat request")
    p.add_argument("--max-batch", type=int, default=32, help="the server's --max-batch")
    p.add_argument("--max-queue", type=int, default=64, help="the server's --max-queue")
    p.add_argument("--bad-every", type=float, default=3.0, help="seconds between malformed requests")
    p.add_argument("--request-timeout", type=float, default=120.0)
    p.add_argument("--quick", action="store_true", help="4 clients, 10 s, 16 tokens per request")
    args = p.parse_args()
    if args.quick:
        args.clients, args.duration, args.max_tokens, args.bad_every = 4, 10.0, 16, 1.5

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _machine import machine_markdown, markdown_table

    model = model_dir(args)
    server = Server(model, free_port(), args.max_batch, args.max_queue)
    load_start = os.getloadavg()[0]
    try:
        server.wait_ready(180)
        import httpx

        name = httpx.get(server.url + "/v1/models", timeout=10).json()["data"][0]["id"]
        stats, wall, end = asyncio.run(run_load(server.url, name, args))
    finally:
        code = server.stop()
    load_end = os.getloadavg()[0]

    bad_ok = all(400 <= s < 500 for codes in stats.bad.values() for s in codes)
    rows = [
        ["clients x duration", f"{args.clients} x {args.duration:.0f} s (wall {wall:.1f} s)"],
        ["chat requests sent / completed", f"{stats.requests} / {stats.ok}"],
        ["errors", str(len(stats.errors))],
        ["dropped streams", str(stats.dropped)],
        ["time to first token p50 / p99", f"{pct(stats.ttft, 0.5)} / {pct(stats.ttft, 0.99)}"],
        ["inter-token latency p50 / p99", f"{pct(stats.itl, 0.5)} / {pct(stats.itl, 0.99)}"],
        [
            "completion tokens (clients) / generated (server /metrics)",
            f"{stats.tokens} / {end['server generated tokens']:.0f}",
        ],
        ["aggregate tokens/s (completed requests' tokens / wall)", f"{stats.tokens / wall:.1f}"],
        [
            "malformed requests: status codes",
            "; ".join(f"{k}: {sorted(set(v))} x{len(v)}" for k, v in stats.bad.items())
            + f" (all 4xx: {bad_ok})",
        ],
        ["/health 200 after every malformed request and at the end", str(all(stats.health_after_bad))],
        ["disconnect mid-stream", ", ".join(f"{k} {v}" for k, v in stats.disconnect.items())],
        [
            "after the load: running / queued (/metrics)",
            f"{end.get('danlu_running_requests', float('nan')):.0f} / {end.get('danlu_queue_depth', float('nan')):.0f}",
        ],
        ["server exit status after SIGTERM", str(code)],
    ]
    print(
        f"## danlu serve under load: {args.clients} streaming chat clients, max_tokens {args.max_tokens}, greedy\n"
    )
    print(markdown_table(["measure", "value"], rows))
    if stats.errors:
        print("\nfirst errors:\n" + "\n".join(stats.errors[:5]))
    print(f"\nserver: danlu serve {model.name} --max-batch {args.max_batch} --max-queue {args.max_queue}")
    print(f"load average (1 min) at start / end: {load_start:.1f} / {load_end:.1f}")
    print(machine_markdown())
    print("command: python benchmarks/serve_load.py " + shlex.join(sys.argv[1:]))
    ok = not stats.errors and not stats.dropped and bad_ok and all(stats.health_after_bad)
    ok = ok and stats.disconnect.get("cancelled +1") and end.get("danlu_running_requests") == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
