"""Prompts with their reference answers, and the pairs "the reference answer over a model's own sample".

prompt_items(spec, limit, seed)   (id, prompt messages, reference answer) from any SFT source of
                                  danlu.finetune.sources (olmo[:task], chatterbot, chitchat, a JSONL
                                  of messages / Alpaca / ShareGPT records): the conversation up to
                                  its first assistant turn is the prompt, that turn the reference;
                                  a JSONL of {prompt} records gives prompts without a reference
sample_pairs(model, items, ...)   the reference answer chosen over the model's own sample (the
                                  "self-generated rejected" pairs of SPIN and of Zephyr-style
                                  data), dropping samples that equal the reference
write_jsonl(path, records)        one JSON object a line, written atomically
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from danlu.align.generate import ChatModel, Message
from danlu.align.pairs import BadPair, _prompt
from danlu.errors import DataError
from danlu.finetune.chat_data import BadConversation, check, read_jsonl, to_messages
from danlu.io import atomic_path

Item = tuple[str, list[Message], str | None]  # (id, prompt messages, reference answer or None)


def _item(rid: str, record: Any) -> Item:
    if isinstance(record, dict) and isinstance(record.get("prompt"), str | list) and "messages" not in record:
        try:
            return rid, _prompt(record["prompt"]), None
        except BadPair as e:
            raise BadConversation("bad_prompt", str(e)) from e
    msgs = check(to_messages(record))
    first = next(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    if first == 0 or msgs[first - 1]["role"] != "user":
        raise BadConversation("no_user_turn", "the first assistant turn does not answer a user turn")
    return rid, msgs[:first], msgs[first]["content"]


def prompt_items(spec: str, limit: int = 0, seed: int = 0) -> tuple[list[Item], dict[str, int]]:
    """(items, skipped by reason): every usable record of the source, limit of them drawn with the
    seed (0: all), in the source's order."""
    if Path(spec).expanduser().is_file() or Path(spec).expanduser().is_dir():
        records = read_jsonl(spec)
    else:
        from danlu.finetune.sources import source_records

        records = source_records(spec)
    items, skipped = [], Counter()
    for rid, record in records:
        try:
            items.append(_item(rid, record))
        except BadConversation as e:
            skipped[e.reason] += 1
    if not items:
        raise DataError(f"prompt source {spec!r} has no usable prompt (skipped: {dict(skipped)})")
    if limit and len(items) > limit:
        keep = sorted(random.Random(seed).sample(range(len(items)), limit))
        items = [items[k] for k in keep]
    return items, dict(skipped)


def sample_pairs(
    model: ChatModel, items: Sequence[Item], batch_size: int = 8, seed: int = 0
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """({id, prompt, chosen: the reference, rejected: the model's sample}, counts)."""
    usable = [it for it in items if it[2] is not None]
    if not usable:
        raise DataError(
            "sample pairs need prompts with reference answers (an SFT source, not {prompt} records)"
        )
    pairs, counts = [], Counter(prompts=len(usable))
    for s in range(0, len(usable), batch_size):
        chunk = usable[s : s + batch_size]
        samples = model.replies([p for _, p, _ in chunk], seed=seed + s)
        for (rid, prompt, ref), sample in zip(chunk, samples, strict=True):
            if not sample:
                counts["empty_sample"] += 1
            elif sample.strip() == (ref or "").strip():
                counts["sample_is_reference"] += 1
            else:
                pairs.append({"id": rid, "prompt": prompt, "chosen": ref, "rejected": sample})
    counts["pairs"] = len(pairs)
    return pairs, dict(counts)


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path
