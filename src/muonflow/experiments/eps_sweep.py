r"""Experiment 7 — ε interpolates between idealized Muon (ε → 0) and heavy ball (ε → ∞).

The relativistic potential :math:`K_\varepsilon(P) = \sum_i \sqrt{\sigma_i^2+\varepsilon^2} -
\varepsilon` sits between two classical methods, compared here at the level of the ``muon``
scheme's iterates (symplectic Euler, i.e. Muon with sum-form momentum), where both limits are
well defined — the nuclear flow itself is non-smooth (its map :math:`UV^\top` jumps where ``P``
loses rank), so the continuous-time comparison is avoided.

*ε → 0: idealized Muon.* :math:`\nabla K_\varepsilon(P) = U\,\mathrm{diag}(\sigma/\sqrt{\sigma^2+
\varepsilon^2})V^\top` differs from the polar factor :math:`UV^\top` (``Nuclear``) by
:math:`\varepsilon^2/(2\sigma^2)` per direction. Along a nuclear trajectory whose momenta keep
:math:`\sigma_{\min}(P_k) \ge s` the step map is differentiable, so the iterates of the two
schemes at the same ``h`` differ by :math:`D\varepsilon^2 (1 + O(\varepsilon^2/s^2))`: fitted
order 2 for :math:`\varepsilon \le 0.1 s`.

*ε → ∞: heavy ball, after rescaling.* With :math:`P = \sqrt\varepsilon Q`,

.. math::
    \sqrt\varepsilon\,\nabla K_\varepsilon(\sqrt\varepsilon Q)
    = Q\,(I + Q^\top Q/\varepsilon)^{-1/2} = Q + O(\|Q\|^2/\varepsilon),

so the flow with damping :math:`\gamma/\sqrt\varepsilon`, observed at time :math:`\sqrt\varepsilon
s`, is the heavy-ball flow :math:`W'' + \gamma W' + \nabla J = 0` (``Quadratic`` kinetic energy,
damping ``γ``) at time ``s``: ``t = √ε s``, ``γ_ε = γ/√ε``, ``P = √ε Q``. Discretely: the
``muon`` scheme with ``Relativistic(ε)``, step ``√ε h`` and damping ``γ/√ε`` (the same
``β = 1 − γh``) started at ``√ε Q₀`` reproduces heavy ball with step ``h``
(:math:`Q \leftarrow \beta Q - h\nabla J;\ W \leftarrow W + hQ`) up to
:math:`O(\max_k\|Q_k\|_{op}^2/\varepsilon)`: fitted order −1. In optimizer terms: Muon with a
huge ``ε`` is SGD with momentum.

Problem: :math:`J = \tfrac12\langle W, AW\rangle`, ``A`` 8×8, ``W`` 8×4, started far from the
minimizer (the nuclear run keeps well-conditioned momenta).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..dynamics import HamiltonianFlow, integrate
from ..spectral import Nuclear, Quadratic, Relativistic
from ._dynamics_problems import F64, QuadraticObjective, log_slope, single_thread, spd
from .base import Check, Progress, experiment, require, within


@dataclass(frozen=True)
class Config:
    m: int = 8                  # rows of W (size of A)
    n: int = 4                  # columns
    a_min: float = 0.5          # eigenvalues of A: geometric in [a_min, a_max]
    a_max: float = 4.0
    w0: float = 3.0             # W₀ ~ w0·N(0,1): far from the minimizer W* = 0
    h: float = 0.05             # step of the ε → 0 comparison (and of heavy ball)
    gamma: float = 1.0          # damping γ (heavy ball's; the relativistic run uses γ/√ε)
    steps: int = 150            # iterations compared
    small: tuple[float, ...] = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3)  # ε / min_k σ_min(P_k^nuclear)
    large: tuple[float, ...] = (3e1, 1e2, 3e2, 1e3, 3e3)       # ε / max_k ‖Q_k‖_op² (heavy ball)
    seed: int = 0


def run_muon(
    flow: HamiltonianFlow, W0: Tensor, P0: Tensor, h: float, steps: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``steps`` iterations of the muon scheme: ``W_k, P_k: [steps+1, m, n]`` and ``J_k``."""
    traj = integrate(flow, W0, P0, steps * h, h=h, method="muon", record_states=True)
    assert isinstance(traj.Ws, Tensor) and isinstance(traj.Ps, Tensor)
    return traj.Ws, traj.Ps, traj.J


def distance(X: Tensor, Y: Tensor) -> float:
    """``max_k ‖X_k − Y_k‖_F`` over the iterates."""
    return float(torch.linalg.matrix_norm(X - Y).max())


def validate(cfg: Config) -> None:
    require(len(cfg.small) >= 2 and len(cfg.large) >= 2, "small and large need >= 2 values")
    require(max(cfg.small) <= 0.1,
            f"small (ε/s_min) must be <= 0.1 for the ε² law, got {cfg.small}")
    require(min(cfg.large) >= 30, f"large (ε/‖Q‖²) must be >= 30 for the 1/ε law, got {cfg.large}")
    require(cfg.gamma * cfg.h <= 1, f"γh must be <= 1, got {cfg.gamma * cfg.h}")


def simulate(cfg: Config, progress: Progress) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(cfg.seed)
    A = spd(np.geomspace(cfg.a_min, cfg.a_max, cfg.m).tolist(), gen)
    obj = QuadraticObjective(A)
    W0 = cfg.w0 * torch.randn(cfg.m, cfg.n, generator=gen, dtype=F64)
    P0 = torch.zeros_like(W0)
    h, N, g = cfg.h, cfg.steps, cfg.gamma
    total = 2 + len(cfg.small) + len(cfg.large)
    with single_thread():
        # ε → 0 against the nuclear (polar-factor) scheme at the same h
        progress(0.0, "nuclear scheme")
        W_nuc, P_nuc, J_nuc = run_muon(HamiltonianFlow(obj, Nuclear(), g), W0, P0, h, N)
        s_min = float(torch.linalg.svdvals(P_nuc[1:]).min())  # P₀ = 0 excluded
        d_small, J_small = [], []
        for i, rho in enumerate(cfg.small):
            progress((1 + i) / total, f"ε = {rho:g}·s_min")
            W, _, J = run_muon(HamiltonianFlow(obj, Relativistic(rho * s_min), g), W0, P0, h, N)
            d_small.append(distance(W, W_nuc))
            J_small.append(J)
        # ε → ∞ against heavy ball (Quadratic kinetic) with time, damping and momentum rescaled
        progress((1 + len(cfg.small)) / total, "heavy ball")
        W_hb, Q_hb, J_hb = run_muon(HamiltonianFlow(obj, Quadratic(), g), W0, P0, h, N)
        q_max = float(torch.linalg.matrix_norm(Q_hb, 2).max())
        d_large, J_large = [], []
        for i, rho in enumerate(cfg.large):
            progress((2 + len(cfg.small) + i) / total, f"ε = {rho:g}·‖Q‖²")
            eps = rho * q_max**2
            r = math.sqrt(eps)
            flow = HamiltonianFlow(obj, Relativistic(eps), g / r)  # damping γ/√ε
            W, _, J = run_muon(flow, W0, r * P0, r * h, N)  # step √ε·h, momentum √ε·Q
            d_large.append(distance(W, W_hb))
            J_large.append(J)
    progress(1.0, "done")
    return {
        "s_min": s_min, "q_max": q_max,
        "distance_to_nuclear": np.array(d_small), "distance_to_heavy_ball": np.array(d_large),
        "J_nuclear": J_nuc, "J_heavy_ball": J_hb,
        "J_small_first": J_small[0], "J_large_first": J_large[0],
    }


def checks(s: dict[str, Any], cfg: Config) -> dict[str, Check]:
    return {
        "nuclear_limit_order": within(
            log_slope(cfg.small, s["distance_to_nuclear"]), 1.95, 2.05, kind="claim",
            why="the map error is ε²/(2σ²)·(1 − (3/4)(ε/σ)² + …) and the scheme is "
            "differentiable while σ_min(P_k) >= s: d = Dε²(1 + O((ε/s)²)), a relative "
            "correction <= 1% for ε <= 0.1 s, so the fitted order is 2 ± 0.05.",
            catches="a potential whose ε → 0 limit is not the polar factor UVᵀ (e.g. Huber's "
            "map converges at order 1 in ε), or an ε convention error (ε² for ε: order 4).",
        ),
        "heavy_ball_limit_order": within(
            log_slope(cfg.large, s["distance_to_heavy_ball"]), -1.05, -0.95, kind="claim",
            why="√ε∇K_ε(√εQ) = Q(I + QᵀQ/ε)^{-1/2} = Q − Q QᵀQ/(2ε) + O(ε⁻²): d = "
            "D/ε·(1 + O(‖Q‖²/ε)), a relative correction <= 1/30 for ε >= 30‖Q‖², so the "
            "fitted order is −1 ± 0.05.",
            catches="a map whose large-ε limit is not linear in P (not heavy ball), or a wrong "
            "rescaling of time, damping or momentum (no convergence at all).",
        ),
    }


def notes(s: dict[str, Any], cfg: Config) -> list[str]:
    return [
        "heavy-ball scaling: Relativistic(ε) with step √ε·h, damping γ/√ε and momentum √ε·Q "
        "(time t = √ε·s) runs heavy ball W'' + γW' + ∇J = 0 at step h up to O(‖Q‖²/ε), since "
        "√ε∇K_ε(√εQ) = Q(I + QᵀQ/ε)^(-1/2); β = 1 − γh is unchanged."
    ]


def figure(s: dict[str, Any], cfg: Config) -> dict[str, Any]:
    from . import _plot

    d_small, d_large = s["distance_to_nuclear"], s["distance_to_heavy_ball"]
    o_small, o_large = log_slope(cfg.small, d_small), log_slope(cfg.large, d_large)
    fig, (a0, a1, a2) = _plot.figure(3, width=4.4)
    x = np.array(cfg.small)
    a0.loglog(x, d_small, "o-", label=f"muon scheme (fit {o_small:.3f})")
    a0.loglog(x, d_small[0] * (x / x[0]) ** 2, "k--", lw=1, label="∝ ε²")
    a0.set(xlabel="ε / min_k σ_min(P_k)", ylabel="max_k ‖W_k(ε) − W_k(nuclear)‖_F",
           title="ε → 0: idealized Muon")
    a0.legend(fontsize=7)
    y = np.array(cfg.large)
    a1.loglog(y, d_large, "s-", color="C1", label=f"muon scheme (fit {o_large:.3f})")
    a1.loglog(y, d_large[0] * y[0] / y, "k--", lw=1, label="∝ 1/ε")
    a1.set(xlabel="ε / max_k ‖Q_k‖²_op", ylabel="max_k ‖W_k(ε) − W_k(heavy ball)‖_F",
           title="ε → ∞ (t = √ε s, γ/√ε): heavy ball")
    a1.legend(fontsize=7)
    k = np.arange(cfg.steps + 1)
    a2.semilogy(k, s["J_nuclear"], "k-", lw=2, label="nuclear (idealized Muon)")
    a2.semilogy(k, s["J_small_first"], "--", label=f"ε = {cfg.small[0]:g}·s_min")
    a2.semilogy(k, s["J_heavy_ball"], "C1-", lw=2, label="heavy ball")
    a2.semilogy(k, s["J_large_first"], "--", color="C3",
                label=f"ε = {cfg.large[0]:g}·‖Q‖² (rescaled)")
    a2.set(xlabel="iteration k", ylabel="objective J(W_k)", title="The two limits")
    a2.legend(fontsize=7)
    return {"eps_sweep.png": fig}


experiment(
    "eps_sweep",
    title="ε → 0 gives idealized Muon (order ε²); ε → ∞ gives heavy ball (order 1/ε)",
    claim=(
        "The regularized Muon dynamics interpolates between idealized Muon (nuclear potential, "
        "ε → 0: iterates converge at rate ε²) and heavy-ball momentum (ε → ∞ with time √ε·s, "
        "damping γ/√ε, momentum √ε·Q: iterates converge at rate 1/ε)."
    ),
    config=Config,
    simulate=simulate,
    checks=checks,
    figure=figure,
    notes=notes,
    validate=validate,
    profiles={
        "smoke": {"steps": 20, "small": (1e-1, 1e-2, 1e-3), "large": (1e2, 1e3, 1e4)},
        "full": {"m": 16, "n": 8, "steps": 200,
                 "small": (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4),
                 "large": (3e1, 1e2, 3e2, 1e3, 3e3, 1e4, 3e4)},
    },
    version=2,
)
