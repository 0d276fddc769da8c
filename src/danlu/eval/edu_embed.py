"""Document embeddings from a danlu model dir: mean-pooled hidden states of chosen layers.

FineWeb-Edu's classifier is a linear head on an embedding model; here the embedding model is a danlu
model (the judge itself, SmolLM2-135M-Instruct, in the worked example). A document's embedding at
layer L is the mean over its tokens of the residual stream after block L (the last layer is taken
after the final norm, as the head sees it). The forward stops after the deepest requested layer, so
a head on a middle layer costs only that fraction of a full forward.

`model_dir_embedder` is the factory the run layer hands the data stage (data loads no models):
`model_dir_embedder(path, device)(texts) -> float32 [n, n_layers * n_embd]`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from danlu.errors import ConfigError


class _Deep(Exception):
    """Raised by the last wanted block's hook: the layers after it are not needed."""


class ModelEmbedder:
    """Mean-pooled hidden states of `layers` (1-based block indices, n_layer = after the final norm)."""

    def __init__(self, model: Any, tok: Any, layers: Sequence[int], max_tokens: int = 256) -> None:
        n_layer = model.cfg.n_layer
        if not layers or any(not 1 <= layer <= n_layer for layer in layers) or max_tokens < 1:
            raise ConfigError(
                f"embedding layers must be in 1..{n_layer} and max_tokens >= 1; got {list(layers)}, {max_tokens}"
            )
        self.model, self.tok, self.max_tokens = model, tok, max_tokens
        self.layers = sorted(set(int(x) for x in layers))
        self.dim = model.cfg.n_embd * len(self.layers)

    @classmethod
    def from_dir(
        cls, path: str | Path, layers: Sequence[int], device: str = "cpu", max_tokens: int = 256
    ) -> ModelEmbedder:
        from danlu.model_dir import load_model

        model, tok, _ = load_model(path, device)
        return cls(model, tok, layers, max_tokens)

    def _pooled(self, ids: list[int]) -> np.ndarray:
        model, wanted = self.model, self.layers
        got: dict[int, torch.Tensor] = {}
        calls = [0]

        def keep(_module: Any, _inputs: Any, output: Any) -> None:
            calls[0] += 1  # blocks may be shared across layers: count calls, not modules
            layer = calls[0]
            if layer in wanted:
                h = output[0][0]
                if layer == model.cfg.n_layer:
                    h = model.norm(h)
                got[layer] = h.float().mean(0)
            if layer == wanted[-1]:
                raise _Deep

        handles = [b.register_forward_hook(keep) for b in model.blocks]
        try:
            with torch.no_grad():
                model(torch.tensor([ids], device=next(model.parameters()).device))
        except _Deep:
            pass
        finally:
            for h in handles:
                h.remove()
        return torch.cat([got[layer] for layer in wanted]).cpu().numpy()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            ids = self.tok.encode(text)[: self.max_tokens]
            if ids:  # an empty text keeps the zero vector
                out[i] = self._pooled(ids)
        return out


def model_dir_embedder(
    path: str | Path, device: str = "cpu", layers: Sequence[int] = (), max_tokens: int = 256
) -> Callable[[Sequence[str]], np.ndarray]:
    """The embedder factory of the `edu_score` block (module-level, so worker processes receive it)."""
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        torch.set_num_threads(1)  # one pool worker per core, as model_dir_scorer does
    return ModelEmbedder.from_dir(path, layers, device, max_tokens)
