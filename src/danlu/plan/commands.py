"""`danlu plan ACTION`: the arguments of each planning action and what it prints (tables or JSON).

    danlu plan flops   --model llama-7b --tokens 2e12            training / inference FLOPs
    danlu plan optimal --flops 5.76e23 [--inference-tokens 1e12] compute-optimal N and D per law
    danlu plan memory  --model llama-7b --zero 3 --dp 64         per-device memory (or --inference)
    danlu plan cost    --model llama-7b --tokens 2e12 --hardware h100 --devices 256 --price 2.5
    danlu plan layout  --model llama-70b --hardware h100 --nodes 4 --gpus-per-node 8 --global-batch 512
    danlu plan fit     RUN... [--holdout RUN] [--plot fit.png]   scaling law fitted to your runs
    danlu plan fit     RUN... --final [--holdout RUN]            L(N) on equal-token runs' final losses
    danlu plan hardware                                          the hardware table

--model takes a preset name or a recipe YAML (its model section); `--model.FIELD=VALUE` overrides a
field. Every action takes --json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from danlu.config import from_dict, load_yaml, merge, parse_overrides
from danlu.errors import ConfigError, DataError
from danlu.plan import hardware as hwmod
from danlu.plan.memory import (
    OPTIMIZERS,
    PRECISIONS,
    WEIGHT_BYTES,
    TrainSetup,
    inference_memory,
    training_memory,
)
from danlu.plan.scaling import CHINCHILLA_REFIT, LAWS, ParametricLaw, inference_aware_optimum
from danlu.plan.tables import FORMATTERS

if TYPE_CHECKING:  # the model (and torch) load only when an action needs a shape
    from danlu.plan.flops import ModelShape

GiB = 2**30


def _num(text: str) -> float:
    try:
        return float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, help="preset name (llama-7b, tiny, ...) or recipe YAML")
    p.add_argument(
        "--vocab", type=int, default=None, help="vocabulary, for presets that take the tokenizer's"
    )


def add_plan_parser(sub: Any) -> argparse.ArgumentParser:
    """The `plan` verb and its actions, on the CLI's sub-parsers."""
    plan = sub.add_parser("plan", help="FLOPs, scaling laws, memory, cost and parallel layouts")
    plan.set_defaults(recipe=None)  # lets --model.FIELD=VALUE overrides through to the action
    actions = plan.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", help="print JSON instead of tables")
        return p

    p = action("flops", "training and inference FLOPs of a model (or of N parameters)")
    _model_args(p, required=False)
    p.add_argument("--params", type=_num, help="parameter count instead of a model")
    p.add_argument("--tokens", type=_num, help="training tokens")
    p.add_argument("--seq", type=int, default=None, help="training sequence length (default: the model's)")
    p.add_argument("--inference-tokens", type=_num, default=0.0, help="tokens to generate")
    p.add_argument("--context", type=int, default=None, help="context of each generated token")
    p.add_argument("--budget", type=_num, default=None, help="FLOPs to spend: how many steps they buy")
    p.add_argument("--batch-tokens", type=int, default=None, help="tokens per optimizer step (--budget)")

    p = action("optimal", "compute-optimal parameters and tokens for a FLOP budget, per law")
    p.add_argument("--flops", type=_num, required=True)
    p.add_argument("--inference-tokens", type=_num, default=0.0, help="expected lifetime inference tokens")

    p = action("memory", "memory per device for training (or inference) of a model")
    _model_args(p)
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--precision", choices=PRECISIONS, default="bf16")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    p.add_argument("--checkpointing", type=int, default=0, help="recompute every k-th block (0: none)")
    p.add_argument("--grad-accum", type=int, default=1)
    for key in ("zero", "dp", "tp", "pp"):
        p.add_argument(f"--{key}", type=int, default=0 if key == "zero" else 1)
    p.add_argument("--offload", action="store_true", help="optimizer state and master weights on the host")
    p.add_argument("--lora-rank", type=int, default=0)
    p.add_argument("--qlora", action="store_true", help="frozen base in NF4 (with --lora-rank)")
    p.add_argument("--inference", action="store_true", help="inference: weights + KV cache")
    p.add_argument("--batch", type=int, default=1, help="inference batch")
    p.add_argument("--context", type=int, default=None, help="inference context (default: the model's)")
    p.add_argument("--weights", choices=list(WEIGHT_BYTES), default="bf16", help="inference weight format")
    p.add_argument("--kv-dtype", default="bf16", help="inference KV-cache dtype")

    p = action("cost", "training time, cost and energy on a hardware class")
    _model_args(p, required=False)
    p.add_argument("--params", type=_num)
    p.add_argument("--tokens", type=_num)
    p.add_argument("--flops", type=_num, help="training FLOPs instead of a model and tokens")
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--hardware", default="h100", help=", ".join(hwmod.HARDWARE))
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--dtype", default=None, help="bf16 on GPUs, fp32 on the CPU by default")
    p.add_argument("--mfu", type=float, default=None, help="default: what danlu measured on that hardware")
    p.add_argument("--price", type=float, default=None, help="price per device-hour")
    p.add_argument("--pue", type=float, default=1.0, help="data-centre power usage effectiveness")

    p = action("layout", "choose DP x TP x PP x ZeRO for nodes x GPUs per node")
    _model_args(p)
    p.add_argument("--hardware", default="h100")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--global-batch", type=int, required=True, help="sequences per optimizer step")
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--precision", choices=PRECISIONS, default="bf16")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    p.add_argument("--checkpointing", type=int, default=0, help="0: the planner decides")
    p.add_argument("--mfu", type=float, default=None)

    p = action("fit", "fit L(N, D) and IsoFLOP optima to danlu runs (metrics.jsonl)")
    p.add_argument("runs", nargs="+", help="run directories of danlu pretrain")
    p.add_argument("--holdout", nargs="*", default=[], help="runs to predict, not fit")
    p.add_argument("--params", choices=("total", "non_embedding"), default="total")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples")
    p.add_argument("--plot", default=None, help="PNG to draw")
    p.add_argument(
        "--final",
        action="store_true",
        help="fit L(N) = E + A / N^alpha to the final losses of runs trained on the same tokens "
        "(runs whose LR decays to their end, where intermediate evaluations are not end points)",
    )

    action("hardware", "the hardware table (datasheet peaks, memory, bandwidth, measured MFU)")
    return plan


# ------------------------------------------------------------------------------------------ helpers


def _shape(args: argparse.Namespace, overrides: list[str]) -> ModelShape:
    from danlu.model.config import ModelConfig
    from danlu.plan.flops import model_shape

    bad = [o for o in overrides if not o.lstrip("-").startswith("model.")]
    if bad:
        raise ConfigError(f"danlu plan takes only --model.FIELD=VALUE overrides, got {bad[0]}")
    spec = args.model
    over = parse_overrides(overrides)
    vocab = args.vocab
    if spec.endswith((".yaml", ".yml")) or Path(spec).is_file():
        data = merge(load_yaml(spec), over)
        model = data.get("model", {})
        vocab = vocab or data.get("tokenizer", {}).get("vocab_size")
    else:
        model = merge({"preset": spec}, over.get("model", {}))
    cfg = from_dict(ModelConfig, dict(model), prefix="model.")
    return model_shape(cfg, vocab)


# ------------------------------------------------------------------------------------------ actions


def do_flops(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.model:
        s = _shape(args, overrides)
        seq = args.seq or s.max_seq_len
        out.update(
            model=s.name,
            shape=f"{s.n_layer} x {s.n_embd} x {s.n_head} (kv heads {s.n_kv_head}, ffn {s.ffn_hidden}, vocab {s.vocab_size})",
            params=s.n_params,
            active_params=s.n_active,
            matmul_params=s.n_matmul,
            seq_len=seq,
            train_flops_per_token=s.flops_per_token(seq),
            six_n_per_token=6 * s.n_active,
            inference_flops_per_token=s.inference_flops_per_token(args.context or seq),
        )
        per_token, n = s.flops_per_token(seq), s.n_active
    elif args.params:
        n, per_token = args.params, 6 * args.params
        out.update(params=n, train_flops_per_token=per_token, inference_flops_per_token=2 * n)
    else:
        raise ConfigError("danlu plan flops needs --model or --params")
    if args.tokens:
        out.update(tokens=args.tokens, train_flops=per_token * args.tokens, six_nd=6 * n * args.tokens)
    if args.inference_tokens:
        out["inference_flops"] = out["inference_flops_per_token"] * args.inference_tokens
    if args.budget is not None:
        from danlu.plan.flops import steps_for_budget

        if not args.model or not args.batch_tokens:
            raise ConfigError("--budget needs --model and --batch-tokens (tokens per optimizer step)")
        out["budget"] = args.budget
        out["steps"] = steps_for_budget(s, args.budget, args.batch_tokens, seq)
        out["budget_tokens"] = out["steps"] * args.batch_tokens
    return out


def do_optimal(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    rows = []
    for name, law in LAWS.items():
        n, d = law.optimum(args.flops)
        row: dict[str, Any] = {"law": name, "params": n, "tokens": d, "tokens_per_param": d / n}
        if isinstance(law, ParametricLaw):
            row["loss"] = law.loss(n, d)
        rows.append(row)
    out: dict[str, Any] = {"flops": args.flops, "laws": rows}
    if args.inference_tokens:
        law = CHINCHILLA_REFIT
        target = law.loss(*law.optimum(args.flops))
        opt = inference_aware_optimum(law, target, args.inference_tokens)
        out["inference_aware"] = {
            "law": law.name,
            "target_loss": target,
            "inference_tokens": args.inference_tokens,
            **dataclasses.asdict(opt),
            "total_flops": opt.total_flops,
            "chinchilla_total_flops": args.flops + 2 * law.optimum(args.flops)[0] * args.inference_tokens,
        }
    return out


def do_memory(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    s = _shape(args, overrides)
    if args.inference:
        mem = inference_memory(s, args.batch, args.context, args.weights, args.kv_dtype, args.tp)
        return {
            "model": s.name,
            "mode": "inference",
            **{k: v / GiB for k, v in dataclasses.asdict(mem).items()},
        }
    setup = TrainSetup(
        micro_batch=args.micro_batch,
        seq_len=args.seq or s.max_seq_len,
        precision=args.precision,
        optimizer=args.optimizer,
        checkpointing=args.checkpointing,
        grad_accum=args.grad_accum,
        zero=args.zero,
        dp=args.dp,
        tp=args.tp,
        pp=args.pp,
        offload=args.offload,
        lora_rank=args.lora_rank,
        qlora=args.qlora,
    )
    if args.zero and args.dp == 1:
        raise ConfigError(f"ZeRO-{args.zero} shards over data-parallel ranks: give --dp > 1")
    mem = training_memory(s, setup)
    return {"model": s.name, "mode": "training", "setup": dataclasses.asdict(setup), "gib": mem.as_gib()}


def do_cost(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    hw = hwmod.hardware(args.hardware)
    if args.flops:
        flops = args.flops
    elif args.tokens and args.model:
        s = _shape(args, overrides)
        flops = s.flops_per_token(args.seq or s.max_seq_len) * args.tokens
    elif args.tokens and args.params:
        flops = 6 * args.params * args.tokens
    else:
        raise ConfigError("danlu plan cost needs --flops, or --tokens with --model or --params")
    est = hwmod.estimate_cost(flops, hw, args.devices, args.mfu, args.dtype, args.price, args.pue)
    return dataclasses.asdict(est)


def do_layout(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    from danlu.plan.layout import plan_layout

    s = _shape(args, overrides)
    hw = hwmod.hardware(args.hardware)
    setup = TrainSetup(
        micro_batch=args.micro_batch,
        seq_len=args.seq or s.max_seq_len,
        precision=args.precision,
        optimizer=args.optimizer,
        checkpointing=args.checkpointing,
    )
    plan = plan_layout(s, hw, args.nodes, args.gpus_per_node, setup, args.global_batch, args.mfu)
    b = plan.best
    return {
        "model": s.name,
        "devices": plan.devices,
        "parallel": b.parallel_config(),
        "activation_checkpointing": b.checkpointing,
        "memory_gib": b.memory.peak / GiB,
        "step_s": b.step_s,
        "compute_s": b.compute_s,
        "comm_s": b.comm_s,
        "bubble": b.bubble,
        "tokens_per_step": plan.tokens_per_step,
        "mfu": plan.mfu,
        "mfu_source": plan.mfu_source,
        "explanation": plan.explanation,
        "rejected": plan.rejected,
    }


def do_fit(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    from danlu.plan.fit import fit_runs, read_run
    from danlu.plan.fit_plots import plot_fit

    runs = [read_run(r, args.params) for r in args.runs]
    held = [read_run(r, args.params) for r in args.holdout]
    if args.final:
        return _fit_final(runs, held, args)
    report = fit_runs(runs, held, n_boot=args.bootstrap)
    out = report.as_dict()
    if args.plot:
        out["plot"] = str(plot_fit(report, held, args.plot))
    return out


def _fit_final(runs: list[Any], held: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from danlu.plan.fit import fit_size_runs, holdout_record
    from danlu.plan.fit_plots import SizePoint, plot_size_fit

    tokens = {r.final_tokens for r in [*runs, *held]}
    if max(tokens) > 1.01 * min(tokens):
        raise DataError(
            f"--final fits runs trained on the same tokens; these end at {min(tokens):,.0f} to "
            f"{max(tokens):,.0f} tokens (fit L(N, D) without --final instead)"
        )
    report = fit_size_runs(
        np.array([r.n_params for r in runs], float),
        np.array([r.final_loss for r in runs]),
        n_boot=args.bootstrap,
    )
    out: dict[str, Any] = {
        "mode": "final",
        "law": report.law.__dict__,
        "intervals_95": report.intervals,
        "bootstrap_samples": len(report.boots),
        "runs": [
            {"path": r.path, "params": r.n_params, "tokens": r.final_tokens, "final_loss": r.final_loss}
            for r in runs
        ],
        "holdout": [],
    }
    for r in held:
        out["holdout"].append(holdout_record(r, *report.predict(r.n_params)))
    if args.plot:
        points = [
            [SizePoint(Path(r.path).name, r.n_params, (r.final_loss,)) for r in rs] for rs in (runs, held)
        ]
        out["plot"] = str(plot_size_fit(report, *points, args.plot))
    return out


def do_hardware(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    rows = []
    for hw in hwmod.HARDWARE.values():
        measured = hwmod.MEASURED_MFU.get(hw.mfu_class)
        rows.append(
            {
                "name": hw.name,
                "peak_tflops": {k: v / 1e12 for k, v in hw.peak.items()},
                "memory_gib": hw.memory_bytes / GiB,
                "bandwidth_tb_s": hw.bandwidth / 1e12,
                "nvlink_gb_s": hw.intra_node_bw / 1e9,
                "network_gb_s": hw.inter_node_bw / 1e9,
                "watts": hw.watts,
                "measured_mfu": measured[0] if measured else None,
                "source": hw.source,
            }
        )
    return {"hardware": rows}


ACTIONS = {
    "flops": do_flops,
    "optimal": do_optimal,
    "memory": do_memory,
    "cost": do_cost,
    "layout": do_layout,
    "fit": do_fit,
    "hardware": do_hardware,
}


def run_plan(args: argparse.Namespace, overrides: list[str]) -> str:
    """The text `danlu plan ACTION` prints: JSON with --json, else readable tables."""
    if args.action not in ("flops", "memory", "layout", "cost") and overrides:
        raise ConfigError(f"danlu plan {args.action} takes no --model.* overrides")
    result = ACTIONS[args.action](args, overrides)
    if args.json:
        return json.dumps(result, indent=2, default=_jsonable)
    return FORMATTERS[args.action](result, args)


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)
