"""An educational-value regression head on document embeddings, as FineWeb-Edu's classifier is.

FineWeb-Edu trains a linear regression head on an embedding model's output to predict its judge's 0-5
scores. EduEmbeddingHead is that head: ridge regression on standardized embedding features (each
feature centred and scaled by its training standard deviation, so one l2 suits every layer), solved
in the dual (n annotations x n) since there are far fewer annotations than features; predictions are
clipped to [0, 5], or with link="logit" it fits logit(score / 5) and predicts 5 * sigmoid.

data loads no models: the embeddings come from a callable `embed(texts) -> [n, dim]` that the caller
injects (danlu.eval.edu_embed.model_dir_embedder for a danlu model dir, built from the embedding
settings the head's file records: model dir, layers, max_tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from danlu.data.quality_model import (
    DocScore,
    ScoreFilter,
    ScoreRankBlock,
    _check_modes,
    _load_npz,
    save_npz,
    score_block,
)
from danlu.errors import ConfigError, DataError

_FORMAT = "danlu-edu-embedding-head-1"
_LINKS = ("identity", "logit")
_EDGE = 1e-4  # logit link: scores are kept this far inside (0, 5)

Embed = Callable[[Sequence[str]], np.ndarray]
# (model dir, device, layers, max_tokens) -> embed; the run layer passes eval.edu_embed.model_dir_embedder
EmbedderFactory = Callable[..., Embed]


class EduEmbeddingHead:
    """Ridge regression of a 0-5 score on standardized embeddings; `embedding` records where the
    embeddings come from ({model, layers, max_tokens}), so a saved head can be used again."""

    def __init__(
        self, l2: float = 100.0, link: str = "identity", embedding: dict[str, Any] | None = None
    ) -> None:
        if l2 <= 0 or link not in _LINKS:
            raise ConfigError(f"EduEmbeddingHead: need l2 > 0 and link identity|logit; got {l2=}, {link=}")
        self.l2, self.link = l2, link
        self.embedding = dict(embedding or {})
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.weights: np.ndarray | None = None
        self.bias = 0.0

    def fit(self, x: np.ndarray, scores: Sequence[float]) -> EduEmbeddingHead:
        x, y = np.asarray(x, np.float64), np.asarray(scores, np.float64)
        if x.ndim != 2 or len(x) != len(y) or len(y) < 2:
            raise DataError(
                f"the edu head needs an [n, dim] embedding matrix and n >= 2 scores; got {x.shape}, {len(y)}"
            )
        if self.link == "logit":
            p = np.clip(y / 5.0, _EDGE, 1.0 - _EDGE)
            y = np.log(p / (1.0 - p))
        self.mean = x.mean(0)
        std = x.std(0)
        self.scale = np.where(std > 0, std, 1.0)  # a constant feature stays 0 instead of dividing by 0
        z = (x - self.mean) / self.scale
        alpha = np.linalg.solve(z @ z.T + self.l2 * np.eye(len(y)), y - y.mean())
        self.weights, self.bias = z.T @ alpha, float(y.mean())
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.weights is None or self.mean is None or self.scale is None:
            raise ConfigError("the edu head is not trained: call fit() or load() first")
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.weights):
            raise DataError(f"the edu head takes [n, {len(self.weights)}] embeddings, got {x.shape}")
        out = ((x - self.mean) / self.scale) @ self.weights + self.bias
        if self.link == "logit":
            return 5.0 / (1.0 + np.exp(-out))
        return np.clip(out, 0.0, 5.0)

    def save(self, path: str | Path) -> Path:
        if self.weights is None:
            raise ConfigError("the edu head is not trained: call fit() first")
        e = self.embedding
        return save_npz(
            path,
            _FORMAT,
            weights=self.weights,
            bias=self.bias,
            mean=self.mean,
            scale=self.scale,
            l2=self.l2,
            link=self.link,
            embed_model=str(e.get("model", "")),
            embed_layers=np.asarray(e.get("layers", []), np.int64),
            embed_max_tokens=int(e.get("max_tokens", 0)),
        )

    @classmethod
    def load(cls, path: str | Path) -> EduEmbeddingHead:
        keys = (
            "weights",
            "bias",
            "mean",
            "scale",
            "l2",
            "link",
            "embed_model",
            "embed_layers",
            "embed_max_tokens",
        )
        z = _load_npz(path, _FORMAT, keys)
        embedding = {
            "model": str(z["embed_model"]),
            "layers": [int(v) for v in z["embed_layers"]],
            "max_tokens": int(z["embed_max_tokens"]),
        }
        head = cls(float(z["l2"]), str(z["link"]), embedding)
        if not z["weights"].shape == z["mean"].shape == z["scale"].shape or z["weights"].ndim != 1:
            raise DataError(f"{path}: weights, mean and scale differ in shape; the file is damaged")
        head.weights, head.mean, head.scale = z["weights"], z["mean"], z["scale"]
        head.bias = float(z["bias"])
        return head


def is_edu_head(path: str | Path) -> bool:
    """Whether `path` is an EduEmbeddingHead file (else the edu_score block reads an EduRegressor)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return "format" in z.files and str(z["format"]) == _FORMAT
    except Exception:  # missing or not an .npz: the regressor's loader says what is wrong
        return False


def edu_head_block(
    model: str,
    embedder: EmbedderFactory | None,
    threshold: float | None = None,
    keep_top: float | None = None,
    annotate_only: bool = False,
    device: str = "cpu",
) -> ScoreFilter | ScoreRankBlock:
    """The `edu_score` block over an EduEmbeddingHead .npz; `embedder` builds the embedding callable
    from the settings the head recorded: embedder(model_dir, device, layers, max_tokens)."""
    options = {"threshold": threshold, "keep_top": keep_top, "annotate_only": annotate_only}
    _check_modes("edu_score", options, "a score", 5.0)
    head = EduEmbeddingHead.load(model)
    if embedder is None:
        raise ConfigError(
            f"edu_score: {model} is a head on model embeddings, and no embedder was given; run the data "
            "stage through `danlu run` / `danlu data`, which provide one"
        )
    e = head.embedding
    embed = embedder(e["model"], device, e["layers"], e["max_tokens"])
    return score_block(
        DocScore("edu_score", "edu_score", "low_edu_score", True, lambda texts: head.predict(embed(texts))),
        threshold,
        keep_top,
    )
