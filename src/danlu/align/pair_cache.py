"""The align stage's preference pairs: built once from the data settings, cached in the run dir as
checked JSONL keyed by those settings, and encoded for the method (both the DPO family and the RL
methods' prompt sets read them)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from danlu.align.batches import Encoded, encode_pairs
from danlu.align.config import AlignConfig
from danlu.align.pairs import build_pairs
from danlu.errors import ConfigError
from danlu.finetune import templates
from danlu.io import atomic_path, atomic_write_json, sha256_json


def prepare_pairs(
    cfg: AlignConfig, tok: Any, data_dir: Path
) -> tuple[dict[str, list[Encoded]], dict[str, Any]]:
    """Encoded train/val pairs and the manifest; the checked pairs are cached in data_dir, keyed by
    the data settings."""
    key = sha256_json({"data": dataclasses.asdict(cfg.data), "v": 1})
    manifest_path, pairs_path = data_dir / "manifest.json", data_dir / "pairs.jsonl"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if manifest.get("key") == key and pairs_path.is_file():
        rows = [json.loads(line) for line in pairs_path.read_text(encoding="utf-8").splitlines()]
        splits = {s: [r for r in rows if r["split"] == s] for s in ("train", "val")}
    else:
        splits, report = build_pairs(cfg.data)
        data_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(pairs_path) as tmp:
            lines = [json.dumps(p | {"split": s}, ensure_ascii=False) for s, ps in splits.items() for p in ps]
            tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        manifest = {"key": key, **report}
    template = templates.resolve(cfg.data.template, tok)
    encoded, too_long = {}, {}
    for s, ps in splits.items():
        # a row feeds its tokens but the last to a language model, all of them to a reward model
        limit = cfg.train.seq_len + (cfg.method != "rm")
        encoded[s], too_long[s] = encode_pairs(ps, tok, template, limit)
        if len(encoded[s]) == 0:
            raise ConfigError(
                f"no {s} preference pair fits align.train.seq_len={cfg.train.seq_len}; raise it"
            )
    manifest |= {
        "template": template,
        "too_long": too_long,
        "encoded": {s: len(e) for s, e in encoded.items()},
    }
    atomic_write_json(manifest_path, manifest)
    return encoded, manifest
