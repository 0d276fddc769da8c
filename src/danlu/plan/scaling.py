"""Published scaling laws, compute-optimal sizes, and the inference-aware optimum.

- Chinchilla (Hoffmann et al. 2022), approach 3: L(N, D) = E + A / N^alpha + B / D^beta with the
  published E 1.69, A 406.4, B 410.7, alpha 0.34, beta 0.28 (section D.2). Under C = 6 N D its
  optimum is N* = G (C/6)^a, D* = (C/6)^b / G with G = (alpha A / (beta B))^(1/(alpha+beta)),
  a = beta/(alpha+beta), b = alpha/(alpha+beta) (eq. 4). The replication of Besiroglu et al. 2024
  ("Chinchilla Scaling: A replication attempt") refits the same form to the paper's own points and
  gets E 1.82, A 482.01, B 2085.43, alpha 0.3478, beta 0.3658, whose optimum agrees with approaches 1-2;
  the published constants put the Gopher-budget optimum near 33B (the paper quotes 40B).
- Chinchilla approaches 1 and 2: N* = k C^a with a 0.50 and 0.49 (Table 2). Approach 1's k is fitted
  here to its own projections, Table 3 (400M at 1.92e19 FLOPs ... 10T at 1.30e28), so the law
  reproduces that table; approach 2's k is the one that gives its 63B at the Gopher budget (Table 3's
  comparison, 5.76e23 FLOPs).
- Kaplan et al. 2020: L(N) = (N_c/N)^0.076 with N_c 8.8e13 non-embedding parameters, L(D) =
  (D_c/D)^0.095 with D_c 5.4e13 tokens (eq. 1.1, 1.2), L(N, D) = ((N_c/N)^(a_N/a_D) + D_c/D)^a_D
  (eq. 1.5), and the compute-efficient N* = 1.3e9 (C / PF-day)^0.73 (Figure 14).
- The inference-aware optimum (Sardana et al. 2023, "Beyond Chinchilla-Optimal"): among the (N, D)
  that reach a target loss, the one that minimizes training plus inference FLOPs, 6 N D + 2 N D_inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from danlu.errors import ConfigError

PF_DAY = 1e15 * 86400  # FLOPs in a petaflop/s-day, Kaplan's compute unit


@dataclass(frozen=True)
class ParametricLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta (nats per token)."""

    name: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n: float, d: float) -> float:
        if n <= 0 or d <= 0:
            raise ConfigError(f"parameters and tokens must be > 0, got {n:g} and {d:g}")
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    @property
    def a(self) -> float:
        """Exponent of N* in C."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of D* in C."""
        return self.alpha / (self.alpha + self.beta)

    def optimum(self, flops: float) -> tuple[float, float]:
        """(N*, D*) minimizing L(N, D) subject to 6 N D = flops."""
        check_flops(flops)
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        return g * (flops / 6) ** self.a, (flops / 6) ** self.b / g


CHINCHILLA = ParametricLaw("chinchilla", E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
CHINCHILLA_REFIT = ParametricLaw("chinchilla-refit", E=1.82, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)

# Chinchilla Table 3 (approach 1 projections): parameters, FLOPs, tokens
CHINCHILLA_TABLE3 = (
    (400e6, 1.92e19, 8.0e9),
    (1e9, 1.21e20, 20.2e9),
    (10e9, 1.23e22, 205.1e9),
    (67e9, 5.76e23, 1.5e12),
    (175e9, 3.85e24, 3.7e12),
    (280e9, 9.90e24, 5.9e12),
    (520e9, 3.43e25, 11.0e12),
    (1e12, 1.27e26, 21.2e12),
    (10e12, 1.30e28, 216.2e12),
)
GOPHER_FLOPS = 5.76e23


@dataclass(frozen=True)
class PowerLawOptimum:
    """N* = k C^a and D* = C / (6 N*): Chinchilla's approaches 1 and 2."""

    name: str
    k: float
    a: float

    def optimum(self, flops: float) -> tuple[float, float]:
        check_flops(flops)
        n = self.k * flops**self.a
        return n, flops / (6 * n)


def _fit_k(a: float) -> float:
    """k minimizing the squared log error of N* = k C^a over Chinchilla's Table 3."""
    logs = [math.log(n) - a * math.log(c) for n, c, _ in CHINCHILLA_TABLE3]
    return math.exp(sum(logs) / len(logs))


APPROACH1 = PowerLawOptimum("chinchilla-approach1", _fit_k(0.50), 0.50)
APPROACH2 = PowerLawOptimum("chinchilla-approach2", 63e9 / GOPHER_FLOPS**0.49, 0.49)


@dataclass(frozen=True)
class KaplanLaw:
    """Kaplan et al. 2020; N counts non-embedding parameters."""

    n_c: float = 8.8e13
    alpha_n: float = 0.076
    d_c: float = 5.4e13
    alpha_d: float = 0.095
    # Figure 14: compute-efficient N* = k (C / PF-day)^a
    k_opt: float = 1.3e9
    a_opt: float = 0.73
    name: str = "kaplan"

    def loss(self, n: float, d: float | None = None) -> float:
        """L(N) when d is None (trained to convergence), else L(N, D), eq. 1.5."""
        if n <= 0 or (d is not None and d <= 0):
            raise ConfigError("parameters and tokens must be > 0")
        if d is None:
            return (self.n_c / n) ** self.alpha_n
        return ((self.n_c / n) ** (self.alpha_n / self.alpha_d) + self.d_c / d) ** self.alpha_d

    def optimum(self, flops: float) -> tuple[float, float]:
        check_flops(flops)
        n = self.k_opt * (flops / PF_DAY) ** self.a_opt
        return n, flops / (6 * n)


KAPLAN = KaplanLaw()
LAWS: dict[str, ParametricLaw | PowerLawOptimum | KaplanLaw] = {
    law.name: law for law in (CHINCHILLA, CHINCHILLA_REFIT, APPROACH1, APPROACH2, KAPLAN)
}


def check_flops(flops: float) -> None:
    if not flops > 0 or not math.isfinite(flops):
        raise ConfigError(f"a compute budget must be a positive number of FLOPs, got {flops!r}")


@dataclass(frozen=True)
class InferenceAwareOptimum:
    n: float
    d: float
    loss: float
    train_flops: float
    inference_flops: float

    @property
    def total_flops(self) -> float:
        return self.train_flops + self.inference_flops


def tokens_for_loss(law: ParametricLaw, n: float, loss: float) -> float:
    """The D at which a model of n parameters reaches `loss` (inf when it never does)."""
    gap = loss - law.E - law.A / n**law.alpha
    return (law.B / gap) ** (1 / law.beta) if gap > 0 else math.inf


def inference_aware_optimum(
    law: ParametricLaw, loss: float, inference_tokens: float, points: int = 4001
) -> InferenceAwareOptimum:
    """Minimize 6 N D + 2 N D_inf over the models (N, D) that reach `loss` (Sardana et al. 2023).

    The cost is a smooth function of log N with one minimum; it is evaluated on a fine log grid over
    every N that can reach the loss and refined around the best point."""
    if inference_tokens < 0:
        raise ConfigError(f"inference tokens must be >= 0, got {inference_tokens:g}")
    if loss <= law.E:
        raise ConfigError(
            f"loss {loss:.3f} is at or below the law's irreducible loss E = {law.E}; no model reaches it"
        )
    # the smallest N that reaches the loss with infinite data, and a generous upper end
    n_min = (law.A / (loss - law.E)) ** (1 / law.alpha)

    def cost(log_n: np.ndarray) -> np.ndarray:
        n = np.exp(log_n)
        gap = loss - law.E - law.A / n**law.alpha
        d = np.where(gap > 0, (law.B / np.maximum(gap, 1e-300)) ** (1 / law.beta), np.inf)
        return 6 * n * d + 2 * n * inference_tokens

    lo, hi = math.log(n_min) + 1e-9, math.log(n_min) + math.log(1e6)
    for _ in range(3):  # grid, then two finer grids around the minimum
        grid = np.linspace(lo, hi, points)
        best = int(np.argmin(cost(grid)))
        step = grid[1] - grid[0]
        lo, hi = grid[max(best - 2, 0)], grid[min(best + 2, points - 1)]
        if step < 1e-9:
            break
    n = math.exp(float(grid[best]))
    d = tokens_for_loss(law, n, loss)
    return InferenceAwareOptimum(n, d, loss, 6 * n * d, 2 * n * inference_tokens)
