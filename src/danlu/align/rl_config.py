"""Settings of the RL methods (`align.rl:` in a recipe), read when align.method is ppo or grpo.

Each rollout samples completions for train.batch_size prompts (GRPO: group_size completions of each),
then trains `epochs` passes over them in `minibatches` optimizer steps each: one rollout spans
epochs x minibatches trainer steps, and train.max_steps and train.ckpt_every are multiples of it
(a checkpoint falls between rollouts, so a resumed run samples the same next rollout).
"""

from __future__ import annotations

from dataclasses import dataclass

from danlu.errors import check

TASKS = ("auto", "pairs", "arith")


@dataclass
class RLConfig:
    # Prompts: "auto" (pairs for ppo, arith for grpo), "pairs" (the prompts of align.data's preference pairs, split as they are), "arith"
    # (arithmetic problems made on the fly from the seed; a held-out set drawn apart) or
    # "gsm8k:PATH" (a JSONL of {question, answer}; the last eval_prompts records are held out).
    task: str = "auto"
    # ppo: the reward model dir (`danlu align --method rm` writes one); its tokenizer must be the policy's.
    reward_model: str = ""
    # grpo: completions per prompt (ppo samples one).
    group_size: int = 4
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    # Passes over each rollout and optimizer steps per pass.
    epochs: int = 1
    minibatches: int = 1
    # ppo: the per-token KL penalty's coefficient in the reward; grpo: beta of the k3 KL term in the loss.
    kl_coef: float = 0.05
    # ppo: adapt kl_coef to keep the rollouts' KL (summed over a completion) near this (0: fixed),
    # with Ziegler et al.'s proportional controller over kl_horizon samples.
    kl_target: float = 0.0
    kl_horizon: int = 10000
    # ppo: GAE's discount and lambda, the policy and value clip ranges, loss weights.
    gamma: float = 1.0
    lam: float = 0.95
    clip: float = 0.2
    clip_high: float = 0.0  # grpo: the upper clip range (DAPO's clip-higher); 0 means clip
    clip_value: float = 0.2
    vf_coef: float = 0.1
    ent_coef: float = 0.0
    # ppo: whiten the advantages over each rollout's completion tokens.
    whiten: bool = True
    # ppo: the score of a completion that never ended its turn (None: the reward model's score).
    missing_eos_penalty: float | None = None
    # grpo: the loss's reduction (grpo, bnpo, or dr_grpo: Dr. GRPO's length-unbiased sum over
    # completions x max_new_tokens) and the advantages' scale (group std, batch std, or none).
    norm: str = "grpo"
    scale: str = "group"
    # grpo: reward = correct + format_weight * (the reply is only the number).
    format_weight: float = 0.1
    # arith: operand digits and operators.
    digits: int = 2
    ops: str = "+-"
    # Held-out prompts scored at each evaluation (ppo: sampled with fixed seeds, mean reward-model
    # score and KL; grpo: greedy, exact match).
    eval_prompts: int = 64

    def __post_init__(self) -> None:
        check(
            self.task in TASKS or self.task.startswith("gsm8k:"),
            "align.rl.task",
            f"must be auto, pairs, arith or gsm8k:PATH, got {self.task!r}",
        )
        check(self.group_size >= 1, "align.rl.group_size", "must be >= 1")
        check(self.max_new_tokens >= 1, "align.rl.max_new_tokens", "must be >= 1")
        check(self.temperature > 0, "align.rl.temperature", "must be > 0 (rollouts sample)")
        check(self.top_k >= 0, "align.rl.top_k", "must be >= 0")
        check(self.epochs >= 1 and self.minibatches >= 1, "align.rl.epochs", "epochs and minibatches >= 1")
        check(self.kl_coef >= 0, "align.rl.kl_coef", "must be >= 0")
        check(self.kl_target >= 0, "align.rl.kl_target", "must be >= 0 (0: a fixed kl_coef)")
        check(self.kl_horizon >= 1, "align.rl.kl_horizon", "must be >= 1")
        check(0 < self.gamma <= 1 and 0 <= self.lam <= 1, "align.rl.gamma", "gamma in (0, 1], lam in [0, 1]")
        check(0 < self.clip < 1 and self.clip_high >= 0, "align.rl.clip", "clip in (0, 1), clip_high >= 0")
        check(self.clip_value > 0, "align.rl.clip_value", "must be > 0")
        check(self.vf_coef >= 0 and self.ent_coef >= 0, "align.rl.vf_coef", "loss weights must be >= 0")
        check(self.norm in ("grpo", "bnpo", "dr_grpo"), "align.rl.norm", "must be grpo, bnpo or dr_grpo")
        check(self.scale in ("group", "batch", "none"), "align.rl.scale", "must be group, batch or none")
        check(1 <= self.digits <= 6, "align.rl.digits", "must be in [1, 6]")
        check(bool(self.ops) and set(self.ops) <= set("+-*"), "align.rl.ops", "a non-empty subset of +-*")
        check(self.eval_prompts >= 1, "align.rl.eval_prompts", "must be >= 1")

    @property
    def upper_clip(self) -> float:
        return self.clip_high or self.clip
