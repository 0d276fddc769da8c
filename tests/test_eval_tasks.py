"""Task prompts on hand-made items vs lm-eval-harness 0.4's task YAML formats; few-shot; answer scoring."""

from __future__ import annotations

import dataclasses

import pytest

from danlu.errors import ConfigError, DataError
from danlu.eval import tasks as T
from danlu.eval.generative import GSM8K_STRICT, extract_number, lm_eval_exact_match, score_generation


def test_hellaswag_preprocessing_and_prompt():
    row = {
        "activity_label": "Home and Garden",
        "ctx_a": "[header] How to plant a tree [title] Dig a hole.",
        "ctx_b": "then you",
        "endings": ["water it [step] well.", "  eat  it.", "x", "y"],
        "label": "0",
    }
    d = T.fmt_hellaswag(row)
    # lm-eval: preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())
    assert d.contexts[0] == "Home and Garden: How to plant a tree. Dig a hole. Then you"
    assert d.choices == ("water it well.", "eat it.", "x", "y")
    assert d.continuations[0] == " water it well." and d.gold == 0


def test_arc_piqa_obqa_siqa_boolq_prompts():
    arc = T.fmt_arc(
        {
            "question": "Which is a gas?",
            "choices": {"text": ["ice", "steam"], "label": ["1", "2"]},
            "answerKey": "2",
        }
    )
    assert arc.contexts[0] == "Question: Which is a gas?\nAnswer:" and arc.continuations == (" ice", " steam")
    assert arc.gold == 1
    piqa = T.fmt_piqa({"goal": "Open a jar", "sol1": "twist", "sol2": "pull", "label": 1})
    assert piqa.contexts[0] == "Question: Open a jar\nAnswer:" and piqa.gold == 1
    obqa = T.fmt_openbookqa(
        {
            "question_stem": "The sun is",
            "choices": {"text": ["hot", "cold"], "label": ["A", "B"]},
            "answerKey": " A",
        }
    )
    assert obqa.contexts[0] == "The sun is" and obqa.continuations == (" hot", " cold") and obqa.gold == 0
    siqa = T.fmt_siqa(
        {
            "context": "Ann ran.",
            "question": "Why?",
            "answerA": "a",
            "answerB": "b",
            "answerC": "c",
            "label": "3",
        }
    )
    assert siqa.contexts[0] == "Q: Ann ran. Why?\nA:" and siqa.gold == 2
    boolq = T.fmt_boolq({"passage": "Cats purr.", "question": "do cats purr", "answer": True})
    assert boolq.contexts[0] == "Cats purr.\nQuestion: do cats purr?\nAnswer:"
    assert boolq.continuations == (" no", " yes") and boolq.gold == 1


def test_winogrande_partial_scoring():
    d = T.fmt_winogrande(
        {"sentence": "Ann beat Bo because _ was fast.", "option1": "Ann", "option2": "Bo", "answer": "1"}
    )
    # lm-eval: contexts are sentence[:blank] + option, the continuation is the stripped rest after " "
    assert d.contexts == ("Ann beat Bo because Ann", "Ann beat Bo because Bo")
    assert d.continuations == (" was fast.", " was fast.") and d.gold == 0


def test_copa_csqa_mmlu_prompts():
    copa = T.fmt_copa(
        {
            "premise": "The man fell.",
            "choice1": "He slipped.",
            "choice2": "He ate.",
            "question": "cause",
            "label": 0,
        }
    )
    assert copa.contexts[0] == "The man fell because"
    assert copa.choices == (" he slipped.", " he ate.")
    assert copa.continuations == ("  he slipped.", "  he ate.")  # lm-eval's target delimiter adds a space
    csqa = T.fmt_csqa(
        {"question": " Where? ", "choices": {"label": list("ABCDE"), "text": list("vwxyz")}, "answerKey": "C"}
    )
    assert csqa.contexts[0] == "Question: Where?\nA. v\nB. w\nC. x\nD. y\nE. z\nAnswer:"
    assert csqa.continuations == (" A", " B", " C", " D", " E") and csqa.gold == 2
    row = {
        "question": " 2+2? ",
        "choices": ["1", "4", "3", "5"],
        "answer": 1,
        "subject": "elementary_mathematics",
    }
    mmlu = T.fmt_mmlu(row)
    assert mmlu.contexts[0] == "2+2?\nA. 1\nB. 4\nC. 3\nD. 5\nAnswer:" and mmlu.gold == 1
    assert mmlu.group == "elementary_mathematics"
    assert (
        T.mmlu_description(row)
        == "The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
    )


def test_lambada_and_generative_prompts():
    lam = T.fmt_lambada({"request": {"context": "He said hello to his", "continuation": " friend"}})
    assert lam.contexts == ("He said hello to his",) and lam.continuations == (" friend",)
    tqa = T.fmt_triviaqa({"question": "Who wrote Hamlet", "answer": {"aliases": ["Shakespeare", "Will"]}})
    assert tqa.prompt == "Question: Who wrote Hamlet?\nAnswer:" and tqa.answers == ("Shakespeare", "Will")
    nq = T.fmt_nq({"question": "capital of france", "answer": ["Paris"]})
    assert nq.prompt == "Q: capital of france?\nA:"


def test_bad_gold_raises():
    with pytest.raises(DataError, match="outside"):
        T.fmt_piqa({"goal": "g", "sol1": "a", "sol2": "b", "label": 5})
    with pytest.raises(ConfigError, match="unknown task"):
        T.get_task("nope")


def _rows(n: int) -> dict[str, list[dict]]:
    return {"": [{"goal": f"goal {i}", "sol1": f"a{i}", "sol2": f"b{i}", "label": i % 2} for i in range(n)]}


def test_few_shot_is_seeded_excludes_the_item_and_uses_lm_eval_layout():
    # the pool is the evaluated split here (piqa itself draws from its train split)
    spec = dataclasses.replace(T.get_task("piqa"), fewshot_split=None, fewshot_drops_item=None)
    docs = T.build_docs(spec, limit=4, num_fewshot=2, seed=1, rows=_rows(6))
    again = T.build_docs(spec, limit=4, num_fewshot=2, seed=1, rows=_rows(6))
    other = T.build_docs(spec, limit=4, num_fewshot=2, seed=2, rows=_rows(6))
    assert docs == again and docs != other
    for i, d in enumerate(docs):
        parts = d.contexts[0].split("\n\n")
        assert len(parts) == 3 and parts[-1] == f"Question: goal {i}\nAnswer:"
        for shot in parts[:2]:
            # solved examples: prompt + " " + gold choice; never the evaluated item itself
            assert shot.startswith("Question: goal ") and f"goal {i}\n" not in shot
            j = int(shot.split("goal ")[1].split("\n")[0])
            assert shot.endswith(f"Answer: {'a' if j % 2 == 0 else 'b'}{j}")
    assert [d.contexts[0] for d in T.build_docs(spec, limit=2, rows=_rows(6))] == [
        "Question: goal 0\nAnswer:",
        "Question: goal 1\nAnswer:",
    ]
    with pytest.raises(ConfigError, match="draws 6 examples, the few-shot split has 3"):
        T.build_docs(spec, num_fewshot=5, rows=_rows(3))


def test_gsm8k_extraction_and_exact_match_follow_lm_eval():
    out = "She has 3 + 4 = 7 apples.\n#### 1,234"
    assert extract_number(out, GSM8K_STRICT) == "1,234"
    assert extract_number("so 12 then $45.", None) == "$45."  # lm-eval's flexible regex keeps $ and .
    # regexes_to_ignore remove "," "$" and a trailing "." before comparing
    ignore = (",", "\\$", "(?s).*#### ", "\\.$")
    assert lm_eval_exact_match("$1,234.", "1234", ignore) == 1.0
    assert lm_eval_exact_match("123", "1234", ignore) == 0.0
    m = score_generation("gsm8k", " 2 + 3 = 5\n#### 5", ["5"])
    assert m == {"exact_match_strict": 1.0, "exact_match": 1.0}
    m = score_generation("gsm8k_cot", " 2 + 3 = 5. So the answer is 5.", ["5"])
    assert m == {"exact_match_strict": 1.0, "exact_match": 1.0}
    assert score_generation("gsm8k", " I think 6", ["5"]) == {"exact_match_strict": 0.0, "exact_match": 0.0}


def test_open_qa_em_ignores_case_punctuation_and_f1_is_squad():
    m = score_generation("triviaqa", " sunset Boulevard!", ["Sunset Boulevard", "Sunset Blvd"])
    assert m["exact_match"] == 1.0 and m["f1"] == 1.0
    m = score_generation("nq_open", " The Beatles", ["Beatles"])
    assert m["exact_match"] == 1.0  # NQ drops articles
    m = score_generation("triviaqa", " West Sunset", ["Sunset Boulevard"])
    assert m["exact_match"] == 0.0 and m["f1"] == pytest.approx(0.5)  # P = R = 1/2


@pytest.mark.needs_data
def test_real_eval_files_load_with_lm_eval_sizes():
    sizes = {
        "arc_easy": 570,
        "arc_challenge": 299,
        "piqa": 1838,
        "winogrande": 1267,
        "copa": 100,
        "openbookqa": 500,
    }
    for name, n in sizes.items():
        spec = T.get_task(name)
        rows = T.load_rows(spec)[""]
        assert len(rows) == n
        docs = T.build_docs(spec, limit=5, rows={"": rows})
        assert len(docs) == 5 and all(0 <= d.gold < len(d.choices) for d in docs)
    assert len(T.load_rows(T.get_task("lambada"))[""]) == 5153  # lambada_openai test
    gsm = T.build_docs(T.get_task("gsm8k"), limit=2, num_fewshot=1)
    assert len(gsm) == 2 and gsm[0].prompt.count("Question: ") == 2 and "#### " in gsm[0].prompt
    mmlu = T.build_docs(T.get_task("mmlu"), limit=1, num_fewshot=2)
    assert len(mmlu) == 57
    first = mmlu[0].contexts[0]
    # description, then the first two dev examples (first_n), then the question
    assert first.startswith(
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
    )
    assert first.count("\nAnswer:") == 3
