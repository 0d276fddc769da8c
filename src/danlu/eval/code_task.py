"""HumanEval and MBPP as `danlu eval` tasks: n sampled completions per problem, run in the sandbox.

pass@1 is always reported, and pass@k for k in 10, 100 where n >= k (Chen et al.'s unbiased
estimator, danlu.eval.code). At temperature 0 every sample is the greedy completion, so n = 1 is
what to ask for; pass@10 wants n >= 10 samples at a temperature such as 0.8. Sample i of problem j
is drawn with a seed made of (seed, j, i), so a rerun gives the same completions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from danlu.eval.code import CodeProblem, Generate, evaluate_code, load_problems
from danlu.eval.generative import sample_until

CODE_TASKS = ("humaneval", "mbpp")
PASS_KS = (1, 10, 100)


def model_generate(
    model: Any, tok: Any, problems: Sequence[CodeProblem], max_new_tokens: int, seed: int
) -> Generate:
    """generate(prompt, n, temperature) for evaluate_code: decoding stops at the problem's stop strings."""
    index = {p.prompt: (j, p.stop) for j, p in enumerate(problems)}

    def generate(prompt: str, n: int, temperature: float) -> list[str]:
        j, stop = index[prompt]
        return [
            sample_until(
                model, tok, prompt, stop, max_new_tokens, temperature, seed=(seed * 100_003 + j) * 1009 + i
            )[0]
            for i in range(n)
        ]

    return generate


def evaluate_code_task(
    model: Any,
    tok: Any,
    kind: str,
    limit: int | None,
    samples: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
) -> tuple[dict[str, Any], int]:
    """(pass@k with standard errors, how the programs ended, characters generated) of one task."""
    problems = load_problems(kind, limit)
    ks = tuple(k for k in PASS_KS if k <= samples)
    gen = model_generate(model, tok, problems, max_new_tokens, seed)
    res = evaluate_code(problems, gen, n=samples, ks=ks, temperature=temperature)
    statuses = Counter(s for p in res.per_problem for s in p["statuses"])
    chars = sum(len(c) for p in res.per_problem for c in p["completions"])
    return {
        **res.metrics,
        "n": len(problems),
        "samples": samples,
        "temperature": temperature,
        "statuses": dict(statuses),
    }, chars
