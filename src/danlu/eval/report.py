"""Evaluation results as a table for the screen and a JSON file on disk."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from danlu.io import atomic_write_json

_METRICS = (
    "acc", "acc_norm", "acc_norm_tokens", "acc_subject_mean", "perplexity", "bits_per_byte",
    "exact_match", "exact_match_strict", "f1", "pass@1", "pass@10", "pass@100",
    "distinct_1", "distinct_2", "distinct_3", "repetition_rate",
    "memorized_exact", "memorized_tokens", "val_reproduced_exact", "val_reproduced_tokens",
    "probe_acc", "majority_acc", "word_baseline_acc",
    "toxic_rate", "wordlist_toxic_rate", "mean_toxicity", "expected_max_toxicity", "toxicity_probability",
    "stereotype_rate", "gender_gap", "group_gap", "refusal_rate", "over_refusal_rate",
    "mt_score", "mt_grade", "win_rate", "lc_win_rate", "swap_consistency",
)  # fmt: skip
# reported as they are (not in percent)
_ABSOLUTE = ("perplexity", "bits_per_byte", "gender_gap", "group_gap", "mt_score", "mt_grade")


def _fmt(value: float, metric: str) -> str:
    if value != value:
        return "nan"
    return f"{value:.3f}" if metric in _ABSOLUTE else f"{100 * value:.2f}"


def format_table(out: dict[str, Any]) -> str:
    """Markdown table: task, n, metric, value (percent; perplexity, bits per byte, nats gaps as they are),
    standard error, the 95% percentile-bootstrap interval of the mean over items, seconds."""
    lines = [
        "| task | n | metric | value | ± stderr | 95% CI (bootstrap) | seconds | tokens/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, res in out["results"].items():
        for metric in _METRICS:
            if metric not in res:
                continue
            se = res.get(f"{metric}_stderr")
            se_text = "-" if se is None or (isinstance(se, float) and math.isnan(se)) else _fmt(se, metric)
            tps = res.get("tokens_per_second")  # the code tasks count characters, not tokens
            ci = res.get(f"{metric}_ci95")
            ci_text = "-" if ci is None else f"{_fmt(ci[0], metric)} – {_fmt(ci[1], metric)}"
            lines.append(
                f"| {task} | {res['n']} | {metric} | {_fmt(res[metric], metric)} | {se_text} | {ci_text} | "
                f"{res['seconds']:.1f} | {'-' if tps is None else f'{tps:.0f}'} |"
            )
    eff = out["efficiency"]
    tps = eff.get("tokens_per_second")
    rate = "" if tps is None or tps != tps else f"{tps:.0f} tokens/s, "
    lines.append(
        f"\n{eff['seconds']:.1f} s, {rate}peak memory "
        f"{eff['peak_memory_mb']:.0f} MB on {eff['device']} ({eff['threads']} threads)"
    )
    return "\n".join(lines)


def write_json(out: dict[str, Any], path: str | Path) -> Path:
    """Write results atomically (NaN becomes null: strict JSON readers reject NaN)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, clean(out))
    return path
