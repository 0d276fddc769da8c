"""Mixing: temperature weights, capped allocation, phase schedules and seeded selection, by formula."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.data.mixing import (
    allocate,
    parse_phases,
    plan_mix,
    sample_mix,
    sample_source,
    temperature_weights,
)
from danlu.errors import ConfigError


def test_temperature_weights_follow_the_formula():
    sizes = {"web": 900.0, "books": 90.0, "code": 10.0}
    for alpha in (0.0, 0.3, 0.5, 1.0):
        p = temperature_weights(sizes, alpha)
        z = sum(n**alpha for n in sizes.values())
        assert p == pytest.approx({s: n**alpha / z for s, n in sizes.items()})
    assert temperature_weights(sizes, 0.0) == pytest.approx(dict.fromkeys(sizes, 1 / 3))
    assert temperature_weights(sizes, 1.0)["web"] == pytest.approx(0.9)
    with pytest.raises(ConfigError, match="alpha"):
        temperature_weights(sizes, -1)


def test_allocation_caps_epochs_and_redistributes_by_weight():
    sizes = {"a": 1000.0, "b": 10.0, "c": 500.0}
    got = allocate(sizes, 1200.0, {"a": 0.5, "b": 0.3, "c": 0.2}, max_epochs=4)
    assert got["b"] == pytest.approx(40.0)  # 0.3 * 1200 = 360 wanted, capped at 4 epochs of 10
    # the other 1160 tokens are split 0.5 : 0.2 between a and c
    assert got["a"] == pytest.approx(1160 * 5 / 7) and got["c"] == pytest.approx(1160 * 2 / 7)
    assert sum(got.values()) == pytest.approx(1200.0)
    # a budget beyond every cap gives every source its cap
    assert allocate(sizes, 1e9, {"a": 1, "b": 1, "c": 1}, max_epochs=2) == pytest.approx(
        {s: 2 * n for s, n in sizes.items()}
    )
    with pytest.raises(ConfigError, match="unknown sources"):
        allocate(sizes, 10, {"x": 1.0})


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.floats(1, 1e6), min_size=1, max_size=5),
    weights=st.lists(st.floats(0.01, 10), min_size=5, max_size=5),
    total=st.floats(0, 1e7),
    max_epochs=st.floats(0.5, 10),
)
def test_allocation_properties(sizes, weights, total, max_epochs):
    names = [f"s{i}" for i in range(len(sizes))]
    size = dict(zip(names, sizes, strict=True))
    w = dict(zip(names, weights, strict=False))
    got = allocate(size, total, w, max_epochs)
    cap = {s: max_epochs * size[s] for s in names}
    assert all(got[s] <= cap[s] * (1 + 1e-9) + 1e-9 for s in names)
    assert sum(got.values()) == pytest.approx(min(total, sum(cap.values())), rel=1e-6, abs=1e-6)
    free = [s for s in names if got[s] < cap[s] * (1 - 1e-9)]
    for a in free:  # uncapped sources keep the ratio of their weights
        for b in free:
            assert got[a] * w[b] == pytest.approx(got[b] * w[a], rel=1e-6, abs=1e-6)


def test_phase_schedule_splits_the_budget_and_caps_epochs_over_all_phases():
    sizes = {"web": 10_000.0, "math": 100.0}
    phases = parse_phases(
        [
            {"until": 0.7, "weights": {"web": 0.9, "math": 0.1}},
            {"until": 0.9, "weights": {"web": 0.5, "math": 0.5}},
            {"until": 1.0, "weights": {"web": 0.2, "math": 0.8}},
        ]
    )
    plan = plan_mix(sizes, 2000.0, phases=phases, max_epochs=3)
    assert [sum(p.values()) for p in plan] == pytest.approx([1400.0, 400.0, 200.0])
    assert plan[0]["math"] == pytest.approx(140.0)  # 0.1 of 1400, under the 300-token cap
    assert plan[1]["math"] == pytest.approx(160.0)  # wants 200; only 300 - 140 = 160 are left
    assert plan[2]["math"] == pytest.approx(0.0) and plan[2]["web"] == pytest.approx(200.0)
    with pytest.raises(ConfigError, match="until"):
        parse_phases([{"until": 0.5}, {"until": 0.4}])
    with pytest.raises(ConfigError, match="end at"):
        parse_phases([{"until": 0.5}])


def test_sample_source_repeats_whole_passes_then_a_seeded_subset():
    sizes = np.arange(1, 21, dtype=float)  # 20 documents, 210 tokens
    idx = sample_source(sizes, 2.5 * 210, seed=7)
    counts = Counter(idx.tolist())
    assert set(counts.values()) <= {2, 3} and len(counts) == 20  # every doc twice, some a third time
    assert list(np.sort(idx[:20])) == list(range(20))  # the first pass is a permutation
    got = sizes[idx].sum()
    assert 2.5 * 210 <= got < 2.5 * 210 + sizes.max()
    assert (idx == sample_source(sizes, 2.5 * 210, seed=7)).all()
    assert idx.tolist() != sample_source(sizes, 2.5 * 210, seed=8).tolist()


def test_sample_mix_is_deterministic_and_matches_the_plan():
    rng = np.random.default_rng(0)
    docs = {"a": rng.integers(1, 50, 300).astype(float), "b": rng.integers(1, 50, 20).astype(float)}
    sizes = {s: float(v.sum()) for s, v in docs.items()}
    phases = parse_phases([{"until": 0.5, "weights": {"a": 1, "b": 1}}, {"until": 1.0}])
    plan = plan_mix(sizes, 6000.0, alpha=0.5, phases=phases, max_epochs=2)
    mix = sample_mix(docs, plan, seed=3)
    assert mix == sample_mix(docs, plan, seed=3) and mix != sample_mix(docs, plan, seed=4)
    for phase, alloc in zip(mix, plan, strict=True):
        for src in docs:
            got = sum(docs[src][i] for s, i in phase if s == src)
            assert alloc[src] - docs[src].max() <= got <= alloc[src] + docs[src].max()
    # across phases a source is read in whole passes: no document repeats before all were used
    b_counts = Counter(i for phase in mix for s, i in phase if s == "b")
    assert len(b_counts) == len(docs["b"]) and max(b_counts.values()) - min(b_counts.values()) <= 1
    total_b = sum(docs["b"][i] * c for i, c in b_counts.items())
    assert total_b <= 2 * sizes["b"] + docs["b"].max()
