"""The RL methods of the align stage (align.method ppo or grpo) on the one Trainer.

The Trainer's batch stream is a `RolloutStream`: when its minibatches run out it samples the next
rollout with the current policy (danlu.align.rollout: the batched engine, one seed per completion
derived from the seed and the rollout's index), scores it (ppo: the reward model and the KL
penalty; grpo: verifiable rewards), and yields epochs x minibatches minibatches of it, one per
optimizer step. Checkpoints fall between rollouts (train.max_steps and train.ckpt_every are
multiples of a rollout's steps), so a resumed run restores the weights, the optimizer, the rollout
index and the KL coefficient and samples the very rollout the uninterrupted run sampled.

The reference is the base model: the policy with its LoRA adapters disabled, or (tune=full) a frozen
copy. Held-out evaluation: ppo samples the held-out prompts with fixed seeds and reports the
reward model's mean score (val_reward) and the KL to the reference (val_kl); grpo decodes the
held-out problems greedily and reports exact match (val_exact_match) and format (val_format).
val_loss is the negative of val_reward / val_exact_match (the Trainer keeps the best by it).

    out_dir/data/         prompts.json (held-out prompts), before.json (evaluation before step 1);
                          grpo: held_out_{before,after}.json (each held-out reply, scored)
    out_dir/checkpoints/  step checkpoints, metrics.jsonl (reward, kl, clip_fraction, ...), loss.png
    out_dir/model/        the policy (adapters merged), a plain model dir
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from danlu.align import arith, grpo, ppo
from danlu.align.config import AlignConfig
from danlu.align.pair_cache import prepare_pairs
from danlu.align.reward import load_reward_model
from danlu.align.rollout import pack, sample, token_logps
from danlu.errors import CheckpointError, ConfigError
from danlu.finetune import templates
from danlu.finetune.lora import ALL_TARGETS, AdapterSpec, adapters_disabled, apply_lora, unwrap
from danlu.io import atomic_write_json
from danlu.model_dir import load_model, read_metadata, save_model_dir
from danlu.train.optimizers import build_named_optimizer
from danlu.train.precision import resolve_device, resolve_dtype
from danlu.train.trainer import Hooks, LossOutput, RunInfo, Trainer

log = logging.getLogger(__name__)
_HELD_OUT = -1  # the rollout index whose seeds the held-out evaluation uses


def seed_of(seed: int, rollout: int, row: int) -> int:
    """The sampling seed of one completion: distinct for every (seed, rollout, row)."""
    return ((seed * 1_000_003 + rollout + 7) * 100_003 + row) % 2**63


# --- prompts --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Prompts:
    """Train prompts per rollout and the held-out prompts, as token ids (with answers for grpo)."""

    train: list[tuple[list[int], str]]  # empty for arith: made per rollout
    val: list[tuple[list[int], str]]
    encode: Callable[[str], list[int]]
    rl: Any
    seed: int
    held_out: frozenset[str] = frozenset()

    def batch(self, rollout: int, n: int) -> list[tuple[list[int], str]]:
        if self.rl.task == "arith":
            probs = arith.arithmetic_problems(seed_of(self.seed, rollout, 0), n, self.rl.digits, self.rl.ops,
                                              self.held_out)  # fmt: skip
            return [(self.encode(p.question), p.answer) for p in probs]
        gen = torch.Generator().manual_seed(seed_of(self.seed, rollout, 0))
        idx = torch.randperm(len(self.train), generator=gen)[:n].tolist()
        return [self.train[i] for i in idx]


def make_prompts(cfg: AlignConfig, tok: Any, out_dir: Path) -> Prompts:
    rl, seed = cfg.rl, cfg.train.seed
    template = templates.resolve(cfg.data.template, tok)

    def encode(question: str) -> list[int]:
        return templates.prompt_ids(tok, [{"role": "user", "content": question}], template)

    if rl.task == "pairs":
        encoded, _ = prepare_pairs(cfg, tok, out_dir / "data")
        split = {}
        for s in ("train", "val"):
            unique = {tuple(e.prompt): None for e in encoded[s]}
            split[s] = [(list(p), "") for p in unique]
        prompts = Prompts(split["train"], split["val"][: rl.eval_prompts], encode, rl, seed)
    elif rl.task == "arith":
        space = arith.distinct_problems(rl.digits, rl.ops)
        if 2 * rl.eval_prompts > space:  # hold out at most half: training draws from the rest
            raise ConfigError(
                f"align.rl.eval_prompts={rl.eval_prompts} holds out more than half of the {space} "
                f"{rl.digits}-digit problems over {rl.ops!r}"
            )
        val = arith.arithmetic_problems(seed_of(seed, _HELD_OUT, 0), rl.eval_prompts, rl.digits, rl.ops,
                                        distinct=True)  # fmt: skip
        prompts = Prompts([], [(encode(p.question), p.answer) for p in val], encode, rl, seed,
                          frozenset(p.question for p in val))  # fmt: skip
    else:
        records = arith.read_gsm8k(rl.task.split(":", 1)[1])
        if len(records) <= rl.eval_prompts:
            raise ConfigError(f"{rl.task} holds {len(records)} records; need more than align.rl.eval_prompts")
        rows = [(encode(p.question), p.answer) for p in records]
        prompts = Prompts(rows[: -rl.eval_prompts], rows[-rl.eval_prompts :], encode, rl, seed)
    if cfg.rl.task != "arith" and len(prompts.train) < cfg.train.batch_size:
        raise ConfigError(
            f"{len(prompts.train)} train prompts; align.train.batch_size is {cfg.train.batch_size}"
        )
    (out_dir / "data").mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "data" / "prompts.json", {"val": prompts.val, "train": len(prompts.train)})
    return prompts


# --- the rollout stream ---------------------------------------------------------------------------


class RolloutStream:
    """The Trainer's batches: minibatches of rollout after rollout, made by make(rollout index)."""

    def __init__(self, make: Callable[[int], list[dict[str, Any]]]):
        self.make = make
        self.rollout = 0  # the index of the next rollout to sample
        self.pending: list[dict[str, Any]] = []

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            if not self.pending:
                self.pending = self.make(self.rollout)
                self.rollout += 1
            yield self.pending.pop(0)

    def state_dict(self) -> dict[str, Any]:
        return {"rollout": self.rollout, "pending": len(self.pending)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("pending"):
            raise CheckpointError("the checkpoint was saved inside a rollout; it cannot resume exactly")
        self.rollout, self.pending = int(state["rollout"]), []


def minibatches(
    tensors: dict[str, torch.Tensor], stats: dict[str, float], rl: Any, seed: int
) -> list[dict[str, Any]]:
    """epochs x minibatches shuffled slices of one rollout's rows (each carrying its stats)."""
    n = tensors["ids"].shape[0]
    size = n // rl.minibatches
    out = []
    for epoch in range(rl.epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        for j in range(rl.minibatches):
            rows = perm[j * size : (j + 1) * size].to(tensors["ids"].device)
            mb = {k: v.index_select(0, rows) for k, v in tensors.items()}
            width = int(mb["mask"].any(0).nonzero().max()) + 1  # drop the all-padding tail
            mb = {k: v[:, : width if k in ("ids", "mask") else width - 1] if v.dim() == 2 else v
                  for k, v in mb.items()}  # fmt: skip
            out.append(mb | {"stats": dict(stats)})
    return out


# --- building the trainer -------------------------------------------------------------------------


def _check(cfg: AlignConfig) -> int:
    rl, t = cfg.rl, cfg.train
    per_rollout = rl.epochs * rl.minibatches
    rows = t.batch_size * (rl.group_size if cfg.method == "grpo" else 1)
    if t.grad_accum != 1:
        raise ConfigError("align.train.grad_accum must be 1 for ppo/grpo (use align.rl.minibatches)")
    if rows % rl.minibatches:
        raise ConfigError(f"a rollout's {rows} completions do not split into {rl.minibatches} minibatches")
    for key in ("max_steps", "ckpt_every"):
        if getattr(t, key) % per_rollout:
            raise ConfigError(
                f"align.train.{key}={getattr(t, key)} must be a multiple of a rollout's "
                f"{per_rollout} steps (align.rl.epochs x align.rl.minibatches)"
            )
    if cfg.method == "ppo" and not rl.reward_model:
        raise ConfigError("ppo needs align.rl.reward_model (a dir written by `danlu align --method rm`)")
    if cfg.method == "grpo" and rl.task == "pairs":
        raise ConfigError("grpo needs verifiable rewards: align.rl.task=arith or gsm8k:PATH")
    if cfg.method == "grpo" and rl.group_size < 2 and rl.scale == "group":
        raise ConfigError("grpo with align.rl.scale=group needs align.rl.group_size >= 2")
    return per_rollout


class RLRun:
    """What a rollout and an evaluation need: the trainer's model (set once it is built), the
    reference, the reward model, the prompts and the KL controller."""

    def __init__(self, cfg: AlignConfig, tok: Any, prompts: Prompts, base_dir: Path, device: torch.device):
        self.cfg, self.rl, self.tok, self.prompts, self.device = cfg, cfg.rl, tok, prompts, device
        self.model: nn.Module | None = None
        self.held_out_replies: list[dict[str, Any]] = []  # grpo: the last evaluation, problem by problem
        self.kl = ppo.KLController(cfg.rl.kl_coef, cfg.rl.kl_target, cfg.rl.kl_horizon)
        self.frozen_ref: nn.Module | None = None
        if cfg.tune == "full":
            self.frozen_ref = load_model(base_dir, device)[0].eval().requires_grad_(False)
        self.rm = None
        if cfg.method == "ppo":
            self.rm, rm_tok = load_reward_model(cfg.rl.reward_model, device)
            self.rm.requires_grad_(False)
            if rm_tok.fingerprint() != tok.fingerprint():
                raise ConfigError(
                    f"the reward model {cfg.rl.reward_model} has another tokenizer than the policy"
                )

    @property
    def policy(self) -> nn.Module:
        assert self.model is not None
        return self.model.policy if isinstance(self.model, ppo.PolicyValue) else self.model

    @torch.no_grad()
    def reference(self, ids: torch.Tensor) -> torch.Tensor:
        if self.frozen_ref is not None:
            return token_logps(self.frozen_ref, ids)
        with adapters_disabled(self.policy):
            return token_logps(self.policy, ids)

    def _sample(self, rows: list[tuple[list[int], str]], rollout: int, greedy: bool = False):
        g = self.rl.group_size if self.cfg.method == "grpo" and not greedy else 1
        prompts = [p for p, _ in rows for _ in range(g)]
        answers = [a for _, a in rows for _ in range(g)]
        seeds = None if greedy else [seed_of(self.cfg.train.seed, rollout, i) for i in range(len(prompts))]
        s = sample(self.policy, self.tok, prompts, seeds, self.rl.max_new_tokens, self.rl.temperature,
                   self.rl.top_k)  # fmt: skip
        return s, answers

    def rollout(self, k: int) -> list[dict[str, Any]]:
        assert self.model is not None
        was_training = self.model.training
        self.model.eval()
        try:
            rows = self.prompts.batch(k, self.cfg.train.batch_size)
            s, answers = self._sample(rows, k)
            pad = self.tok.pad_id
            if self.cfg.method == "ppo":
                tensors, stats = ppo.experience(self.model, self.reference, self.rm.scores, s, self.rl,  # type: ignore[union-attr]
                                                self.kl.value, pad)  # fmt: skip
                self.kl.update(stats["kl"], len(s.completions))
            else:
                tensors, stats = grpo.experience(self.model, self.reference, s, answers, self.rl, pad)
        finally:
            self.model.train(was_training)
        return minibatches(tensors, stats | {"rollout": k}, self.rl, seed_of(self.cfg.train.seed, k, 1))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out numbers (see the module docstring); consumes no global randomness."""
        assert self.model is not None
        if self.cfg.method == "grpo":
            s, answers = self._sample(self.prompts.val, _HELD_OUT, greedy=True)
            c = [arith.correct(t, a) for t, a in zip(s.texts, answers, strict=True)]
            f = [arith.well_formatted(t) for t in s.texts]
            self.held_out_replies = [{"answer": a, "reply": t, "correct": x, "format": y}
                                     for a, t, x, y in zip(answers, s.texts, c, f, strict=True)]  # fmt: skip
            em = sum(c) / len(c)
            return {"val_loss": -em, "val_exact_match": em, "val_format": sum(f) / len(f), "val_n": len(c)}
        s, _ = self._sample(self.prompts.val, _HELD_OUT)
        ids, mask = pack(s.prompts, s.completions, self.tok.pad_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        scores = self.rm.scores(ids, mask).float()  # type: ignore[union-attr]
        kl = ((token_logps(self.policy, ids) - self.reference(ids)) * mask[:, 1:]).sum(-1)
        reward = float(scores.mean())
        n_tokens = float(mask[:, 1:].sum(-1).float().mean())
        return {
            "val_loss": -reward,
            "val_reward": reward,
            "val_kl": float(kl.mean()),
            "val_completion_tokens": n_tokens,
        }


def _transform(
    cfg: AlignConfig,
) -> tuple[Callable[[nn.Module], nn.Module], Callable[[str, Any], bool] | None]:
    spec = None
    if cfg.tune == "lora":
        if cfg.lora.dropout > 0:
            log.warning("align.lora.dropout=%g is ignored by %s: rollouts and updates run without dropout",
                        cfg.lora.dropout, cfg.method)  # fmt: skip
        targets = ALL_TARGETS if "all-linear" in cfg.lora.targets else tuple(cfg.lora.targets)
        spec = AdapterSpec(r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=0.0, targets=targets,
                           rslora=cfg.lora.rslora)  # fmt: skip

    def transform(model: nn.Module) -> nn.Module:
        if spec is not None:
            apply_lora(model, spec, cfg.lora.name, seed=cfg.train.seed)
        if cfg.method == "ppo":
            torch.manual_seed(cfg.train.seed)
            model = ppo.PolicyValue(model)
        return model

    def trainable(name: str, p: Any) -> bool:
        return ".adapters." in name or name.startswith("value_head.")

    return transform, (trainable if spec is not None else None)


def resolved(cfg: AlignConfig) -> AlignConfig:
    """cfg with align.rl.task=auto made concrete: the pairs' prompts for ppo, arithmetic for grpo."""
    if cfg.rl.task != "auto":
        return cfg
    task = "pairs" if cfg.method == "ppo" else "arith"
    return dataclasses.replace(cfg, rl=dataclasses.replace(cfg.rl, task=task))


def build_rl_trainer(cfg: AlignConfig, base_dir: Path, out_dir: Path) -> tuple[Trainer, RLRun]:
    cfg = resolved(cfg)
    per_rollout = _check(cfg)
    device = resolve_device(cfg.train.device)
    dtype = resolve_dtype(cfg.train.dtype, device)
    torch.manual_seed(cfg.train.seed)
    model, tok, model_cfg = load_model(base_dir, device)
    if model_cfg.dropout > 0:  # exact resume still holds (the RNGs are restored); the ratios start off 1
        log.warning("model.dropout=%g: the updates see another network than the rollouts", model_cfg.dropout)
    prompts = make_prompts(cfg, tok, out_dir)
    longest = max(len(p) for p, _ in [*prompts.val, *prompts.train[:1000]] or [([0], "")])
    if longest + cfg.rl.max_new_tokens + 1 > model_cfg.max_seq_len:
        raise ConfigError(f"a prompt of {longest} tokens plus align.rl.max_new_tokens exceeds the context")
    run = RLRun(cfg, tok, prompts, base_dir, device)
    stream = RolloutStream(run.rollout)
    loss = ppo.ppo_loss(cfg.rl) if cfg.method == "ppo" else grpo.grpo_step(cfg.rl)

    def loss_fn(m: nn.Module, b: dict[str, Any]) -> LossOutput:
        total, n, metrics = loss(m, b)
        return LossOutput(total, n, metrics=metrics | b["stats"])

    def sizes(b: dict[str, Any]) -> tuple[int, int]:
        n = int(b["mask"][:, 1:].sum()) if cfg.method == "ppo" else grpo.units(cfg.rl, b["mask"])
        return b["ids"].numel(), n

    transform, trainable = _transform(cfg)
    hooks = Hooks(transform=transform, trainable=trainable, sizes=sizes, evaluate=lambda m: run.evaluate(),
                  extra_state={"kl_controller": run.kl})  # fmt: skip
    tcfg = dataclasses.replace(cfg.train, lr=cfg.lr, spike_guard=False, early_stop_patience=0)
    info = RunInfo(
        out_dir, model_cfg, base_dir / "tokenizer", tok.fingerprint(), cfg, name=f"align-{cfg.method}"
    )
    trainer = Trainer(
        model, lambda m: build_named_optimizer(m, tcfg.optimizer, tcfg), stream, loss_fn, tcfg, info,
        device, dtype, hooks, flops_per_token=float(model.flops_per_token(tcfg.seq_len)),
    )  # fmt: skip
    run.model = trainer.model
    n_train = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    log.info("align: %s (%s), %d parameters train, %d steps per rollout, %d held-out prompts",
             cfg.method, cfg.tune, n_train, per_rollout, len(prompts.val))  # fmt: skip
    return trainer, run


def run_rl(cfg: AlignConfig, base_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Train (or resume) ppo/grpo; write out_dir/model. Returns the last held-out evaluation, the one
    before training (`before`), steps and tokens_per_s."""
    cfg = resolved(cfg)
    trainer, run = build_rl_trainer(cfg, base_dir, out_dir)
    before_path = out_dir / "data" / "before.json"
    if before_path.is_file():
        before = json.loads(before_path.read_text())
    else:
        trainer.model.eval()
        before = run.evaluate()
        trainer.model.train()
        if cfg.method == "grpo":
            atomic_write_json(out_dir / "data" / "held_out_before.json", run.held_out_replies)
        atomic_write_json(before_path, before)
    result = trainer.fit()
    if cfg.method == "grpo" and run.held_out_replies:  # the final evaluation (none: resumed a finished run)
        atomic_write_json(out_dir / "data" / "held_out_after.json", run.held_out_replies)
    policy = run.policy.eval()
    plain = unwrap(policy) if cfg.tune == "lora" else policy
    meta = read_metadata(base_dir)
    extra = {
        "chat": bool(meta.get("chat", False)),
        "align": {
            "method": cfg.method,
            "tune": cfg.tune,
            "rl": dataclasses.asdict(cfg.rl),
            "base": str(base_dir),
        },
    }
    model_dir = save_model_dir(out_dir / "model", plain, trainer.run.model_cfg, base_dir / "tokenizer", extra)
    return {"model_dir": model_dir, "before": before, **result}
