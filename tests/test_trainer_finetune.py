"""The Trainer driven by a second, non-pretraining user: a toy masked-loss finetune (project issue 19).

A tiny model is saved as a model dir; a finetune starts from it (`Hooks.init_from`), swaps the
attention Linears for LoRA-like wrappers (`Hooks.transform`), trains only their low-rank matrices
(`Hooks.trainable`) on a loss masked to each sequence's second half, evaluates held-out batches
(`Hooks.evaluate`) and keeps a call counter in its checkpoints (`Hooks.extra_state`). Pinned: the
transformed model starts equal to the saved one; only the lora_ tensors train, the base stays bitwise
the saved weights; the loss goes down; a run SIGKILLed mid-way and rerun in the same dir gives the
uninterrupted run's per-step losses, val_loss, final weights and extra state bit for bit.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from danlu.model.config import ModelConfig
from danlu.model.transformer import build_meta, build_model, materialize
from danlu.model_dir import MODEL_FILE, load_model, load_tokenizer, read_model_config, save_model_dir
from danlu.train.config import TrainConfig
from danlu.train.losses import IGNORE_INDEX
from danlu.train.optim import build_optimizer
from danlu.train.trainer import Hooks, LossOutput, RunInfo, Trainer

SEQ, RANK, SCALE, N_TRAIN, N_VAL = 16, 4, 16.0, 32, 8  # 32 rows of batch 4: 12 steps cross an epoch at step 8
ANSWERS = torch.tensor([10, 20, 30, 40])  # the response vocabulary, nothing special to the base model
CFG = TrainConfig(
    seq_len=SEQ, batch_size=4, max_steps=12, lr=1e-2, warmup_steps=2, eval_every=4, ckpt_every=4,
    log_every=1, device="cpu", dtype="fp32", seed=3,
)  # fmt: skip


class LoRALinear(nn.Module):
    """A frozen base Linear plus a trainable low-rank update: base(x) + x A^T B^T * scale (B starts 0)."""

    def __init__(self, base: nn.Linear, rank: int, scale: float, gen: torch.Generator):
        super().__init__()
        self.base, self.scale = base, scale
        dev = base.weight.device
        self.lora_A = nn.Parameter((torch.randn(rank, base.in_features, generator=gen) / rank).to(dev))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=dev))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scale


def lora(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    for name, m in list(model.named_modules()):
        if name.endswith(("attn.qkv", "attn.proj")) and isinstance(m, nn.Linear):
            parent, attr = name.rsplit(".", 1)
            setattr(model.get_submodule(parent), attr, LoRALinear(m, RANK, SCALE, gen))
    return model


def masked_batch(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of rows [B, SEQ+1]: next-token targets only on the "response" second half."""
    x, y = rows[:, :-1], rows[:, 1:].clone()
    y[:, : SEQ // 2] = IGNORE_INDEX
    return x, y


def masked_loss(model: nn.Module, batch) -> LossOutput:
    x, y = batch
    logits = model(x)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return LossOutput(loss, int((y != IGNORE_INDEX).sum()), None, {})


class Examples:
    """An endless, resumable stream: a seeded permutation of fixed rows per epoch; (epoch, index) is
    its position."""

    def __init__(self, rows: torch.Tensor, batch_size: int, seed: int):
        self.rows, self.bs, self.seed = rows, batch_size, seed
        self.epoch, self.i = 0, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "i": self.i}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.i = state["epoch"], state["i"]

    def __iter__(self):
        while True:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.rows), generator=gen)
            while self.i + self.bs <= len(self.rows):
                idx = order[self.i : self.i + self.bs]
                self.i += self.bs
                yield masked_batch(self.rows[idx])
            self.epoch, self.i = self.epoch + 1, 0


class Counter:
    """Extra state: loss_fn calls so far (one per step here)."""

    def __init__(self) -> None:
        self.calls = 0

    def state_dict(self) -> dict:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = state["calls"]


@torch.no_grad()
def evaluate(model: nn.Module, rows: torch.Tensor) -> dict[str, float]:
    was_training = model.training
    model.eval()
    outs = [masked_loss(model, masked_batch(rows[i : i + 4])) for i in range(0, len(rows), 4)]
    model.train(was_training)
    return {"val_loss": sum(float(o.loss_sum) for o in outs) / sum(o.n_tokens for o in outs)}


def build(root: Path, out_dir: Path, cfg: TrainConfig = CFG) -> tuple[Trainer, Counter]:
    """The finetune stage as a builder over the Trainer (what a finetune module would hold)."""
    base = root / "base"
    model_cfg, tok = read_model_config(base), load_tokenizer(base)
    rows = torch.load(root / "rows.pt")
    counter = Counter()

    def loss_fn(model: nn.Module, batch) -> LossOutput:
        counter.calls += 1
        return masked_loss(model, batch)

    hooks = Hooks(
        transform=lora,
        trainable=lambda name, p: "lora_" in name,
        evaluate=lambda m: evaluate(m, rows[N_TRAIN:]),
        extra_state={"counter": counter},
        init_from=base,
    )
    run = RunInfo(out_dir, model_cfg, base / "tokenizer", tok.fingerprint(), cfg, name="finetune")
    model = materialize(build_meta(model_cfg), "cpu", init=False)  # init_from (or a resume) fills it
    trainer = Trainer(
        model, lambda m: build_optimizer(m, cfg), Examples(rows[:N_TRAIN], cfg.batch_size, cfg.seed),
        loss_fn, cfg, run, torch.device("cpu"), "fp32", hooks,
    )  # fmt: skip
    return trainer, counter


@pytest.fixture(scope="module")
def root(tmp_path_factory, word_lines) -> Path:
    """A tiny seeded base model saved as a model dir, and the token rows the finetune reads."""
    from danlu.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("finetune")
    tok = Tokenizer.train(word_lines(200, seed=1), 300)
    tok.save(root / "tokenizer")
    ids = torch.tensor([i for line in word_lines(200, seed=2) for i in tok.encode(line + ".")])
    n = (N_TRAIN + N_VAL) * (SEQ + 1)
    assert len(ids) >= n
    rows = ids[:n].view(N_TRAIN + N_VAL, SEQ + 1).clone()  # prompts: text; responses: ANSWERS tokens
    pick = torch.randint(0, len(ANSWERS), (len(rows), SEQ // 2), generator=torch.Generator().manual_seed(5))
    rows[:, SEQ // 2 + 1 :] = ANSWERS[pick]
    torch.save(rows, root / "rows.pt")
    torch.manual_seed(11)
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=2, max_seq_len=SEQ, vocab_size=tok.vocab_size)
    save_model_dir(root / "base", build_model(cfg), cfg, root / "tokenizer")
    return root


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the child sets the same: bitwise equality needs equal thread counts
    yield
    torch.set_num_threads(n)


def _curve(out: Path) -> tuple[list, list]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in recs if "loss" in r], [
        (r["step"], r["val_loss"]) for r in recs if "val_loss" in r
    ]


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_lora_finetune_trains_only_the_adapter_from_the_saved_model(root, tmp_path):
    trainer, _ = build(root, tmp_path / "run")
    x, _ = masked_batch(torch.load(root / "rows.pt")[:4])
    saved, _, _ = load_model(root / "base")
    with torch.no_grad():
        assert torch.equal(trainer.model(x), saved(x))  # B = 0: the adapter starts as the identity
    names = [n for n, _ in trainer.model.named_parameters()]
    trains = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trains == [n for n in names if "lora_" in n] and len(trains) == 2 * 2 * 2
    before, val0 = _state(trainer), evaluate(trainer.model, torch.load(root / "rows.pt")[N_TRAIN:])
    result = trainer.fit()
    after = _state(trainer)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == set(trains)
    base = load_file(str(root / "base" / MODEL_FILE))
    for k, v in base.items():  # every base tensor, under its wrapped name, is the saved one bit for bit
        assert torch.equal(after[k.replace(".qkv.", ".qkv.base.").replace(".proj.", ".proj.base.")], v), k
    losses = [loss for _, loss in _curve(tmp_path / "run")[0]]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.1
    assert result["val_loss"] < val0["val_loss"] - 0.1
    # the final checkpoint holds the transformed model: load_model with the same transform reads it
    ckpt, _, _ = load_model(tmp_path / "run" / "checkpoints" / "step-000012", transform=lora)
    with torch.no_grad():
        assert torch.equal(ckpt(x), trainer.model.eval()(x))


# The child builds the same finetune and SIGKILLs itself in the loss of step 7 (after checkpoint 4).
_CHILD = r"""
import os, pickle, signal, sys, torch
torch.set_num_threads(1)
tests, root, out = pickle.loads(bytes.fromhex(sys.argv[1]))
sys.path.insert(0, tests)
from test_trainer_finetune import build
trainer, counter = build(root, out)
inner = trainer.loss_fn
def loss_fn(model, batch):
    if counter.calls == 6:
        os.kill(os.getpid(), signal.SIGKILL)
    return inner(model, batch)
trainer.loss_fn = loss_fn
trainer.fit()
"""


def test_finetune_killed_and_resumed_matches_the_uninterrupted_run(root, tmp_path):
    full, full_counter = build(root, tmp_path / "full")
    full_result = full.fit()
    assert full_counter.calls == 12

    killed = tmp_path / "killed"
    arg = pickle.dumps((str(Path(__file__).parent), root, killed)).hex()
    proc = subprocess.run([sys.executable, "-c", _CHILD, arg], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert sorted(p.name for p in (killed / "checkpoints").glob("step-*")) == ["step-000004"]

    resumed, counter = build(root, killed)
    assert resumed.state.step == 4 and counter.calls == 4  # extra state restored from checkpoint 4
    result = resumed.fit()
    assert counter.calls == 12
    state = json.loads((killed / "checkpoints" / "step-000012" / "trainer_state.json").read_text())
    assert state["extra"] == {"counter": {"calls": 12}}

    assert _curve(killed) == _curve(tmp_path / "full")  # same losses at the same steps, bit for bit
    assert [s for s, _ in _curve(killed)[0]] == list(range(1, 13))
    assert result["val_loss"] == full_result["val_loss"]
    a, b = _state(resumed), _state(full)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_frozen_weights_count_four_flops_per_token_not_six(root, tmp_path):
    """MFU of a LoRA run: a frozen base weight gets no weight gradient, so it costs 4 FLOPs a token."""
    base = root / "base"
    model_cfg = read_model_config(base)
    full = float(build_meta(model_cfg).flops_per_token(CFG.seq_len))
    hooks = Hooks(transform=lora, trainable=lambda name, p: "lora_" in name, init_from=base)
    run = RunInfo(
        tmp_path / "r", model_cfg, base / "tokenizer", load_tokenizer(base).fingerprint(), CFG, name="ft"
    )
    rows = torch.load(root / "rows.pt")
    trainer = Trainer(
        materialize(build_meta(model_cfg), "cpu", init=False), lambda m: build_optimizer(m, CFG),
        Examples(rows[:N_TRAIN], CFG.batch_size, CFG.seed), masked_loss, CFG, run, torch.device("cpu"),
        "fp32", hooks, flops_per_token=full,
    )  # fmt: skip
    linears = [m for m in trainer.model.modules() if isinstance(m, nn.Linear)]
    assert linears and not any(m.weight.requires_grad for m in linears)  # every Linear is a frozen base
    assert trainer.flops_per_token == full - 2 * sum(m.weight.numel() for m in linears)
    assert 0.6 * full < trainer.flops_per_token < full
