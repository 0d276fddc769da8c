"""The align stage on the one Trainer: every method at toy scale, the reference two ways, exact resume.

A tiny base model learns a preference it cannot know at the start: "is the a a b?" answered
"yes, the a." over "no, the b.". Pinned per method (rm, dpo, ipo, cdpo, simpo, orpo, kto): the
held-out reward accuracy (a reward model's score ranking) goes from its start to at least 0.9, and for
the policy methods the policy's own ranking (summed log-probs) rises; the saved model dir loads and
computes the trained model's log-probs (a reward model: its scores). Also: the data checks count bad
records and split by prompt; sequence log-probs are the hand-computed sum over response tokens; the
reference from LoRA with its adapters disabled trains exactly as the precomputed one; a run stopped
at a checkpoint resumes to the uninterrupted run's losses bit for bit.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from chat_words import WORDS
from danlu.align.config import AlignConfig, AlignDataConfig
from danlu.align.logps import sequence_logps
from danlu.align.pairs import build_pairs
from danlu.align.stage import build_align_trainer, run_align
from danlu.errors import DataError
from danlu.finetune.config import LoRAConfig
from danlu.model.config import ModelConfig
from danlu.model.transformer import build_model
from danlu.model_dir import load_model, read_metadata, save_model_dir
from danlu.train.config import TrainConfig


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from danlu.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("align")
    rng = random.Random(0)
    rows = []
    for _ in range(200):
        a, b = rng.sample(WORDS, 2)
        rows.append({"prompt": f"is the {a} a {b}?", "chosen": f"yes, the {a}.", "rejected": f"no, the {b}."})
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(300)]
    tok = Tokenizer.train([*lines, *[" ".join(WORDS)] * 5, "is the a yes no"], 320)
    tok.save(root / "tokenizer")
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=64, vocab_size=tok.vocab_size)
    save_model_dir(root / "base", build_model(cfg), cfg, root / "tokenizer")
    return root


def align_config(root, method: str, steps: int = 8, tune: str = "full", **kw) -> AlignConfig:
    train = TrainConfig(
        seq_len=32, batch_size=8, max_steps=steps, lr=3e-3 if tune == "full" else 1e-2, warmup_steps=2,
        eval_every=100, ckpt_every=kw.pop("ckpt_every", 100), log_every=2, device="cpu", dtype="fp32",
        weight_decay=0.0,
    )  # fmt: skip
    data = AlignDataConfig(sources=[str(root / "pairs.jsonl")], per_source=0, val_fraction=0.2)
    return AlignConfig(method=method, tune=tune, data=data, lora=LoRAConfig(r=4, alpha=16), train=train, **kw)


def _losses(out) -> list[float]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r]


@pytest.mark.parametrize("method", ["dpo", "ipo", "cdpo", "simpo", "orpo", "kto", "rm"])
def test_every_method_learns_the_held_out_preference_and_saves_a_model_dir(root, tmp_path, method):
    cfg = align_config(root, method, beta=0.5 if method in ("dpo", "cdpo") else None)
    result = run_align(cfg, root / "base", tmp_path / "out")
    before = result["before"]
    assert result["steps"] == 8
    assert result["val_accuracy"] >= 0.9 > before["val_accuracy"]
    assert result["val_loss"] < before["val_loss"]
    meta = read_metadata(result["model_dir"])
    assert meta["align"]["method"] == method
    manifest = json.loads((tmp_path / "out" / "data" / "manifest.json").read_text())
    x = torch.tensor([[1, 5, 9, 12, 7, 3, 4, 8]])
    mask = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    if method == "rm":
        from danlu.align.reward import load_reward_model

        rm, _ = load_reward_model(result["model_dir"])
        assert "reward_model" in meta
        lm, _, _ = load_model(result["model_dir"])  # the body reads as a language model as well
        assert lm(x).shape[-1] == lm.cfg.vocab_size
        assert rm.scores(x, mask).shape == (1,)
    else:
        assert result["val_logp_accuracy"] > before["val_logp_accuracy"]
        model, _, _ = load_model(result["model_dir"])
        assert not any("adapters" in n for n, _ in model.named_parameters())
    assert sum(manifest["pairs"].values()) + manifest["dropped"]["duplicate"] == 200


def test_a_lora_reward_model_dir_scores_as_the_trained_model(root, tmp_path):
    from danlu.align.reward import load_reward_model

    cfg = align_config(root, "rm", steps=6, tune="lora")
    trainer, _ = build_align_trainer(cfg, root / "base", tmp_path / "out")
    trainer.fit()
    batch = next(iter(trainer.batches))
    with torch.no_grad():
        trained = trainer.model.eval().scores(batch["ids"], batch["mask"])
    result = run_align(cfg, root / "base", tmp_path / "out")  # resumes the finished run, then saves
    rm, _ = load_reward_model(result["model_dir"])
    with torch.no_grad():
        assert torch.allclose(rm.scores(batch["ids"], batch["mask"]), trained, atol=1e-5)


def test_sequence_logps_sum_the_response_tokens_log_probs(root):
    model, _, _ = load_model(root / "base")
    ids = torch.tensor([[3, 8, 11, 20, 5, 0], [7, 2, 9, 4, 6, 1]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]])
    with torch.no_grad():
        got, n = sequence_logps(model, ids, mask)
        logp = torch.log_softmax(model(ids[:, :-1]), dim=-1)
    want = [sum(float(logp[b, t - 1, ids[b, t]]) for t in range(6) if mask[b, t]) for b in range(2)]
    assert torch.allclose(got, torch.tensor(want), atol=1e-5)
    assert n.tolist() == [3, 3]


def test_reference_from_disabled_adapters_trains_as_the_precomputed_one(root, tmp_path):
    runs = {}
    for ref in ("precompute", "adapters"):
        cfg = align_config(root, "dpo", steps=4, tune="lora", reference=ref)
        trainer, _ = build_align_trainer(cfg, root / "base", tmp_path / ref)
        assert (tmp_path / ref / "data" / "reference.pt").is_file() == (ref == "precompute")
        trainer.fit()
        runs[ref] = _losses(tmp_path / ref)
    assert runs["precompute"] == pytest.approx(runs["adapters"], abs=1e-5)
    assert len(runs["adapters"]) == 2


class Killed(Exception):
    pass


@pytest.mark.parametrize("method", ["dpo", pytest.param("kto", marks=pytest.mark.slow)])
def test_an_interrupted_align_run_resumes_bit_exactly(root, tmp_path, method):
    cfg = align_config(root, method, steps=8, tune="lora", ckpt_every=4)
    build_align_trainer(cfg, root / "base", tmp_path / "a")[0].fit()
    killed = build_align_trainer(cfg, root / "base", tmp_path / "b")[0]
    loss_fn, calls = killed.loss_fn, []

    def dies_in_step_6(model, batch):
        calls.append(1)
        if len(calls) == 6:
            raise Killed
        return loss_fn(model, batch)

    killed.loss_fn = dies_in_step_6
    with pytest.raises(Killed):
        killed.fit()
    build_align_trainer(cfg, root / "base", tmp_path / "b")[0].fit()  # a new process resumes at step 4
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert len(a) == 4 and a == b


def test_pairs_are_checked_deduplicated_and_split_by_prompt(tmp_path):
    rows = [
        {"prompt": "p1", "chosen": "a", "rejected": "b"},
        {"prompt": "p1", "chosen": "a", "rejected": "b"},  # a repeat
        {"prompt": "p1", "chosen": "a", "rejected": "c"},
        {"prompt": "p2", "chosen": "same", "rejected": "same"},
        {"prompt": "p3", "chosen": "a"},
        {"prompt": [{"role": "user", "content": "p4"}], "chosen": [{"role": "assistant", "content": "x"}],
         "rejected": "y", "margin": 2},
        {"prompt": [{"role": "assistant", "content": "p5"}], "chosen": "x", "rejected": "y"},
    ]  # fmt: skip
    rows += [{"prompt": f"q{i}", "chosen": "good", "rejected": "bad"} for i in range(60)]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    splits, report = build_pairs(AlignDataConfig(sources=[str(path)], per_source=0, val_fraction=0.3))
    assert report["dropped"] == {
        "duplicate": 1, "chosen_is_rejected": 1, "unreadable": 2, "bad_prompt": 1,
    }  # fmt: skip
    assert report["pairs"]["train"] + report["pairs"]["val"] == 63
    prompts = {s: {p["prompt"][0]["content"] for p in ps} for s, ps in splits.items()}
    assert not prompts["train"] & prompts["val"] and splits["val"]
    p4 = next(p for ps in splits.values() for p in ps if p["prompt"][0]["content"] == "p4")
    assert (p4["chosen"], p4["margin"]) == ("x", 2.0)
    with pytest.raises(DataError, match="unknown preference source"):
        build_pairs(AlignDataConfig(sources=["nowhere.jsonl"]))


def test_a_hugging_face_preference_dataset_streams_into_pairs(tmp_path, monkeypatch):
    """UltraFeedback-binarized's layout (prompt + chosen/rejected conversations) and TRL's implicit
    prompt (no prompt field: chosen's turns before its last), from a local dataset folder through the
    same `datasets.load_dataset(..., streaming=True)` call a hub name takes, with no network."""
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)

    def turn(role, text):
        return {"role": role, "content": text}

    rows = [
        {"prompt": f"q{i}", "chosen": [turn("user", f"q{i}"), turn("assistant", f"good {i}")],
         "rejected": [turn("user", f"q{i}"), turn("assistant", f"bad {i}")], "score_chosen": 8.0}
        for i in range(30)
    ]  # fmt: skip
    rows += [
        {"chosen": [turn("user", f"r{i}"), turn("assistant", "yes")],
         "rejected": [turn("user", f"r{i}"), turn("assistant", "no")]}
        for i in range(10)
    ]  # fmt: skip
    (tmp_path / "owner" / "prefs").mkdir(parents=True)
    (tmp_path / "owner" / "prefs" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits, report = build_pairs(AlignDataConfig(sources=["hf:owner/prefs"], per_source=0, val_fraction=0.25))
    pairs = splits["train"] + splits["val"]
    assert report["pairs"]["train"] + report["pairs"]["val"] == 40 and splits["val"]
    q3 = next(p for p in pairs if p["prompt"] == [turn("user", "q3")])
    assert (q3["chosen"], q3["rejected"]) == ("good 3", "bad 3")
    r7 = next(p for p in pairs if p["prompt"] == [turn("user", "r7")])
    assert (r7["chosen"], r7["rejected"]) == ("yes", "no")
    with pytest.raises(DataError, match="cannot stream hf:owner/missing"):
        build_pairs(AlignDataConfig(sources=["hf:owner/missing"]))


def test_the_align_verb_runs_from_a_recipe_and_bad_input_exits_2(root, tmp_path, capsys):
    from danlu.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: t\n"
        f"run_dir: {tmp_path / 'run'}\n"
        "align:\n"
        f"  base: {root / 'base'}\n"
        "  tune: full\n"
        "  data: {sources: [" + str(root / "pairs.jsonl") + "], per_source: 0}\n"
        "  train: {seq_len: 32, batch_size: 8, max_steps: 2, eval_every: 2, ckpt_every: 2, log_every: 1,"
        " device: cpu, dtype: fp32, warmup_steps: 1, lr: 0.003}\n"
    )
    assert main(["align", str(recipe), "--method", "simpo"]) == 0
    out = capsys.readouterr().out
    assert f"aligned model: {tmp_path / 'run' / 'align' / 'model'}  held-out val_logp_accuracy" in out
    assert read_metadata(tmp_path / "run" / "align" / "model")["align"]["method"] == "simpo"
    assert main(["align", str(recipe), "--align.data.sources=[nowhere.jsonl]"]) == 2
    assert "danlu: error: unknown preference source 'nowhere.jsonl'" in capsys.readouterr().err
    assert main(["align", str(recipe), "--align.reference=adapters"]) == 2  # adapters need tune=lora
    assert capsys.readouterr().err.startswith("danlu: error: align")
    with pytest.raises(SystemExit) as e:
        main(["align", str(recipe), "--method", "magic"])
    assert e.value.code == 2


@pytest.mark.parametrize("path", ["recipes/tiny-cpu-align.yaml"])
def test_the_align_recipe_loads_and_chains_align_after_sft(path):
    from danlu.recipe import load_recipe
    from danlu.run import STAGES

    cfg = load_recipe(path)
    assert cfg.sft is not None and cfg.align is not None
    names = [s.name for s in STAGES if s.enabled is None or s.enabled(cfg)]
    assert names[-2:] == ["sft", "align"]
