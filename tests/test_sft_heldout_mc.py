"""The multiple-choice test split drawn from the olmo items an SFT run did not take, and its scoring."""

from __future__ import annotations

import pytest
import torch

from danlu.finetune import templates
from danlu.finetune.heldout_mc import choice_rows, choices_of, draw_split, question_key, score_choices


def _item(question: str, choices: list[str], gold: int) -> list[dict[str, str]]:
    letters = "ABCDE"
    prompt = "\n".join([question, *(f" {letters[k]}. {c}" for k, c in enumerate(choices))])
    return [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": f"{letters[gold]}. {choices[gold]}"},
    ]


def _record(rid: str, task: str, msgs):
    return rid, {"messages": msgs, "meta": {"task": task}}


def test_choices_and_the_normalized_question():
    msgs = _item("Question: Which is  a Fruit?", ["apple", "stone", "sand"], 0)
    assert choices_of(msgs) == (["A. apple", "B. stone", "C. sand"], 0)
    assert question_key(msgs[0]["content"]) == "question which is a fruit"
    assert question_key("QUESTION: which is a fruit\n A. pear\n B. rock") == "question which is a fruit"
    assert choices_of([msgs[0], {"role": "assistant", "content": "D. wood"}]) is None


TWIN = "Fill in the blank: The trophy did not fit into the suitcase because the ___ was too big for it"


def test_the_split_leaves_out_everything_the_sft_data_holds():
    sft = [
        {"id": "olmo/arc_easy/1", "source": "olmo", "messages": _item("Question: taken?", ["a", "b"], 0)},
        {"id": "chat/1", "source": "x", "messages": _item("Question: same question?", ["x", "y"], 1)},
        {"id": "olmo/winogrande/9", "source": "olmo", "messages": _item(TWIN, ["trophy", "suitcase"], 0)},
    ]
    unlisted = _item("Question: no answer listed?", ["a", "b"], 0)
    records = [
        _record("olmo/arc_easy/1", "arc_easy", _item("Question: taken?", ["a", "b"], 0)),
        _record("olmo/arc_easy/2", "arc_easy", _item("Question: SAME question", ["p", "q"], 0)),
        _record("olmo/arc_easy/3", "arc_easy", _item("Question: too long?", ["long " * 50, "b"], 0)),
        _record("olmo/arc_easy/5", "arc_easy", [unlisted[0], {"role": "assistant", "content": "C. c"}]),
        *(
            _record(f"olmo/arc_easy/{k}", "arc_easy", _item(f"Question: fresh {k}?", ["a", "b"], 1))
            for k in range(10, 20)
        ),
        _record(
            "olmo/winogrande/8", "winogrande", _item(TWIN.replace("big", "small"), ["trophy", "suitcase"], 1)
        ),
        _record("olmo/winogrande/7", "winogrande", _item("Fill in the blank: ___ ran.", ["Ann", "Bo"], 0)),
    ]

    def draw(per_task, seed=0):
        return draw_split(
            sft, per_task, seed, fits=lambda m: len(m[0]["content"]) < 200, tasks=("arc_easy", "winogrande"),
            records=records,
        )  # fmt: skip

    items, report = draw(100)
    ids = {it["id"] for it in items}
    assert ids == {f"olmo/arc_easy/{k}" for k in range(10, 20)} | {"olmo/winogrande/7"}
    assert report["per_task"] == {"arc_easy": 10, "winogrande": 1}
    assert report["passed_over"] == {
        "arc_easy": {"in_sft_data": 1, "same_question": 1, "no_choices": 1, "too_long": 1},
        "winogrande": {"shares_13gram": 1},
    }
    assert report["overlaps"] == {"ids": 0, "questions": 0, "13gram": 0}
    few, report = draw(3)
    assert report["per_task"] == {"arc_easy": 3, "winogrande": 1}
    assert few == draw(3)[0] and {it["id"] for it in few} != {it["id"] for it in draw(3, seed=1)[0]}


@pytest.fixture(scope="module")
def tok(word_lines):
    from danlu.tokenizer import Tokenizer

    return Tokenizer.train(word_lines(300, seed=1), 320)


def test_choices_scored_from_one_prompt_prefill_equal_whole_forwards(tok):
    from danlu.model.config import ModelConfig
    from danlu.model.transformer import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=4, n_kv_head=2, max_seq_len=128, vocab_size=tok.vocab_size)
    model = build_model(cfg).eval()
    items = [
        _item("Question: the king and the queen?", ["the river", "a crown of night", "sword"], 1),
        _item("Goal: love", ["day", "the long night and the day"], 0),
    ]
    rows = [choice_rows(m, lambda msgs: templates.encode(tok, msgs, "danlu")) for m in items]
    got = score_choices(model, rows)
    for item_rows, item_scores in zip(rows, got, strict=True):
        assert len(item_scores) == len(item_rows)
        for (ids, mask), (total, n) in zip(item_rows, item_scores, strict=True):
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([ids])).float()[0], -1)
            want = [float(lp[j - 1, ids[j]]) for j in range(1, len(ids)) if mask[j]]
            assert n == len(want) == sum(mask) and total == pytest.approx(sum(want), abs=1e-4)
