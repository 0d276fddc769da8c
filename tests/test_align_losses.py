"""The preference losses equal TRL's own implementation on the same inputs (within 1e-6).

TRL 1.x computes DPO/IPO and KTO inside `DPOTrainer._compute_loss` / `KTOTrainer._compute_loss`, from
the model's per-token log-probs: a real trainer (on a tiny HF Llama and a word-level tokenizer,
reference log-probs precomputed) is handed a stand-in model whose forward returns fixed per-token
log-probs, and the batch carries fixed reference log-probs; danlu's losses get the same numbers summed
over the response tokens. SimPO and conservative (label-smoothed) sigmoid DPO are TRL's
`CPOTrainer.cpo_loss`, ORPO's odds ratio is `ORPOTrainer.odds_ratio_loss`: pure methods of the
trainer's settings, called with those settings. The Bradley-Terry loss is checked against its formula.
"""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest
import torch

from danlu.align import losses as L

B, T = 6, 9  # pairs, sequence length


@pytest.fixture(scope="module")
def hf():
    """A tiny HF Llama, its tokenizer and a two-row preference dataset: what TRL's trainers need."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", *[f"w{i}" for i in range(30)]])}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="<eos>")
    cfg = LlamaConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    pairs = {"prompt": ["w1 w2", "w3"], "chosen": [" w4 w5", " w6"], "rejected": [" w7", " w8 w9"]}
    return SimpleNamespace(
        tok=tok, model=lambda: LlamaForCausalLM(cfg), pairs=Dataset.from_dict(pairs), Dataset=Dataset
    )


def _trainer(cls, config_cls, hf, tmp_path, data, **settings):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = config_cls(
            output_dir=str(tmp_path), report_to=[], use_cpu=True, per_device_train_batch_size=2,
            precompute_ref_log_probs=True, **settings,
        )  # fmt: skip
        trainer = cls(model=hf.model(), args=args, train_dataset=data, processing_class=hf.tok)
    trainer.model.train()
    return trainer


def _per_token_logps(gen: torch.Generator, mask: torch.Tensor) -> torch.Tensor:
    """Fixed per-token log-probs [N, T-1], zero off the (shifted) completion mask, as TRL's fused
    LM head returns them."""
    lp = -torch.rand(mask.shape[0], mask.shape[1] - 1, generator=gen, dtype=torch.float64).float() * 3
    return lp * mask[:, 1:]


def _completion_mask(gen: torch.Generator, n: int) -> torch.Tensor:
    """Prompts of 1-3 tokens, then responses of 1 to the rest."""
    mask = torch.zeros(n, T, dtype=torch.long)
    for i in range(n):
        p = int(torch.randint(1, 4, (1,), generator=gen))
        r = int(torch.randint(1, T - p + 1, (1,), generator=gen))
        mask[i, p : p + r] = 1
    return mask


class FixedLogps:
    """A stand-in model: its forward returns the given per-token log-probs (by sequence length)."""

    def __init__(self, by_len: dict[int, torch.Tensor]):
        self.by_len = by_len

    def __call__(self, input_ids, **kw):
        lp = self.by_len[input_ids.shape[1]]
        zeros = torch.zeros_like(lp)
        return SimpleNamespace(log_probs=lp, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())


def _last(metrics, key):
    return metrics["train"][key][-1]


@pytest.mark.parametrize(
    ("loss_type", "beta"), [("sigmoid", 0.1), ("sigmoid", 0.7), ("ipo", 0.1), ("ipo", 0.5)]
)
def test_dpo_and_ipo_equal_trl_dpo_trainer(hf, tmp_path, loss_type, beta):
    from trl import DPOConfig, DPOTrainer

    trainer = _trainer(DPOTrainer, DPOConfig, hf, tmp_path, hf.pairs, loss_type=[loss_type], beta=beta)
    gen = torch.Generator().manual_seed(int(beta * 100) + len(loss_type))
    mask = _completion_mask(gen, 2 * B)
    lp = _per_token_logps(gen, mask)
    ref_c, ref_r = (-torch.rand(B, generator=gen) * 3 * mask[:B].sum(1), -torch.rand(B, generator=gen) * 9)
    inputs = {
        "input_ids": torch.ones(2 * B, T, dtype=torch.long),
        "attention_mask": torch.ones(2 * B, T, dtype=torch.long),
        "completion_mask": mask,
        "ref_chosen_logps": ref_c,
        "ref_rejected_logps": ref_r,
    }
    trl_loss = trainer._compute_loss(FixedLogps({T: lp}), inputs, False)

    pc, pr = lp[:B].sum(1), lp[B:].sum(1)
    lc, lr = mask[:B].sum(1), mask[B:].sum(1)
    ours = (
        L.dpo(pc, pr, ref_c, ref_r, beta)
        if loss_type == "sigmoid"
        else L.ipo(pc, pr, ref_c, ref_r, lc, lr, beta)
    )
    assert abs(float(ours.losses.mean()) - float(trl_loss)) < 1e-6
    m = ours.metrics()
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert abs(m[key] - _last(trainer._metrics, key)) < 1e-6, key


def _cpo_self(loss_type: str, beta: float, label_smoothing: float = 0.0, gamma: float = 0.5):
    """The settings TRL's CPOTrainer.cpo_loss reads (AlphaPO off)."""
    return SimpleNamespace(
        alpha=0.0, beta=beta, loss_type=loss_type, simpo_gamma=gamma, label_smoothing=label_smoothing,
        accelerator=SimpleNamespace(device=torch.device("cpu")),
    )  # fmt: skip


def _random_pairs(seed: int):
    gen = torch.Generator().manual_seed(seed)
    lc, lr = torch.randint(1, 12, (B,), generator=gen), torch.randint(1, 12, (B,), generator=gen)
    pc, pr = -torch.rand(B, generator=gen) * lc, -torch.rand(B, generator=gen) * 2 * lr
    rc, rr = -torch.rand(B, generator=gen) * lc, -torch.rand(B, generator=gen) * 2 * lr
    return pc, pr, rc, rr, lc.float(), lr.float()


@pytest.mark.parametrize(("beta", "eps"), [(0.1, 0.1), (0.5, 0.3), (0.2, 0.0)])
def test_conservative_dpo_equals_trl_label_smoothed_sigmoid(beta, eps):
    from trl.experimental.cpo import CPOTrainer

    pc, pr, rc, rr, _, _ = _random_pairs(1)
    ours = L.cdpo(pc, pr, rc, rr, beta, eps)
    # cpo_loss's sigmoid is cDPO's formula on the two inputs' difference: hand it the log-ratios
    losses, chosen, rejected = CPOTrainer.cpo_loss(_cpo_self("sigmoid", beta, eps), pc - rc, pr - rr)
    assert torch.allclose(ours.losses, losses, atol=1e-6, rtol=0)
    assert torch.allclose(ours.chosen_rewards, chosen, atol=1e-6, rtol=0)
    assert torch.allclose(ours.rejected_rewards, rejected, atol=1e-6, rtol=0)
    if eps == 0.0:
        assert torch.allclose(L.dpo(pc, pr, rc, rr, beta).losses, losses, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("beta", "gamma", "eps"), [(2.0, 0.5, 0.0), (2.5, 1.4, 0.0), (2.0, 1.0, 0.1)])
def test_simpo_equals_trl_cpo_trainer_simpo(beta, gamma, eps):
    from trl.experimental.cpo import CPOTrainer

    pc, pr, _, _, lc, lr = _random_pairs(2)
    ours = L.simpo(pc, pr, lc, lr, beta, gamma, eps)
    # CPOTrainer feeds SimPO the per-token average log-probs
    losses, chosen, rejected = CPOTrainer.cpo_loss(_cpo_self("simpo", beta, eps, gamma), pc / lc, pr / lr)
    assert torch.allclose(ours.losses, losses, atol=1e-6, rtol=0)
    assert torch.allclose(ours.chosen_rewards, chosen, atol=1e-6, rtol=0)
    assert torch.allclose(ours.rejected_rewards, rejected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("beta", [0.1, 0.25])
def test_orpo_equals_trl_odds_ratio_loss_plus_nll(beta):
    from trl.experimental.orpo import ORPOTrainer

    pc, pr, _, _, lc, lr = _random_pairs(3)
    pc = torch.cat([pc, torch.tensor([-1e-3, -30.0])])  # both branches of log(1 - exp(x))
    pr = torch.cat([pr, torch.tensor([-0.2, -1e-4])])
    lc, lr = torch.cat([lc, torch.ones(2)]), torch.cat([lr, torch.ones(2)])
    settings = SimpleNamespace(beta=beta, accelerator=SimpleNamespace(device=torch.device("cpu")))
    trl_or, chosen, rejected, _, _ = ORPOTrainer.odds_ratio_loss(settings, pc / lc, pr / lr)
    nll = torch.tensor(1.7)  # TRL's chosen NLL (a batch mean); its loss is nll - mean(or)
    ours = L.orpo(pc, pr, lc, lr, beta, nll=nll)
    assert abs(float(ours.losses.mean()) - float(nll - trl_or.mean())) < 1e-6
    assert torch.allclose(ours.chosen_rewards, chosen, atol=1e-6, rtol=0)
    assert torch.allclose(ours.rejected_rewards, rejected, atol=1e-6, rtol=0)
    default = L.orpo(pc, pr, lc, lr, beta)  # the per-pair response NLL
    assert torch.allclose(default.losses, -pc / lc - trl_or, atol=1e-6, rtol=0)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_kto_equals_trl_kto_trainer_with_the_batch_kl_estimate(hf, tmp_path, beta):
    from trl import KTOConfig, KTOTrainer

    data = hf.Dataset.from_dict(
        {
            "prompt": ["w1 w2", "w3", "w4"],
            "completion": [" w5", " w6 w7", " w8"],
            "label": [True, False, True],
        }
    )
    trainer = _trainer(
        KTOTrainer, KTOConfig, hf, tmp_path, data, beta=beta, desirable_weight=1.3, undesirable_weight=0.8
    )
    assert trainer.calculate_KL
    n, t_kl = 8, T + 2
    gen = torch.Generator().manual_seed(int(beta * 100))
    mask, kl_mask = _completion_mask(gen, n), torch.zeros(n, t_kl, dtype=torch.long)
    kl_mask[:, 2:] = 1
    lp, kl_lp = _per_token_logps(gen, mask), _per_token_logps(gen, kl_mask)
    label = torch.tensor([True, False, True, True, False, False, True, False])
    ref, ref_kl = -torch.rand(n, generator=gen) * 8, -torch.rand(n, generator=gen) * 6 - 10
    inputs = {
        "input_ids": torch.ones(n, T, dtype=torch.long), "attention_mask": torch.ones(n, T, dtype=torch.long),
        "completion_mask": mask, "label": label, "ref_logps": ref, "ref_KL_logps": ref_kl,
        "KL_input_ids": torch.ones(n, t_kl, dtype=torch.long),
        "KL_attention_mask": torch.ones(n, t_kl, dtype=torch.long), "KL_completion_mask": kl_mask,
    }  # fmt: skip
    trl_loss = trainer._compute_loss(FixedLogps({T: lp, t_kl: kl_lp}), inputs, False)
    ours = L.kto(lp.sum(1), ref, label, kl_lp.sum(1), ref_kl, beta, 1.3, 0.8)
    assert float((kl_lp.sum(1) - ref_kl).mean()) > 0  # the KL estimate is not clamped away
    assert abs(float(ours.losses.mean()) - float(trl_loss)) < 1e-6
    m = ours.metrics()
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert abs(m[key] - _last(trainer._metrics, key)) < 1e-6, key


def test_bradley_terry_is_the_logistic_pairwise_loss_with_an_optional_margin():
    c, r = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.0, 0.5, 2.0])
    out = L.bradley_terry(c, r)
    want = [math.log1p(math.exp(-(a - b))) for a, b in zip(c.tolist(), r.tolist(), strict=True)]
    assert torch.allclose(out.losses, torch.tensor(want), atol=1e-6)
    assert out.metrics()["rewards/accuracies"] == pytest.approx(1 / 3)
    m = torch.tensor([0.5, 0.0, 1.0])
    assert torch.allclose(L.bradley_terry(c, r, m).losses, L.bradley_terry(c - m, r).losses)
