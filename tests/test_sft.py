"""The SFT stage on the one Trainer (issue 21, parts 2 and 3): full finetuning, LoRA, DoRA, QLoRA.

A tiny model learns a patterned answer from local JSONL conversations. Pinned: the loss on the
assistant tokens falls and the validation loss beats the base model's; only adapter tensors train
for the adapter methods and the base weights stay bitwise the saved ones; the merged model dir and
the base + adapters/ dir load with `load_model` and compute the trained model's logits; the data
manifest counts what was skipped and why; `danlu sft` runs the stage from a recipe and a bad input
exits 2 with one line; an interrupted run resumes to the uninterrupted run's losses.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from chat_words import WORDS
from danlu.finetune.config import LoRAConfig, SFTConfig, SFTDataConfig
from danlu.finetune.sft import build_sft_trainer, evaluate, run_sft
from danlu.model.config import ModelConfig
from danlu.model.transformer import build_model
from danlu.model_dir import MODEL_FILE, load_model, read_metadata, save_model_dir
from danlu.train.config import TrainConfig


@pytest.fixture(scope="module")
def root(tmp_path_factory, word_lines):
    """A tiny base model dir and conversations: "a or b?" -> "b, not a." (plus a few bad records)."""
    from danlu.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("sft")
    rng = random.Random(0)
    rows = []
    for _ in range(240):
        a, b = rng.sample(WORDS, 2)
        msgs = [
            {"role": "user", "content": f"{a} or {b}?"},
            {"role": "assistant", "content": f"{b}, not {a}."},
        ]
        rows.append({"messages": msgs})
    rows += [{"messages": [{"role": "user", "content": "no answer"}]}, {"instruction": "x", "output": ""}]
    (root / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = Tokenizer.train(word_lines(300, seed=1) + [" ".join(WORDS)] * 5, 320)
    tok.save(root / "tokenizer")
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=64, vocab_size=tok.vocab_size)
    save_model_dir(root / "base", build_model(cfg), cfg, root / "tokenizer")
    return root


def sft_config(root, method: str, merge: bool = True, steps: int = 40, **data) -> SFTConfig:
    return SFTConfig(
        method=method,
        merge=merge,
        data=SFTDataConfig(sources=[str(root / "chats.jsonl")], per_source=0, dedup_threshold=0.0, **data),
        lora=LoRAConfig(r=4, alpha=16),
        train=TrainConfig(
            seq_len=32, batch_size=8, max_steps=steps, lr=1e-2 if method != "full" else 2e-3, warmup_steps=4,
            eval_every=20, ckpt_every=20, log_every=5, device="cpu", dtype="fp32", weight_decay=0.0,
        ),
    )  # fmt: skip


def _losses(out) -> list[float]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r]


def _val_before(root, cfg, out) -> float:
    from danlu.finetune.sft import prepare_data

    base, tok, _ = load_model(root / "base")
    examples, _ = prepare_data(cfg, tok, out / "data")
    return evaluate(base, examples["val"], 8, tok.pad_id, torch.device("cpu"), "fp32")["val_loss"]


@pytest.mark.parametrize("method", ["lora", "full", "qlora"])
def test_sft_lowers_the_assistant_loss_and_writes_a_chat_model_dir(root, tmp_path, method):
    cfg = sft_config(root, method)
    before = _val_before(root, cfg, tmp_path / "probe")
    result = run_sft(cfg, root / "base", tmp_path / "out")
    losses = _losses(tmp_path / "out")
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.3
    assert result["val_loss"] < before - 0.3
    meta = read_metadata(result["model_dir"])
    assert meta["chat"] is True and meta["sft"]["method"] == method and "adapter" not in meta
    model, _tok, _ = load_model(result["model_dir"])  # merged: a plain model dir
    assert not any("adapters" in n for n, _ in model.named_parameters())
    manifest = json.loads((tmp_path / "out" / "data" / "manifest.json").read_text())
    assert manifest["screen"]["skipped"] == {"no_assistant_turn": 1, "empty_turn": 1}
    assert manifest["screen"]["examples"]["no_assistant_turn"] == [
        "chats.jsonl:241: nothing to learn: no assistant message"
    ]
    assert manifest["template"] == "danlu"
    n_train = manifest["parameters"]["trainable_params"]
    if method in ("lora", "qlora"):  # r=4 on q, k, v, o, gate, up, down of 2 layers
        assert n_train == 2 * 4 * (
            (64 + 64) + (64 + 32) + (64 + 32) + (64 + 64) + 2 * (64 + 176) + (176 + 64)
        )
    else:
        assert n_train == manifest["parameters"]["total_params"]


@pytest.mark.parametrize(
    "method",
    ["lora", pytest.param("dora", marks=pytest.mark.slow), pytest.param("qlora", marks=pytest.mark.slow)],
)
def test_unmerged_adapters_load_with_the_trained_logits_and_leave_the_base_alone(root, tmp_path, method):
    cfg = sft_config(root, method, merge=False, steps=20)
    trainer, _ = build_sft_trainer(cfg, root / "base", tmp_path / "out")
    trains = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trains and all(".adapters." in n for n in trains)
    trainer.fit()
    x = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        trained = trainer.model.eval()(x)
    result = run_sft(cfg, root / "base", tmp_path / "out")  # resumes the finished run, then saves
    model_dir = result["model_dir"]
    assert read_metadata(model_dir)["adapter"] == "default"
    assert (model_dir / "adapters" / "default" / "adapter_model.safetensors").is_file()
    loaded, _, _ = load_model(model_dir)
    with torch.no_grad():
        assert torch.allclose(loaded(x), trained, atol=1e-5)
    if method != "qlora":  # the saved base is the base, bit for bit (QLoRA saves its dequantized NF4 base)
        from safetensors.torch import load_file

        a, b = load_file(str(model_dir / MODEL_FILE)), load_file(str(root / "base" / MODEL_FILE))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_packed_sft_trains_on_the_same_assistant_tokens(root, tmp_path):
    cfg = sft_config(root, "lora", steps=20, packing=True)
    trainer, _manifest = build_sft_trainer(cfg, root / "base", tmp_path / "out")
    x, y, mask = next(iter(trainer.batches))
    assert x.shape == (8, 32) and mask.shape == (8, 1, 32, 32)
    assert (y != -100).sum() > 8 * 4  # several conversations per row
    trainer.fit()
    losses = _losses(tmp_path / "out")
    assert losses[-1] < losses[0] - 0.3


def test_the_sft_verb_runs_from_a_recipe_and_bad_input_exits_2(root, tmp_path, capsys):
    from danlu.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: t\n"
        f"run_dir: {tmp_path / 'run'}\n"
        "sft:\n"
        f"  base: {root / 'base'}\n"
        "  data: {sources: [" + str(root / "chats.jsonl") + "], per_source: 0, dedup_threshold: 0.0}\n"
        "  lora: {r: 2}\n"
        "  train: {seq_len: 32, batch_size: 8, max_steps: 4, eval_every: 4, ckpt_every: 4, log_every: 2,"
        " device: cpu, dtype: fp32, warmup_steps: 1}\n"
    )
    assert main(["sft", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert f"chat model: {tmp_path / 'run' / 'sft' / 'model'}" in out
    assert load_model(tmp_path / "run" / "sft" / "model")[2].n_layer == 2
    assert main(["sft", str(recipe), "--sft.data.sources=[nowhere.jsonl]"]) == 2
    assert "danlu: error: unknown SFT source 'nowhere.jsonl'" in capsys.readouterr().err
    assert main(["sft", str(recipe), "--sft.method=magic"]) == 2


def test_conversations_longer_than_the_context_are_counted_with_examples_or_refused(root, tmp_path):
    from danlu.errors import DataError
    from danlu.finetune.sft import prepare_data

    long = {
        "messages": [{"role": "user", "content": " ".join(WORDS * 3)}, {"role": "assistant", "content": "ok"}]
    }
    (tmp_path / "long.jsonl").write_text(json.dumps(long) + "\n")
    cfg = sft_config(root, "lora")
    cfg.data.sources.append(str(tmp_path / "long.jsonl"))
    _, tok, _ = load_model(root / "base")
    _, manifest = prepare_data(cfg, tok, tmp_path / "skip")
    context = manifest["context"]
    split = "train" if context["train"]["too_long"] else "val"
    assert context[split]["too_long"] == 1 and context[split]["policy"] == "skip"
    (example,) = context[split]["examples"]["too_long"]
    assert example.startswith("long.jsonl:1: ") and int(example.split()[1]) > 33
    cfg.data.truncation = "refuse"
    with pytest.raises(DataError, match=r"long\.jsonl:1: \d+ tokens, longer than the context of 32"):
        prepare_data(cfg, tok, tmp_path / "refuse")


def _greedy_reply(model_dir, question: str, max_new_tokens: int = 24):
    """The engine's greedy completion of one user turn, prompted as `danlu chat` prompts a chat model
    (the chat template, also for the base model, whose own session would use the transcript form)."""
    from danlu.infer.chat import ChatSession

    session = ChatSession.from_dir(model_dir, temperature=0, max_new_tokens=max_new_tokens, seed=0)
    session.mode = "chat"
    session.history.append({"role": "user", "content": question})
    return session.engine.generate([session.prompt_ids()], session.params)[0]


def test_after_sft_the_model_answers_within_its_turn_and_ends_it(root, tmp_path, monkeypatch, capsys):
    """Greedy on a fixed seed: the base model, given the chat template, writes on to the token limit
    (it never learned to end a turn); after SFT it answers in the taught form and ends its turn, in
    `danlu chat`. Full finetuning: this base is random, and LoRA cannot move its frozen random head
    far enough from uniform (its logits stay within about +-1.3) to make any reply greedy."""
    from danlu.cli import main

    question = "king or queen?"
    _, tok, _ = load_model(root / "base")
    roles = {tok.special_tokens[t] for t in ("<|user|>", "<|system|>", "<|assistant|>")}
    before = _greedy_reply(root / "base", question)
    assert before.finish_reason == "length" and len(before.token_ids) == 24
    cfg = sft_config(root, "full", steps=60)
    cfg.train.lr = 5e-3
    result = run_sft(cfg, root / "base", tmp_path / "out")
    after = _greedy_reply(result["model_dir"], question)
    assert after.finish_reason == "stop" and len(after.token_ids) < 24
    assert not roles & set(after.token_ids)  # it never starts another speaker's turn
    reply = after.text.strip()
    assert ", not " in reply and reply.endswith(".")  # "b, not a.": the answer's form
    lines = iter([question, ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    argv = ["chat", str(result["model_dir"]), "--temperature", "0", "--seed", "0", "--max-new-tokens", "24"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(chat mode)" in out and f"bot> {reply}\n" in out


def test_the_sft_loss_runs_the_head_on_target_positions_only_with_the_full_heads_loss_and_grads(root):
    from danlu.finetune.lora import AdapterSpec, apply_lora
    from danlu.finetune.sft import sft_loss
    from danlu.train.losses import IGNORE_INDEX, summed_lm_loss

    model, _, cfg = load_model(root / "base")
    apply_lora(model, AdapterSpec(r=2, targets=("q_proj", "down_proj")))
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, cfg.vocab_size, (3, 20), generator=gen)
    y = torch.randint(0, cfg.vocab_size, (3, 20), generator=gen)
    y[:, :9] = IGNORE_INDEX  # the prompt
    y[2, 15:] = IGNORE_INDEX  # padding
    rows = []
    head = model.lm_head
    head.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[:-1]))
    out = sft_loss(model, (x, y))
    assert rows == [torch.Size([int((y != IGNORE_INDEX).sum())])] and out.n_tokens == 28
    out.loss_sum.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    full = summed_lm_loss(model(x), y)
    full.backward()
    assert torch.allclose(out.loss_sum, full, rtol=1e-6)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, ours[n], atol=1e-6), n


def test_a_time_budget_stops_training_checkpoints_evaluates_and_writes_the_model_dir(root, tmp_path):
    import dataclasses

    cfg = sft_config(root, "lora", steps=40)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_minutes=1e-9))
    result = run_sft(cfg, root / "base", tmp_path / "out")
    assert result["steps"] == 1 and result["val_loss"] > 0
    recs = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r.get("event") == "time_budget"] == [1]
    load_model(result["model_dir"])
    again = run_sft(cfg, root / "base", tmp_path / "out")  # the budget counts across resumes
    assert again["steps"] == 1


def test_max_minutes_must_not_be_negative():
    from danlu.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train\.max_minutes"):
        TrainConfig(max_minutes=-1)


def test_a_time_budget_changes_only_the_keys_of_the_stages_it_is_set_on():
    from danlu.recipe import load_recipe
    from danlu.run import stage_keys

    plain = stage_keys(load_recipe("recipes/tiny-cpu-sft.yaml"))
    budget = stage_keys(load_recipe("recipes/tiny-cpu-sft.yaml", ["--sft.train.max_minutes=5"]))
    assert budget["pretrain"] == plain["pretrain"] and budget["sft"] != plain["sft"]


def test_the_sft_validation_reads_train_eval_batches(root, tmp_path):
    from danlu.finetune.sft import prepare_data

    base, tok, _ = load_model(root / "base")
    examples, _ = prepare_data(sft_config(root, "lora"), tok, tmp_path / "data")
    cpu = torch.device("cpu")
    first = evaluate(base, examples["val"][:4], 4, tok.pad_id, cpu, "fp32")
    every = evaluate(base, examples["val"], 4, tok.pad_id, cpu, "fp32")
    assert len(examples["val"]) > 4
    assert evaluate(base, examples["val"], 4, tok.pad_id, cpu, "fp32", max_batches=1) == first != every
