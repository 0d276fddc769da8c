"""RLAIF: preference pairs labelled by a model judge (Bai et al. 2022; Lee et al. 2023).

Each prompt gets candidate responses (sampled from a policy model, or given in a JSONL); every two
candidates of a prompt go to `danlu.eval.judge.judge_pair` under a rubric, which asks the judge in
both orders and counts a win only when both orders agree. A win becomes a pair {prompt, chosen,
rejected}; a tie (the orders disagree, the judge calls a tie, or gives no verdict) becomes none. The
report counts the verdicts by position, so a judge that always names the first (or second) answer
shows up as a position bias with no pairs, rather than as pairs that merely follow the order.

    candidates from a policy   sample_candidates(policy, items, n)
    candidates from a file     {prompt, responses: [...]} records (read_candidates)
    the judging                rlaif_pairs(judge, candidates, rubric) -> (pairs, report)
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from danlu.align.generate import ChatModel, Message
from danlu.align.pairs import BadPair, _prompt
from danlu.align.prompts import Item
from danlu.errors import ConfigError, DataError
from danlu.eval.judge import RUBRIC, judge_pair, judge_prompt, parse_verdict
from danlu.finetune.chat_data import read_jsonl

Candidates = tuple[str, list[Message], list[str]]  # (id, prompt messages, responses)


def read_rubric(path: str | Path | None) -> str:
    """The built-in MT-Bench rubric, or a file's text with {question}, {answer_a} and {answer_b}."""
    if path is None:
        return RUBRIC
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"rubric file {path} not found")
    text = path.read_text(encoding="utf-8")
    missing = [k for k in ("{question}", "{answer_a}", "{answer_b}") if k not in text]
    if missing:
        raise ConfigError(f"rubric {path} lacks the placeholders {', '.join(missing)}")
    try:
        judge_prompt("q", "a", "b", text)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(
            f"rubric {path}: braces other than the three placeholders ({e}); write {{{{ }}}}"
        ) from e
    return text


def question_text(prompt: Sequence[Message]) -> str:
    """What the judge reads as the user's question: the last user message, after any earlier turns."""
    if len(prompt) == 1:
        return prompt[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def sample_candidates(
    policy: ChatModel, items: Sequence[Item], n: int = 2, batch_size: int = 8, seed: int = 0
) -> list[Candidates]:
    """n sampled responses per prompt (the same prompt repeated n times, each with its own seed)."""
    if n < 2:
        raise ConfigError(f"RLAIF needs at least 2 candidates per prompt, got n={n}")
    out = []
    for s in range(0, len(items), batch_size):
        chunk = items[s : s + batch_size]
        convos = [p for _, p, _ in chunk for _ in range(n)]
        texts = policy.replies(convos, seed=seed + s * n)
        for k, (rid, prompt, _) in enumerate(chunk):
            out.append((rid, prompt, texts[k * n : (k + 1) * n]))
    return out


def read_candidates(path: str | Path) -> tuple[list[Candidates], dict[str, int]]:
    """{prompt, responses: [str, ...]} records (prompt a string or messages); bad ones counted."""
    out, skipped = [], Counter()
    for rid, rec in read_jsonl(path):
        responses = rec.get("responses") if isinstance(rec, dict) else None
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            skipped["unreadable"] += 1
            continue
        try:
            out.append((rid, _prompt(rec.get("prompt")), responses))
        except BadPair as e:
            skipped[e.reason] += 1
    if not out:
        raise DataError(f"{path}: no usable {{prompt, responses}} record (skipped: {dict(skipped)})")
    return out, dict(skipped)


class _Tally:
    """Wraps a judge to count its verdicts by the position the judged answer was shown in."""

    def __init__(self, judge: Callable[[str], str]):
        self.judge, self.verdicts = judge, Counter()

    def __call__(self, prompt: str) -> str:
        text = self.judge(prompt)
        self.verdicts[parse_verdict(text) or "none"] += 1
        return text


def rlaif_pairs(
    judge: Callable[[str], str], candidates: Sequence[Candidates], rubric: str = RUBRIC, judge_name: str = ""
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(pairs, report): every two distinct responses of a prompt judged in both orders; a consistent
    win is a pair (its "margin" 1), a tie none."""
    tally = _Tally(judge)
    todo = []
    for rid, prompt, responses in candidates:
        distinct = list(dict.fromkeys(r.strip() for r in responses if r.strip()))
        for i, j in itertools.combinations(range(len(distinct)), 2):
            todo.append((rid, prompt, distinct[i], distinct[j]))
    prefetch = getattr(judge, "prefetch", None)
    if prefetch is not None:  # a batched judge answers every prompt of the run in a few batches
        q = [(question_text(p), a, b) for _, p, a, b in todo]
        prefetch(
            [judge_prompt(x, a, b, rubric) for x, a, b in q]
            + [judge_prompt(x, b, a, rubric) for x, a, b in q]
        )
    pairs, outcome = [], Counter()
    for rid, prompt, a, b in todo:
        score = judge_pair(tally, question_text(prompt), a, b, rubric)
        if score == 0.5:
            outcome["tie"] += 1
            continue
        chosen, rejected = (a, b) if score == 1.0 else (b, a)
        outcome["decided"] += 1
        pairs.append(
            {"id": f"{rid}/{len(pairs)}", "prompt": prompt, "chosen": chosen, "rejected": rejected,
             "margin": 1.0, "judge": judge_name}
        )  # fmt: skip
    shown = sum(tally.verdicts.values())
    report = {
        "prompts": len(candidates),
        "comparisons": len(todo),
        "pairs": len(pairs),
        "outcomes": dict(outcome),
        "verdicts": dict(tally.verdicts),
        # a judge with no position bias names "A" in about half of its non-tie verdicts
        "verdict_a_rate": tally.verdicts["A"] / shown if shown else 0.0,
    }
    return pairs, report
