"""benchmarks/sft_smollm2.py's stored BEFORE results: reused per evaluation, keyed by what it scores."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "sft_smollm2.py"


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("sft_smollm2_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    computed: list[list[str]] = []

    def start_workers(model_dir, run_dir, tag, spec, jobs, procs):
        computed.append(list(jobs))
        return {job: f"{job} of {len(spec.get(job) or [])} items" for job in jobs}

    monkeypatch.setattr(mod, "start_workers", start_workers)
    monkeypatch.setattr(mod, "collect", lambda procs, run_dir, tag: {job: r for job, r in procs.items()})
    mod.computed = computed
    return mod


def _spec(mc):
    return {
        "template": "model",
        "limits": {"arc_easy": None, "hellaswag": 400},
        "heldout_ll": [{"id": "a"}],
        "heldout_mc": mc,
    }


def _args(base, reuse, before_from=None):
    return argparse.Namespace(base=str(base), reuse_before=reuse, before_from=before_from, eval_procs=2)


@pytest.fixture
def base(tmp_path):
    """A base model dir whose weights file is all the reuse key reads of it."""
    path = tmp_path / "base"
    path.mkdir()
    (path / "model.safetensors").write_bytes(b"weights")
    return path


def test_only_the_evaluations_whose_items_changed_are_computed_again(bench, base, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    first = bench.before_results(_args(base, False), run, _spec([{"id": "x"}]))
    assert sorted(bench.computed[0]) == sorted(bench.JOBS) and first["heldout_mc"] == "heldout_mc of 1 items"
    again = bench.before_results(_args(base, True), run, _spec([{"id": "x"}]))
    assert len(bench.computed) == 1 and again == first
    changed = bench.before_results(_args(base, True), run, _spec([{"id": "x"}, {"id": "y"}]))
    assert bench.computed[1] == ["heldout_mc"] and changed["heldout_mc"] == "heldout_mc of 2 items"
    assert changed["arc_easy"] == first["arc_easy"]
    # other weights: every evaluation again
    (base / "model.safetensors").write_bytes(b"other weights")
    bench.before_results(_args(base, True), run, _spec([{"id": "x"}]))
    assert sorted(bench.computed[2]) == sorted(bench.JOBS)


def test_an_older_run_dirs_single_spec_results_are_read_except_multiple_choice(bench, base, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    old_spec = {
        **_spec([{"messages": "old form"}]),
        "parts": {"0": ["hellaswag", "heldout_mc"], "1": ["arc_easy", "heldout_ll"]},
    }
    (old / "eval_spec.json").write_text(json.dumps(old_spec))
    (old / "eval_before_0.json").write_text(json.dumps({"hellaswag": "old hs", "heldout_mc": "old mc"}))
    (old / "eval_before_1.json").write_text(json.dumps({"arc_easy": "old arc", "heldout_ll": "old ll"}))
    run = tmp_path / "run"
    run.mkdir()
    got = bench.before_results(_args(base, True, str(old)), run, _spec([{"id": "new"}]))
    assert bench.computed == [["heldout_mc"]]
    assert (got["hellaswag"], got["arc_easy"], got["heldout_ll"]) == ("old hs", "old arc", "old ll")
    assert got["heldout_mc"] == "heldout_mc of 1 items"
