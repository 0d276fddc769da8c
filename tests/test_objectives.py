"""Pretraining objectives: each transform against its definition, its attention mask's effect on the
model, and a few training steps of each on a tiny corpus (with exact resume)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from danlu.errors import ConfigError, TokenizerError
from danlu.model import build_model, resolve_model_config
from danlu.model.config import ModelConfig
from danlu.recipe import RecipeConfig
from danlu.tokenizer import Tokenizer
from danlu.train import pretrain as loop
from danlu.train.config import TrainConfig
from danlu.train.losses import IGNORE_INDEX
from danlu.train.metrics import read_metrics
from danlu.train.objectives import Objective, prefix_mask


@pytest.fixture(scope="module")
def tok(tiny_packed) -> Tokenizer:
    return Tokenizer.load(tiny_packed[1])


def _batch(tok: Tokenizer, B: int = 8, T: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed-looking rows: <|bos|> text <|eos|> documents of random lengths."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(B):
        row: list[int] = []
        while len(row) < T + 1:
            n = int(torch.randint(3, 30, (1,), generator=g))
            row += [tok.bos_id, *torch.randint(40, tok.vocab_size, (n,), generator=g).tolist(), tok.eos_id]
        rows.append(row[: T + 1])
    w = torch.tensor(rows)
    return w[:, :-1], w[:, 1:]


def test_mlm_chooses_15_percent_with_80_10_10(tok):
    x, y = _batch(tok, B=64, T=128)
    out = Objective("mlm", tok)(x, y, step=3)
    chosen = out.targets != IGNORE_INDEX
    text = x >= 27
    assert not (chosen & ~text).any()  # special tokens are never predicted
    assert torch.equal(out.targets[chosen], x[chosen])  # predicted at their own position
    assert abs(chosen.sum() / text.sum() - 0.15) < 0.01
    masked = out.inputs[chosen] == tok.special_tokens["<|mask|>"]
    kept = out.inputs[chosen] == x[chosen]
    n = chosen.sum()
    assert abs(masked.sum() / n - 0.8) < 0.03 and abs(kept.sum() / n - 0.1) < 0.03 + 0.01
    assert torch.equal(out.inputs[~chosen], x[~chosen])
    assert out.attn_mask.all()  # bidirectional
    again = Objective("mlm", tok)(x, y, step=3)
    assert torch.equal(again.inputs, out.inputs)  # the same step draws the same masks


def test_prefix_lm_mask_and_targets(tok):
    x, y = _batch(tok, B=4, T=16)
    out = Objective("prefix_lm", tok, seed=1)(x, y, step=0)
    mask = out.attn_mask[:, 0]
    for b in range(4):
        prefix = int(mask[b, 0].sum())  # query 0 sees exactly the prefix
        for i in range(16):
            for j in range(16):
                assert bool(mask[b, i, j]) == (j <= i or j < prefix)
        ignored = (out.targets[b] == IGNORE_INDEX).nonzero().flatten().tolist()
        assert ignored == list(range(prefix - 1))  # no loss on predicting tokens inside the prefix


def test_prefix_mask_changes_what_the_model_sees():
    cfg = resolve_model_config(ModelConfig(n_layer=2, n_embd=32, n_head=2, max_seq_len=16), 50)
    m = build_model(cfg).eval()
    x = torch.randint(0, 50, (1, 10))
    changed = x.clone()
    changed[0, 3] = (x[0, 3] + 1) % 50
    mask = prefix_mask(torch.tensor([5]), 10)
    with torch.no_grad():
        a, b = m(x, attn_mask=mask), m(changed, attn_mask=mask)
    assert not torch.allclose(a[0, 0], b[0, 0])  # position 0 sees position 3 inside the prefix
    changed = x.clone()
    changed[0, 7] = (x[0, 7] + 1) % 50
    with torch.no_grad():
        c = m(changed, attn_mask=mask)
    assert torch.equal(a[0, :7], c[0, :7])  # after the prefix attention stays causal


def _undo_fim(seq: list[int], tok: Tokenizer) -> list[int]:
    fp, fs, fm = (tok.special_tokens[f"<|fim_{p}|>"] for p in ("prefix", "suffix", "middle"))
    out, i = [], 0
    while i < len(seq):
        if seq[i] != fp:
            out.append(seq[i])
            i += 1
            continue
        if tok.eos_id not in seq[i:]:
            break  # the window cut this document: only complete ones can be restored
        end = seq.index(tok.eos_id, i)
        doc = seq[i:end]
        if doc[1] == fs:  # SPM: fp fs suf fm pre mid
            k = doc.index(fm)
            suf, pre_mid = doc[2:k], doc[k + 1 :]
            out += pre_mid + suf
        else:  # PSM: fp pre fs suf fm mid
            a, k = doc.index(fs), doc.index(fm)
            out += doc[1:a] + doc[k + 1 :] + doc[a + 1 : k]
        i = end
    return out


def test_fim_rearranges_documents_and_can_be_undone(tok):
    x, y = _batch(tok, B=16, T=96)
    window = torch.cat([x, y[:, -1:]], 1)
    out = Objective("fim", tok, fim_rate=1.0, fim_spm_rate=0.5)(x, y, step=0)
    seq = torch.cat([out.inputs, out.targets[:, -1:]], 1)
    assert seq.shape == window.shape and out.attn_mask is None
    fp = tok.special_tokens["<|fim_prefix|>"]
    assert (seq == fp).sum() > 16  # most documents were rearranged
    spm = psm = 0
    for row, orig in zip(seq.tolist(), window.tolist(), strict=True):
        restored = _undo_fim(row, tok)
        assert len(restored) > 40 and restored == orig[: len(restored)]
        for i, t in enumerate(row[:-1]):
            if t == fp:
                spm += row[i + 1] == tok.special_tokens["<|fim_suffix|>"]
                psm += row[i + 1] != tok.special_tokens["<|fim_suffix|>"]
    assert spm > 0 and psm > 0
    plain = Objective("fim", tok, fim_rate=0.0)(x, y, step=0)
    assert torch.equal(plain.inputs, x) and torch.equal(plain.targets, y)


def test_span_corruption_reconstructs_and_masks(tok):
    x, y = _batch(tok, B=4, T=127)
    obj = Objective("span", tok, span_noise=0.15, span_mean=3.0)
    out = obj(x, y, step=5)
    window = torch.cat([x, y[:, -1:]], 1)
    n, n_noise, n_spans = obj._span_sizes(128)
    assert n_noise == round(0.15 * n) and n_spans == round(n_noise / 3)
    prefix = n - n_noise + n_spans
    sentinels = obj.sentinels
    for b in range(4):
        seq = torch.cat([out.inputs[b], out.targets[b, -1:]]).tolist()
        corrupted, targets = seq[:prefix], seq[prefix : n + 2 * n_spans]
        spans: dict[int, list[int]] = {}
        for t in targets:
            if t in sentinels:
                current = spans.setdefault(t, [])
            else:
                current.append(t)
        restored = [tok for t in corrupted for tok in (spans[t] if t in sentinels else [t])]
        assert restored == window[b, :n].tolist()
        assert sum(len(s) for s in spans.values()) == n_noise and len(spans) == n_spans
        loss_at = (out.targets[b] != IGNORE_INDEX).nonzero().flatten().tolist()
        assert loss_at == list(range(prefix - 1, n + 2 * n_spans - 1))  # the targets, no padding
    assert out.attn_mask[0, 0, 0].sum() == prefix  # the corrupted text is a bidirectional prefix


def test_objectives_need_their_tokens(tiny_packed):
    old = Tokenizer.load(tiny_packed[1])
    old.special_tokens = {k: v for k, v in old.special_tokens.items() if "mask" not in k}
    with pytest.raises(TokenizerError, match="no <\\|mask\\|> token"):
        Objective("mlm", old)
    with pytest.raises(ConfigError, match=r"train\.objective"):
        TrainConfig(objective="clm")


@pytest.mark.parametrize("objective", ["mlm", "prefix_lm", "fim", "span"])
def test_each_objective_trains_and_resumes_exactly(tiny_packed, tmp_path, objective):
    tokens, tok_dir = tiny_packed
    train = TrainConfig(
        seq_len=32, batch_size=4, max_steps=8, lr=3e-3, warmup_steps=2, eval_every=4, eval_batches=2,
        ckpt_every=4, log_every=1, device="cpu", seed=7, objective=objective, label_smoothing=0.1,
        schedule="constant",  # the same LR at every step whatever max_steps, so the halves match
    )  # fmt: skip
    cfg = RecipeConfig(model=ModelConfig(n_layer=2, n_embd=32, n_head=2, max_seq_len=32), train=train)
    straight = loop.run_pretrain(cfg, tokens, tok_dir, tmp_path / "straight")
    half = dataclasses.replace(cfg, train=dataclasses.replace(train, max_steps=4))
    loop.run_pretrain(half, tokens, tok_dir, tmp_path / "two")
    resumed = loop.run_pretrain(cfg, tokens, tok_dir, tmp_path / "two")
    losses = [r["loss"] for r in read_metrics(tmp_path / "straight" / "metrics.jsonl") if "loss" in r]
    assert losses[-1] < losses[0]
    assert resumed["val_loss"] == straight["val_loss"]
