"""benchmarks/edu_retest.py's split-half and report lines on crafted margins."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from edu_retest import halves, report


def test_halves_split_the_tokens_in_order():
    assert halves(np.array([1.0, 3.0, 10.0, 20.0, 30.0])) == (2.0, 20.0)
    assert halves(np.array([4.0, 8.0])) == (4.0, 8.0)


def test_report_reads_a_consistent_judge_as_reliable():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=200)
    rows = [
        {
            "stored": 5 / (1 + np.exp(-t / 0.05)),  # the stored score is a monotone map of the margin
            "full": t,
            "first": t + 0.1 * rng.normal(),
            "second": t + 0.1 * rng.normal(),
            "paraphrase": -t,  # a reworded prompt that reverses the judge
        }
        for t in truth
    ]
    lines = report(rows, boots=200)
    assert "Spearman 1.000" in lines[0]
    rho_half = float(lines[1].split("Spearman ")[1].split()[0])
    assert rho_half > 0.95
    reliability = float(lines[2].split("Spearman-Brown) ")[1].split(";")[0])
    assert reliability == pytest.approx(2 * rho_half / (1 + rho_half), abs=2e-3)
    assert "Spearman -1.000" in lines[3] and lines[4].endswith("sqrt = 0.000")
