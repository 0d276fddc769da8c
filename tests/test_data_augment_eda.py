"""EDA augmentation: WordNet synonyms read offline, each operation on crafted text, seeded picks,
originals kept beside their copies in one split, marked in lineage, bad settings as one-line errors."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.data.config import DataConfig
from danlu.data.documents import read_documents, run_data
from danlu.data.eda import EdaAugmenter
from danlu.data.pipeline import build_block
from danlu.data.thesaurus import load_stop_words, load_synonyms, parse_synset_words
from danlu.errors import ConfigError

THESAURUS = {"happy": ("glad",), "glad": ("happy",), "dog": ("hound",), "hound": ("dog",), "the": ("a",)}
STOP = frozenset({"the"})


def eda(**kw) -> EdaAugmenter:
    rates = {"synonym_replace": 0.0, "random_insert": 0.0, "random_swap": 0.0, "random_delete": 0.0}
    return EdaAugmenter(**{**rates, **kw}, thesaurus=THESAURUS, stop_list=STOP)


def test_wordnet_lines_parse_into_their_words():
    line = "00002312 00 a 02 abaxial 0 dorsal 4 002 ;c 06037666 n 0000 ! 00002527 a 0101 | facing away"
    assert parse_synset_words(line) == ["abaxial", "dorsal"]
    assert parse_synset_words("01 00 s 02 galore(ip) 0 Tin_Can 0 000 | in abundance") == ["galore", "tin can"]
    assert parse_synset_words("  1 This software and database is being provided") == []


def test_the_shipped_wordnet_gives_symmetric_synonyms_and_its_stop_list():
    syn = load_synonyms()
    assert len(syn) > 100_000 and "fast" in syn["quick"] and "glad" in syn["happy"]
    for word in ("quick", "house", "cut short", "beautiful"):
        assert all(word in syn[s] for s in syn.get(word, ()))
    assert "the" not in syn and "and" not in syn  # function words are not in WordNet
    stop = load_stop_words()
    assert len(stop) == 199 and {"the", "of", "with", "whom"} <= stop


def test_synonym_replacement_keeps_punctuation_case_and_stop_words():
    out, edits = eda(synonym_replace=1.0).rewrite("The Happy dog, the DOG!\n", random.Random(0))
    assert out == "The Glad hound, the HOUND!\n" and edits["synonyms"] == 3


def test_insert_swap_and_delete_do_what_they_say():
    text = "one happy two dog three four five six seven eight"
    out, e = eda(random_insert=0.2).rewrite(text, random.Random(1))
    added = Counter(out.split()) - Counter(text.split())
    assert e["inserted"] == 2 and sum(added.values()) == 2 and set(added) <= {"glad", "hound"}
    out, e = eda(random_swap=0.3).rewrite(text, random.Random(2))
    assert e["swapped"] == 3 and Counter(out.split()) == Counter(text.split()) and out != text
    out, e = eda(random_delete=0.5).rewrite(text, random.Random(3))
    it = iter(text.split())
    assert all(w in it for w in out.split()) and len(out.split()) == 10 - e["deleted"] > 0
    assert eda(random_delete=1.0).rewrite("a b c", random.Random(4))[0] in {"a", "b", "c"}
    assert eda(synonym_replace=1.0).rewrite("no synonyms here", random.Random(0)) is None


words = st.sampled_from(["happy", "Happy", "dog,", "the", "cat", "(hound)", "x"])


@settings(max_examples=100, deadline=None)
@given(ws=st.lists(words, min_size=1, max_size=15), seed=st.integers(0, 99))
def test_replacement_changes_only_words_with_synonyms(ws, seed):
    text = " ".join(ws)
    got = eda(synonym_replace=0.5).rewrite(text, random.Random(seed))
    if got is None:
        assert not any(w.strip("(),").lower() in {"happy", "dog", "hound"} for w in ws)
        return
    out = got[0].split()
    assert len(out) == len(ws)
    changed = [(a, b) for a, b in zip(ws, out, strict=True) if a != b]
    candidates = sum(w.strip("(),").lower() in {"happy", "dog", "hound"} for w in ws)
    assert len(changed) == got[1]["synonyms"] == min(candidates, max(1, int(0.5 * len(ws))))
    assert all(b.strip("(),").lower() in THESAURUS[a.strip("(),").lower()] for a, b in changed)


def _docs(n: int) -> list[dict]:
    return [{"id": f"d{i}", "text": f"the happy dog number {i}", "source": "s", "meta": {}} for i in range(n)]


def test_fraction_picks_the_same_documents_whatever_the_order():
    block = eda(synonym_replace=1.0, fraction=0.3, seed=5)
    docs = _docs(300)
    picked = {d["id"] for d in docs if (block.filter(d), "augmented" in d["meta"])[1]}
    again = {d["id"] for d in reversed(_docs(300)) if (block.filter(d), "augmented" in d["meta"])[1]}
    assert picked == again and 60 <= len(picked) <= 120  # binomial(300, 0.3): mean 90, sd 7.9
    other = eda(synonym_replace=1.0, fraction=0.3, seed=6)
    assert picked != {d["id"] for d in _docs(300) if (other.filter(d), "augmented" in d["meta"])[1]}
    assert block.take_counts()["documents_picked"] == 2 * len(picked)


def test_kept_originals_and_their_copies_share_a_split(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text(
        "".join(
            json.dumps({"id": f"c{i}", "text": f"a happy dog called number {i} ran"}) + "\n"
            for i in range(20)
        )
    )
    spec = {"block": "eda", "synonym_replace": 0.5, "keep_original": True, "seed": 1}
    m = run_data(DataConfig(sources=[str(src)], pipeline=[spec], val_fraction=0.2), tmp_path / "out")
    assert m["lineage"]["blocks"][0]["augments"] is True
    assert m["blocks"]["eda"]["documents_in"] == 20 and m["blocks"]["eda"]["documents_out"] == 40
    assert m["blocks"]["eda"]["counts"]["documents_added"] == 20
    train = list(read_documents(tmp_path / "out", "train"))
    val = list(read_documents(tmp_path / "out", "val"))
    assert len(val) == 4 and not any("augmented" in d["meta"] for d in val)  # originals only
    assert m["augmented_added"] == {"train": 16, "dropped_from_val": 4}
    ids = {d["id"] for d in train}
    copies = [d for d in train if "augmented" in d["meta"]]
    assert len(copies) == 16 and all(d["id"] == d["meta"]["augmented"]["source_id"] + "~eda" for d in copies)
    assert all(d["meta"]["augmented"]["source_id"] in ids and d["meta"]["augmented"]["added"] for d in copies)
    originals = {d["id"]: d["text"] for d in train if "augmented" not in d["meta"]}
    assert all(originals[d["meta"]["augmented"]["source_id"]] != d["text"] for d in copies)


def test_copies_of_copies_stay_with_their_original(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text(
        "".join(json.dumps({"id": f"c{i}", "text": f"a happy dog called {i}"}) + "\n" for i in range(20))
    )
    spec = {"block": "eda", "synonym_replace": 0.5, "keep_original": True}
    m = run_data(DataConfig(sources=[str(src)], pipeline=[spec, spec], val_fraction=0.2), tmp_path / "out")
    assert m["augmented_added"] == {"train": 48, "dropped_from_val": 12}
    val_ids = {d["id"] for d in read_documents(tmp_path / "out", "val")}
    train = list(read_documents(tmp_path / "out", "train"))
    assert len(val_ids) == 4 and len(train) == 64
    twice = [d for d in train if d["id"].endswith("~eda~eda")]
    assert len(twice) == 16 and all(d["meta"]["augmented"]["of"]["block"] == "eda" for d in twice)
    assert not any(d["id"].split("~")[0] in val_ids for d in train)


def test_in_place_rewrite_without_keep_original(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text(
        "".join(
            json.dumps({"id": f"c{i}", "text": f"a happy dog called number {i} ran"}) + "\n" for i in range(6)
        )
    )
    spec = {"block": "eda", "synonym_replace": 0.5}
    m = run_data(DataConfig(sources=[str(src)], pipeline=[spec], val_fraction=0.2), tmp_path / "out")
    docs = [d for s in ("train", "val") for d in read_documents(tmp_path / "out", s)]
    assert len(docs) == 6 and "augmented_added" not in m
    assert all(
        d["meta"]["augmented"]["block"] == "eda" and "added" not in d["meta"]["augmented"] for d in docs
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"synonym_replace": 1.5}, "synonym_replace must be a rate in"),
        ({"synonym_replace": 0}, "every rate is 0"),
        ({"fraction": -0.1}, "fraction must be in"),
        ({"keep_original": "yes"}, "keep_original must be true or false"),
        ({"thesaurus": {}}, "has no option thesaurus"),
    ],
)
def test_bad_settings_are_one_line_errors(spec, message):
    with pytest.raises(ConfigError, match=message) as e:
        build_block({"block": "eda", **spec})
    assert "\n" not in str(e.value)
