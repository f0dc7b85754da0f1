r"""Experiment 11 — mean-field teacher–student training: H falls monotonically, J oscillates.

A two-layer network is a probability measure over its neurons. Here a particle is a block of
``hidden`` neurons with their read-out, :math:`\theta = (W_1, W_2)`, :math:`W_1 \in
\mathbb R^{\mathrm{hidden}\times d}`, :math:`W_2 \in \mathbb R^{1\times\mathrm{hidden}}`, and the
network is

.. math::
    f_\rho(x) = \int W_2\,\tanh(W_1 x)\,d\rho(\theta), \qquad
    J(\rho) = \frac1{2B}\sum_{b=1}^B \big(f_\rho(x_b) - f_{\rho^*}(x_b)\big)^2,

with targets made by a fixed teacher cloud :math:`\rho^*` (:func:`~muonflow.meanfield.
teacher_student`, :class:`~muonflow.meanfield.SubNetwork`). The ``N`` student particles follow
the blockwise damped Hamiltonian flow with the relativistic (regularized Muon) kinetic energy on
each block, :math:`\dot\theta_i = \nabla K(P_i)`, :math:`\dot P_i = -\nabla_\theta
\frac{\delta J}{\delta\rho_N}(\theta_i) - \gamma P_i`, and

.. math::
    H_N = J(\rho_N) + \frac1N\sum_i K(P_i), \qquad
    H_N(t) - H_N(0) = -\frac{\gamma}{N}\int_0^t\sum_i\langle P_i, \nabla K(P_i)\rangle\,ds \le 0 .

``H`` can only fall, but nothing forces ``J`` to: with little damping the particles' momentum
carries them past the valley floor and ``J`` rises again. Near a minimum a mode of curvature
``a`` (an eigenvalue of the Gauss–Newton matrix :math:`\frac{1}{NB}\sum_i DF_iDF_i^\top`, ``P``
small so :math:`\nabla K(P) \approx P/\varepsilon`) obeys :math:`\varepsilon\ddot w +
\gamma\varepsilon\dot w + a w = 0`, which overshoots (oscillates) iff :math:`\gamma <
2\sqrt{a/\varepsilon}`; the default ``γ`` is well below that for the leading modes (the
experiment reports how many).

Runs: the adaptive ``reference`` integrator (DOP853, ``rtol``); the ``muon`` scheme (Muon with
sum-form momentum) at a fixed step ``h``, checked to lie inside the energy-monotone bound of
:mod:`muonflow.dynamics`, :math:`h \le h_{\max} = 2\gamma\varepsilon/(L + \gamma^2\varepsilon)`,
with ``L`` a smoothness constant of :math:`N\cdot J` (the objective whose gradient is the
mean-field force) derived in :func:`smoothness_bound` along the run; and, as a negative control,
the ``muon`` scheme at a step ``h_above`` far above the bound, where ``H`` must rise. (The
theorem is stated for weight ``w = 1``; here
:math:`H_N = \frac1N(N J + \sum_i K(P_i))` with force :math:`-\nabla(NJ)`, so it applies to
``N·J`` with ``w = 1``, blockwise since ``K`` is a sum over blocks.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..dynamics import HamiltonianFlow, NonFiniteStateError, integrate, muon_energy_step_bound
from ..meanfield import ACTIVATIONS, ProbabilityObjective, SubNetwork, teacher_student
from ..spectral import Relativistic
from ._dynamics_problems import F64, U64, single_thread, svd_relativistic
from .base import Check, Progress, at_least, at_most, experiment, require

TANH = ACTIVATIONS["tanh"]


# fmt: off
@dataclass(frozen=True)
class Config:
    d: int = 5                  # input dimension; data x_b ~ N(0, I_d)
    points: int = 32            # data points B
    hidden: int = 4             # neurons per particle: W1 is hidden × d, W2 is 1 × hidden
    teacher: int = 4            # teacher particles (W1 ~ N(0, 1/d), W2 ~ N(0, 1))
    particles: int = 32         # student particles N (W1 ~ N(0, 1/d), W2 ~ w2_init·N(0, 1))
    w2_init: float = 0.1        # small read-outs: the student starts near f = 0, J(0) ≈ R(0)
    eps: float = 0.5            # ε of the relativistic kinetic energy (both blocks)
    gamma: float = 0.5          # damping γ, small enough for the flow to overshoot (see above)
    t_end: float = 20.0         # horizon of all runs
    dt: float = 0.05            # output grid of the reference run
    rtol: float = 1e-12         # reference (DOP853) tolerance
    h: float = 0.01             # muon step, fixed before the run (checked against h_max)
    h_above: float = 1.6        # negative control: ~70x the bound h_max (γh = 0.8), where H rises
    window: float = 0.25        # the last quarter of the run: J vs its Gauss–Newton prediction
    # |decay of J over the window − the linearized prediction's| / the prediction's, fixed
    # before the run: the linearization drops ∇K(P) − P/ε (relative (‖P‖/ε)², <= 1e-2 there)
    # and the drift of DF over the window (the particles still move: a few %)
    gn_rtol: float = 0.1
    seed: int = 0
# fmt: on


def smoothness_bound(r2: float, y_max: float, kappa: float, hidden: int) -> float:
    r"""An upper bound ``L`` on ``‖∇²(N·J)‖₂`` wherever every read-out has ``‖W2_i‖₂ <= r2``.

    With :math:`J = R(\frac1N\sum_i F(\theta_i))`, :math:`\nabla^2(NJ) = \frac1N A^\top\nabla^2R
    A + \mathrm{blockdiag}_i\langle\nabla R, D^2F(\theta_i)\rangle` (``A`` the stacked
    Jacobians, :math:`\|A\|^2 <= N\max_i\|DF_i\|^2`). For :math:`F = W_2\sigma(W_1X)`,
    ``R = (1/2B)‖m − y‖²`` (:math:`\nabla^2R = I/B`), :math:`|\sigma| <= 1`,
    :math:`|\sigma'| <= d_1`, :math:`|\sigma''| <= d_2`, :math:`\kappa = \|X\|_2^2/B` and
    :math:`\|c\|_\infty <= (r_2\sqrt{h} + y_{\max})/B` for :math:`c = \nabla R` (as
    :math:`|f(x_b)| <= r_2\sqrt{h}`):

    - Gauss–Newton: :math:`\|DF\|^2/B <= \|S\|_2^2/B + d_1^2\|W_2\|^2\kappa <= h + d_1^2 r_2^2
      \kappa`;
    - curvature: :math:`\langle c, D^2F[\delta,\delta]\rangle <= \alpha a^2 + 2\beta ab` for
      :math:`a = \|\delta W_1\|`, :math:`b = \|\delta W_2\|`, with
      :math:`\alpha = \|c\|_\infty r_2 d_2 \|X\|^2` and :math:`\beta = \|c\|_2 d_1\|X\|`,
      whose maximum on :math:`a^2 + b^2 = 1` is :math:`\alpha/2 + \sqrt{\alpha^2/4 + \beta^2}`.

    The bound holds on a segment between two states if it holds at both ends (``‖W2‖`` is
    convex), so ``r2`` = the largest read-out norm over the recorded states of a run.
    """
    c = r2 * math.sqrt(hidden) + y_max  # B·‖c‖_∞
    alpha = c * r2 * TANH.d2 * kappa
    beta = c * TANH.d1 * math.sqrt(kappa)
    gauss_newton = hidden + TANH.d1**2 * kappa * r2**2
    return gauss_newton + alpha / 2 + math.sqrt(alpha**2 / 4 + beta**2)


def readout_norm(W2: Tensor) -> float:
    """``max ‖W2_i‖₂`` over all particles (and recorded times) of ``W2: [..., 1, hidden]``."""
    return float(torch.linalg.vector_norm(W2, dim=(-2, -1)).max())


def energy_roundoff(
    X: Tensor,
    y: Tensor,
    Ws: tuple[Tensor, ...],
    Ps: tuple[Tensor, ...],
    H: Tensor,
    K: Tensor,
) -> Tensor:
    r"""A bound on the float64 error of evaluating ``H_N`` at recorded states: ``[T]``.

    ``Ws = (W1 [T, N, h, d], W2 [T, N, 1, h])``, ``Ps`` likewise; ``X: [d, B]``, ``y: [1, B]``;
    ``H, K: [T]`` the recorded energies.
    Standard bounds (``u`` the unit roundoff, a length-``n`` dot product errs by ``n u Σ|terms|``,
    ``tanh`` by ``2u`` relative, ``|tanh'| <= 1``), per data point ``b``:

    - ``m_b``: :math:`u[(N + h + 3) A_b + d\,C_b]`, :math:`A_b = \frac1N\sum|W_2||\sigma|`,
      :math:`C_b = \frac1N\sum|W_2|(|W_1||X|)`;
    - ``J``: :math:`\frac1B\sum_b|m_b - y_b|\,\delta m_b + (B + 4)u J`;
    - ``K``: a backward-stable SVD moves each singular value by ``<= 8 max(m, n) u ‖P‖₂`` and
      ``k`` is 1-Lipschitz: :math:`\frac1N\sum_{i,\text{blocks}} r(8\max(m,n) + 1)u\|P\|_2`
      plus ``(N + 2) u K`` for the sums; and ``u|H|`` for ``J + K``.
    """
    W1, W2 = Ws
    T, N, h, d = W1.shape
    B = X.shape[1]
    out = []
    for rows in torch.split(torch.arange(T), 128):  # bounded memory: [128, N, h, B] at a time
        w1, w2 = W1[rows], W2[rows]
        w2a = w2.abs().mT  # |W2|ᵀ: [t, N, h, 1]
        s = torch.tanh(w1 @ X)  # [t, N, h, B]
        A = (w2a * s.abs()).sum(2).mean(1)  # [t, B]
        C = (w2a * (w1.abs() @ X.abs())).sum(2).mean(1)
        f = (w2 @ s).squeeze(-2).mean(1)  # m: [t, B]
        dm = U64 * ((N + h + 3) * A + d * C)
        r = f - y.reshape(1, B)
        J = r.square().sum(1) / (2 * B)
        dJ = (r.abs() * dm).sum(1) / B + (B + 4) * U64 * J
        dK = (N + 2) * U64 * K[rows].abs()  # the sums over blocks and particles
        for P in (Ps[0][rows], Ps[1][rows]):
            m, n = P.shape[-2:]
            p2 = torch.linalg.matrix_norm(P, 2)  # [t, N]
            dK = dK + min(m, n) * (8 * max(m, n) + 1) * U64 * p2.mean(1)
        out.append(dJ + dK + U64 * H[rows].abs())
    return torch.cat(out)


def upswings(t: np.ndarray, J: np.ndarray) -> list[tuple[float, float, float]]:
    """The maximal runs of recorded points where ``J`` increases: ``(t_start, t_end, rise)``."""
    up = np.concatenate([[False], np.diff(J) > 0, [False]]).astype(np.int8)
    edges = np.diff(up)  # +1 where a run of increases starts, −1 where it ends
    first, last = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]  # point indices
    return [
        (float(t[a]), float(t[b]), float(J[b] - J[a])) for a, b in zip(first, last, strict=True)
    ]


def gauss_newton_spectrum(X: Tensor, W1: Tensor, W2: Tensor) -> Tensor:
    r"""Eigenvalues of :math:`G = \frac{1}{NB}\sum_i DF_i DF_i^\top` (``[B]``, ascending).

    These are the non-zero Hessian eigenvalues of ``N·J`` at a zero-residual point. Closed form:
    :math:`(DF_iDF_i^\top)_{bb'} = \sum_j S_{jb}S_{jb'} + \sum_j W_{2,j}^2\sigma'_{jb}
    \sigma'_{jb'}\,x_b^\top x_{b'}`.
    """
    N, B = W1.shape[0], X.shape[1]
    S = torch.tanh(W1 @ X)  # [N, h, B]
    dS = 1 - S.square()
    G = (S.mT @ S).sum(0) + ((W2.mT.square() * dS).mT @ dS).sum(0) * (X.T @ X)
    return torch.linalg.eigvalsh(G / (N * B))


def linearized_start(
    X: Tensor, y: Tensor, W: tuple[Tensor, Tensor], P: tuple[Tensor, Tensor], eps: float
) -> dict[str, Tensor]:
    r"""The residual :math:`r = m - y`, its velocity :math:`\dot r = \frac1N\sum_i DF_i\,
    \nabla K(P_i)` and :math:`G = \frac{1}{NB}\sum_i DF_iDF_i^\top` at a state, written out.

    Near a minimum (``DF`` frozen, :math:`\nabla K(P) \approx P/\varepsilon`) the data-space
    residual obeys :math:`\varepsilon\ddot r + \gamma\varepsilon\dot r + G r = 0`: the
    Gauss–Newton spectrum sets the decay of :math:`J = |r|^2/(2B)`. ``DF_i(V_1, V_2) =
    V_2 S + W_2(\sigma' \odot V_1X)``, :math:`S = \tanh(W_1X)`; the map by an SVD.
    """
    W1, W2 = W
    N, B = W1.shape[0], X.shape[1]
    S = torch.tanh(W1 @ X)  # [N, h, B]
    dS = 1 - S * S
    V1, V2 = svd_relativistic(P[0], eps), svd_relativistic(P[1], eps)
    r_dot = (V2 @ S + W2 @ (dS * (V1 @ X))).mean(0).reshape(-1)  # [B]
    G = (S.mT @ S).sum(0) + ((W2.mT.square() * dS).mT @ dS).sum(0) * (X.T @ X)
    return {"r": ((W2 @ S).mean(0) - y).reshape(-1), "r_dot": r_dot, "G": G / (N * B)}


def validate(cfg: Config) -> None:
    require(cfg.gamma * cfg.h_above <= 1, f"γ·h_above must be <= 1, got {cfg.gamma * cfg.h_above}")
    require(cfg.h < cfg.h_above, f"h_above ({cfg.h_above}) must exceed h ({cfg.h})")
    require(cfg.dt < cfg.t_end and cfg.h < cfg.t_end, "dt and h must be below t_end")


def _muon_run(flow: HamiltonianFlow, theta0: Any, P0: Any, cfg: Config, h: float,
              X: Tensor, y: Tensor) -> dict[str, Any]:
    """The muon scheme at step ``h`` to ``t_end``: energies, round-off bounds, read-out norm."""
    try:
        mu = integrate(flow, theta0, P0, cfg.t_end, h=h, method="muon", record_states=True)
        finite = True
    except NonFiniteStateError as err:  # an unstable step: judge the finite part
        assert err.trajectory is not None
        mu, finite = err.trajectory, False
    assert isinstance(mu.Ws, tuple) and isinstance(mu.Ps, tuple)
    return {
        "t": mu.t, "H": mu.H, "J": mu.J, "K": mu.K,
        "roundoff": energy_roundoff(X, y, mu.Ws, mu.Ps, mu.H, mu.K),
        "readout_max": readout_norm(mu.Ws[1]), "finite": finite,
    }


def simulate(cfg: Config, progress: Progress) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(cfg.seed)
    X = torch.randn(cfg.d, cfg.points, generator=gen, dtype=F64)
    feature = SubNetwork(X, hidden=cfg.hidden)
    sd1 = 1 / math.sqrt(cfg.d)  # W1 x has unit variance: tanh neither linear nor saturated
    teacher = (
        sd1 * torch.randn(cfg.teacher, cfg.hidden, cfg.d, generator=gen, dtype=F64),
        torch.randn(cfg.teacher, 1, cfg.hidden, generator=gen, dtype=F64),
    )
    obj: ProbabilityObjective = teacher_student(feature, teacher)
    y = obj.mean_feature(teacher)  # the teacher's outputs f*(x_b): [1, B]
    theta0 = (
        sd1 * torch.randn(cfg.particles, cfg.hidden, cfg.d, generator=gen, dtype=F64),
        cfg.w2_init * torch.randn(cfg.particles, 1, cfg.hidden, generator=gen, dtype=F64),
    )
    P0 = (torch.zeros_like(theta0[0]), torch.zeros_like(theta0[1]))
    flow = HamiltonianFlow(obj, Relativistic(cfg.eps), cfg.gamma)
    with single_thread():
        progress(0.0, "reference (DOP853)")
        ref = integrate(flow, theta0, P0, cfg.t_end, h=cfg.dt, rtol=cfg.rtol, record_states=True)
        assert isinstance(ref.W, tuple)
        progress(0.4, f"muon scheme, h = {cfg.h:g}")
        inside = _muon_run(flow, theta0, P0, cfg, cfg.h, X, y)
        progress(0.8, f"muon scheme above the bound, h = {cfg.h_above:g}")
        above = _muon_run(flow, theta0, P0, cfg, cfg.h_above, X, y)
        gn = gauss_newton_spectrum(X, *ref.W)
        assert isinstance(ref.Ws, tuple) and isinstance(ref.Ps, tuple)
        k0 = round((1 - cfg.window) * (len(ref.t) - 1))  # the window's first record
        lin = linearized_start(X, y, (ref.Ws[0][k0], ref.Ws[1][k0]),
                               (ref.Ps[0][k0], ref.Ps[1][k0]), cfg.eps)  # fmt: skip
    progress(1.0, "done")
    return {
        "R0": float(y.square().sum() / (2 * cfg.points)),  # J of the zero predictor
        "kappa": float(torch.linalg.matrix_norm(X, 2)) ** 2 / cfg.points,
        "y_max": float(y.abs().max()),
        "reference": {
            "t": ref.t, "H": ref.H, "J": ref.J, "K": ref.K, "dissipated": ref.dissipated,
            "residual": ref.residual(), "nfev": ref.nfev,
        },
        "muon": inside,
        "muon_above": above,
        "gauss_newton_eigs": gn,
        "linearized": {**lin, "k0": k0},
    }


def _derived(s: dict[str, Any], cfg: Config) -> dict[str, Any]:
    ref = s["reference"]
    H0 = float(ref["H"][0])
    n_steps = math.ceil(int(ref["nfev"]) / 12)  # DOP853: 12 evaluations per step
    budget = n_steps * cfg.rtol * (1 + abs(H0))
    L = {k: smoothness_bound(float(s[k]["readout_max"]), float(s["y_max"]), float(s["kappa"]),
                             cfg.hidden) for k in ("muon", "muon_above")}  # fmt: skip
    h_max = {k: muon_energy_step_bound(v, cfg.eps, cfg.gamma) for k, v in L.items()}
    rise = {}
    for k in ("muon", "muon_above"):
        H, tol = s[k]["H"], s[k]["roundoff"]
        rise[k] = np.diff(H) / (tol[1:] + tol[:-1]) if len(H) > 1 else np.array([-np.inf])
        if not bool(s[k]["finite"]):
            rise[k] = np.append(rise[k], np.inf)  # an overflow counts as a rise
    R0 = float(s["R0"])
    swings = upswings(ref["t"], ref["J"])
    return {"H0": H0, "budget": budget, "L": L, "h_max": h_max, "rise": rise,
            "swings": swings, "big": [w for w in swings if w[2] >= 1e-3 * R0]}


def checks(s: dict[str, Any], cfg: Config) -> dict[str, Check]:
    d = _derived(s, cfg)
    ref = s["reference"]
    H0, budget = d["H0"], d["budget"]
    out: dict[str, Check] = {}
    out["H_rise_reference"] = at_most(
        float(np.diff(ref["H"]).max()) / (1 + abs(H0)), 2 * budget / (1 + abs(H0)), kind="claim",
        why="largest H_{k+1} − H_k of the reference run over 1+|H(0)|: H_{k+1} − H_k = "
        "−(D_{k+1} − D_k) + Δresidual with D non-decreasing, so a rise is at most twice the "
        "ledger budget rtol × steps.",
        catches="a blockwise flow whose kinetic energy is not the potential driving θ̇ (a "
        "missing 1/N weight, one block's ∇K applied to another), or damping with the wrong sign.",
    )
    out["muon_step_inside_bound"] = at_most(
        cfg.h / d["h_max"]["muon"], 1.0, kind="sanity",
        why="the fixed step h over h_max = 2γε/(L + γ²ε), L = smoothness_bound(max ‖W2‖ along "
        "the muon run): the hypothesis of the monotonicity theorem holds on the whole run.",
        catches="a run whose read-outs grew beyond what the chosen step allows (then the "
        "monotonicity check below would test nothing).",
    )
    out["H_rise_muon_over_roundoff"] = at_most(
        float(d["rise"]["muon"].max()), 1.0, kind="claim",
        why="largest step rise of H over the float64 round-off bound of evaluating H at the two "
        "states (energy_roundoff): with h <= h_max the theorem gives H_{k+1} <= H_k exactly.",
        catches="a particle scheme that is not symplectic Euler (W moved with the old momentum) "
        "or a mean-field force without the factor N (the energy identity then breaks).",
    )
    out["H_rises_above_bound"] = at_least(
        float(d["rise"]["muon_above"].max()), 1e3, kind="claim",
        why=f"negative control: at h = {cfg.h_above:g} "
        f"(= {cfg.h_above / d['h_max']['muon_above']:.0f}·h_max) the largest step rise of H is "
        ">= 1e3 round-off bounds: the monotonicity needs the step condition, it is not automatic.",
        catches="an energy H that cannot rise whatever the step (e.g. computed from the "
        "dissipation ledger instead of J + K), which would make the check above vacuous.",
    )
    largest = max((w[2] for w in d["swings"]), default=0.0)
    out["J_upswing_over_ledger_budget"] = at_least(
        largest / (2 * budget), 1.0, kind="claim",
        why="the largest rise of J over an interval of increase, over twice the ledger budget "
        "(rtol × steps × (1+|H(0)|), the most the integration can err on J = H − K): J rises "
        "for real while H falls — the objective is not monotone.",
        catches="a flow without inertia (overdamped, or momentum reset): then J would fall "
        "monotonically and the claim that it need not would be untested.",
    )
    out["ledger_residual_reference"] = at_most(
        float(np.abs(ref["residual"]).max()) / (1 + abs(H0)), budget / (1 + abs(H0)),
        kind="claim",
        why="max |H(t) − H(0) + γ∫(1/N)Σ⟨P_i,∇K(P_i)⟩| over 1+|H(0)|: DOP853 commits a local "
        "error of about rtol (relative) per step, so the budget is rtol × steps (nfev/12); a "
        "missing or mis-scaled term errs by ~0.1·H(0).",
        catches="a dissipation without the 1/N weight, or a force that is not the mean-field "
        "force −N∂J/∂θ_i.",
    )
    dec, pred = _window_decay(s, cfg)
    out["loss_decay_matches_gauss_newton"] = at_most(
        abs(dec - pred) / abs(pred), cfg.gn_rtol, kind="claim",
        why=f"log(J(t_end)/J(t₀)) over the last {cfg.window:.0%} of the run ({dec:.3f}) vs the "
        f"same for the linearized data-space dynamics εr̈ + γεṙ + Gr = 0 started at t₀ with the "
        f"Gauss–Newton matrix G there ({pred:.3f}), relative: at most {cfg.gn_rtol:g}, fixed "
        "before the run: J decays at the rate the Gauss–Newton spectrum predicts.",
        catches="a flow that does not train at the predicted rate (a force with the wrong sign "
        "or scale, frozen particles, a damping that is not −γP).",
    )
    return out


def _window_decay(s: dict[str, Any], cfg: Config) -> tuple[float, float]:
    """``(log J(t_end)/J(t₀) measured, the same from the linearized dynamics)``."""
    from scipy.linalg import expm

    lin, ref = s["linearized"], s["reference"]
    k0, B = int(lin["k0"]), cfg.points
    T = float(ref["t"][-1] - ref["t"][k0])
    A = np.block([[np.zeros((B, B)), np.eye(B)], [-lin["G"] / cfg.eps, -cfg.gamma * np.eye(B)]])
    x = expm(A * T) @ np.concatenate([lin["r"], lin["r_dot"]])
    J_lin_end = float(x[:B] @ x[:B]) / (2 * B)
    J_lin0 = float(lin["r"] @ lin["r"]) / (2 * B)
    return math.log(float(ref["J"][-1]) / float(ref["J"][k0])), math.log(J_lin_end / J_lin0)


def notes(s: dict[str, Any], cfg: Config) -> list[str]:
    d = _derived(s, cfg)
    ref, gn = s["reference"], s["gauss_newton_eigs"]
    R0 = float(s["R0"])
    crit = cfg.gamma**2 * cfg.eps / 4  # a mode with curvature a overshoots iff a > γ²ε/4
    largest = max((w[2] for w in d["swings"]), default=0.0)
    rm, ra = d["rise"]["muon"], d["rise"]["muon_above"]
    return [
        f"reference: H rose in {int((np.diff(ref['H']) > 0).sum())} of {len(ref['H']) - 1} "
        f"recorded intervals; J rose by >= 1e-3·R(0) in {len(d['big'])} upswings (largest "
        f"{largest:.3g}, i.e. {largest / R0:.1%} of R(0)).",
        f"underdamped Gauss–Newton modes at t_end: {int((gn > crit).sum())} of {cfg.points} have "
        f"curvature a > γ²ε/4 = {crit:.3g} (largest a = {float(gn[-1]):.3g}, critical damping "
        f"2√(a/ε) = {2 * math.sqrt(float(gn[-1]) / cfg.eps):.3g} vs γ = {cfg.gamma}).",
        f"muon scheme: h = {cfg.h:g} = {cfg.h / d['h_max']['muon']:.2f}·h_max (L <= "
        f"{d['L']['muon']:.3g}); H rose beyond round-off at {int((rm > 1).sum())} of {len(rm)} "
        f"steps. Above the bound, h = {cfg.h_above:g}: at {int((ra > 1).sum())} of {len(ra)} "
        "steps (the derived L is a loose upper bound: the largest Gauss–Newton curvature is "
        f"{float(gn[-1]):.3g}, so monotonicity actually holds well past h_max).",
    ]


def figure(s: dict[str, Any], cfg: Config) -> dict[str, Any]:
    from . import _plot

    d = _derived(s, cfg)
    ref, mu, ab = s["reference"], s["muon"], s["muon_above"]
    t, H, J, K = ref["t"], ref["H"], ref["J"], ref["K"]
    H0, budget = d["H0"], d["budget"]
    fig, (a0, a1, a2) = _plot.figure(3, width=4.6)
    a0.semilogy(t, H, lw=2.5, label="H = J + K")
    a0.semilogy(t, H0 - ref["dissipated"], "k--", lw=1, label="H(0) − dissipated")
    a0.semilogy(t, J, label="J (loss)")
    a0.semilogy(t[1:], K[1:], label="K (kinetic, (1/N)ΣK(P_i))")
    for i, (s0, s1, _) in enumerate(d["big"]):
        a0.axvspan(s0, s1, color="C1", alpha=0.15, lw=0, label="J rising" if i == 0 else None)
    a0.set(xlabel="time t", ylabel="energy", title="Continuous flow: H monotone, J oscillates")
    a0.legend(fontsize=7)
    a1.semilogy(t[1:], np.maximum(np.abs(ref["residual"][1:]), 1e-18) / (1 + abs(H0)),
                label="ledger residual")
    a1.axhline(budget / (1 + abs(H0)), color="r", ls=":", label="budget rtol × steps")
    a1.set(xlabel="time t", ylabel="|H(t) − H(0) + dissipated(t)| / (1+|H(0)|)",
           title="Dissipation identity (DOP853)")
    a1.legend(fontsize=7)
    a2.semilogy(mu["t"], mu["H"], lw=2.5, label=f"H, h = {cfg.h:g}")
    a2.semilogy(mu["t"], mu["J"], label=f"J, h = {cfg.h:g}")
    a2.semilogy(ab["t"], ab["H"], "o-", ms=3, label=f"H, h = {cfg.h_above:g} (above bound)")
    a2.semilogy(t, J, "k:", lw=1, label="J (continuous flow)")
    a2.set(xlabel="time t = k·h", ylabel="energy",
           title=f"Muon scheme: h = {cfg.h / d['h_max']['muon']:.2f}·h_max and "
           f"{cfg.h_above / d['h_max']['muon_above']:.0f}·h_max")
    a2.legend(fontsize=7)
    return {"teacher_student.png": fig}


experiment(
    "teacher_student",
    title="Teacher–student mean-field training: H monotone, the loss J oscillates",
    claim=(
        "For a mean-field two-layer network trained on a teacher's outputs by the inertial "
        "(regularized Muon) Hamiltonian flow, H = J + K is monotonically non-increasing — "
        "continuously, and for the Muon scheme below its step bound — while the objective J "
        "itself is non-monotone."
    ),
    config=Config,
    simulate=simulate,
    checks=checks,
    figure=figure,
    notes=notes,
    validate=validate,
    profiles={
        "smoke": {"particles": 8, "points": 16, "t_end": 6.0},
        "full": {"d": 8, "points": 64, "particles": 128, "teacher": 8, "t_end": 40.0},
    },
    version=3,
)
