"""Plots of the scaling-law fits: the L(N, D) fit with its held-out runs, and the L(N) size law over
seed means (what `danlu plan fit --plot` and benchmarks/plan_sweep.py write)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from danlu.plan.fit import FitReport, RunCurve, SizeLawReport


def plot_fit(report: FitReport, holdout: list[RunCurve], png: str | Path) -> Path:
    """Loss against tokens per run with the fitted L(N, D), and the IsoFLOP slices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.get_cmap("viridis")
    everything = [*report.runs, *holdout]
    for i, r in enumerate(everything):
        col = colors(i / max(len(everything) - 1, 1))
        held = r in holdout
        label = f"{r.n_params / 1e6:.2f}M" + (" (held out)" if held else "")
        ax1.plot(r.tokens, r.losses, "s" if held else "o", color=col, label=label, ms=4)
        grid = np.geomspace(min(r.tokens), max(r.tokens), 50)
        ax1.plot(grid, report.law.loss(r.n_params, grid), "--" if held else "-", color=col, lw=1)
    law = report.law
    ax1.set(
        xscale="log",
        xlabel="tokens",
        ylabel="validation loss (nats)",
        title=f"L = {law.E:.2f} + {law.A:.3g}/N^{law.alpha:.3f} + {law.B:.3g}/D^{law.beta:.3f}",
    )
    ax1.legend(fontsize=7)
    for i, c in enumerate(report.isoflops):
        col = plt.get_cmap("plasma")(i / max(len(report.isoflops) - 1, 1))
        ax2.plot(c.n, c.losses, "o", color=col, label=f"C = {c.flops:.2g}")
        grid = np.geomspace(min(c.n), max(c.n), 50)
        ax2.plot(grid, np.polyval(c.coef, np.log(grid)), "-", color=col, lw=1)
        if math.isfinite(c.n_opt):
            ax2.axvline(c.n_opt, color=col, ls=":", lw=1)
    ax2.set(xscale="log", xlabel="parameters N", ylabel="validation loss (nats)", title="IsoFLOP slices")
    if report.isoflops:
        ax2.legend(fontsize=7)
    else:  # the runs' curves never overlap three at a time in compute
        msg = "no compute level that three runs' curves pass through"
        ax2.text(0.5, 0.5, msg, ha="center", va="center", transform=ax2.transAxes)
    return _save(fig, png)


@dataclass(frozen=True)
class SizePoint:
    """One model size of an equal-token sweep: its label, N and final loss per seed."""

    label: str
    n: float
    losses: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.losses))

    @property
    def spread(self) -> float:
        """The sample standard deviation over seeds (0 with one seed)."""
        return float(np.std(self.losses, ddof=1)) if len(self.losses) > 1 else 0.0


def plot_size_fit(
    report: SizeLawReport,
    fitted: list[SizePoint],
    held: list[SizePoint],
    png: str | Path,
    curves: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] | None = None,
    curves_title: str = "runs",
) -> Path:
    """Final loss against N: the fitted L(N) and its 95% bootstrap band, each size's mean with a bar of
    one seed standard deviation and its seeds as dots; beside it, when given, each run's validation
    curve (label -> (tokens, losses))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if curves else 1, figsize=(12 if curves else 6, 4.5), squeeze=False)
    ax = axes[0, 0]
    ns = [p.n for p in [*fitted, *held]]
    grid = np.geomspace(min(ns) / 1.3, max(ns) * 1.3, 100)
    band = np.array([b.loss(grid) for b in report.boots])
    ax.fill_between(grid, *np.quantile(band, [0.025, 0.975], axis=0), color="C0", alpha=0.2, lw=0)
    law = report.law
    ax.plot(grid, law.loss(grid), "-", color="C0", label=f"L = {law.E:.3f} + {law.A:.3g} / N^{law.alpha:.3f}")
    for points, marker, color, label in ((fitted, "o", "C0", "fitted"), (held, "s", "C3", "held out")):
        if not points:
            continue
        ax.errorbar(
            [p.n for p in points],
            [p.mean for p in points],
            yerr=[p.spread for p in points],
            fmt=marker,
            color=color,
            capsize=3,
            label=f"{label} (mean, seed sd)" if max(len(p.losses) for p in points) > 1 else label,
        )
        for p in points:
            if len(p.losses) > 1:
                ax.plot([p.n] * len(p.losses), p.losses, ".", color=color, alpha=0.4, ms=4)
            ax.annotate(p.label, (p.n, p.mean), textcoords="offset points", xytext=(4, 6), fontsize=7)
    ax.set(xscale="log", xlabel="parameters N", ylabel="final validation loss (nats)")
    ax.legend(fontsize=7)
    if curves:
        ax2, cmap = axes[0, 1], plt.get_cmap("viridis")
        for i, (label, (tokens, losses)) in enumerate(curves.items()):
            ax2.plot(tokens, losses, "o-", ms=3, color=cmap(i / max(len(curves) - 1, 1)), label=label)
        ax2.set(xscale="log", xlabel="tokens trained", ylabel="validation loss (nats)", title=curves_title)
        ax2.legend(fontsize=7)
    return _save(fig, png)


def _save(fig, png: str | Path) -> Path:  # type: ignore[no-untyped-def]
    """Lay out, write (making the folder) and close a figure; the path written."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
