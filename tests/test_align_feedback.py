"""AI feedback and the preference-data builders: RLAIF through the position-swapping judge,
constitutional critique and revision, the reference over a model's own sample, unpaired KTO records,
near-duplicate pairs.

The judge's decisions are pinned on crafted judges (a position-biased one gives ties and no pairs; a
consistent one gives pairs in its preferred direction; an unparsable reply is a tie and is counted);
the model-driven builders run on a tiny random chat model, whose outputs are meaningless but whose
records must be what `danlu sft` and `danlu align` read.
"""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch

from chat_words import WORDS
from danlu.align import constitution as C
from danlu.align.config import AlignConfig, AlignDataConfig
from danlu.align.generate import VERDICTS, ChatModel, VerdictJudge
from danlu.align.pairs import build_pairs, to_pair
from danlu.align.prompts import prompt_items, sample_pairs, write_jsonl
from danlu.align.rlaif import read_candidates, read_rubric, rlaif_pairs, sample_candidates
from danlu.align.stage import build_align_trainer, run_align
from danlu.align.unpaired import build_unpaired
from danlu.errors import ConfigError, DataError
from danlu.finetune.chat_data import check, to_messages
from danlu.finetune.config import LoRAConfig
from danlu.model.config import ModelConfig
from danlu.model.transformer import build_model
from danlu.model_dir import save_model_dir
from danlu.train.config import TrainConfig


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from danlu.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("feedback")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(300)]
    tok = Tokenizer.train([*lines, *[" ".join(WORDS)] * 5, "is the a yes no [[A]] [[B]] [[C]]"], 320)
    tok.save(root / "tokenizer")
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=768, vocab_size=tok.vocab_size)
    save_model_dir(root / "model", build_model(cfg), cfg, root / "tokenizer", {"chat": True})
    sft = [
        {"messages": [{"role": "user", "content": f"is the {a} a {b}?"}, {"role": "assistant", "content": f"no, the {b}."}]}
        for a, b in (rng.sample(WORDS, 2) for _ in range(12))
    ]  # fmt: skip
    write_jsonl(root / "sft.jsonl", sft)
    return root


@pytest.fixture(scope="module")
def chat(root):
    return ChatModel.from_dir(root / "model", max_tokens=10, seed=3)


def _answers(prompt: str) -> tuple[str, str]:
    a = prompt.split("[The Start of Assistant A's Answer]\n")[1].split("\n[The End")[0]
    b = prompt.split("[The Start of Assistant B's Answer]\n")[1].split("\n[The End")[0]
    return a, b


def _cands(n: int = 4):
    return [
        (f"q{k}", [{"role": "user", "content": f"question {k}"}], ["short", "a longer answer", "mid one"])
        for k in range(n)
    ]


def test_a_position_biased_judge_yields_no_pairs_and_shows_its_bias():
    pairs, report = rlaif_pairs(lambda prompt: "I pick the first. [[A]]", _cands())
    assert pairs == [] and report["outcomes"] == {"tie": 12}
    assert report["verdicts"] == {"A": 24} and report["verdict_a_rate"] == 1.0


def test_a_consistent_judge_yields_pairs_its_way_and_unparsable_replies_are_ties():
    def longer(prompt: str) -> str:
        a, b = _answers(prompt)
        if "mid" in (a + b):
            return "no verdict here"
        return "[[A]]" if len(a) > len(b) else "[[B]]"

    pairs, report = rlaif_pairs(longer, _cands(), judge_name="crafted")
    assert len(pairs) == 4 and report["outcomes"] == {"decided": 4, "tie": 8}
    assert all(p["chosen"] == "a longer answer" and p["rejected"] == "short" for p in pairs)
    assert report["verdicts"] == {"A": 4, "B": 4, "none": 16}
    for p in pairs:  # each pair is what `danlu align` reads
        assert to_pair(p["id"], p, "rlaif")["chosen"] == "a longer answer"
        assert p["judge"] == "crafted"


def test_identical_candidates_are_not_compared(root):
    seen = []
    _pairs, report = rlaif_pairs(
        lambda p: seen.append(p) or "[[C]]",
        [("q", [{"role": "user", "content": "x"}], ["same", " same ", "other"])],
    )
    assert report["comparisons"] == 1 and len(seen) == 2


def test_the_model_judge_always_gives_a_verdict_and_every_comparison_is_accounted_for(root, chat):
    items, _ = prompt_items(str(root / "sft.jsonl"), limit=6, seed=1)
    cands = sample_candidates(chat, items, n=3)
    assert [len(r) for _, _, r in cands] == [3] * 6
    judge = VerdictJudge(chat)
    pairs, report = rlaif_pairs(judge, cands)
    distinct = sum(len(set(r)) * (len(set(r)) - 1) // 2 for _, _, r in cands)
    assert report["comparisons"] == distinct
    assert sum(report["verdicts"].values()) == 2 * distinct  # both orders of every comparison
    assert set(report["verdicts"]) <= {"A", "B", "C"}  # the constrained reply is always a verdict
    assert sum(report["outcomes"].values()) == distinct
    assert report["pairs"] == len(pairs) == report["outcomes"].get("decided", 0)


def test_constrained_verdicts_are_the_three_strings(chat):
    j = VerdictJudge(chat)
    assert j("anything at all") in VERDICTS


def test_rubric_and_candidate_files_are_checked(tmp_path):
    bad = tmp_path / "r.txt"
    bad.write_text("Judge {question} and {answer_a}")
    with pytest.raises(ConfigError, match="answer_b"):
        read_rubric(bad)
    braces = tmp_path / "b.txt"
    braces.write_text("{question} {answer_a} {answer_b} {extra}")
    with pytest.raises(ConfigError, match="braces"):
        read_rubric(braces)
    good = tmp_path / "g.txt"
    good.write_text("Q: {question}\nA: {answer_a}\nB: {answer_b}\nVerdict [[A]] or [[B]]")
    assert read_rubric(good).startswith("Q: {question}")
    f = tmp_path / "c.jsonl"
    f.write_text('{"prompt": "hi", "responses": ["a", "b"]}\n{"prompt": "", "responses": ["a"]}\n{"x": 1}\n')
    cands, skipped = read_candidates(f)
    assert len(cands) == 1 and skipped == {"bad_prompt": 1, "unreadable": 1}


def test_constitutional_loop_writes_sft_records_and_revised_over_original_pairs(root, chat, tmp_path):
    items, _ = prompt_items(str(root / "sft.jsonl"), limit=5)
    sft, pairs, report = C.constitute(chat, items, rounds=2, seed=7)
    assert report["prompts"] == 5 and report["sft"] == len(sft) and report["pairs"] == len(pairs)
    assert sum(report["principles_used"].values()) == 2 * 5
    for rec in sft:  # what `danlu sft` reads
        msgs = check(to_messages(rec))
        assert msgs[-1]["role"] == "assistant" and len(rec["meta"]["trace"]) == 2
    for p in pairs:
        rec = next(r for r in sft if r["meta"]["id"] == p["id"])
        assert p["chosen"] == rec["messages"][-1]["content"] and p["rejected"] == rec["meta"]["original"]
        assert p["chosen"] != p["rejected"]
    again = C.constitute(chat, items, rounds=2, seed=7)
    assert again[0] == sft  # seeded


def test_principles_load_from_files_and_bad_files_fail_clearly(tmp_path):
    assert len(C.load_principles(None)) == len(C.PRINCIPLES) >= 4
    j = tmp_path / "p.json"
    j.write_text(json.dumps([{"name": "kind", "critique": "Was it unkind?", "revision": "Make it kind."}]))
    y = tmp_path / "p.yaml"
    y.write_text("- critique: Was it long?\n  revision: Shorten it.\n")
    assert C.load_principles(j)[0] == C.Principle("kind", "Was it unkind?", "Make it kind.")
    assert C.load_principles(y)[0].revision == "Shorten it."
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"critique": "x"}\n')
    with pytest.raises(ConfigError, match="record 0"):
        C.load_principles(bad)
    with pytest.raises(ConfigError, match="not found"):
        C.load_principles(tmp_path / "none.json")


def test_the_reference_is_chosen_over_the_models_own_sample(root, chat):
    items, _ = prompt_items(str(root / "sft.jsonl"))
    pairs, counts = sample_pairs(chat, items)
    assert counts["prompts"] == 12 and counts["pairs"] == len(pairs) > 0
    refs = {rid: ref for rid, _, ref in items}
    assert all(p["chosen"] == refs[p["id"]] != p["rejected"] for p in pairs)
    with pytest.raises(DataError, match="reference"):
        sample_pairs(chat, [("x", [{"role": "user", "content": "hi"}], None)])


def test_near_duplicate_pairs_are_dropped(tmp_path):
    base = "the king and the queen rode to the river town at night with the lord and the lady"
    rows = [{"prompt": f"{base} {k}", "chosen": "yes", "rejected": "no"} for k in range(3)]
    rows += [
        {"prompt": f"is the {a} a {b}?", "chosen": "yes", "rejected": "no"}
        for a, b in itertools.pairwise(WORDS)
    ]
    write_jsonl(tmp_path / "p.jsonl", rows)
    cfg = AlignDataConfig(
        sources=[str(tmp_path / "p.jsonl")], per_source=0, val_fraction=0.3, near_dup_threshold=0.7
    )
    splits, report = build_pairs(cfg)
    assert report["dropped"] == {"near_duplicate": 2}
    assert sum(len(v) for v in splits.values()) == len(rows) - 2


def _unpaired_rows():
    rows = []
    for a, b in random.Random(1).sample(list(itertools.permutations(WORDS, 2)), 60):
        rows.append({"prompt": f"is the {a} a {b}?", "completion": f"yes, the {a}.", "label": True})
        rows.append({"prompt": f"is the {a} a {b}?", "completion": f"no, the {b}.", "label": 0})
    return rows


def test_unpaired_records_are_checked_and_split_by_prompt(tmp_path):
    rows = _unpaired_rows()
    extra = [
        rows[0] | {"label": False},
        rows[2],
        {"prompt": "x", "completion": "y", "label": "maybe"},
        {"prompt": "x"},
    ]
    write_jsonl(tmp_path / "u.jsonl", rows + extra)
    cfg = AlignDataConfig(sources=["chitchat"], unpaired=[str(tmp_path / "u.jsonl")], val_fraction=0.2)
    splits, report = build_unpaired(cfg)
    # rows[0]'s completion is labelled both ways: both copies go; rows[2] repeats
    assert report["dropped"] == {"conflicting_label": 2, "duplicate": 1, "bad_label": 1, "unreadable": 1}
    prompts = {s: {r["prompt"][0]["content"] for r in v} for s, v in splits.items()}
    assert not prompts["train"] & prompts["val"] and prompts["val"]
    with pytest.raises(ConfigError, match="KTO only"):
        AlignConfig(method="dpo", data=cfg)


def test_kto_trains_on_unpaired_records_beside_the_pairs(root, tmp_path):
    rng = random.Random(0)
    pairs = []
    for _ in range(40):
        a, b = rng.sample(WORDS, 2)
        pairs.append(
            {"prompt": f"is the {a} a {b}?", "chosen": f"yes, the {a}.", "rejected": f"no, the {b}."}
        )
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    write_jsonl(tmp_path / "u.jsonl", _unpaired_rows())
    train = TrainConfig(seq_len=32, batch_size=8, max_steps=10, lr=3e-3, warmup_steps=2, eval_every=100,
                        ckpt_every=100, log_every=2, device="cpu", dtype="fp32", weight_decay=0.0)  # fmt: skip
    data = AlignDataConfig(sources=[str(tmp_path / "pairs.jsonl")], unpaired=[str(tmp_path / "u.jsonl")],
                           per_source=0, val_fraction=0.2)  # fmt: skip
    cfg = AlignConfig(method="kto", tune="full", data=data, lora=LoRAConfig(r=4, alpha=16), train=train)
    trainer, manifest = build_align_trainer(cfg, root / "model", tmp_path / "out")
    n_pairs, n_unpaired = manifest["encoded"]["train"], manifest["unpaired"]["encoded"]["train"]
    assert n_unpaired > 0 and trainer.batches.n == 2 * n_pairs + n_unpaired
    result = run_align(cfg, root / "model", tmp_path / "out")
    assert result["val_loss"] < result["before"]["val_loss"]
    assert result["val_accuracy"] >= 0.9


def test_the_prefs_verb_writes_what_align_and_sft_read_and_bad_input_exits_2(root, tmp_path, capsys):
    from danlu.cli import main

    model, prompts = str(root / "model"), str(root / "sft.jsonl")
    small = ["--limit", "4", "--max-tokens", "8"]
    assert (
        main(["prefs", "samples", model, "--prompts", prompts, *small, "--out", str(tmp_path / "s.jsonl")])
        == 0
    )
    report = json.loads((tmp_path / "s.report.json").read_text())
    assert report["prompts"] == 4 and report["pairs"] == len((tmp_path / "s.jsonl").read_text().splitlines())
    args = ["prefs", "rlaif", "--judge", model, "--policy", model, "--prompts", prompts, *small]
    assert main([*args, "--out", str(tmp_path / "r.jsonl")]) == 0
    assert json.loads((tmp_path / "r.report.json").read_text())["prompts"] == 4
    out = ["--sft-out", str(tmp_path / "c.jsonl"), "--pairs-out", str(tmp_path / "cp.jsonl")]
    assert main(["prefs", "constitute", model, "--prompts", prompts, *small, *out]) == 0
    sft = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert len(sft) == 4 and all(check(to_messages(r)) for r in sft)
    capsys.readouterr()
    # an existing output is kept; both candidate sources at once, a bad rubric: one error line each
    assert main(["prefs", "samples", model, "--prompts", prompts, "--out", str(tmp_path / "s.jsonl")]) == 2
    assert main([*args, "--candidates", prompts, "--out", str(tmp_path / "x.jsonl")]) == 2
    assert main([*args, "--rubric", str(tmp_path / "none.txt"), "--out", str(tmp_path / "y.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("danlu: error: ") for line in err)
    assert "exists" in err[0] and "exactly one" in err[1] and "not found" in err[2]
