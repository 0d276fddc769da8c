"""Long context without retraining: a model trained on 256-token windows, evaluated on 1024-token
windows with RoPE left alone (extrapolation), linear position interpolation, NTK-aware scaling and
YaRN (factor 4 over the 256 trained positions). Loss by position over the whole validation split.

Uses the model of an existing `danlu run` (default runs/tiny-cpu). Prints one table and writes
long_context.png (loss against position, 32-token buckets).

    python benchmarks/long_context.py [--run runs/tiny-cpu] [--length 1024] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch

from _machine import machine_markdown, markdown_table
from danlu.data.loader import TokenDataset
from danlu.model import build_model
from danlu.model_dir import load_model
from danlu.train.losses import token_cross_entropy


@torch.no_grad()
def loss_by_position(model: torch.nn.Module, tokens: np.ndarray, length: int, batch: int = 4) -> np.ndarray:
    """Mean next-token loss at each position 0..length-1 over non-overlapping windows of the tokens."""
    n = (len(tokens) - 1) // length
    total = torch.zeros(length, dtype=torch.float64)
    for start in range(0, n, batch):
        rows = range(start, min(start + batch, n))
        w = torch.stack(
            [torch.from_numpy(tokens[r * length : r * length + length + 1].astype(np.int64)) for r in rows]
        )
        total += token_cross_entropy(model(w[:, :-1]), w[:, 1:]).double().sum(0)
    return (total / n).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/tiny-cpu")
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, _, cfg = load_model(run / "model")
    trained = cfg.max_seq_len
    factor = args.length / trained
    val = np.asarray(TokenDataset(run / "tokens", "val").tokens)
    # the same tokens, cut at the trained length: the reference the extended model should match
    reference = loss_by_position(model, val[: (len(val) - 1) // args.length * args.length + 1], trained)
    variants = {
        "none (extrapolate)": {"rope_scaling": "none"},
        f"linear x{factor:g}": {"rope_scaling": "linear", "rope_factor": factor},
        f"ntk x{factor:g}": {"rope_scaling": "ntk", "rope_factor": factor},
        f"yarn x{factor:g}": {
            "rope_scaling": "yarn",
            "rope_factor": factor,
            "rope_original_max_len": trained,
        },
    }
    curves, rows = {}, []
    for name, options in variants.items():
        long_cfg = dataclasses.replace(cfg, max_seq_len=args.length, **options)
        long_model = build_model(long_cfg)
        long_model.load_state_dict(model.state_dict())  # RoPE tables are buffers rebuilt from the config
        long_model.eval()
        curve = loss_by_position(long_model, val, args.length)
        curves[name] = curve
        spans = [(0, trained), (trained, 2 * trained), (2 * trained, args.length)]
        rows.append([name, *(f"{curve[a:b].mean():.3f}" for a, b in spans), f"{np.exp(curve.mean()):.1f}"])
    rows.insert(
        0,
        [
            f"trained length ({trained}) windows",
            f"{reference.mean():.3f}",
            "-",
            "-",
            f"{np.exp(reference.mean()):.1f}",
        ],
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    bucket = 32
    for name, curve in curves.items():
        means = curve[: len(curve) // bucket * bucket].reshape(-1, bucket).mean(1)
        ax.plot(np.arange(len(means)) * bucket + bucket / 2, means, label=name)
    ax.axvline(trained, color="k", lw=0.8, ls="--")
    ax.annotate("trained context", (trained, ax.get_ylim()[1]), fontsize=8, va="top")
    ax.set_xlabel("position")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_ylim(top=min(ax.get_ylim()[1], 10))
    ax.grid(alpha=0.3)
    ax.legend()
    png = out / "long_context.png"
    fig.savefig(png, bbox_inches="tight")
    header = [
        "RoPE at 1024",
        f"loss 0-{trained}",
        f"loss {trained}-{2 * trained}",
        f"loss {2 * trained}-{args.length}",
        "ppl",
    ]
    print(markdown_table(header, rows))
    print(
        f"{(len(val) - 1) // args.length} windows of {args.length} validation tokens; plot: {png}\n{machine_markdown()}"
    )


if __name__ == "__main__":
    main()
