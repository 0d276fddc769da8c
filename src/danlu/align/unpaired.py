"""Unpaired completions `{prompt, completion, label}` for KTO (TRL's unpaired preference layout).

A record says that one completion of a prompt is desirable (label true) or undesirable (false); no
second completion is needed. Read from local JSONL (align.data.unpaired), screened (bad records
counted by reason), exact repeats dropped, a (prompt, completion) labelled both ways dropped both
times (the data contradicts itself), optionally decontaminated, and split by prompt with the pairs'
rule (`danlu.align.pairs.is_val`), so a prompt lands on the same side in both. Encoded into the KTO
`Completion`s of danlu.align.batches; each one's KL row is the next completion's response after its
own prompt (a mismatched pair, as `batches.unpaired` builds them).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from danlu.align.batches import Completion, _response
from danlu.align.config import AlignDataConfig
from danlu.align.pairs import BadPair, _prompt, _text, is_val
from danlu.errors import DataError
from danlu.finetune import templates
from danlu.finetune.chat_data import read_jsonl
from danlu.io import atomic_path, sha256_json

Record = dict[str, Any]  # {id, source, prompt: [messages], completion: str, label: bool}


def to_completion(rid: str, record: Any, source: str) -> Record:
    """A checked unpaired record, or BadPair with the reason."""
    if not isinstance(record, dict) or not {"prompt", "completion", "label"} <= record.keys():
        raise BadPair("unreadable", "an unpaired record needs prompt, completion and label")
    label = record["label"]
    if isinstance(label, int) and not isinstance(label, bool) and label in (0, 1):
        label = bool(label)
    if not isinstance(label, bool):
        raise BadPair("bad_label", f"label must be true or false, got {label!r}")
    return {
        "id": rid,
        "source": source,
        "prompt": _prompt(record["prompt"]),
        "completion": _text(record["completion"], "completion"),
        "label": label,
    }


def build_unpaired(cfg: AlignDataConfig) -> tuple[dict[str, list[Record]], dict[str, Any]]:
    """({"train": records, "val": records}, report) of the align.data.unpaired files."""
    got, skipped = [], Counter()
    for spec in cfg.unpaired:
        if not Path(spec).expanduser().exists():
            raise DataError(f"unpaired preference file {spec!r} not found (a .jsonl file or a folder)")
        for rid, record in read_jsonl(spec):
            try:
                got.append(to_completion(rid, record, spec))
            except BadPair as e:
                skipped[e.reason] += 1
    key = lambda r: (tuple((m["role"], m["content"]) for m in r["prompt"]), r["completion"].strip())  # noqa: E731
    labels: dict[Any, set[bool]] = {}
    for r in got:
        labels.setdefault(key(r), set()).add(r["label"])
    kept, seen = [], set()
    for r in got:
        k = key(r)
        if cfg.dedup and len(labels[k]) > 1:
            skipped["conflicting_label"] += 1
        elif cfg.dedup and k in seen:
            skipped["duplicate"] += 1
        else:
            seen.add(k)
            kept.append(r)
    if cfg.decontaminate:
        from danlu.data.decontam import Decontaminator

        dec = Decontaminator()
        clean = []
        for r in kept:
            text = "\n".join([*(m["content"] for m in r["prompt"]), r["completion"]])
            if dec.filter({"text": text, "meta": {}})[0]:
                clean.append(r)
            else:
                skipped["contaminated"] += 1
        kept = clean
    splits: dict[str, list[Record]] = {"train": [], "val": []}
    for r in kept:
        splits["val" if is_val(r, cfg.seed, cfg.val_fraction) else "train"].append(r)
    if cfg.unpaired and not splits["train"]:
        raise DataError(f"no unpaired completion survived the checks (dropped {dict(skipped)})")
    labels_kept = Counter("desirable" if r["label"] else "undesirable" for r in kept)
    return splits, {
        "dropped": dict(skipped),
        "labels": dict(labels_kept),
        "records": {s: len(v) for s, v in splits.items()},
    }


def encode_unpaired(
    records: Sequence[Record], tok: Any, template: str, max_tokens: int
) -> tuple[list[Completion], int]:
    """(KTO completions, records skipped because prompt + completion exceeds max_tokens)."""
    rows, too_long = [], 0
    for r in records:
        prompt = templates.prompt_ids(tok, r["prompt"], template)
        ids, mask = _response(tok, r["prompt"], prompt, r["completion"], template)
        if len(prompt) + len(ids) > max_tokens:
            too_long += 1
            continue
        rows.append((prompt, ids, mask, r["label"]))
    n = len(rows)
    return [
        Completion(p, ids, m, d, rows[(k + 1) % n][1], rows[(k + 1) % n][2])
        for k, (p, ids, m, d) in enumerate(rows)
    ], too_long


def prepare_unpaired(
    cfg: AlignDataConfig, tok: Any, template: str, max_tokens: int, data_dir: Path
) -> tuple[dict[str, list[Completion]], dict[str, Any]]:
    """Encoded train/val completions and their report; the checked records are cached in
    data_dir/unpaired.jsonl, keyed by the data settings."""
    if not cfg.unpaired:
        return {"train": [], "val": []}, {}
    key = sha256_json({"data": dataclasses.asdict(cfg), "v": 1})
    path, meta = data_dir / "unpaired.jsonl", data_dir / "unpaired.json"
    cached = json.loads(meta.read_text()) if meta.is_file() else {}
    if cached.get("key") == key and path.is_file():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        splits = {s: [r for r in rows if r["split"] == s] for s in ("train", "val")}
        report = cached["report"]
    else:
        splits, report = build_unpaired(cfg)
        data_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            lines = [json.dumps(r | {"split": s}, ensure_ascii=False) for s, rs in splits.items() for r in rs]
            tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        with atomic_path(meta) as tmp:
            tmp.write_text(json.dumps({"key": key, "report": report}), encoding="utf-8")
    encoded, too_long = {}, {}
    for s, rs in splits.items():
        encoded[s], too_long[s] = encode_unpaired(rs, tok, template, max_tokens)
    return encoded, {**report, "too_long": too_long, "encoded": {s: len(e) for s, e in encoded.items()}}
