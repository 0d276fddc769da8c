"""Prompt tuning, prefix tuning and bottleneck adapters: model transforms for the one Trainer.

Each wraps the model (or some of its Linears) from outside, keeps the base frozen, and names its own
parameters so that `trainable_name` picks them out:

    prompt      Lester et al. 2021: n trainable input embeddings before every row. The wrapper puts n
                placeholder ids in front of the batch, a hook on the embedding swaps in the prompt, and
                the logits of the placeholders are dropped: the model's outputs keep their shape.
    prefix      Li & Liang 2021: n trainable keys and values per layer that every query attends to,
                handed to the model as a read-only KV cache (`PrefixKV`); initialized with the model's
                own keys and values of n random tokens (their paper's init from real activations).
    bottleneck  Houlsby et al. 2019: after each sublayer's output projection (attn.proj, mlp.down),
                y + up(relu(down(y))) with up = 0, so the adapted model starts as the base.

With RoPE the tokens after a prompt or prefix sit at positions n.., which changes nothing within the
conversation (attention depends on distances). Packing is refused for prompt and prefix: a packed
conversation's distance to the prompt would depend on its place in the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from danlu.model.kv_cache import KVCache, Step

PROMPT_PARAM = "soft_prompt"
PREFIX_PARAMS = ("prefix_keys", "prefix_values")
BOTTLENECK_PARAMS = ("adapter_down", "adapter_up")


def trainable_name(name: str) -> bool:
    """Whether a parameter belongs to a prompt, prefix or bottleneck adapter."""
    parts = name.split(".")
    return any(p in parts for p in (PROMPT_PARAM, *PREFIX_PARAMS, *BOTTLENECK_PARAMS))


class _Wrapped(nn.Module):
    """A wrapper that reads as the model it wraps where the Trainer and reports look (cfg, flops)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def cfg(self) -> Any:
        return self.model.cfg

    def flops_per_token(self, seq_len: int) -> float:
        return self.model.flops_per_token(seq_len)  # type: ignore[operator]

    def _plain_call(self, cache: Any, attn_mask: Any) -> None:
        if cache is not None or attn_mask is not None:
            raise ValueError(f"a {type(self).__name__} model runs without a KV cache or attention mask")


class PromptTuned(_Wrapped):
    def __init__(self, model: nn.Module, n_tokens: int, seed: int = 0):
        super().__init__(model)
        self.n = n_tokens
        emb = model.embed.weight  # type: ignore[union-attr]
        # init from the embeddings of real tokens (Lester et al.: better than random vectors)
        ids = torch.randint(0, emb.size(0), (n_tokens,), generator=torch.Generator().manual_seed(seed))
        self.soft_prompt = nn.Parameter(emb.detach()[ids.to(emb.device)].clone())
        self._swap = False
        model.embed.register_forward_hook(self._embed_hook)  # type: ignore[union-attr]

    def _embed_hook(self, module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor | None:
        if not self._swap:
            return None
        prompt = self.soft_prompt.to(out.dtype).expand(out.size(0), -1, -1)
        return torch.cat([prompt, out[:, self.n :]], dim=1)

    def forward(
        self, idx: torch.Tensor, cache: Any = None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        self._plain_call(cache, attn_mask)
        placeholders = idx.new_zeros(idx.size(0), self.n)
        self._swap = True
        try:
            logits = self.model(torch.cat([placeholders, idx], dim=1))
        finally:
            self._swap = False
        return logits[:, self.n :]


class PrefixKV:
    """A read-only KV cache of n trained keys and values per layer: each forward's keys are the
    prefix followed by its own, and its queries sit at positions n.. (the Transformer's cache path)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, batch: int, max_len: int):
        self.keys, self.values = keys, values  # [L, n_kv_head, n, hd]
        self.n, self.batch, self.max_len = keys.size(2), batch, max_len
        self.step: Step | None = None

    def begin(self, rows: slice | None, T: int) -> Step:
        starts = torch.full((self.batch,), self.n, dtype=torch.long, device=self.keys.device)
        self.step = Step(slice(0, self.batch), starts, T, True, self.n, self.n + T)
        return self.step

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pk = self.keys[layer].to(k.dtype).expand(k.size(0), -1, -1, -1)
        pv = self.values[layer].to(v.dtype).expand(v.size(0), -1, -1, -1)
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)

    def finish(self) -> None:
        self.step = None


class PrefixTuned(_Wrapped):
    def __init__(self, model: nn.Module, n_tokens: int, seed: int = 0):
        super().__init__(model)
        cfg = model.cfg  # type: ignore[attr-defined]
        self.n = n_tokens
        emb = model.embed.weight  # type: ignore[union-attr]
        ids = torch.randint(0, emb.size(0), (1, n_tokens), generator=torch.Generator().manual_seed(seed))
        cache = KVCache.for_model(model, batch=1, max_len=n_tokens)
        with torch.no_grad():
            model(ids.to(emb.device), cache=cache)
        self.prefix_keys = nn.Parameter(cache.k[:, 0].clone().float())  # [L, n_kv_head, n, hd]
        self.prefix_values = nn.Parameter(cache.v[:, 0].clone().float())
        assert self.prefix_keys.size(0) == cfg.n_layer

    def forward(
        self, idx: torch.Tensor, cache: Any = None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        self._plain_call(cache, attn_mask)
        prefix = PrefixKV(self.prefix_keys, self.prefix_values, idx.size(0), self.cfg.max_seq_len)
        return self.model(idx, cache=prefix)  # type: ignore[arg-type]


class Bottleneck(nn.Module):
    """A sublayer's output Linear followed by a residual bottleneck: y + up(relu(down(y)))."""

    def __init__(self, base: nn.Module, width: int, gen: torch.Generator):
        super().__init__()
        self.base = base
        d = base.out_features
        device = base.weight.device  # type: ignore[union-attr]
        self.adapter_down = nn.Linear(d, width, device=device)
        self.adapter_up = nn.Linear(width, d, device=device)
        with torch.no_grad():
            bound = 1.0 / d**0.5  # nn.Linear's own bound, drawn from the seeded generator
            self.adapter_down.weight.copy_(torch.rand(width, d, generator=gen).mul_(2 * bound).sub_(bound))
            self.adapter_down.bias.zero_()
            self.adapter_up.weight.zero_()
            self.adapter_up.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y + self.adapter_up(F.relu(self.adapter_down(y)))


def apply_bottleneck(model: nn.Module, width: int, seed: int = 0) -> nn.Module:
    """Wrap attn.proj and mlp.down of every block in a Bottleneck; returns the model."""
    gen = torch.Generator().manual_seed(seed)
    for block in model.blocks:  # type: ignore[union-attr]
        for parent in (block.attn, block.mlp):
            name = "proj" if parent is block.attn else "down"
            layer = getattr(parent, name, None)
            if isinstance(layer, nn.Linear):
                setattr(parent, name, Bottleneck(layer, width, gen))
    return model


@dataclass(frozen=True)
class LightSpec:
    """One of the three methods and its size (virtual tokens, or bottleneck width)."""

    method: str
    size: int

    def apply(self, model: nn.Module, seed: int = 0) -> nn.Module:
        if self.method == "prompt":
            return PromptTuned(model, self.size, seed)
        if self.method == "prefix":
            return PrefixTuned(model, self.size, seed)
        if self.method == "bottleneck":
            return apply_bottleneck(model, self.size, seed)
        raise ValueError(f"unknown method {self.method!r}")
