"""A multiple-choice test split of the built-in olmo data, disjoint from an SFT run's conversations.

The olmo source turns each train item of nine tasks into a user turn (the question and its lettered
choices) answered "<letter>. <text>"; the SFT data takes `per_source` of them. `draw_split` draws the
test items from the rest, per task, and keeps only an item that shares nothing with any conversation of
the run (train or validation, every source):

    id          not one of the run's conversation ids
    question    its normalized question (lowercased words of the prompt before the first choice line)
                is not the question of any run conversation
    13-gram     its prompt shares no 13-word n-gram with any run conversation (danlu's decontamination
                index): BoolQ questions on one passage, HellaSwag endings of one video, Winogrande's
                twin sentences are caught here
    fits        its rendered conversation fits the context the run trains with (the same distribution)

`score_choices` scores every choice of an item as the assistant turn under the run's chat template,
with the shared prompt computed once (a KV-cache prefill, the choices continued from copies of it).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from danlu.finetune.chat_data import Message
from danlu.finetune.packing import Example
from danlu.finetune.sources import OLMO_TASKS, olmo_records

_CHOICE_LINE = re.compile(r"^ ([A-Z])\. (.*)$")
REASONS = ("in_sft_data", "same_question", "shares_13gram", "no_choices", "too_long")


def choices_of(messages: Sequence[Message]) -> tuple[list[str], int] | None:
    """The answers "<letter>. <text>" an olmo item's user turn lists, and the index of its assistant
    turn among them (None when the turn does not list the answer, or lists one choice)."""
    user, answer = messages[0]["content"], messages[1]["content"]
    choices = [f"{m[1]}. {m[2]}" for m in map(_CHOICE_LINE.match, user.splitlines()) if m]
    return (choices, choices.index(answer)) if answer in choices and len(choices) > 1 else None


def question_key(prompt: str) -> str:
    """The prompt's question, normalized: the lowercased words before its first choice line."""
    lines = prompt.splitlines()
    stem = next((k for k, line in enumerate(lines) if _CHOICE_LINE.match(line)), len(lines))
    return " ".join(re.findall(r"\w+", "\n".join(lines[:stem]).lower()))


def _text(messages: Sequence[Message]) -> str:
    return "\n".join(m["content"] for m in messages)


def draw_split(
    conversations: Sequence[dict[str, Any]],
    per_task: int,
    seed: int,
    fits: Callable[[list[Message]], bool],
    tasks: Sequence[str] = OLMO_TASKS,
    records: Iterable[tuple[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(items [{id, task, messages}], report): up to per_task items of each task, drawn in a seeded
    order from the olmo train items that pass every rule above against `conversations`.

    The report counts the items per task, the candidates passed over by reason, and the overlaps of
    the drawn set recomputed from scratch (each must be 0)."""
    from danlu.data.decontam import NgramIndex

    taken_ids = {str(c["id"]) for c in conversations}
    taken_questions = {question_key(c["messages"][0]["content"]) for c in conversations}
    index = NgramIndex.from_texts(_text(c["messages"]) for c in conversations)
    by_task: dict[str, list[tuple[str, list[Message]]]] = {t: [] for t in tasks}
    for rid, rec in records if records is not None else olmo_records(tuple(tasks)):
        by_task.setdefault(rec["meta"]["task"], []).append((rid, rec["messages"]))
    items: list[dict[str, Any]] = []
    passed_over: dict[str, Counter] = {}
    for task in tasks:
        pool = by_task.get(task, [])
        random.Random(f"{seed}:{task}").shuffle(pool)
        skipped: Counter = Counter()
        got = 0
        for rid, msgs in pool:
            if got == per_task:
                break
            reason = _reject(rid, msgs, taken_ids, taken_questions, index, fits)
            if reason:
                skipped[reason] += 1
                continue
            items.append({"id": rid, "task": task, "messages": msgs})
            got += 1
        passed_over[task] = skipped
    report = {
        "per_task": dict(Counter(it["task"] for it in items)),
        "pool": {t: len(by_task.get(t, [])) for t in tasks},
        "passed_over": {t: {r: c[r] for r in REASONS if c[r]} for t, c in passed_over.items()},
        "overlaps": {
            "ids": sum(it["id"] in taken_ids for it in items),
            "questions": sum(question_key(it["messages"][0]["content"]) in taken_questions for it in items),
            "13gram": sum(index.matches(it["messages"][0]["content"]) > 0 for it in items),
        },
    }
    return items, report


def _reject(rid, msgs, taken_ids, taken_questions, index, fits) -> str | None:
    if rid in taken_ids:
        return "in_sft_data"
    if question_key(msgs[0]["content"]) in taken_questions:
        return "same_question"
    if choices_of(msgs) is None:
        return "no_choices"
    if index.matches(msgs[0]["content"]) > 0:
        return "shares_13gram"
    if not fits(msgs):
        return "too_long"
    return None


def choice_rows(messages: Sequence[Message], encode: Callable[[list[Message]], Example]) -> list[Example]:
    """(ids, mask) of the item's user turn answered by each of its choices."""
    found = choices_of(messages)
    assert found is not None, "an item of draw_split lists its choices"
    return [encode([messages[0], {"role": "assistant", "content": ch}]) for ch in found[0]]


@torch.no_grad()
def score_choices(model: Any, items: Sequence[Sequence[Example]]) -> list[list[tuple[float, int]]]:
    """(summed log-probability of the masked tokens, their count) of every row of every item.

    The rows of one item share their prompt: it is run once into a KV cache (the output head only on
    its last position), the cache copied to one row per choice, and the choices run from there."""
    from danlu.model.kv_cache import KVCache

    out = []
    for rows in items:
        shared = _shared_prefix(rows)
        longest = max(len(ids) for ids, _ in rows)
        cache = KVCache.for_model(model, batch=1, max_len=longest)
        first = torch.log_softmax(_last_logits(model, torch.tensor([rows[0][0][:shared]]), cache), -1)
        cache.reorder(torch.zeros(len(rows), dtype=torch.long))
        width = longest - 1 - shared
        later = None
        if width > 0:
            x = torch.zeros((len(rows), width), dtype=torch.long)
            for b, (ids, _) in enumerate(rows):
                x[b, : len(ids) - 1 - shared] = torch.tensor(ids[shared:-1])
            later = torch.log_softmax(model(x, cache=cache).float(), -1)
        scores = []
        for b, (ids, mask) in enumerate(rows):
            total, n = 0.0, 0
            for j in range(shared, len(ids)):
                if mask[j]:
                    lp = first[0, ids[j]] if j == shared else later[b, j - shared - 1, ids[j]]
                    total, n = total + float(lp), n + 1
            scores.append((total, n))
        out.append(scores)
    return out


def _shared_prefix(rows: Sequence[Example]) -> int:
    """The tokens every row starts with, up to the first scored one (at least one token)."""
    first_ids = rows[0][0]
    n = min(min(len(ids) for ids, _ in rows), min(mask.index(1) for _, mask in rows))
    for k in range(n):
        if any(ids[k] != first_ids[k] for ids, _ in rows):
            n = k
            break
    return max(n, 1)


def _last_logits(model: Any, x: torch.Tensor, cache: Any) -> torch.Tensor:
    """Logits [1, V] of the last position of x (the head run on that position only)."""
    head = getattr(model, "lm_head", None)
    hook = head.register_forward_pre_hook(lambda mod, a: (a[0][:, -1:],)) if head is not None else None
    try:
        logits = model(x, cache=cache)
    finally:
        if hook is not None:
            hook.remove()
    return logits[:, -1].float()
