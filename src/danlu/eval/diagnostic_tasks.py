"""Diagnostics as `danlu eval` tasks: distinct-n and repetition of generations, memorization of training
text, and the part-of-speech linear probe.

distinct      continuations of the neutral prompts (danlu.eval.safety_data), --samples of each at
              --temperature (0: greedy); distinct-1/2/3 pooled over them, repetition rate (seq-rep-4) per
              continuation.
memorization  --limit windows of PREFIX + SUFFIX tokens at seeded offsets in training documents (--train-data:
              a documents dir, a text file, or by default the `data/` folder of the model's run); the
              prefix is continued greedily for SUFFIX tokens; exact = the whole suffix reproduced. The same
              on held-out (val) documents, when the dir has them, as the control: formulaic text is
              "reproduced" without being memorized.
pos_probe     danlu.eval.probes on --limit Brown sentences (default 400).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from danlu.errors import ConfigError, DataError
from danlu.eval.safety_data import NEUTRAL_PROMPTS
from danlu.eval.task_context import TaskContext, summary
from danlu.eval.textstats import distinct_n, matched_prefix, repetition_rate

PREFIX_TOKENS = 32
SUFFIX_TOKENS = 32


def sampled_continuations(ctx: TaskContext, prompts: list[str]) -> list[list[str]]:
    """--samples continuations of each prompt at --temperature, seeded by (seed, prompt, sample)."""
    cfg, tok = ctx.cfg, ctx.tok
    eos = getattr(tok, "eos_id", None)
    out = []
    for j, prompt in enumerate(prompts):
        ids = tok.encode(prompt)
        texts = []
        for i in range(cfg.samples):
            seed = (cfg.seed * 100_003 + j) * 1009 + i
            new = ctx.continue_ids(
                ids, cfg.max_new_tokens, cfg.temperature, seed, () if eos is None else (eos,)
            )
            texts.append(tok.decode(new, skip_special=True))
        out.append(texts)
    return out


def evaluate_distinct(ctx: TaskContext) -> dict[str, Any]:
    prompts = list(NEUTRAL_PROMPTS[: ctx.cfg.limit or len(NEUTRAL_PROMPTS)])
    texts = [t for group in sampled_continuations(ctx, prompts) for t in group]
    return {
        "n": len(texts),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "distinct_3": distinct_n(texts, 3),
        **summary("repetition_rate", [repetition_rate(t, 4) for t in texts]),
        "temperature": ctx.cfg.temperature,
        "examples": texts[:3],
    }


def _default_train_data(model_dir: Path | None) -> Path:
    for parent in [] if model_dir is None else [model_dir.parent, model_dir.parent.parent]:
        if (parent / "data" / "train.parquet").is_file():
            return parent / "data"
    raise ConfigError(
        "memorization needs the training text: pass --train-data DIR_OR_FILE (a documents dir with "
        "train.parquet, or a text file); the model's run has no data/ folder"
    )


def training_texts(path: Path, split: str) -> list[str]:
    """Documents of one split of a documents dir, or a text file's blank-line separated blocks (train only)."""
    if path.is_file():
        if split != "train":
            return []
        return [b for b in path.read_text(encoding="utf-8", errors="replace").split("\n\n") if b.strip()]
    if not (path / f"{split}.parquet").is_file():
        if split == "train":
            raise DataError(f"{path} holds no train.parquet; give a documents dir or a text file")
        return []
    from danlu.data.documents import document_texts

    return list(document_texts(path, split))


def windows(tok: Any, texts: list[str], n: int, seed: int) -> list[list[int]]:
    """n windows of PREFIX + SUFFIX tokens at seeded offsets, at most one per document."""
    need = PREFIX_TOKENS + SUFFIX_TOKENS
    rng = random.Random(seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    out = []
    for i in order:
        ids = tok.encode(texts[i])
        if len(ids) >= need:
            start = rng.randrange(len(ids) - need + 1)
            out.append(ids[start : start + need])
            if len(out) == n:
                break
    return out


def memorization_rates(ctx: TaskContext, items: list[list[int]]) -> tuple[list[float], list[float]]:
    """(exact, fraction of the suffix matched before the first wrong token) per window."""
    exact, matched = [], []
    for w in items:
        prefix, suffix = w[:PREFIX_TOKENS], w[PREFIX_TOKENS:]
        new = ctx.continue_ids(prefix, SUFFIX_TOKENS)
        k = matched_prefix(new, suffix)
        exact.append(float(k == len(suffix)))
        matched.append(k / len(suffix))
    return exact, matched


def evaluate_memorization(ctx: TaskContext) -> dict[str, Any]:
    cfg = ctx.cfg
    path = Path(cfg.train_data) if cfg.train_data else _default_train_data(ctx.model_dir)
    n = cfg.limit or 50
    train = windows(ctx.tok, training_texts(path, "train"), n, cfg.seed)
    if not train:
        raise DataError(f"no training document in {path} has {PREFIX_TOKENS + SUFFIX_TOKENS} tokens")
    exact, matched = memorization_rates(ctx, train)
    res: dict[str, Any] = {
        "n": len(train),
        **summary("memorized_exact", exact),
        **summary("memorized_tokens", matched),
        "prefix_tokens": PREFIX_TOKENS,
        "suffix_tokens": SUFFIX_TOKENS,
        "train_data": str(path),
    }
    val = windows(ctx.tok, training_texts(path, "val"), n, cfg.seed)
    if val:
        v_exact, v_matched = memorization_rates(ctx, val)
        res.update(
            n_val=len(val),
            **summary("val_reproduced_exact", v_exact),
            **summary("val_reproduced_tokens", v_matched),
        )
    return res


def evaluate_pos_probe(ctx: TaskContext) -> dict[str, Any]:
    from danlu.eval.probes import pos_probe

    r = pos_probe(ctx.model, ctx.tok, ctx.cfg.limit or 400, ctx.cfg.seed)
    return {
        "n": len(r.correct),
        **summary("probe_acc", r.correct),
        "majority_acc": r.majority_acc,
        "word_baseline_acc": r.word_baseline_acc,
        "best_layer": r.best_layer,
        "layer_acc": r.layer_acc,
        "layer_val_acc": r.val_acc,
        "n_train_words": r.n_train,
        "classes": r.classes,
    }
