"""Wrapper overhead of danlu's tokenizer over the libraries it calls, in one run: this is not a speed
comparison between tokenizers. danlu trains its BPE with HF `tokenizers` and encodes with `tiktoken`
(on ranks converted from the HF model); the benchmark times danlu doing the work and the bare library
doing the same work (same settings, same special tokens, same ranks), and reports danlu's time over the
library's time: 1.00 means no overhead. HF's own encode_batch, danlu's fallback path when tiktoken's rank
rule cannot reproduce the merges, is timed on the same chunks for reference.

Input: the Shakespeare corpus (fetched into the danlu cache) or --input FILE. Repeats alternate the
order of the contenders; the table gives medians. Ids are asserted identical across the encoders.

    python benchmarks/tokenizer.py [--input FILE] [--vocab 8192] [--repeats 5] [--encode-repeats 11]
    python benchmarks/tokenizer.py --quick      # 2 training and 3 encoding repeats: a check that it runs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiktoken
import tokenizers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from _machine import machine_markdown, markdown_table
from danlu.tokenizer import Tokenizer
from danlu.tokenizer.bpe import ALL_SPECIAL_TOKENS
from danlu.tokenizer.ranks import GPT2_PATTERN

CHUNK = 4096


def load_texts(path: str | None) -> list[str]:
    """--input FILE, else the Shakespeare corpus if it is already in the danlu cache (never downloads)."""
    if path:
        return [Path(path).read_text(encoding="utf-8")]
    from danlu.data.sources import get_source
    from danlu.fetch import cache_dir

    src = get_source("shakespeare")
    root = cache_dir() / "sources" / f"{src.package}-{src.version}-{src.sha256[:12]}"
    if not root.is_dir():
        sys.exit(
            f"no input: the Shakespeare corpus is not in the cache ({root}); run `danlu data` (or the tests "
            "marked needs_data) to fetch it, or pass --input FILE with a few MB of UTF-8 text"
        )
    return [d["text"] for d in src.read(root)]


def train_hf_directly(texts: list[str], vocab: int) -> HFTokenizer:
    """The same training danlu does, written against `tokenizers` alone (danlu's special tokens included)."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        min_frequency=2,
        special_tokens=list(ALL_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    return hf


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def _verdict(ratio: float, budget: float) -> str:
    return f"<= {budget:.2f}: {'met' if ratio <= budget else 'NOT met'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", help="a UTF-8 text file (default: the Shakespeare corpus)")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=5, help="repeats of BPE training")
    ap.add_argument("--encode-repeats", type=int, default=11, help="repeats of encoding (each ~0.3 s)")
    ap.add_argument("--quick", action="store_true", help="2 training and 3 encoding repeats")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.encode_repeats = 2, 3
    texts = load_texts(args.input)
    corpus = "\n\n".join(texts)
    mb = len(corpus.encode("utf-8")) / 1e6

    train_times: dict[str, list[float]] = {"danlu": [], "hf": []}
    for r in range(args.repeats):
        order = ["danlu", "hf"] if r % 2 == 0 else ["hf", "danlu"]
        for name in order:
            fn = (
                (lambda: Tokenizer.train(texts, args.vocab))
                if name == "danlu"
                else (lambda: train_hf_directly(texts, args.vocab))
            )
            t, out = timed(fn)
            train_times[name].append(t)
            if name == "danlu":
                tok = out
            else:
                hf = out
    assert tok.hf.to_str() == hf.to_str(), "danlu and HF trained different tokenizers"
    assert list(tok.special_tokens) == list(ALL_SPECIAL_TOKENS), "danlu's special tokens changed"
    # what danlu adds to HF's training: the conversion to tiktoken ranks and the merge-by-merge check
    convert = statistics.median(timed(Tokenizer, HFTokenizer.from_str(hf.to_str()))[0] for _ in range(3))

    chunks = [corpus[i : i + CHUNK] for i in range(0, len(corpus), CHUNK)]
    peer = tiktoken.Encoding(
        name="peer", pat_str=GPT2_PATTERN, mergeable_ranks=tok._ranks, special_tokens=tok.special_tokens
    )
    hf.encode_special_tokens = True
    encoders = {
        "danlu": lambda: tok.encode_batch(chunks),
        "tiktoken": lambda: peer.encode_ordinary_batch(chunks, num_threads=8),
        "hf": lambda: [e.ids for e in hf.encode_batch(chunks, add_special_tokens=False)],
    }
    enc_times: dict[str, list[float]] = {k: [] for k in encoders}
    results = {}
    for r in range(args.encode_repeats):
        names = list(encoders) if r % 2 == 0 else list(reversed(encoders))
        for name in names:
            t, results[name] = timed(encoders[name])
            enc_times[name].append(t)
    assert results["danlu"] == results["tiktoken"] == results["hf"], "encoders disagree on ids"

    med = {
        k: statistics.median(v)
        for k, v in {**train_times, **{f"enc_{k}": v for k, v in enc_times.items()}}.items()
    }
    n_tokens = sum(len(x) for x in results["danlu"])
    print(
        f"corpus: {len(texts)} documents, {mb:.2f} MB, {n_tokens} tokens at vocab {tok.vocab_size} "
        f"({len(corpus.encode()) / n_tokens:.2f} bytes/token), {len(ALL_SPECIAL_TOKENS)} special tokens; "
        f"medians of {args.repeats} training and {args.encode_repeats} encoding repeats\n"
    )
    train_ratio = med["danlu"] / med["hf"]
    enc_ratio = med["enc_danlu"] / med["enc_tiktoken"]
    rows = [
        [f"BPE training, vocab {tok.vocab_size}", "`tokenizers` BpeTrainer, same settings",
         f"{med['danlu']:.3f}", f"{med['hf']:.3f}", f"{train_ratio:.3f}", _verdict(train_ratio, 1.10)],
        [f"encode {mb:.2f} MB in {CHUNK // 1024} KB chunks, batched", "`tiktoken` encode_ordinary_batch, same ranks",
         f"{med['enc_danlu']:.3f}", f"{med['enc_tiktoken']:.3f}", f"{enc_ratio:.3f}", _verdict(enc_ratio, 1.05)],
    ]  # fmt: skip
    header = [
        "work",
        "bare library",
        "danlu s",
        "library s",
        "wrapper overhead (danlu s / library s)",
        "budget",
    ]
    print(markdown_table(header, rows))
    print(
        f"\nof danlu's training time, {convert:.3f} s is its own work (HF model -> tiktoken ranks, merge check); "
        f"reference: HF `tokenizers` encode_batch on the same chunks (danlu's fallback path) takes "
        f"{med['enc_hf']:.3f} s, {med['enc_hf'] / med['enc_tiktoken']:.2f}x tiktoken's time"
    )
    print(f"\n{machine_markdown()} | tokenizers {tokenizers.__version__} | tiktoken {tiktoken.__version__}")


if __name__ == "__main__":
    main()
