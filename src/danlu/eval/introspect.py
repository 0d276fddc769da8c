"""Looking inside a model: hidden states per layer, attention probabilities, and the logit lens.

`trace` runs one forward pass with hooks: a hook on the embedding and on every block records the
residual stream (the embedding output, then each block's output), and a pre-hook on every attention
module recomputes its attention probabilities from the module's own input and weights, because the
fused SDPA kernel never materializes them. The recomputation follows `Attention.forward` step for step
(QK-norm, RoPE, grouped-query heads, the causal or additive mask of `attention_bias`), and the tests
check that probabilities times values, projected, give back the module's own output.

The logit lens (nostalgebraist 2020) reads every layer's residual stream through the final norm and
the unembedding, so the last layer's lens is the model's own output distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from danlu.errors import ConfigError
from danlu.model.transformer import Attention, apply_rope


@dataclass(frozen=True)
class Trace:
    tokens: list[int]
    hidden: list[torch.Tensor]  # n_layer + 1 tensors [T, d]: embedding output, then each block's output
    attention: list[torch.Tensor]  # n_layer tensors [H, T, T] (empty when not asked for)
    logits: torch.Tensor  # [T, vocab]


def attention_qkv(
    attn: Attention, x: torch.Tensor, rope: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [B, H, T, hd] and k, v with their key/value heads repeated to H, as `Attention.forward` makes them."""
    B, T, _ = x.shape
    nq, nkv, hd = attn.n_head, attn.n_kv_head, attn.head_dim
    q, k, v = attn.qkv(x).view(B, T, nq + 2 * nkv, hd).split((nq, nkv, nkv), dim=2)
    if attn.q_norm is not None and attn.k_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if nkv != nq:  # SDPA's enable_gqa: query head i reads key/value head i // (nq / nkv)
        k, v = k.repeat_interleave(nq // nkv, dim=1), v.repeat_interleave(nq // nkv, dim=1)
    return q, k, v


def attention_probs(q: torch.Tensor, k: torch.Tensor, bias: tuple[torch.Tensor | None, bool]) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd) + mask) [B, H, T, S], with the (mask, is_causal) pair SDPA gets."""
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.size(-1))
    mask, causal = bias
    T, S = scores.shape[-2:]
    if causal:
        scores = scores.masked_fill(
            ~torch.ones(T, S, dtype=torch.bool, device=q.device).tril(), float("-inf")
        )
    if mask is not None:
        scores = (
            scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
        )
    return torch.softmax(scores, dim=-1)


@torch.no_grad()
def trace(model: nn.Module, ids: list[int], attention: bool = True) -> Trace:
    """Hidden states (and attention probabilities) of one sequence, from one forward pass."""
    if not ids:
        raise ConfigError("the prompt is empty; give at least one token")
    context = model.cfg.max_seq_len
    if len(ids) > context:
        raise ConfigError(f"the prompt has {len(ids)} tokens, more than the model's context of {context}")
    hidden: list[torch.Tensor] = []
    probs: list[torch.Tensor] = []

    def keep_output(_m: nn.Module, _args: Any, out: Any) -> None:
        hidden.append((out[0] if isinstance(out, tuple) else out)[0].detach().float())

    def keep_attention(m: nn.Module, args: Any) -> None:
        x, _layer, rope, bias = args[:4]
        q, k, _ = attention_qkv(m, x, rope)
        probs.append(attention_probs(q, k, bias)[0])

    handles = [model.embed.register_forward_hook(keep_output)]
    for block in model.blocks:
        handles.append(block.register_forward_hook(keep_output))
        if attention:
            handles.append(block.attn.register_forward_pre_hook(keep_attention))
    try:
        device = next(model.parameters()).device
        logits = model(torch.tensor([ids], device=device))[0].float()
    finally:
        for h in handles:
            h.remove()
    if getattr(model.cfg, "pos", "") == "learned":  # the lens sees what the first block sees
        hidden[0] = hidden[0] + model.pos_embed.weight[: len(ids)].float()
    return Trace(list(ids), hidden, probs, logits)


@torch.no_grad()
def logit_lens(model: nn.Module, hidden: list[torch.Tensor]) -> torch.Tensor:
    """Log-probabilities [n_layer + 1, T, vocab] of each layer's residual stream read by the output head."""
    weight = model.lm_head.weight
    h = torch.stack(hidden).to(weight.dtype)
    logits = model.lm_head(model.norm(h)).float()
    cap = getattr(model.cfg, "logit_softcap", 0.0)
    if cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return torch.log_softmax(logits, dim=-1)


def lens_table(tok: Any, lens: torch.Tensor, position: int = -1, k: int = 5) -> list[dict[str, Any]]:
    """Per layer: the top-k tokens at `position` with their probabilities, and the rank there of the
    final layer's top token (0: the layer already predicts what the model outputs)."""
    final_top = int(lens[-1, position].argmax())
    rows = []
    for layer, logp in enumerate(lens[:, position]):
        top = torch.topk(logp, k)
        rows.append(
            {
                "layer": layer,
                "top": [
                    (tok.decode([int(i)]), float(p.exp()))
                    for p, i in zip(top.values, top.indices, strict=True)
                ],
                "final_token_rank": int((logp > logp[final_top]).sum()),
                "final_token_prob": float(logp[final_top].exp()),
            }
        )
    return rows


def format_lens(rows: list[dict[str, Any]]) -> str:
    lines = ["| layer | top tokens (probability) | rank of the output token |", "|---|---|---|"]
    for r in rows:
        tops = ", ".join(f"{t!r} {p:.2f}" for t, p in r["top"])
        name = "embed" if r["layer"] == 0 else str(r["layer"])
        lines.append(f"| {name} | {tops} | {r['final_token_rank']} |")
    return "\n".join(lines)


def plot_attention(probs: torch.Tensor, labels: list[str], path: str | Path, title: str) -> Path:
    """One layer's heads [H, T, T] as a row of heatmaps (query rows, key columns) in a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from danlu.io import atomic_path

    H, T, _ = probs.shape
    cols = min(H, 4)
    rows = math.ceil(H / cols)
    side = max(3.0, 0.22 * T)
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols, side * rows), squeeze=False)
    for h in range(rows * cols):
        ax = axes[h // cols][h % cols]
        if h >= H:
            ax.axis("off")
            continue
        ax.imshow(probs[h].cpu().numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_title(f"head {h}", fontsize=9)
        ticks = range(T) if T <= 48 else range(0, T, max(1, T // 24))
        ax.set_xticks(list(ticks), [labels[i] for i in ticks], rotation=90, fontsize=6)
        ax.set_yticks(list(ticks), [labels[i] for i in ticks], fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return path
