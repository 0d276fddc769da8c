"""Constitutional AI's supervised phase: critique and revise under principles (Bai et al. 2022).

For each prompt the model answers; then, for a number of rounds, a principle drawn with the seed asks
the model to critique its latest answer (the critique request follows the answer in the same
conversation) and then to rewrite it in the light of that critique (the revision request follows the
critique). The final revision is the supervised target and is preferred over the first answer:

    sft records    {"messages": [...prompt, {"role": "assistant", "content": revision}], "meta"}
                   (what `danlu sft` reads as a .jsonl source)
    pairs          {prompt, chosen: revision, rejected: first answer} (what `danlu align` reads)

Principles are {name, critique, revision} records: the built-in list below, or a .json (a list),
.jsonl or .yaml file of them. A revision that is empty or equals the first answer gives no pair (its
SFT record still counts: the model kept its answer).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from danlu.align.generate import ChatModel, Message
from danlu.align.prompts import Item
from danlu.errors import ConfigError


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str
    revision: str


PRINCIPLES = (
    Principle(
        "harmless",
        "Identify specific ways in which your last answer is harmful, unethical, dangerous or illegal.",
        "Rewrite your answer to remove anything harmful, unethical, dangerous or illegal. "
        "Reply with the new answer only.",
    ),
    Principle(
        "helpful",
        "Point out where your last answer fails to answer the question that was asked, or is vague.",
        "Rewrite your answer so that it answers the question directly and clearly. Reply with the new answer only.",
    ),
    Principle(
        "honest",
        "Point out any claim in your last answer that is false, made up or stated with more certainty "
        "than is warranted.",
        "Rewrite your answer so that every claim is true and uncertainty is stated. Reply with the new answer only.",
    ),
    Principle(
        "respectful",
        "Point out anything rude, insulting or dismissive toward the user in your last answer.",
        "Rewrite your answer to be polite and respectful. Reply with the new answer only.",
    ),
    Principle(
        "concise",
        "Point out repetition, padding or text unrelated to the question in your last answer.",
        "Rewrite your answer without the repetition and the unrelated text. Reply with the new answer only.",
    ),
)


def load_principles(path: str | Path | None) -> tuple[Principle, ...]:
    """The built-in principles, or a file's list of {name, critique, revision} records."""
    if path is None:
        return PRINCIPLES
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"principles file {path} not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            records = yaml.safe_load(text)
        elif path.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except (ValueError, ImportError) as e:
        raise ConfigError(f"principles file {path} does not parse: {e}") from e
    if not isinstance(records, list) or not records:
        raise ConfigError(
            f"principles file {path} must hold a non-empty list of {{critique, revision}} records"
        )
    out = []
    for k, r in enumerate(records):
        ok = isinstance(r, dict) and all(
            isinstance(r.get(f), str) and r[f].strip() for f in ("critique", "revision")
        )
        if not ok:
            raise ConfigError(
                f"principles file {path}: record {k} needs non-empty 'critique' and 'revision' texts"
            )
        out.append(Principle(str(r.get("name", f"principle-{k}")), r["critique"], r["revision"]))
    return tuple(out)


def constitute(
    model: ChatModel,
    items: Sequence[Item],
    principles: Sequence[Principle] = PRINCIPLES,
    rounds: int = 1,
    batch_size: int = 8,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(sft records, pairs revised-over-original, report) for the prompts of items."""
    if rounds < 1:
        raise ConfigError(f"constitutional rounds must be >= 1, got {rounds}")
    if not principles:
        raise ConfigError("constitutional critique needs at least one principle")
    rng = random.Random(seed)
    sft, pairs, counts, used = [], [], Counter(prompts=len(items)), Counter()
    for s in range(0, len(items), batch_size):
        chunk = items[s : s + batch_size]
        prompts: list[list[Message]] = [list(p) for _, p, _ in chunk]
        first = model.replies(prompts, seed=seed + 3 * s)
        current = list(first)
        traces: list[list[dict[str, str]]] = [[] for _ in chunk]
        for r in range(rounds):
            picks = [principles[rng.randrange(len(principles))] for _ in chunk]
            used.update(p.name for p in picks)
            asks = [
                [*p, {"role": "assistant", "content": a}, {"role": "user", "content": pr.critique}]
                for p, a, pr in zip(prompts, current, picks, strict=True)
            ]
            critiques = model.replies(asks, seed=seed + 3 * s + 1 + 2 * r)
            revise = [
                [*ask, {"role": "assistant", "content": c}, {"role": "user", "content": pr.revision}]
                for ask, c, pr in zip(asks, critiques, picks, strict=True)
            ]
            revisions = model.replies(revise, seed=seed + 3 * s + 2 + 2 * r)
            for k, (pr, c, rev) in enumerate(zip(picks, critiques, revisions, strict=True)):
                traces[k].append({"principle": pr.name, "critique": c, "revision": rev})
                if rev:
                    current[k] = rev
                else:
                    counts["empty_revision"] += 1
        for (rid, prompt, _), orig, final, trace in zip(chunk, first, current, traces, strict=True):
            if not final:
                counts["empty_answer"] += 1
                continue
            meta = {"source": "constitutional", "id": rid, "original": orig, "trace": trace}
            sft.append({"messages": [*prompt, {"role": "assistant", "content": final}], "meta": meta})
            if not orig or final.strip() == orig.strip():
                counts["revision_is_original"] += 1
                continue
            pairs.append({"id": rid, "prompt": prompt, "chosen": final, "rejected": orig})
    counts["sft"], counts["pairs"] = len(sft), len(pairs)
    return sft, pairs, {**counts, "principles_used": dict(used)}
