"""A reward model: a danlu model whose LM head is replaced by a scalar head, read at the last token.

The score of a row is the head's output at its last scored token (the response's end of turn), as
HF's sequence-classification models read the last non-padding token. It trains with the
Bradley-Terry loss (danlu.align.losses.bradley_terry), full or with LoRA adapters (the head always
trains). Saved as a model dir: the body with its LM head (so every reader loads it as a language
model), `reward_head.safetensors` beside it and `"reward_model": {...}` in config.json;
`load_reward_model` reads it back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from danlu.errors import CheckpointError
from danlu.io import atomic_dir
from danlu.model.config import ModelConfig
from danlu.model_dir import CONFIG_FILE, load_model, read_metadata, write_model_files

HEAD_FILE = "reward_head.safetensors"


class RewardModel(nn.Module):
    """`scores(ids, mask)` [N]: the scalar head at each row's last scored token."""

    def __init__(self, body: nn.Module):
        super().__init__()
        n_embd = body.cfg.n_embd  # type: ignore[attr-defined]
        # kept outside the module tree: the body's own head, put back when saving
        self._lm_head = [body.lm_head]
        body.lm_head = nn.Linear(n_embd, 1, bias=True, device=body.embed.weight.device)  # type: ignore[union-attr]
        with torch.no_grad():
            body.lm_head.weight.normal_(0.0, 1.0 / (n_embd + 1) ** 0.5)  # as HF's score head
            body.lm_head.bias.zero_()
        self.body = body

    @property
    def head(self) -> nn.Linear:
        return self.body.lm_head  # type: ignore[return-value]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.body(ids)[..., 0]

    def scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        last = mask.shape[1] - 1 - mask.flip(1).argmax(1)
        return self(ids).gather(1, last[:, None]).squeeze(1)

    def language_model(self) -> nn.Module:
        """The body with its LM head back (the reward head is then in `head_state`)."""
        self.body.lm_head = self._lm_head[0]
        return self.body


def save_reward_model(
    path: Path, rm: RewardModel, model_cfg: ModelConfig, tokenizer_dir: Path, extra: dict[str, Any]
) -> Path:
    from safetensors.torch import save_file

    from danlu.config import to_dict

    head = {k: v.detach().clone().contiguous() for k, v in rm.head.state_dict().items()}
    body = rm.language_model()
    with atomic_dir(path) as tmp:
        meta = to_dict(model_cfg) | extra | {"reward_model": {"head": HEAD_FILE, "read": "last scored token"}}
        write_model_files(tmp, body, meta, tokenizer_dir)
        save_file(head, str(tmp / HEAD_FILE), metadata={"format": "pt"})
    return path


def load_reward_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[RewardModel, Any]:
    """(reward model in eval mode, tokenizer) from a dir save_reward_model wrote."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if "reward_model" not in read_metadata(path):
        raise CheckpointError(
            f"{path / CONFIG_FILE} does not describe a reward model (no 'reward_model' key)"
        )
    body, tok, _ = load_model(path, device)
    rm = RewardModel(body)
    try:
        rm.head.load_state_dict(load_file(str(path / HEAD_FILE), device=str(device)))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{path / HEAD_FILE} cannot be loaded ({str(e).splitlines()[0]})") from None
    return rm.eval(), tok
