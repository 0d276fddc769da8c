"""GRPO's advantages and loss equal TRL's GRPOTrainer on a fixed batch; GAE equals its closed form.

The loss: a real GRPOTrainer (tiny HF Llama, word-level tokenizer) whose per-token log-prob method
returns fixed log-probs, handed fixed old/reference log-probs, advantages and a completion mask, for
each of TRL's reductions (grpo, bnpo, dr_grpo). The advantages: TRL computes them inline while it
generates, with its own Bessel-corrected `nanstd`; one test pins the formula with that function, another
runs TRL's rollout step itself on fixed rewards.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from danlu.align.rl import gae, group_advantages, grpo_loss


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from trl import GRPOConfig, GRPOTrainer

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", *[f"w{i}" for i in range(30)]])}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="<eos>")
    cfg = LlamaConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = GRPOConfig(
            output_dir=str(tmp_path_factory.mktemp("grpo")), report_to=[], use_cpu=True,
            per_device_train_batch_size=4, num_generations=4, max_completion_length=8, beta=0.0,
        )  # fmt: skip
        tr = GRPOTrainer(
            model=LlamaForCausalLM(cfg), reward_funcs=lambda completions, **k: [0.0] * len(completions),
            args=args, train_dataset=Dataset.from_dict({"prompt": ["w1 w2", "w3", "w4", "w5"]}),
            processing_class=tok,
        )  # fmt: skip
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    return tr


@pytest.mark.parametrize("norm", ["grpo", "bnpo", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_equals_trl_grpo_trainer(trainer, norm, beta):
    n, t = 8, 8
    g = torch.Generator().manual_seed(len(norm) + int(beta * 100))
    lp = -torch.rand(n, t, generator=g) * 2
    old = lp + 0.3 * torch.randn(n, t, generator=g)  # some ratios outside the clip range
    ref = lp + 0.2 * torch.randn(n, t, generator=g)
    mask = (torch.rand(n, t, generator=g) > 0.25).long()
    mask[:, 0] = 1
    adv = torch.randn(n, generator=g)
    trainer.loss_type, trainer.beta = norm, beta
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (lp, torch.zeros_like(lp), None)
    inputs = {
        "prompt_ids": torch.ones(n, 2, dtype=torch.long), "prompt_mask": torch.ones(n, 2, dtype=torch.long),
        "completion_ids": torch.ones(n, t, dtype=torch.long), "completion_mask": mask, "advantages": adv,
        "old_per_token_logps": old, "ref_per_token_logps": ref,
    }  # fmt: skip
    want = float(trainer._compute_loss(trainer.model, inputs))
    got, metrics = grpo_loss(lp, old, adv, mask, ref, beta, 0.2, 0.2, norm, max_completion_length=8)
    assert abs(float(got) - want) < 1e-6
    m = trainer._metrics["train"]
    assert metrics["clip_ratio"] == pytest.approx(m["clip_ratio/region_mean"][-1], abs=1e-6)
    assert metrics["clip_ratio"] > 0
    if beta:
        assert metrics["kl"] == pytest.approx(m["kl"][-1], abs=1e-6)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_are_trls_group_normalized_rewards(scale):
    from trl.trainer.utils import nanstd

    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 2.0, -1.0, 0.0, 3.0])
    adv = group_advantages(rewards, 4, scale)
    groups = rewards.view(-1, 4)
    centred = (groups - groups.mean(1, keepdim=True)).view(-1)
    std = {"group": nanstd(groups, dim=1).repeat_interleave(4), "batch": nanstd(rewards).expand(12)}
    want = centred if scale == "none" else centred / (std[scale] + 1e-4)
    assert torch.allclose(adv, want, atol=1e-6)
    assert torch.all(adv[4:8] == 0)  # a group of equal rewards teaches nothing
    with pytest.raises(ValueError):
        group_advantages(rewards, 5)


def test_group_advantages_equal_the_advantages_trls_grpo_trainer_computes_while_it_generates(tmp_path):
    """TRL's own rollout step (_generate_and_score_completions: sample, score, normalize) with fixed
    rewards, against danlu's group_advantages, for each of its reward scalings."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from trl import GRPOConfig, GRPOTrainer

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", *[f"w{i}" for i in range(10)]])}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="<eos>")
    cfg = LlamaConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
    )  # fmt: skip
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 2.0, -1.0, 0.0, 3.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = GRPOConfig(
            output_dir=str(tmp_path), report_to=[], use_cpu=True, per_device_train_batch_size=12,
            num_generations=4, max_completion_length=3, beta=0.0,
        )  # fmt: skip
        tr = GRPOTrainer(
            model=LlamaForCausalLM(cfg), reward_funcs=lambda completions, **k: rewards.tolist(), args=args,
            train_dataset=Dataset.from_dict({"prompt": ["w1 w2", "w3", "w4"]}), processing_class=tok,
        )  # fmt: skip
        tr.model.train()
        for scale in ("group", "batch", "none"):
            tr.scale_rewards = scale
            out = tr._generate_and_score_completions(
                [{"prompt": p} for p in ("w1 w2", "w3", "w4") for _ in range(4)]
            )
            assert torch.allclose(out["advantages"], group_advantages(rewards, 4, scale), atol=1e-6), scale


def test_gae_equals_the_closed_form_sum():
    g = torch.Generator().manual_seed(0)
    r, v = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    last, gamma, lam = 0.7, 0.9, 0.8
    adv, ret = gae(r, v, last, gamma, lam)
    nxt = torch.cat([v[1:], torch.tensor([last], dtype=torch.float64)])
    delta = r + gamma * nxt - v
    want = [sum((gamma * lam) ** (k - t) * float(delta[k]) for k in range(t, 6)) for t in range(6)]
    assert torch.allclose(adv, torch.tensor(want, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(ret, adv + v)
    # lam = 1: the discounted return minus the value; lam = 0: the one-step TD error
    full, _ = gae(r, v, last, gamma, 1.0)
    disc = [
        sum(gamma ** (k - t) * float(r[k]) for k in range(t, 6)) + gamma ** (6 - t) * last for t in range(6)
    ]
    assert torch.allclose(full, torch.tensor(disc, dtype=torch.float64) - v, atol=1e-12)
    assert torch.allclose(gae(r, v, last, gamma, 0.0)[0], delta, atol=1e-12)
