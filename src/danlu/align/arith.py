"""Verifiable rewards: arithmetic problems made on the fly from a seed, GSM8K answers, the reply's format.

A problem is `a op b` with operands of `digits` digits and op from `ops` (+, -, *); its answer is the
exact integer. A reply is correct when the last number in it equals the answer (lm-eval's "flexible"
GSM8K filter, danlu.eval.generative.extract_number) and well-formatted when it is the number and
nothing else. GSM8K records ({question, answer}: the answer's "#### N" line, or N alone) score the same
way, after lm-eval's GSM8K normalization (commas, "$", a trailing ".").
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from danlu.errors import DataError
from danlu.eval.generative import GSM8K_IGNORE, extract_number, lm_eval_exact_match

INSTRUCTION = "Reply with only the number."
_ONLY_NUMBER = re.compile(r"\s*-?[0-9][0-9,]*(\.[0-9]+)?\s*\.?\s*")


@dataclass(frozen=True)
class Problem:
    question: str  # the user message
    answer: str  # the exact answer, as digits


def arithmetic_problem(rng: random.Random, digits: int, ops: str) -> Problem:
    lo, hi = 10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1
    a, b, op = rng.randint(lo, hi), rng.randint(lo, hi), rng.choice(ops)
    value = a + b if op == "+" else a - b if op == "-" else a * b
    return Problem(f"What is {a} {op} {b}? {INSTRUCTION}", str(value))


def distinct_problems(digits: int, ops: str) -> int:
    """How many different questions arithmetic_problem can ask (1 digit: 0-9, else no leading zero)."""
    values = 10 if digits == 1 else 9 * 10 ** (digits - 1)
    return values * values * len(set(ops))


def arithmetic_problems(
    seed: int, n: int, digits: int, ops: str, exclude: frozenset[str] = frozenset(), distinct: bool = False
) -> list[Problem]:
    """n problems drawn with seed, none of whose questions is in exclude (the held-out set); with
    distinct, no question twice (a held-out set counts each problem once)."""
    left = distinct_problems(digits, ops) - len(exclude)
    if left <= 0 or (distinct and n > left):
        raise DataError(f"{n} {'distinct ' if distinct else ''}problems asked, {max(left, 0)} can be drawn")
    rng, out, seen = random.Random(seed), [], set(exclude)
    while len(out) < n:
        p = arithmetic_problem(rng, digits, ops)
        if p.question not in seen:
            out.append(p)
            if distinct:
                seen.add(p.question)
    return out


def read_gsm8k(path: str | Path) -> list[Problem]:
    """GSM8K-style records {question, answer} from a JSONL file; the answer's "#### N" is kept."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"GSM8K file {path} does not exist")
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            answer = str(rec["answer"]).split("####")[-1].strip()
            out.append(Problem(f"{rec['question'].strip()}\n{INSTRUCTION}", answer))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise DataError(f"{path}:{i}: expected a JSON object with question and answer") from None
    if not out:
        raise DataError(f"{path} holds no GSM8K records")
    return out


def correct(reply: str, answer: str) -> float:
    """1.0 when the last number of the reply equals the answer (GSM8K's normalization), else 0.0."""
    return lm_eval_exact_match(extract_number(reply, None), answer, GSM8K_IGNORE)


def well_formatted(reply: str) -> float:
    """1.0 when the reply is one number and nothing else."""
    return float(_ONLY_NUMBER.fullmatch(reply) is not None)


def rewards(replies: Sequence[str], answers: Sequence[str], format_weight: float) -> dict[str, list[float]]:
    """Per-reply {"correct", "format", "reward" = correct + format_weight * format}."""
    c = [correct(r, a) for r, a in zip(replies, answers, strict=True)]
    f = [well_formatted(r) for r in replies]
    return {"correct": c, "format": f, "reward": [x + format_weight * y for x, y in zip(c, f, strict=True)]}
