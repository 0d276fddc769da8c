"""Metrics against their formulas and against sacrebleu / rouge-score."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.errors import ConfigError, DataError
from danlu.eval import metrics as M

sacrebleu = pytest.importorskip("sacrebleu")
rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

HAND = [
    ("the cat sat on the mat", "the cat is on the mat"),
    ("There is a cat on the mat.", "The cat sat on the mat!"),
    ("a quick brown fox jumps over the lazy dog", "the quick brown fox jumped over the lazy dog"),
    ("completely different words here", "nothing in common at all"),
    ("Hello, world!", "Hello, world!"),
    ("", "non-empty reference"),
    ("repeat repeat repeat repeat", "repeat once"),
    ("Numbers 1 2 3 and 42.", "numbers 1, 2, 3 and 42"),
]
VOCAB = [
    "the",
    "a",
    "of",
    "king",
    "queen",
    "lord",
    "night",
    "day",
    "love",
    "death",
    "sword",
    "crown",
    "river,",
    "town.",
    "friend",
    "foe",
]


def _random_texts(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        hyp = " ".join(rng.choices(VOCAB, k=rng.randint(1, 25)))
        ref = " ".join(rng.choices(VOCAB, k=rng.randint(1, 25)))
        out.append((hyp, ref))
    return out


RANDOM = _random_texts(30, seed=7)


# --- SQuAD EM / F1 ---------------------------------------------------------------------------------


def test_normalize_answer_squad_rules():
    assert M.normalize_answer("  The  Cat, sat!  ") == "cat sat"
    assert M.normalize_answer("An apple a day") == "apple day"
    assert M.normalize_answer("theatre") == "theatre"  # articles only as whole words


def test_exact_match_and_f1_formulas():
    assert M.exact_match("The Eiffel Tower.", ["eiffel tower", "Paris"]) == 1.0
    assert M.exact_match("Eiffel", "eiffel tower") == 0.0
    # pred tokens {eiffel, tower, paris}, ref {eiffel, tower}: p=2/3, r=1, f1=0.8
    assert M.token_f1("the Eiffel tower, Paris", "Eiffel Tower") == pytest.approx(0.8)
    assert M.token_f1("x y", ["a b", "y z w"]) == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert M.token_f1("", "") == 1.0 and M.token_f1("", "a cat") == 0.0
    assert M.token_f1("dog", "cat") == 0.0
    # duplicate tokens count with multiplicity
    # and articles vanish before counting: pred [x b b], ref [b b b c] -> p=2/3, r=2/4
    assert M.token_f1("x b a b", "b b b c") == pytest.approx(2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))


def test_accuracy_and_bad_input():
    assert M.accuracy([1, 2, 3, 4], [1, 0, 3, 0]) == 0.5
    with pytest.raises(DataError, match="targets"):
        M.accuracy([1, 2], [1])
    with pytest.raises(DataError, match="empty"):
        M.accuracy([], [])
    with pytest.raises(DataError, match="reference"):
        M.exact_match("x", [])


# --- BLEU / chrF -------------------------------------------------------------------------------


@pytest.mark.parametrize("pairs", [HAND, RANDOM], ids=["hand", "random"])
def test_bleu_chrf_equal_sacrebleu(pairs):
    hyps = [h for h, _ in pairs]
    refs = [r for _, r in pairs]
    assert M.corpus_bleu(hyps, refs) == sacrebleu.corpus_bleu(hyps, [refs]).score
    assert M.corpus_chrf(hyps, refs) == sacrebleu.corpus_chrf(hyps, [refs]).score
    for h, r in pairs:
        assert M.sentence_bleu(h, r) == sacrebleu.sentence_bleu(h, [r]).score
        assert M.sentence_chrf(h, r) == sacrebleu.sentence_chrf(h, [r]).score
    # identical texts score 100 (a sanity check on the wrapped direction of hyp/ref)
    assert M.corpus_bleu(refs, refs) == pytest.approx(100.0)
    assert M.corpus_chrf(refs, refs) == pytest.approx(100.0)


def test_bleu_multiple_references_are_transposed_into_streams():
    hyps = ["the cat sat on the mat", "a dog barked loudly"]
    refs = [["the cat is on the mat", "a cat sat on a mat"], ["the dog barked", "a dog barked loudly"]]
    streams = [[refs[0][0], refs[1][0]], [refs[0][1], refs[1][1]]]
    assert M.corpus_bleu(hyps, refs) == sacrebleu.corpus_bleu(hyps, streams).score
    assert M.corpus_chrf(hyps, refs) == sacrebleu.corpus_chrf(hyps, streams).score
    assert M.sentence_bleu(hyps[0], refs[0]) == sacrebleu.sentence_bleu(hyps[0], refs[0]).score
    with pytest.raises(DataError, match="same"):
        M.corpus_bleu(hyps, [["a"], ["b", "c"]])


# --- ROUGE -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stem", [False, True])
@pytest.mark.parametrize("pairs", [HAND, RANDOM], ids=["hand", "random"])
def test_rouge_equals_rouge_score(pairs, stem):
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=stem)
    sums = dict.fromkeys(M.ROUGE_TYPES, 0.0)
    for pred, ref in pairs:
        ours = M.rouge(pred, ref, use_stemmer=stem)
        theirs = scorer.score(ref, pred)  # rouge-score takes (target, prediction)
        for t in M.ROUGE_TYPES:
            assert ours[t]["precision"] == theirs[t].precision
            assert ours[t]["recall"] == theirs[t].recall
            assert ours[t]["fmeasure"] == theirs[t].fmeasure
            sums[t] += theirs[t].fmeasure
    corpus = M.corpus_rouge([p for p, _ in pairs], [r for _, r in pairs], use_stemmer=stem)
    for t in M.ROUGE_TYPES:
        assert corpus[t] == pytest.approx(sums[t] / len(pairs), abs=1e-12)


def test_rouge_precision_recall_direction():
    # prediction is a strict subset of the reference: precision 1, recall 3/6
    r = M.rouge("the cat sat", "the cat sat on the mat")["rouge1"]
    assert r["precision"] == 1.0 and r["recall"] == pytest.approx(0.5)


@pytest.mark.parametrize("pairs", [HAND, RANDOM], ids=["hand", "random"])
def test_own_lcs_rouge_l_matches_rouge_score(pairs):
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for pred, ref in pairs:
        ours = M.rouge_l_lcs(pred, ref)
        theirs = scorer.score(ref, pred)["rougeL"]
        assert ours["precision"] == pytest.approx(theirs.precision, abs=1e-12)
        assert ours["recall"] == pytest.approx(theirs.recall, abs=1e-12)
        assert ours["fmeasure"] == pytest.approx(theirs.fmeasure, abs=1e-12)


def _lcs_brute(a: list[str], b: list[str]) -> int:
    for size in range(min(len(a), len(b)), 0, -1):
        subs = {tuple(a[i] for i in ix) for ix in itertools.combinations(range(len(a)), size)}
        if any(tuple(b[i] for i in ix) in subs for ix in itertools.combinations(range(len(b)), size)):
            return size
    return 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from("abc"), max_size=7), st.lists(st.sampled_from("abc"), max_size=7))
def test_lcs_length_equals_brute_force(a, b):
    assert M.lcs_length(a, b) == _lcs_brute(a, b)


def test_unknown_rouge_type():
    with pytest.raises(ConfigError, match="rougeLsum"):
        M.rouge("a", "b", types=["rougeLsum"])


# --- pass@k ----------------------------------------------------------------------------------------


def _pass_at_k_enumerated(n: int, c: int, k: int) -> float:
    """Fraction of the k-subsets of n samples (first c correct) that contain a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_subset_enumeration_and_closed_form(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            got = M.pass_at_k(n, c, k)
            assert got == pytest.approx(_pass_at_k_enumerated(n, c, k), abs=1e-12)
            assert got == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_edge_cases():
    assert M.pass_at_k(10, 0, 1) == 0.0 and M.pass_at_k(10, 0, 10) == 0.0
    assert M.pass_at_k(10, 10, 1) == 1.0
    assert M.pass_at_k(10, 1, 10) == 1.0  # k = n with any success
    assert M.pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is c/n
    assert M.pass_at_k(10, 5, 6) == 1.0  # n - c < k
    # large n stays finite and matches exact rational arithmetic (binomials here exceed float range)
    exact = 1 - math.comb(2000 - 7, 100) / math.comb(2000, 100)
    assert M.pass_at_k(2000, 7, 100) == pytest.approx(exact, rel=1e-10)
    for bad in [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)]:
        with pytest.raises(ConfigError):
            M.pass_at_k(*bad)
    assert M.mean_pass_at_k([(4, 1), (4, 0)], 1) == pytest.approx(0.125)
    with pytest.raises(ConfigError, match="samples"):
        M.mean_pass_at_k([(4, 1), (2, 0)], 3)


# --- uncertainty -----------------------------------------------------------------------------------


def test_stderr_of_mean_formula():
    x = [1.0, 0.0, 1.0, 1.0, 0.0]
    mean = sum(x) / 5
    var = sum((v - mean) ** 2 for v in x) / 4
    assert M.stderr_of_mean(x) == pytest.approx(math.sqrt(var / 5))
    assert M.stderr_of_mean([3.0]) == 0.0
    with pytest.raises(DataError):
        M.stderr_of_mean([])


def test_bootstrap_ci_seeded_and_covers_normal_interval():
    rng = np.random.default_rng(1)
    x = rng.binomial(1, 0.6, size=400).astype(float)
    lo, hi = M.bootstrap_ci(x, n_resamples=2000, seed=3)
    assert (lo, hi) == M.bootstrap_ci(x, n_resamples=2000, seed=3)  # reproducible
    assert lo < x.mean() < hi
    se = M.stderr_of_mean(x)
    # percentile bootstrap of a mean ~ mean +/- 1.96 se for n=400
    assert lo == pytest.approx(x.mean() - 1.96 * se, abs=0.4 * se)
    assert hi == pytest.approx(x.mean() + 1.96 * se, abs=0.4 * se)
    # a custom statistic goes through the generic path
    mlo, mhi = M.bootstrap_ci(x, statistic=np.median, n_resamples=200, seed=0)
    assert 0.0 <= mlo <= mhi <= 1.0
    with pytest.raises(ConfigError):
        M.bootstrap_ci(x, confidence=1.5)
