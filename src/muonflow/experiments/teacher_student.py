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

Runs: the adaptive ``reference`` integrator (DOP853, ``rtol``) and the ``muon`` scheme (Muon with
sum-form momentum) at a step inside the energy-monotone bound of :mod:`muonflow.dynamics`,
:math:`h \le h_{\max} = 2\gamma\varepsilon/(L + \gamma^2\varepsilon)`, with ``L`` a smoothness
constant of :math:`N\cdot J` (the objective whose gradient is the mean-field force) derived in
:func:`smoothness_bound`. (The theorem is stated for weight ``w = 1``; here
:math:`H_N = \frac1N(N J + \sum_i K(P_i))` with force :math:`-\nabla(NJ)`, so it applies to
``N·J`` with ``w = 1``, blockwise since ``K`` is a sum over blocks.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..dynamics import HamiltonianFlow, integrate, muon_energy_step_bound
from ..meanfield import ACTIVATIONS, ProbabilityObjective, SubNetwork, teacher_student
from ..spectral import Relativistic
from . import _plot
from ._dynamics_problems import F64, U64, single_thread
from .base import Context, Result, at_least, at_most, experiment

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
    t_end: float = 20.0         # horizon of both runs
    dt: float = 0.05            # output grid of the reference run
    rtol: float = 1e-12         # reference (DOP853) tolerance
    step_fraction: float = 0.5  # muon step h = step_fraction · h_max(L), L from the reference
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


@experiment(
    "teacher_student",
    title="Teacher–student mean-field training: H monotone, the loss J oscillates",
    claim=(
        "For a mean-field two-layer network trained on a teacher's outputs by the inertial "
        "(regularized Muon) Hamiltonian flow, H = J + K is monotonically non-increasing — "
        "continuously, and for the Muon scheme below its step bound — while the objective J "
        "itself is non-monotone."
    ),
    config=Config,
    profiles={
        "smoke": {"particles": 8, "points": 16, "t_end": 6.0},
        "full": {"d": 8, "points": 64, "particles": 128, "teacher": 8, "t_end": 40.0},
    },
)
def run(cfg: Config, ctx: Context) -> Result:
    gen = torch.Generator().manual_seed(cfg.seed)
    res = Result()
    X = torch.randn(cfg.d, cfg.points, generator=gen, dtype=F64)
    feature = SubNetwork(X, hidden=cfg.hidden)
    sd1 = 1 / math.sqrt(cfg.d)  # W1 x has unit variance: tanh neither linear nor saturated
    teacher = (
        sd1 * torch.randn(cfg.teacher, cfg.hidden, cfg.d, generator=gen, dtype=F64),
        torch.randn(cfg.teacher, 1, cfg.hidden, generator=gen, dtype=F64),
    )
    obj: ProbabilityObjective = teacher_student(feature, teacher)
    y = obj.mean_feature(teacher)  # the teacher's outputs f*(x_b): [1, B]
    R0 = float(y.square().sum() / (2 * cfg.points))  # J of the zero predictor
    theta0 = (
        sd1 * torch.randn(cfg.particles, cfg.hidden, cfg.d, generator=gen, dtype=F64),
        cfg.w2_init * torch.randn(cfg.particles, 1, cfg.hidden, generator=gen, dtype=F64),
    )
    P0 = (torch.zeros_like(theta0[0]), torch.zeros_like(theta0[1]))
    flow = HamiltonianFlow(obj, Relativistic(cfg.eps), cfg.gamma)
    kappa = float(torch.linalg.matrix_norm(X, 2)) ** 2 / cfg.points
    y_max = float(y.abs().max())

    with single_thread():
        # -- the continuous flow (reference integrator) ----------------------------------------
        ctx.progress(0.0, "reference (DOP853)")
        ref = integrate(flow, theta0, P0, cfg.t_end, h=cfg.dt, rtol=cfg.rtol, record_states=True)
        assert isinstance(ref.Ws, tuple) and isinstance(ref.W, tuple)
        t, H, J, K = ref.t.numpy(), ref.H.numpy(), ref.J.numpy(), ref.K.numpy()
        D = ref.dissipated.numpy()
        H0 = float(H[0])
        n_steps = math.ceil(ref.nfev / 12)  # DOP853: 12 evaluations per (accepted/rejected) step
        budget = n_steps * cfg.rtol * (1 + abs(H0))
        resid = np.abs(ref.residual().numpy())
        rise_ref = np.diff(H)

        # -- the muon scheme at a step inside h_max = 2γε/(L + γ²ε) ------------------------------
        L_ref = smoothness_bound(readout_norm(ref.Ws[1]), y_max, kappa, cfg.hidden)
        h = cfg.step_fraction * muon_energy_step_bound(L_ref, cfg.eps, cfg.gamma)
        ctx.progress(0.4, f"muon scheme, h = {h:.3g}")
        mu = integrate(flow, theta0, P0, cfg.t_end, h=h, method="muon", record_states=True)
        assert isinstance(mu.Ws, tuple) and isinstance(mu.Ps, tuple)
        L_mu = smoothness_bound(readout_norm(mu.Ws[1]), y_max, kappa, cfg.hidden)
        h_max_mu = muon_energy_step_bound(L_mu, cfg.eps, cfg.gamma)
        ctx.progress(0.8, "round-off bounds")
        tol = energy_roundoff(X, y, mu.Ws, mu.Ps, mu.H, mu.K).numpy()
        Hm, Jm = mu.H.numpy(), mu.J.numpy()
        rise_mu = np.diff(Hm) / (tol[1:] + tol[:-1])
        gn = gauss_newton_spectrum(X, *ref.W)

    # (a) H never rises beyond the integrator's / the arithmetic's error
    res.checks["H_rise_reference"] = at_most(
        float(rise_ref.max()) / (1 + abs(H0)),
        2 * budget / (1 + abs(H0)),
        "largest H_{k+1} − H_k of the reference run over 1+|H(0)|: H_{k+1} − H_k = −(D_{k+1} − "
        "D_k) + Δresidual with D non-decreasing, so a rise is at most twice the ledger budget "
        "(below).",
    )
    res.checks["muon_step_inside_bound"] = at_most(
        h / h_max_mu,
        1.0,
        "h over h_max = 2γε/(L + γ²ε), L = smoothness_bound(max ‖W2‖ along the muon run): the "
        "hypothesis of the monotonicity theorem of muonflow.dynamics holds on the whole run.",
    )
    res.checks["H_rise_muon_over_roundoff"] = at_most(
        float(rise_mu.max()),
        1.0,
        "largest step rise of H over the float64 round-off bound of evaluating H at the two "
        "states (energy_roundoff): with h <= h_max the theorem gives H_{k+1} <= H_k exactly.",
    )
    # (b) J is non-monotone: upswings well above anything the integrator can fabricate
    significant = 1e3 * 2 * budget
    swings = upswings(t, J)
    big = [s for s in swings if s[2] > significant]
    res.checks["J_upswings_reference"] = at_least(
        len(big),
        1,
        "number of intervals where J rises by more than 1e3 × the largest rise the reference "
        "integrator can fabricate (2 × ledger budget): the objective is non-monotone while H is.",
    )
    # (c) the dissipation identity
    res.checks["ledger_residual_reference"] = at_most(
        float(resid.max()) / (1 + abs(H0)),
        budget / (1 + abs(H0)),
        "max |H(t) − H(0) + γ∫(1/N)Σ⟨P_i,∇K(P_i)⟩| over 1+|H(0)|: DOP853 commits a local error "
        "of about rtol (relative) per step, so the budget is rtol × steps (nfev/12); a missing "
        "or mis-scaled term errs by ~0.1·H(0).",
    )
    # (d) training works
    res.checks["final_loss_over_teacher_energy"] = at_most(
        float(J[-1]) / R0,
        0.1,
        "J(t_end) over R(0) = (1/2B)Σ f*(x_b)², the loss of the zero predictor (J(0) ≈ R(0)): "
        "at least a tenfold decrease, the student explains >= 90% of the teacher's output energy.",
    )

    crit = cfg.gamma**2 * cfg.eps / 4  # a mode with curvature a overshoots iff a > γ²ε/4
    mu_rises = [s[2] for s in upswings(mu.t.numpy(), Jm)]
    res.notes.append(
        f"reference: H rose in {int((rise_ref > 0).sum())} of {len(rise_ref)} recorded "
        f"intervals; J rose by more than {significant:.2g} in {len(big)} upswings (largest "
        f"{max((s[2] for s in swings), default=0.0):.3g}, i.e. "
        f"{max((s[2] for s in swings), default=0.0) / R0:.1%} of R(0))."
    )
    res.notes.append(
        f"underdamped Gauss–Newton modes at t_end: {int((gn > crit).sum())} of {cfg.points} have "
        f"curvature a > γ²ε/4 = {crit:.3g} (largest a = {float(gn[-1]):.3g}, critical damping "
        f"2√(a/ε) = {2 * math.sqrt(float(gn[-1]) / cfg.eps):.3g} vs γ = {cfg.gamma})."
    )
    res.notes.append(
        f"muon scheme: h = {h:.4g} = {h / h_max_mu:.2f}·h_max (L <= {L_mu:.3g}); H rose at "
        f"{int((np.diff(Hm) > 0).sum())} of {len(Hm) - 1} steps (by at most "
        f"{max(float(rise_mu.max()), 0.0):.2g} round-off bounds); J rose by more than "
        f"{significant:.2g} in {sum(r > significant for r in mu_rises)} upswings."
    )
    res.series.update(
        R0=R0,
        H0=H0,
        J_final=float(J[-1]),
        budget=budget,
        n_steps=n_steps,
        nfev=ref.nfev,
        kappa=kappa,
        y_max=y_max,
        L_reference=L_ref,
        L_muon=L_mu,
        h=h,
        h_max=h_max_mu,
        H_rise_fraction_reference=float((rise_ref > 0).mean()),
        H_rise_fraction_muon=float((np.diff(Hm) > 0).mean()),
        max_H_rise_reference=float(rise_ref.max()),
        max_H_rise_muon_over_roundoff=float(rise_mu.max()),
        J_upswings=[list(s) for s in swings],
        J_upswing_significance=significant,
        J_upswing_rises_muon=mu_rises,
        gauss_newton_eigs=gn.tolist(),
        critical_curvature=crit,
        reference={
            "t": t.tolist(),
            "H": H.tolist(),
            "J": J.tolist(),
            "K": K.tolist(),
            "dissipated": D.tolist(),
            "residual": resid.tolist(),
        },
        muon={
            "t": mu.t.tolist(),
            "H": Hm.tolist(),
            "J": Jm.tolist(),
            "K": mu.K.tolist(),
            "roundoff": tol.tolist(),
        },
    )

    # -- figure --------------------------------------------------------------------------------
    ctx.progress(0.95, "figure")
    fig, (a0, a1, a2) = _plot.figure(3, width=4.6)
    a0.semilogy(t, H, lw=2.5, label="H = J + K")
    a0.semilogy(t, H0 - D, "k--", lw=1, label="H(0) − dissipated")
    a0.semilogy(t, J, label="J (loss)")
    a0.semilogy(t[1:], K[1:], label="K (kinetic, (1/N)ΣK(P_i))")
    for i, (s0, s1, _) in enumerate(big):
        a0.axvspan(s0, s1, color="C1", alpha=0.15, lw=0, label="J rising" if i == 0 else None)
    a0.set(xlabel="time t", ylabel="energy", title="Continuous flow: H monotone, J oscillates")
    a0.legend(fontsize=7)
    a1.semilogy(t[1:], np.maximum(resid[1:], 1e-18) / (1 + abs(H0)), label="ledger residual")
    a1.axhline(budget / (1 + abs(H0)), color="r", ls=":", label="budget rtol × steps")
    a1.set(
        xlabel="time t",
        ylabel="|H(t) − H(0) + dissipated(t)| / (1+|H(0)|)",
        title="Dissipation identity (DOP853)",
    )
    a1.legend(fontsize=7)
    tm = mu.t.numpy()
    n_up_mu = int((rise_mu > 1).sum())
    a2.semilogy(tm, Hm, lw=2.5, label="H (muon scheme)")
    a2.semilogy(tm, Jm, label="J (muon scheme)")
    a2.semilogy(t, J, "k:", lw=1, label="J (continuous flow)")
    a2.set(
        xlabel="time t = k·h",
        ylabel="energy",
        title=f"Muon scheme, h = {h / h_max_mu:.2f}·h_max\n{n_up_mu} rises of H beyond round-off",
    )
    a2.legend(fontsize=7)
    res.figures.append(_plot.save(fig, ctx.figure_path("teacher_student.png")))
    ctx.progress(1.0, "done")
    return res
