"""Semantic dedup: TF-IDF, randomized LSA, spherical k-means, and planted paraphrases found."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter

import numpy as np
import pytest

from danlu.data.config import DataConfig
from danlu.data.dedup.semantic import (
    _END,
    embed,
    feature_ids,
    semantic_duplicates,
    spherical_kmeans,
    tfidf,
)
from danlu.data.documents import read_documents, run_data
from danlu.data.pipeline import build_block
from danlu.errors import ConfigError

TOPICS = [
    "The city council voted on Tuesday to build a new bridge across the river, said the mayor, who "
    "expects the work to begin next spring and to cost about forty million dollars.",
    "Bake the bread in a hot oven for thirty minutes, then let the loaf cool on a wire rack before "
    "you slice it, or the crumb will be gummy and dense.",
    "The goalkeeper saved two penalties in the final minutes, and the home team won the cup for the "
    "third year in a row in front of a crowd of sixty thousand.",
    "Migrating birds use the earth's magnetic field and the position of the sun to find their way "
    "south each autumn, often flying thousands of miles without rest.",
]
PARAPHRASES = [
    "On Tuesday the city council voted to build a new bridge across the river; the mayor said work "
    "is expected to begin next spring, at a cost of about forty million dollars.",
    "Let the loaf cool on a wire rack before you slice it, after baking the bread for thirty minutes "
    "in a hot oven; otherwise the crumb will be dense and gummy.",
]


def test_planted_paraphrases_are_grouped_and_other_topics_kept():
    texts = TOPICS + PARAPHRASES  # documents 4 and 5 restate 0 and 1
    found, clusters = semantic_duplicates(texts, threshold=0.6, cluster_size=100)
    assert sorted(map(tuple, found.pairs.tolist())) == [(0, 4), (1, 5)]
    assert found.keep.tolist() == [True, True, True, True, False, False]
    assert (clusters == 0).all()  # six documents, one cluster of about 100
    assert np.all(found.similarity >= 0.6)


def _reference_tfidf_cosine(docs: list[list[int]], i: int, j: int) -> float:
    """Sublinear tf times smoothed idf, written out with dicts."""
    n = len(docs)
    df = Counter(f for d in docs for f in set(d))

    def vec(d: list[int]) -> dict[int, float]:
        return {f: (1 + math.log(c)) * (math.log((1 + n) / (1 + df[f])) + 1) for f, c in Counter(d).items()}

    a, b = vec(docs[i]), vec(docs[j])
    dot = sum(v * b.get(f, 0.0) for f, v in a.items())
    return dot / math.sqrt(sum(v * v for v in a.values()) * sum(v * v for v in b.values()))


def test_tfidf_rows_match_the_formula():
    ids = feature_ids(TOPICS + PARAPHRASES)
    docs, cur = [], []
    for v in ids.tolist():
        if v == int(_END):
            docs.append(cur)
            cur = []
        else:
            cur.append(v)
    assert len(docs) == 6
    x = tfidf(ids)
    gram = (x @ x.T).toarray()
    for i, j in [(0, 4), (1, 5), (0, 1), (2, 3)]:
        assert gram[i, j] == pytest.approx(_reference_tfidf_cosine(docs, i, j), rel=1e-9)
    assert np.allclose(np.diag(gram), 1.0)


def test_randomized_lsa_equals_the_exact_svd_on_a_low_rank_matrix():
    from scipy.sparse import csr_matrix

    rng = np.random.default_rng(3)
    dense = rng.random((60, 5)) @ rng.random((5, 400))  # rank 5
    dense[:, ::7] = 0.0
    dense[:, 1] = dense[:, 1] * 0 + 1.0  # every column in two documents or more
    x = csr_matrix(dense)
    got = embed(x, dim=5, seed=1)
    u, s, _ = np.linalg.svd(dense, full_matrices=False)
    ref = (u[:, :5] * s[:5]) / np.linalg.norm(u[:, :5] * s[:5], axis=1, keepdims=True)
    assert np.allclose(got @ got.T, ref @ ref.T, atol=1e-5)  # the same geometry (signs may differ)


def test_spherical_kmeans_recovers_separated_directions():
    rng = np.random.default_rng(0)
    axes = np.eye(8)[:3]
    e = np.concatenate([axes[k] + 0.05 * rng.standard_normal((30, 8)) for k in range(3)])
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    labels = spherical_kmeans(e, 3, seed=2)
    assert sorted(len(set(labels[k * 30 : (k + 1) * 30])) for k in range(3)) == [1, 1, 1]
    assert len(set(labels)) == 3
    assert (spherical_kmeans(e, 1) == 0).all()


def test_the_block_in_the_data_stage_drops_paraphrases_and_records_groups(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in TOPICS + PARAPHRASES))
    pipeline = [{"block": "semantic_dedup", "threshold": 0.6}]
    m = run_data(DataConfig(sources=[str(src)], pipeline=pipeline, val_fraction=0.2), tmp_path / "out")
    block = m["blocks"]["semantic_dedup"]
    assert block["removed_by_reason"] == {"semantic_duplicate": 2}
    assert block["counts"] == {"groups": 2}
    assert {e["text"][:20] for e in block["examples"]["semantic_duplicate"]} == {p[:20] for p in PARAPHRASES}
    kept = [d for split in ("train", "val") for d in read_documents(tmp_path / "out", split)]
    assert sorted(d["text"] for d in kept) == sorted(TOPICS)
    dup_counts = sorted(d["meta"]["semantic_duplicates"] for d in kept)
    assert dup_counts == [0, 0, 1, 1] and all("semantic_cluster" in d["meta"] for d in kept)


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="threshold"):
        build_block({"block": "semantic_dedup", "threshold": 1.5})
    with pytest.raises(ConfigError, match="cluster_size"):
        build_block({"block": "semantic_dedup", "cluster_size": 0})
    with pytest.raises(ConfigError, match="no option"):
        build_block({"block": "semantic_dedup", "k": 3})


# A paraphrase of a paragraph: the words of a fixed synonym table replaced, one in ten other words
# dropped, two adjacent sentences swapped. Lexical restatement, not a model's paraphrase.
SYNONYMS = {
    "said": "stated", "big": "large", "small": "little", "began": "started", "house": "home",
    "people": "persons", "man": "fellow", "men": "fellows", "children": "kids", "city": "town",
    "think": "believe", "thought": "believed", "often": "frequently", "many": "numerous",
    "important": "significant", "new": "fresh", "old": "aged", "help": "assist", "also": "too",
    "however": "but", "very": "really", "get": "obtain", "got": "obtained", "make": "create",
    "made": "created", "work": "labor", "told": "informed", "asked": "inquired", "world": "globe",
    "country": "nation", "government": "administration", "year": "twelvemonth", "good": "fine",
    "bad": "poor", "way": "manner", "time": "occasion", "use": "employ", "used": "employed",
    "need": "require", "want": "wish", "about": "concerning", "because": "since", "before": "prior to",
    "after": "following", "hard": "difficult", "easy": "simple", "strong": "powerful", "whole": "entire",
}  # fmt: skip


def paraphrase(text: str, rng: random.Random) -> str:
    sents = re.split(r"(?<=[.!?])\s+", text.strip())
    if len(sents) > 2:
        i = rng.randrange(len(sents) - 1)
        sents[i], sents[i + 1] = sents[i + 1], sents[i]
    out = []
    for w in " ".join(sents).split():
        key = w.lower().strip(".,;:!?\"'")
        if key in SYNONYMS:
            out.append(w.lower().replace(key, SYNONYMS[key]))
        elif rng.random() >= 0.1:
            out.append(w)
    return " ".join(out)


@pytest.mark.needs_data
def test_planted_paraphrases_of_brown_paragraphs_found_at_few_false_positives():
    from danlu.data.corpora import read_corpus

    paragraphs = [p for d in read_corpus("brown") for p in d["text"].split("\n\n") if len(p) > 300]
    rng = random.Random(0)
    rng.shuffle(paragraphs)
    n, planted = 1500, 100
    base = paragraphs[:n]
    sources = rng.sample(range(n), planted)
    found, _ = semantic_duplicates(base + [paraphrase(base[i], rng) for i in sources])
    recall = np.mean([found.labels[i] == found.labels[n + k] for k, i in enumerate(sources)])
    background_removed = float(np.mean(~found.keep[:n]))  # originals come first, so any removal is wrong
    assert recall >= 0.9 and background_removed <= 0.05, (recall, background_removed)
