"""Scaling laws fitted to your own runs (`danlu plan fit RUN...`).

Each run directory gives its model (model/config.json, or its last checkpoint's), its recipe
(config.yaml: sequence length, batch, warmup) and its evaluations (metrics.jsonl: val_loss at a step).
An evaluation at step s is a point (N, D, L): N parameters, D = tokens trained so far, L validation
loss. With a constant LR after warmup (as recipes/plan-sweep.yaml trains) each such point is also the
end of a shorter run of the same recipe, so one run gives a whole curve; points inside the first
2 x warmup steps are left out.

- L(N, D) = E + A / N^alpha + B / D^beta (Chinchilla's approach 3) is fitted by least squares on L:
  for fixed (alpha, beta) the model is linear in (E, A, B), so a grid over the exponents, refined
  twice around the best, with a linear solve at each point finds the global least-squares fit
  (variable projection).
- IsoFLOP curves (Chinchilla's approach 2): at each compute level that at least three runs pass
  through, every run's loss interpolated (in log D) at D = C / (FLOPs per token), a parabola in
  log N through those points, its vertex N*(C); then N* = k C^a by least squares in logs.
- Confidence intervals: residual bootstrap (resampled residuals added to the fitted values, the fit
  repeated), 95% percentile intervals; a case bootstrap over 5-6 runs leaves too few distinct sizes.
- A held-out run's final loss is predicted from the law fitted to the others.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from danlu.config import load_yaml
from danlu.errors import DataError
from danlu.model.config import ModelConfig
from danlu.plan.flops import model_shape


@dataclass(frozen=True)
class RunCurve:
    path: str
    n_params: int
    n_non_embedding: int
    flops_per_token: int
    # (tokens trained, validation loss) after warmup, in order
    tokens: tuple[float, ...]
    losses: tuple[float, ...]

    @property
    def final_loss(self) -> float:
        return self.losses[-1]

    @property
    def final_tokens(self) -> float:
        return self.tokens[-1]

    @property
    def final_flops(self) -> float:
        return self.tokens[-1] * self.flops_per_token


def _model_config(run: Path) -> dict[str, Any]:
    candidates = [run / "model" / "config.json"]
    checkpoints = sorted((run / "checkpoints").glob("step-*/config.json"))
    candidates += checkpoints[::-1]
    for path in candidates:
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise DataError(f"{path} is unreadable ({e})") from None
            return data.get("model", data) if isinstance(data, dict) else {}
    raise DataError(f"{run} holds no model/config.json or checkpoint config; is it a finished run dir?")


def read_run(path: str | Path, params: str = "total") -> RunCurve:
    """The evaluation curve of a run directory (see the module docstring)."""
    run = Path(path)
    metrics = run / "metrics.jsonl"
    recipe = run / "config.yaml"
    for need in (metrics, recipe):
        if not need.is_file():
            raise DataError(f"{need} not found; `danlu plan fit` takes run directories of danlu pretrain")
    train = load_yaml(recipe).get("train", {})
    seq_len = int(train.get("seq_len", 256))
    per_step = seq_len * int(train.get("batch_size", 16)) * int(train.get("grad_accum", 1))
    skip = 2 * int(train.get("warmup_steps", 0))
    known = {f.name for f in fields(ModelConfig)}
    cfg = ModelConfig(**{k: v for k, v in _model_config(run).items() if k in known})
    shape = model_shape(cfg, cfg.vocab_size or None)
    points: dict[int, float] = {}
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if isinstance(rec, dict) and "val_loss" in rec and rec.get("step", 0) > skip:
            points[int(rec["step"])] = float(rec["val_loss"])
    if not points:
        raise DataError(f"{metrics} has no evaluation after step {skip} (2 x warmup); train longer")
    steps = sorted(points)
    n = shape.n_non_embedding if params == "non_embedding" else shape.n_params
    return RunCurve(
        str(run),
        n,
        shape.n_non_embedding,
        shape.flops_per_token(seq_len),
        tuple(float(s * per_step) for s in steps),
        tuple(points[s] for s in steps),
    )


# ------------------------------------------------------------------------------------- L(N, D) fit


@dataclass(frozen=True)
class LawFit:
    E: float
    A: float
    alpha: float
    B: float
    beta: float
    rmse: float

    def loss(self, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray:
        return self.E + self.A * np.power(n, -self.alpha) + self.B * np.power(d, -self.beta)


def _grid_fit(
    n: np.ndarray, d: np.ndarray, y: np.ndarray, alphas: np.ndarray, betas: np.ndarray
) -> tuple[float, float, float, float, float, float]:
    """(sse, E, A, B, alpha, beta) of the best linear least-squares fit over the exponent grid, with
    A, B >= 0: the normal equations of every grid point solved at once. With A = 0 (or B = 0) the
    loss does not fall with N (or D) in these runs, and alpha (or beta) is not determined."""
    na = n[None, :] ** -alphas[:, None]  # [a, P]
    db = d[None, :] ** -betas[:, None]  # [b, P]
    ka, kb = len(alphas), len(betas)
    gram = np.empty((ka, kb, 3, 3))
    gram[..., 0, 0] = len(y)
    gram[..., 0, 1] = gram[..., 1, 0] = na.sum(1)[:, None]
    gram[..., 0, 2] = gram[..., 2, 0] = db.sum(1)[None, :]
    gram[..., 1, 1] = (na * na).sum(1)[:, None]
    gram[..., 2, 2] = (db * db).sum(1)[None, :]
    gram[..., 1, 2] = gram[..., 2, 1] = na @ db.T
    rhs = np.empty((ka, kb, 3))
    rhs[..., 0] = y.sum()
    rhs[..., 1] = (na @ y)[:, None]
    rhs[..., 2] = (db @ y)[None, :]
    with np.errstate(all="ignore"):
        coef = np.linalg.solve(gram + 1e-12 * np.eye(3), rhs[..., None])[..., 0]
        sse = y @ y - (coef * rhs).sum(-1)
    sse = np.where((coef[..., 1] >= 0) & (coef[..., 2] >= 0) & np.isfinite(sse), sse, np.inf)
    # where the free solution has A < 0 or B < 0 the constrained optimum lies on a face of the box
    # (the objective is convex): A = 0, B = 0, or both; solve each face and keep what is feasible
    yy, total = y @ y, y.sum()
    for k, basis, rhs_k in ((2, db, db @ y), (1, na, na @ y)):  # the face without A, then without B
        s1, s2 = basis.sum(1), (basis * basis).sum(1)
        with np.errstate(all="ignore"):
            det = len(y) * s2 - s1 * s1
            e_k = (s2 * total - s1 * rhs_k) / det
            c_k = (len(y) * rhs_k - s1 * total) / det
            sse_k = yy - e_k * total - c_k * rhs_k
        sse_k = np.where((c_k >= 0) & np.isfinite(sse_k), sse_k, np.inf)
        face = sse_k[None, :] if k == 2 else sse_k[:, None]
        better = face < sse
        sse = np.where(better, face, sse)
        fill = np.zeros((ka, kb, 3))
        fill[..., 0] = e_k[None, :] if k == 2 else e_k[:, None]
        fill[..., k] = c_k[None, :] if k == 2 else c_k[:, None]
        coef = np.where(better[..., None], fill, coef)
    flat = yy - total * total / len(y)  # A = B = 0: the mean
    if not np.isfinite(sse).any() or flat < sse.min():
        return float(flat), float(total / len(y)), 0.0, 0.0, float(alphas[0]), float(betas[0])
    i, j = np.unravel_index(int(np.argmin(sse)), sse.shape)
    e, a, b = coef[i, j]
    return float(sse[i, j]), float(e), float(a), float(b), float(alphas[i]), float(betas[j])


def fit_law(n: np.ndarray, d: np.ndarray, y: np.ndarray) -> LawFit:
    """Least-squares L(N, D) = E + A N^-alpha + B D^-beta by variable projection over the exponents."""
    n, d, y = (np.asarray(v, dtype=np.float64) for v in (n, d, y))
    if len(np.unique(n)) < 2 or len(y) < 5:
        raise DataError("fitting L(N, D) needs at least 5 points from at least 2 model sizes")
    # N and D scaled to about 1, so that the normal equations are well conditioned
    n_scale, d_scale = float(np.exp(np.log(n).mean())), float(np.exp(np.log(d).mean()))
    ns, ds = n / n_scale, d / d_scale
    lo_a, hi_a, lo_b, hi_b = 0.01, 2.0, 0.01, 2.0
    best = _grid_fit(ns, ds, y, np.linspace(lo_a, hi_a, 81), np.linspace(lo_b, hi_b, 81))
    for _ in range(3):
        step_a, step_b = (hi_a - lo_a) / 80, (hi_b - lo_b) / 80
        lo_a, hi_a = max(best[4] - 2 * step_a, 1e-3), best[4] + 2 * step_a
        lo_b, hi_b = max(best[5] - 2 * step_b, 1e-3), best[5] + 2 * step_b
        best = _grid_fit(ns, ds, y, np.linspace(lo_a, hi_a, 41), np.linspace(lo_b, hi_b, 41))
    sse, e, a, b, alpha, beta = best
    if not math.isfinite(sse):
        raise DataError("no L(N, D) with positive A and B fits these runs (loss must fall with N and D)")
    # back to unscaled N and D: A (N / s)^-alpha = (A s^alpha) N^-alpha
    return LawFit(e, a * n_scale**alpha, alpha, b * d_scale**beta, beta, math.sqrt(max(sse, 0.0) / len(y)))


def bootstrap(
    fit: Any,
    x: tuple[np.ndarray, ...],
    y: np.ndarray,
    predict: Any,
    refit: Any,
    n_boot: int,
    seed: int,
    n_coef: int = 0,
) -> list[Any]:
    """Refits on fitted values plus resampled residuals (residual bootstrap). With n_coef > 0 the
    residuals are first scaled by sqrt(P / (P - n_coef)): least squares leaves them smaller than the
    noise by about that factor, which matters when the points are few."""
    rng = np.random.default_rng(seed)
    fitted = predict(fit, *x)
    resid = y - fitted
    if 0 < n_coef < len(y):
        resid = resid * math.sqrt(len(y) / (len(y) - n_coef))
    out = []
    for _ in range(n_boot):
        y_star = fitted + rng.choice(resid, size=len(resid), replace=True)
        try:
            out.append(refit(*x, y_star))
        except DataError:
            continue
    return out


def interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    if not values:
        return (math.nan, math.nan)
    q = (1 - level) / 2
    return float(np.quantile(values, q)), float(np.quantile(values, 1 - q))


# ------------------------------------------------------------------------ L(N) at a fixed token count


@dataclass(frozen=True)
class SizeLaw:
    """L(N) = E + A / N^alpha: the final loss of runs that all trained on the same tokens."""

    E: float
    A: float
    alpha: float
    rmse: float

    def loss(self, n: np.ndarray | float) -> np.ndarray:
        return self.E + self.A * np.power(n, -self.alpha)


def _size_grid(ns: np.ndarray, y: np.ndarray, alphas: np.ndarray) -> tuple[float, float, float, float]:
    """(sse, E, A, alpha) of the best fit over the alpha grid; for each alpha the model is a line in
    x = N^-alpha, solved in closed form with A >= 0 (A = 0: the mean)."""
    x = ns[None, :] ** -alphas[:, None]
    xc = x - x.mean(1, keepdims=True)
    yc = y - y.mean()
    with np.errstate(all="ignore"):
        a = np.maximum((xc @ yc) / (xc * xc).sum(1), 0.0)
    a = np.where(np.isfinite(a), a, 0.0)
    e = y.mean() - a * x.mean(1)
    sse = ((y[None, :] - e[:, None] - a[:, None] * x) ** 2).sum(1)
    i = int(np.argmin(sse))
    return float(sse[i]), float(e[i]), float(a[i]), float(alphas[i])


def fit_size_law(n: np.ndarray, y: np.ndarray) -> SizeLaw:
    """Least-squares L(N) = E + A N^-alpha (A >= 0) by variable projection over alpha in (0, 4]."""
    n, y = np.asarray(n, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(np.unique(n)) < 3:
        raise DataError("fitting L(N) = E + A / N^alpha needs runs of at least 3 model sizes")
    scale = float(np.exp(np.log(n).mean()))  # N near 1, so N^-alpha stays well conditioned
    ns = n / scale
    lo, hi = 1e-3, 4.0
    best = _size_grid(ns, y, np.linspace(lo, hi, 401))
    for _ in range(3):
        step = (hi - lo) / 400
        lo, hi = max(best[3] - 2 * step, 1e-4), best[3] + 2 * step
        best = _size_grid(ns, y, np.linspace(lo, hi, 401))
    sse, e, a, alpha = best
    return SizeLaw(e, a * scale**alpha, alpha, math.sqrt(sse / len(y)))


@dataclass(frozen=True)
class SizeLawReport:
    law: SizeLaw
    intervals: dict[str, tuple[float, float]]  # 95% of E, A, alpha
    boots: list[SizeLaw]
    resampling: str = "residuals"  # what the bootstrap drew: "residuals" or "seeds" (fit_size_seeds)

    def predict(self, n: float) -> tuple[float, float, float]:
        """(prediction, 95% low, 95% high) of the final loss at N parameters."""
        lo, hi = interval([float(b.loss(n)) for b in self.boots])
        return float(self.law.loss(n)), lo, hi

    def error_interval(self, n: float, measured: np.ndarray, seed: int = 1) -> tuple[float, float]:
        """95% interval of (law / measured mean - 1) at N, where `measured` are one size's final losses
        over its seeds: each bootstrap law set against a mean of that size's resampled seeds, so the
        measurement's own seed noise counts as well as the fit's."""
        rng = np.random.default_rng(seed)
        measured = np.asarray(measured, dtype=np.float64)
        dev = _scaled_deviations(measured)
        errors = [
            float(b.loss(n)) / (measured.mean() + rng.choice(dev, len(dev)).mean()) - 1 for b in self.boots
        ]
        return interval(errors)


def fit_size_runs(n: np.ndarray, y: np.ndarray, n_boot: int = 1000, seed: int = 0) -> SizeLawReport:
    """fit_size_law with residual-bootstrap intervals (residuals scaled for the 3 fitted coefficients)."""
    n, y = np.asarray(n, dtype=np.float64), np.asarray(y, dtype=np.float64)
    law = fit_size_law(n, y)
    boots = bootstrap(law, (n,), y, lambda f, a: f.loss(a), fit_size_law, n_boot, seed, n_coef=3)
    intervals = {k: interval([getattr(b, k) for b in boots]) for k in ("E", "A", "alpha")}
    return SizeLawReport(law, intervals, boots)


def _scaled_deviations(losses: np.ndarray) -> np.ndarray:
    """Deviations from the mean scaled by sqrt(k / (k - 1)): a mean of k values resampled from k is
    less spread than a mean of k fresh seeds by that factor (the residual scaling's small-sample twin)."""
    k = len(losses)
    if k < 2:
        return np.zeros(1)
    return (losses - losses.mean()) * math.sqrt(k / (k - 1))


def fit_size_seeds(
    n: np.ndarray, losses: list[np.ndarray], n_boot: int = 1000, seed: int = 0
) -> SizeLawReport:
    """L(N) fitted to each size's final loss averaged over its seeds (`losses[i]`: size i's final losses,
    one per seed). With two or more seeds at every size the bootstrap resamples the seeds within each
    size (the spread between seeds is the noise a mean carries); with one seed anywhere it falls back to
    the residual bootstrap of fit_size_runs."""
    n = np.asarray(n, dtype=np.float64)
    losses = [np.asarray(v, dtype=np.float64) for v in losses]
    if len(losses) != len(n) or any(len(v) == 0 for v in losses):
        raise DataError("fit_size_seeds needs one non-empty list of final losses per size")
    means = np.array([v.mean() for v in losses])
    if min(len(v) for v in losses) < 2:
        return fit_size_runs(n, means, n_boot, seed)
    law = fit_size_law(n, means)
    rng = np.random.default_rng(seed)
    devs = [_scaled_deviations(v) for v in losses]
    boots = []
    for _ in range(n_boot):
        y_star = means + np.array([rng.choice(d, len(d)).mean() for d in devs])
        try:
            boots.append(fit_size_law(n, y_star))
        except DataError:
            continue
    intervals = {k: interval([getattr(b, k) for b in boots]) for k in ("E", "A", "alpha")}
    return SizeLawReport(law, intervals, boots, "seeds")


# ----------------------------------------------------------------------------------------- IsoFLOPs


@dataclass(frozen=True)
class IsoFlop:
    flops: float
    n: tuple[float, ...]
    losses: tuple[float, ...]
    # parabola in log N: L = c2 (log N)^2 + c1 log N + c0; N* at the vertex (nan: not inside the range)
    coef: tuple[float, float, float]
    n_opt: float


def _loss_at(run: RunCurve, tokens: float) -> float | None:
    t = np.log(np.asarray(run.tokens))
    if len(t) < 2 or not t[0] <= math.log(tokens) <= t[-1]:
        return None
    return float(np.interp(math.log(tokens), t, np.asarray(run.losses)))


def isoflop_curves(runs: list[RunCurve], levels: int = 6) -> list[IsoFlop]:
    """IsoFLOP slices through the runs' curves at `levels` log-spaced compute levels."""
    lo = max(min(r.tokens) * r.flops_per_token for r in runs)
    hi = min(r.final_flops for r in runs)
    covered = [r for r in runs if r.tokens[0] * r.flops_per_token <= hi]
    if len(covered) < 3:
        lo = min(r.tokens[0] * r.flops_per_token for r in runs)
        hi = max(r.final_flops for r in runs)
    out = []
    for c in np.geomspace(min(lo, hi), hi, levels):
        pts = [(r.n_params, _loss_at(r, c / r.flops_per_token)) for r in runs]
        pts = [(n, loss) for n, loss in pts if loss is not None]
        if len(pts) < 3:
            continue
        ln = np.log([n for n, _ in pts])
        ys = np.array([loss for _, loss in pts])
        c2, c1, c0 = np.polyfit(ln, ys, 2)
        vertex = -c1 / (2 * c2) if c2 > 0 else math.nan
        inside = c2 > 0 and ln.min() <= vertex <= ln.max()
        out.append(
            IsoFlop(
                float(c),
                tuple(float(n) for n, _ in pts),
                tuple(map(float, ys)),
                (float(c2), float(c1), float(c0)),
                math.exp(vertex) if inside else math.nan,
            )
        )
    return out


def fit_power(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(k, a) of y = k x^a by least squares in logs."""
    a, log_k = np.polyfit(np.log(x), np.log(y), 1)
    return float(math.exp(log_k)), float(a)


# ------------------------------------------------------------------------------------------ the fit


@dataclass(frozen=True)
class FitReport:
    runs: list[RunCurve]
    law: LawFit
    intervals: dict[str, tuple[float, float]]
    isoflops: list[IsoFlop]
    n_opt_law: tuple[float, float] | None  # (k, a) of N* = k C^a
    n_opt_interval: tuple[float, float] | None  # 95% interval of a
    holdout: list[dict[str, float | str]]
    n_boot: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "law": self.law.__dict__,
            "intervals_95": self.intervals,
            "bootstrap_samples": self.n_boot,
            "runs": [
                {"path": r.path, "params": r.n_params, "tokens": r.final_tokens, "final_loss": r.final_loss}
                for r in self.runs
            ],
            "isoflops": [{"flops": c.flops, "n_opt": c.n_opt, "points": len(c.n)} for c in self.isoflops],
            "n_opt_power_law": self.n_opt_law,
            "n_opt_exponent_interval_95": self.n_opt_interval,
            "holdout": self.holdout,
        }


def holdout_record(run: RunCurve, predicted: float, lo: float, hi: float) -> dict[str, float | str]:
    """A held-out run's measured final loss beside the law's prediction and 95% interval."""
    return {
        "path": run.path,
        "params": run.n_params,
        "tokens": run.final_tokens,
        "measured": run.final_loss,
        "predicted": predicted,
        "predicted_lo": lo,
        "predicted_hi": hi,
        "error": predicted / run.final_loss - 1,
    }


def fit_runs(
    runs: list[RunCurve], holdout: list[RunCurve] | None = None, n_boot: int = 200, seed: int = 0
) -> FitReport:
    if len({r.n_params for r in runs}) < 2:
        raise DataError("fitting a scaling law needs runs of at least 2 model sizes")
    n = np.concatenate([[r.n_params] * len(r.tokens) for r in runs]).astype(np.float64)
    d = np.concatenate([r.tokens for r in runs]).astype(np.float64)
    y = np.concatenate([r.losses for r in runs]).astype(np.float64)
    law = fit_law(n, d, y)
    boots = bootstrap(law, (n, d), y, lambda f, a, b: f.loss(a, b), fit_law, n_boot, seed)
    intervals = {k: interval([getattr(b, k) for b in boots]) for k in ("E", "A", "alpha", "B", "beta")}
    held = []
    for r in holdout or []:
        pred = float(law.loss(r.n_params, r.final_tokens))
        lo, hi = interval([float(b.loss(r.n_params, r.final_tokens)) for b in boots])
        held.append(holdout_record(r, pred, lo, hi))
    isos = isoflop_curves(runs)
    opt = [(c.flops, c.n_opt) for c in isos if math.isfinite(c.n_opt)]
    n_opt_law = n_opt_interval = None
    if len(opt) >= 2:
        cs, ns = np.array([c for c, _ in opt]), np.array([v for _, v in opt])
        n_opt_law = fit_power(cs, ns)
        k, a = n_opt_law
        fitted = np.log(k) + a * np.log(cs)
        resid = np.log(ns) - fitted
        rng = np.random.default_rng(seed)
        slopes = [fit_power(cs, np.exp(fitted + rng.choice(resid, len(resid))))[1] for _ in range(n_boot)]
        n_opt_interval = interval(slopes)
    return FitReport(runs, law, intervals, isos, n_opt_law, n_opt_interval, held, len(boots))
