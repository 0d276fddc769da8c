"""What the `danlu run` tests share: a tiny chat corpus and a recipe of one small model over it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from danlu.data.sources import CHAT_LABELS


def write_chat_corpus(path: Path, word_lines: Callable[..., list[str]], docs: int = 80) -> Path:
    """docs JSONL rows of alternating "A: ..." / "B: ..." lines of random words."""
    rows = []
    for i in range(docs):
        lines = [f"{CHAT_LABELS[j % 2]}: {line}" for j, line in enumerate(word_lines(6, seed=i))]
        rows.append(json.dumps({"id": i, "text": "\n".join(lines)}))
    path.write_text("\n".join(rows) + "\n")
    return path


def tiny_recipe(root: Path, word_lines: Callable[..., list[str]], name: str, every: int = 3,
                max_new_tokens: int = 8, **sections: Any) -> Path:  # fmt: skip
    """root/r.yaml: a 1-layer model, 6 steps (evaluated and checkpointed every `every`), over
    root/corpus.jsonl; `sections` add or replace top-level recipe sections. Returns root."""
    corpus = write_chat_corpus(root / "corpus.jsonl", word_lines)
    cfg = {
        "name": name,
        "run_dir": str(root / "out"),
        "data": {"sources": [str(corpus)], "val_fraction": 0.1},
        "tokenizer": {"vocab_size": 300},
        "model": {"n_layer": 1, "n_embd": 32, "n_head": 2, "max_seq_len": 32},
        "train": {"seq_len": 32, "batch_size": 4, "max_steps": 6, "eval_every": every, "eval_batches": 2,
                  "ckpt_every": every, "log_every": 1, "device": "cpu"},
        "sample": {"prompts": ["A: hello\nB:"], "max_new_tokens": max_new_tokens},
    } | sections  # fmt: skip
    (root / "r.yaml").write_text(yaml.safe_dump(cfg))
    return root
