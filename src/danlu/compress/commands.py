"""`danlu distill` and `danlu prune`: their arguments and what they print.

danlu distill --teacher MODEL --student CONFIG_OR_MODEL --data FILE --out DIR [--method logit]
danlu prune MODEL OUT --method magnitude|2:4 [--sparsity 0.5] [--recover-steps N --data FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from danlu.compress.config import DISTILL_METHODS, DistillConfig, PruneConfig, default_train


def _train_args(p: argparse.ArgumentParser) -> None:
    d = default_train()
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help="tokens per sequence")
    p.add_argument("--seed", type=int, default=d.seed, help="weights init and window draw")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--eval-batches", type=int, default=d.eval_batches, help="held-out batches per evaluation")


def _train_cfg(args: argparse.Namespace, steps: int) -> Any:
    return dataclasses.replace(
        default_train(), max_steps=max(steps, 1), lr=args.lr, batch_size=args.batch_size, seq_len=args.seq_len,
        seed=args.seed, device=args.device, eval_batches=args.eval_batches,
        eval_every=min(max(steps, 1), getattr(args, "eval_every", None) or max(steps, 1)),
        ckpt_every=max(steps, 1), warmup_steps=min(20, max(steps, 1) // 10),
    )  # fmt: skip


def cmd_distill(args: argparse.Namespace, overrides: list[str]) -> None:
    from danlu.compress.distill import run_distill

    cfg = DistillConfig(
        method=args.method, kind=args.kind, temperature=args.temperature, alpha=args.alpha,
        data=tuple(args.data), val_fraction=args.val_fraction, gen_prompts=args.gen_prompts,
        gen_prompt_len=args.gen_prompt_len, gen_tokens=args.gen_tokens, gen_temperature=args.gen_temperature,
        gen_seed=args.gen_seed, train=_train_cfg(args, args.steps),
    )  # fmt: skip
    result = run_distill(cfg, args.teacher, args.student, args.out)
    print(f"held-out loss {result['val_loss']:.4f} after {result['steps']} steps")
    print(f"wrote {result['model_dir']}")


def cmd_prune(args: argparse.Namespace, overrides: list[str]) -> None:
    from danlu.compress.prune import run_prune

    cfg = PruneConfig(
        method=args.method, sparsity=args.sparsity, scope=args.scope, recover_steps=args.recover_steps,
        data=tuple(args.data), train=_train_cfg(args, args.recover_steps),
        **({"skip": tuple(args.skip)} if args.skip else {}),
    )  # fmt: skip
    result = run_prune(cfg, args.model, args.out, force=args.force)
    report = result["report"]
    print(f"{'layer':<28} {'params':>10} {'zeros':>10} {'sparsity':>9}")
    for name, layer in report["layers"].items():
        print(f"{name:<28} {layer['params']:>10} {layer['zeros']:>10} {layer['sparsity']:>9.4f}")
    print(
        f"{'pruned layers':<28} {report['pruned_params']:>10} {report['pruned_zeros']:>10} {report['sparsity']:>9.4f}"
    )
    print(f"whole model: {report['model_sparsity']:.4f} of {report['model_params']} parameters are zero")
    for stage, loss in result["val_loss"].items():
        print(f"held-out loss {stage}: {loss:.4f}")
    print(f"wrote {result['model_dir']}")


def add_compress_parsers(sub: Any) -> None:
    """The `distill` and `prune` verbs, on the CLI's sub-parsers."""
    p = sub.add_parser("distill", help="train a student model on a teacher's logits or generations")
    p.add_argument("--teacher", required=True, help="the teacher's model dir")
    p.add_argument(
        "--student", required=True, help="a model dir to start from, a YAML of model fields, or a preset"
    )
    p.add_argument("--out", required=True, help="run dir: checkpoints, metrics and the student in OUT/model")
    p.add_argument("--data", action="append", default=[], metavar="FILE", help="training text (UTF-8)")
    p.add_argument(
        "--method", default="logit", choices=DISTILL_METHODS, help="ce: the baseline without a teacher"
    )
    p.add_argument(
        "--kind", default="forward", choices=("forward", "reverse"), help="KL(teacher‖student) or reverse"
    )
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the cross-entropy on the labels")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=None, help="steps between held-out evaluations")
    p.add_argument("--val-fraction", type=float, default=0.05, help="tail of the text held out")
    p.add_argument(
        "--gen-prompts", type=int, default=256, help="sequence level: prompts the teacher continues"
    )
    p.add_argument("--gen-prompt-len", type=int, default=32, help="tokens per prompt")
    p.add_argument("--gen-tokens", type=int, default=96, help="tokens the teacher adds to each")
    p.add_argument("--gen-temperature", type=float, default=1.0, help="its sampling temperature (0: greedy)")
    p.add_argument("--gen-seed", type=int, default=0)
    _train_args(p)
    p.set_defaults(fn=cmd_distill)

    p = sub.add_parser(
        "prune", help="zero weights by magnitude or 2:4, optionally finetune with the masks kept"
    )
    p.add_argument("model", help="model dir")
    p.add_argument("out", help="the model dir to write (missing or empty)")
    p.add_argument("--method", default="magnitude", help="magnitude (unstructured) | 2:4 (semi-structured)")
    p.add_argument("--sparsity", type=float, default=0.5, help="magnitude: fraction of weights zeroed")
    p.add_argument("--scope", default="layer", help="magnitude: layer (per matrix) | global (one threshold)")
    p.add_argument("--skip", action="append", default=[], metavar="PATTERN", help="Linears never pruned")
    p.add_argument("--recover-steps", type=int, default=0, help="finetune steps with the masks kept")
    p.add_argument(
        "--data", action="append", default=[], metavar="FILE", help="text: recovery and held-out loss"
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it is a model dir")
    _train_args(p)
    p.set_defaults(fn=cmd_prune)
