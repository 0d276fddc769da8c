"""Readable tables of `danlu plan` results (the dicts that --json prints)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any


def _g(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return "-"
    if isinstance(x, int) and abs(x) < 1e6:
        return f"{x:,}"
    if isinstance(x, int | float):
        return f"{x:.4g}"
    return str(x)


def _pairs(rows: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {_g(v) if not isinstance(v, str) else v}" for k, v in rows)


def _grid(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header, *[[_g(c) if not isinstance(c, str) else c for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def flops_table(r: dict[str, Any], args: argparse.Namespace) -> str:
    labels = {
        "model": "model",
        "shape": "layers x width x heads",
        "params": "parameters",
        "active_params": "active parameters per token",
        "matmul_params": "matmul weights per token (head incl.)",
        "seq_len": "sequence length",
        "train_flops_per_token": "training FLOPs per token (exact)",
        "six_n_per_token": "6 N per token",
        "inference_flops_per_token": "inference FLOPs per generated token",
        "tokens": "training tokens",
        "train_flops": "training FLOPs (exact count x tokens)",
        "six_nd": "training FLOPs (6 N D)",
        "inference_flops": "inference FLOPs",
        "budget": "FLOP budget",
        "steps": "optimizer steps it pays for",
        "budget_tokens": "tokens it trains on",
    }
    return _pairs([(labels[k], v) for k, v in r.items()])


def optimal_table(r: dict[str, Any], args: argparse.Namespace) -> str:
    rows = [[x["law"], x["params"], x["tokens"], x["tokens_per_param"], x.get("loss")] for x in r["laws"]]
    out = f"compute budget {_g(r['flops'])} FLOPs (C = 6 N D)\n\n"
    out += _grid(["law", "N*", "D*", "D*/N*", "loss"], rows)
    ia = r.get("inference_aware")
    if ia:
        out += (
            f"\n\ninference-aware ({ia['law']}, Sardana et al. 2023): same loss {ia['target_loss']:.4f} "
            f"with {_g(ia['inference_tokens'])} inference tokens\n"
        )
        out += _pairs(
            [
                ("parameters", ia["n"]),
                ("training tokens", ia["d"]),
                ("training FLOPs", ia["train_flops"]),
                ("inference FLOPs", ia["inference_flops"]),
                ("total FLOPs", ia["total_flops"]),
                ("total FLOPs at the Chinchilla optimum", ia["chinchilla_total_flops"]),
            ]
        )
    return out


def memory_table(r: dict[str, Any], args: argparse.Namespace) -> str:
    if r["mode"] == "inference":
        return _pairs(
            [
                ("model", r["model"]),
                ("weights (GiB)", r["weights"]),
                ("KV cache (GiB)", r["kv_cache"]),
                ("logits (GiB)", r["logits"]),
                ("peak per device (GiB)", r["peak"]),
            ]
        )
    g, s = r["gib"], r["setup"]
    layout = f"dp {s['dp']} x tp {s['tp']} x pp {s['pp']}, ZeRO-{s['zero']}" + (
        " + offload" if s["offload"] else ""
    )
    return _pairs(
        [
            ("model", r["model"]),
            ("layout", layout),
            ("micro-batch x sequence", f"{s['micro_batch']} x {s['seq_len']}"),
            ("precision / optimizer", f"{s['precision']} / {s['optimizer']}"),
            ("trainable parameters", g["trainable_params"]),
            ("weights (GiB)", g["weights"]),
            ("gradients (GiB)", g["gradients"]),
            ("master weights (GiB)", g["master"]),
            ("optimizer state (GiB)", g["optimizer"]),
            ("autocast bf16 copies (GiB)", g["autocast_copies"]),
            ("activations (GiB)", g["activations"]),
            ("logits and their gradients (GiB)", g["logits"]),
            ("peak per device (GiB)", g["peak"]),
            ("offloaded to host (GiB)", g["host"]),
        ]
    )


def cost_table(r: dict[str, Any], args: argparse.Namespace) -> str:
    return _pairs(
        [
            ("training FLOPs", r["flops"]),
            ("hardware", f"{r['devices']} x {r['hardware']} ({r['dtype']})"),
            ("MFU", f"{r['mfu']:.1%} ({r['mfu_source']})"),
            ("device-hours", r["device_hours"]),
            ("wall-clock hours", r["wall_hours"]),
            ("wall-clock days", r["wall_hours"] / 24),
            ("cost", r["cost"]),
            ("energy (kWh, board power)", r["energy_kwh"]),
        ]
    )


def layout_table(r: dict[str, Any], args: argparse.Namespace) -> str:
    p = r["parallel"]
    lines = [
        _pairs(
            [
                ("model", r["model"]),
                ("devices", r["devices"]),
                ("tokens per step", r["tokens_per_step"]),
                ("MFU", f"{r['mfu']:.1%} ({r['mfu_source']})"),
                ("memory per device (GiB)", r["memory_gib"]),
                ("step time estimate (s)", r["step_s"]),
            ]
        ),
        "",
        *r["explanation"],
        "",
        "config (the recipe's parallel.* keys):",
        *[f"  --parallel.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in p.items()],
    ]
    if r["rejected"]:
        lines += ["", "rejected:", *[f"  {x}" for x in r["rejected"][:8]]]
    return "\n".join(lines)


def fit_table(r: dict[str, Any], args: argparse.Namespace) -> str:
    law, ci = r["law"], r["intervals_95"]
    final = r.get("mode") == "final"
    names = ("E", "A", "alpha") if final else ("E", "A", "alpha", "B", "beta")
    rows = [[k, law[k], ci[k][0], ci[k][1]] for k in names]
    out = [
        "L(N) = E + A / N^alpha, least squares over the runs' final losses (equal tokens)"
        if final
        else "L(N, D) = E + A / N^alpha + B / D^beta, least squares over every evaluation after warmup",
        f"rmse {law['rmse']:.4f} nats; 95% intervals from {r['bootstrap_samples']} residual-bootstrap refits",
        "",
        _grid(["parameter", "fit", "95% low", "95% high"], rows),
        "",
        _grid(
            ["run", "params", "tokens", "final loss"],
            [[x["path"], x["params"], x["tokens"], x["final_loss"]] for x in r["runs"]],
        ),
    ]
    if r.get("isoflops"):
        out += [
            "",
            _grid(
                ["IsoFLOP C", "N* (vertex)", "runs"],
                [[c["flops"], c["n_opt"], c["points"]] for c in r["isoflops"]],
            ),
        ]
    if r.get("n_opt_power_law"):
        k, a = r["n_opt_power_law"]
        lo, hi = r["n_opt_exponent_interval_95"]
        out.append(f"N* = {k:.3g} C^{a:.3f} (95% interval of the exponent {lo:.3f} to {hi:.3f})")
    if r["holdout"]:
        out += [
            "",
            _grid(
                ["held out", "params", "tokens", "measured", "predicted", "95% interval", "error"],
                [
                    [
                        h["path"],
                        h["params"],
                        h["tokens"],
                        h["measured"],
                        h["predicted"],
                        f"{h['predicted_lo']:.4f}-{h['predicted_hi']:.4f}",
                        f"{100 * h['error']:+.2f}%",
                    ]
                    for h in r["holdout"]
                ],
            ),
        ]
    if r.get("plot"):
        out.append(f"\nplot written to {r['plot']}")
    return "\n".join(out)


def hardware_table(r: dict[str, Any], args: argparse.Namespace) -> str:
    rows = []
    for h in r["hardware"]:
        peaks = ", ".join(f"{k} {v:g}" for k, v in h["peak_tflops"].items())
        rows.append(
            [
                h["name"],
                peaks,
                f"{h['memory_gib']:.0f}",
                f"{h['bandwidth_tb_s']:.3g}",
                f"{h['nvlink_gb_s']:.0f}",
                f"{h['network_gb_s']:.0f}",
                h["watts"],
                "-" if h["measured_mfu"] is None else f"{h['measured_mfu']:.1%}",
            ]
        )
    notes = "\n".join(f"  {h['name']}: {h['source']}" for h in r["hardware"])
    header = ["name", "peak TFLOP/s (dense)", "GiB", "TB/s", "NVLink GB/s", "net GB/s", "W", "danlu MFU"]
    return _grid(header, rows) + "\n\nsources:\n" + notes


FORMATTERS: dict[str, Callable[[dict[str, Any], argparse.Namespace], str]] = {
    "flops": flops_table,
    "optimal": optimal_table,
    "memory": memory_table,
    "cost": cost_table,
    "layout": layout_table,
    "fit": fit_table,
    "hardware": hardware_table,
}
