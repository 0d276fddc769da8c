"""Prompt tuning, prefix tuning and bottleneck adapters on the SFT Trainer.

Pinned: a prefix-tuned model computes what transformers' Llama computes with the same keys and
values as its past (1e-4); a prompt-tuned model computes the base model on the prompt's embeddings
followed by the input's; bottleneck adapters start as the base model; training lowers the assistant
loss, only the method's tensors train and change, the base weights stay bitwise the same; packing
and run_sft's model dir are refused with a clear error.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
import transformers

from danlu.errors import ConfigError
from danlu.finetune.config import SFTConfig, SFTDataConfig
from danlu.finetune.prompts import PrefixTuned, PromptTuned, apply_bottleneck, trainable_name
from danlu.finetune.sft import build_sft_trainer, run_sft
from danlu.model.config import ModelConfig
from danlu.model.transformer import build_model
from danlu.model_dir import load_model, save_model_dir
from danlu.train.config import TrainConfig

WORDS = ["king", "queen", "lord", "lady", "night", "day", "love", "death", "sword", "crown", "river", "town"]


@pytest.fixture(scope="module")
def root(tmp_path_factory, word_lines):
    """A tiny model dir (and its HF export) finetuned on "a or b?" -> "b, not a.", and conversations
    in another form, "a or b?" -> "a and b!", for the methods to learn. A random model would not do: its
    frozen random head keeps every output near uniform, whatever a prompt or adapter feeds it."""
    from danlu.interop.hf_llama import export_hf
    from danlu.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("prompts")
    rng = random.Random(0)
    pairs = [rng.sample(WORDS, 2) for _ in range(160)]
    for name, answer in (("taught", "{b}, not {a}."), ("chats", "{a} and {b}!")):
        rows = [
            {"messages": [{"role": "user", "content": f"{a} or {b}?"},
                          {"role": "assistant", "content": answer.format(a=a, b=b)}]}
            for a, b in pairs
        ]  # fmt: skip
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = Tokenizer.train(word_lines(300, seed=1) + [" ".join(WORDS)] * 5, 320)
    tok.save(root / "tokenizer")
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=64, vocab_size=tok.vocab_size)
    save_model_dir(root / "random", build_model(cfg), cfg, root / "tokenizer")
    taught = _cfg(root, "full", steps=60, lr=5e-3)
    taught.data.sources = [str(root / "taught.jsonl")]
    run_sft(taught, root / "random", root / "taught")
    (root / "base").symlink_to(root / "taught" / "model")
    export_hf(root / "base", root / "hf")
    return root


def _ids(vocab: int, T: int = 12) -> torch.Tensor:
    return torch.randint(0, vocab, (2, T), generator=torch.Generator().manual_seed(3))


def test_a_prefix_is_the_past_keys_and_values_of_transformers_llama(root):
    model, _, cfg = load_model(root / "base")
    tuned = PrefixTuned(model, 5, seed=1).eval()
    with torch.no_grad():
        tuned.prefix_keys.add_(
            torch.randn(tuned.prefix_keys.shape, generator=torch.Generator().manual_seed(2))
        )
    x = _ids(cfg.vocab_size)
    hf = transformers.AutoModelForCausalLM.from_pretrained(root / "hf", torch_dtype=torch.float32).eval()
    past = transformers.DynamicCache()
    for layer in range(cfg.n_layer):
        k, v = tuned.prefix_keys[layer], tuned.prefix_values[layer]
        past.update(k.detach().expand(2, -1, -1, -1), v.detach().expand(2, -1, -1, -1), layer)
    with torch.no_grad():
        theirs = hf(input_ids=x, past_key_values=past, attention_mask=torch.ones(2, 5 + x.size(1))).logits
        ours = tuned(x)
        base = model(x)
    assert ours.shape == base.shape
    assert (ours - theirs).abs().max() < 1e-4
    assert (ours - base).abs().max() > 1e-3


def test_a_soft_prompt_is_embeddings_before_the_input(root):
    model, _, cfg = load_model(root / "base")
    x = _ids(cfg.vocab_size)
    tuned = PromptTuned(model, 4, seed=1).eval()
    prompt_ids = torch.tensor([[7, 8, 9, 10]])
    with torch.no_grad():
        tuned.soft_prompt.copy_(model.embed.weight[prompt_ids[0]])
        ours = tuned(x)
        # the same prompt as real tokens: the base model's logits after them
        want = model(torch.cat([prompt_ids.expand(2, -1), x], dim=1))[:, 4:]
    assert torch.allclose(ours, want, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(model(x), load_model(root / "base")[0](x))  # the hook is off outside forward


def test_bottleneck_adapters_start_as_the_base(root):
    model, _, cfg = load_model(root / "base")
    x = _ids(cfg.vocab_size)
    with torch.no_grad():
        ref = model(x)
        apply_bottleneck(model, 8, seed=1)
        assert torch.equal(model(x), ref)
    names = [n for n, _ in model.named_parameters() if trainable_name(n)]
    assert len(names) == 2 * 2 * 4  # layers x (attn.proj, mlp.down) x (down, up) x (weight, bias)


def _cfg(root, method: str, steps: int = 30, lr: float = 1e-2, **extra) -> SFTConfig:
    return SFTConfig(
        method=method,
        data=SFTDataConfig(sources=[str(root / "chats.jsonl")], per_source=0, dedup_threshold=0.0),
        train=TrainConfig(
            seq_len=32, batch_size=8, max_steps=steps, lr=lr, warmup_steps=3, eval_every=steps,
            ckpt_every=steps, log_every=5, device="cpu", dtype="fp32", weight_decay=0.0,
        ),
        virtual_tokens=8,
        bottleneck_width=16,
        **extra,
    )  # fmt: skip


@pytest.mark.parametrize(("method", "lr"), [("prompt", 1e-1), ("prefix", 5e-2), ("bottleneck", 1e-2)])
def test_training_lowers_the_loss_and_changes_only_the_methods_tensors(root, tmp_path, method, lr):
    trainer, manifest = build_sft_trainer(_cfg(root, method, lr=lr), root / "base", tmp_path / "out")
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trains = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trains and trains == {n for n in before if trainable_name(n)}
    assert manifest["parameters"]["trainable_params"] == sum(before[n].numel() for n in trains)
    val_before = trainer.hooks.evaluate(trainer.model)["val_loss"]
    result = trainer.fit()
    # the validation loss (every held-out conversation), not the noisy per-batch training loss
    assert result["val_loss"] < val_before - 0.25, (val_before, result["val_loss"])
    for n, p in trainer.model.named_parameters():
        if n in trains:
            assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]), n


def test_packing_and_a_model_dir_are_refused_for_these_methods(root, tmp_path):
    cfg = _cfg(root, "prefix")
    cfg.data.packing = True
    with pytest.raises(ConfigError, match=r"needs sft\.data\.packing=false"):
        build_sft_trainer(cfg, root / "base", tmp_path / "a")
    with pytest.raises(ConfigError, match="a model dir cannot hold a bottleneck yet"):
        run_sft(_cfg(root, "bottleneck"), root / "base", tmp_path / "b")
    assert not (tmp_path / "b").exists()
