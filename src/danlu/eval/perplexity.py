"""Perplexity and bits per byte of texts longer than the context, with strided sliding windows.

A text's tokens are cut into windows of at most max_len inputs; each window predicts `stride` new tokens
and sees up to max_len - stride earlier tokens as context, so every token is scored exactly once and,
past the first window, with at least max_len - stride tokens of context. stride = max_len gives lm-eval's
`loglikelihood_rolling` (disjoint windows, the last one slid back to be full), smaller strides give the
Hugging Face perplexity recipe's overlap. The first token is predicted from one prefix token (end-of-
text), as lm-eval does. Bits per byte divide the summed loss by the UTF-8 bytes of the text, which makes
models with different tokenizers comparable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from danlu.errors import ConfigError
from danlu.eval.scoring import Scorer, prefix_token_id


def rolling_windows(
    tokens: Sequence[int], prefix_token: int, max_len: int, stride: int | None = None
) -> Iterator[tuple[list[int], list[int]]]:
    """(context ids, ids to predict) windows covering tokens once; lm-eval's get_rolling_token_windows
    with context_len = max_len - stride + 1, made disjoint."""
    stride = stride or max_len
    if not 1 <= stride <= max_len:
        raise ConfigError(f"stride must be in [1, max_len={max_len}], got {stride}")
    tokens = list(tokens)
    if not tokens:
        return
    first = min(max_len, len(tokens))
    yield [prefix_token], tokens[:first]
    predicted = first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, stride)
        end = predicted + n
        window = tokens[max(0, end - max_len - 1) : end - 1]
        yield window[: len(window) - (n - 1)], tokens[end - n : end]
        predicted += n


def text_token_logprobs(
    scorer: Scorer, text: str, max_len: int | None = None, stride: int | None = None
) -> np.ndarray:
    """Log-probability of every token of text (no BOS: the first token follows the prefix token)."""
    ids = scorer.tok.encode(text)
    max_len = max_len or scorer.max_length
    windows = list(rolling_windows(ids, prefix_token_id(scorer.tok), max_len, stride))
    if not windows:
        return np.zeros(0)
    return np.concatenate([lp.double().numpy() for lp, _ in scorer.token_logprobs(windows)])


def text_perplexity(scorer: Scorer, text: str) -> float:
    """exp(mean token loss) of one text (inf for a text with no tokens)."""
    lp = text_token_logprobs(scorer, text)
    return float(math.exp(-lp.mean())) if len(lp) else float("inf")


def model_dir_scorer(
    path: str | Path, device: str = "cpu", batch_size: int = 8
) -> Callable[[Sequence[str]], list[float]]:
    """Perplexity of each text under a danlu model dir: the scorer factory the run layer gives the data
    stage's `perplexity` block (a module-level function, so worker processes can receive it)."""
    import multiprocessing

    import torch

    from danlu.model_dir import load_model

    if multiprocessing.parent_process() is not None:
        # a pool worker, one per core: a forked copy of a parent's torch thread pool hangs on first use,
        # and one thread per worker is what the cores allow anyway
        torch.set_num_threads(1)
    model, tok, _ = load_model(path, device)
    scorer = Scorer(model, tok, batch_size=batch_size, device=device)
    return lambda texts: [text_perplexity(scorer, t) for t in texts]


def perplexity(
    scorer: Scorer, texts: Sequence[str], max_len: int | None = None, stride: int | None = None
) -> dict[str, Any]:
    """Token perplexity, bits per byte and mean loss by token position over texts."""
    if not texts:
        raise ConfigError("no texts to measure perplexity on")
    per_text = [text_token_logprobs(scorer, t, max_len, stride) for t in texts]
    nats = -sum(float(lp.sum()) for lp in per_text)
    n_tokens = sum(len(lp) for lp in per_text)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    ci: dict[str, list[float]] = {}
    if n_tokens and n_bytes:
        lo, hi = block_bootstrap_nll(np.concatenate(per_text))
        ci = {
            "perplexity_ci95": [math.exp(lo), math.exp(hi)],
            "bits_per_byte_ci95": [x * n_tokens / (math.log(2) * n_bytes) for x in (lo, hi)],
        }
    return {
        "tokens": n_tokens,
        "bytes": n_bytes,
        "nll_per_token": nats / max(n_tokens, 1),
        "perplexity": math.exp(nats / n_tokens) if n_tokens else float("nan"),
        "bits_per_byte": nats / (math.log(2) * n_bytes) if n_bytes else float("nan"),
        "word_perplexity": math.exp(nats / max(sum(len(t.split()) for t in texts), 1)),
        "loss_by_position": loss_by_position(per_text).tolist(),
        **ci,
    }


def block_bootstrap_nll(
    logprobs: np.ndarray, block: int = 128, n_resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of the mean token loss by a block bootstrap: neighbouring tokens'
    losses are correlated, so blocks of `block` consecutive tokens are resampled, not tokens.
    Each resample's statistic is its summed loss over its summed token count (blocks may be short)."""
    losses = -np.asarray(logprobs, dtype=np.float64)
    starts = range(0, len(losses), block)
    sums = np.array([losses[i : i + block].sum() for i in starts])
    counts = np.array([len(losses[i : i + block]) for i in starts], dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(sums), size=(n_resamples, len(sums)))
    stats = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    lo, hi = np.quantile(stats, [0.025, 0.975])
    return float(lo), float(hi)


def loss_by_position(per_text: Sequence[np.ndarray]) -> np.ndarray:
    """Mean loss (nats) at each token position of the texts, over the texts that reach it."""
    longest = max((len(lp) for lp in per_text), default=0)
    total = np.zeros(longest)
    count = np.zeros(longest)
    for lp in per_text:
        total[: len(lp)] -= lp
        count[: len(lp)] += 1
    return total / np.maximum(count, 1)


def plot_loss_by_position(losses: Sequence[float], path: str | Path, title: str = "") -> Path:
    """A PNG of loss against token position (log-scaled positions: the early drop is the story)."""
    import matplotlib

    matplotlib.use("Agg")  # no display here; must come before pyplot is imported
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4))
    values = np.asarray(losses, dtype=float)
    x = np.arange(1, len(values) + 1)
    ax.plot(x, values, lw=0.5, alpha=0.35, label="per position")
    # a running mean over a window that grows with position: one document's losses are noisy
    cums = np.concatenate([[0.0], np.cumsum(values)])
    lo = np.maximum(0, np.arange(len(values)) - np.maximum(1, x // 10) + 1)
    ax.plot(x, (cums[1:] - cums[lo]) / (np.arange(1, len(values) + 1) - lo), lw=1.5, label="running mean")
    ax.legend()
    ax.set_xscale("log")
    ax.set_xlabel("token position")
    ax.set_ylabel("mean loss (nats)")
    ax.set_title(title or "loss by position")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
