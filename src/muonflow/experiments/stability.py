r"""Experiment 9 — stability and well-posedness of the mean-field Muon flow.

Two initial laws at distance ``δ`` stay within :math:`C e^{Lt}\delta` (Dobrushin-type
stability; it gives uniqueness and continuous dependence on the data). Push the cloud
:math:`\mu_0 = \frac1N\sum_i\delta_{(\theta_i, P_i)}` forward by
:math:`(\theta, P) \mapsto (\theta + \delta u, P + \delta v)` with an RMS-normalized
direction, run both laws with the same steps (:func:`~muonflow.meanfield.stability`) and
measure the identity-coupling distance ``d(t)`` (an upper bound of ``W₂``, equal to ``δ`` at
``t = 0``) and ``W₂`` itself.

*A-priori bound.* The force :math:`-DF(\theta_i)^\top\nabla R(m_\rho)` is Lipschitz in the
RMS sense with a constant ``a`` computed from the problem
(:func:`~muonflow.experiments.chaos.force_bounds`: ``sup|σ'|``, ``sup|σ''|``, ``‖X‖₂``,
``Lip ∇R``), and :math:`\nabla K_\varepsilon` is ``1/ε``-Lipschitz. For the ``muon`` scheme
the RMS differences then obey the comparison recursion

.. math::
    D_P' \le (1-\gamma h)D_P + h a D_\theta, \qquad
    D_\theta' \le D_\theta + \tfrac h\varepsilon D_P',

so :math:`d(t) \le \|A^{t/h}(D_{\theta,0}, D_{P,0})\| \le C e^{\lambda t}\delta` with
:math:`\lambda = \log\rho(A)/h \to (-\gamma + \sqrt{\gamma^2 + 4a/\varepsilon})/2` — a sure
bound for any ``δ``, not only in the linear regime.

*Well-posedness.* (i) The solution and the distance curve converge as ``h → 0`` at the
scheme's order 1 (Richardson differences ``h → h/2``), so they are properties of the flow,
not of the step; (ii) the laws are measures: permuting the particles (the same permutation
for both clouds) changes ``d(t)`` and ``W₂`` only by rounding.

Problem: the teacher–student network of experiment 8 (particles ``θ ∈ R^{2×3}``, tanh
neurons, squared risk on 16 points), ``Relativistic(ε)``, damping ``γ``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.ticker import NullLocator
from torch import Tensor

from ..dynamics import HamiltonianFlow, integrate
from ..meanfield import StabilityResult, coupling_distance, phase_space, stability
from ..spectral import Relativistic
from . import _plot
from ._dynamics_problems import F64, U64, log_slope, single_thread
from .base import Context, Result, at_most, experiment, within
from .chaos import comparison_bound, comparison_rate, force_bounds, teacher_student_problem


@dataclass(frozen=True)
class Config:
    d: int = 3  # input dimension: a particle is θ ∈ R^{width×d}
    width: int = 2  # tanh neurons per particle
    points: int = 16  # data points B
    teacher: int = 4  # particles of the teacher cloud
    eps: float = 0.3  # ε of the relativistic kinetic energy
    gamma: float = 1.0  # damping γ
    p0: float = 0.3  # μ₀: θ ~ N(0, 1), P ~ p0·N(0, 1) entrywise
    particles: int = 256  # N: particles of each law
    h: float = 0.05  # step of the muon scheme
    t_end: float = 6.0  # horizon
    dt_obs: float = 0.5  # spacing of the observation times (a multiple of every step)
    deltas: tuple[float, ...] = (0.3, 0.03, 0.003)  # initial distances δ (phase-space RMS)
    hs: tuple[float, ...] = (0.05, 0.025, 0.0125, 0.00625)  # step refinement, at deltas[1]
    seed: int = 0


def _times(cfg: Config) -> list[float]:
    n = round(cfg.t_end / cfg.dt_obs)
    if abs(n * cfg.dt_obs - cfg.t_end) > 1e-9 * cfg.t_end:
        raise ValueError(f"t_end = {cfg.t_end} must be a multiple of dt_obs = {cfg.dt_obs}")
    for h in (cfg.h, *cfg.hs):
        r = cfg.dt_obs / h
        if abs(r - round(r)) > 1e-9 * r:
            raise ValueError(f"dt_obs = {cfg.dt_obs} must be a multiple of the step {h}")
    return [k * cfg.dt_obs for k in range(n + 1)]


@experiment(
    "stability",
    title="Stability of the mean-field flow: d(t) <= C e^(Lt) d(0), well-posed as h → 0",
    claim=(
        "The mean-field Muon flow is well posed: two initial laws at distance δ stay within "
        "C·e^(Lt)·δ with constants set by the Lipschitz constants of the force and of ∇K_ε, and "
        "the discrete solutions converge as the step h → 0."
    ),
    config=Config,
    profiles={
        "smoke": {
            "particles": 64,
            "t_end": 2.0,
            "dt_obs": 0.5,
            "deltas": (0.3, 0.003),
            "hs": (0.1, 0.05, 0.025, 0.0125),
            "h": 0.1,
        },
        "full": {
            "particles": 1024,
            "t_end": 10.0,
            "deltas": (1.0, 0.3, 0.03, 0.003, 3e-4),
            "hs": (0.05, 0.025, 0.0125, 0.00625, 0.003125),
        },
    },
)
def run(cfg: Config, ctx: Context) -> Result:
    times = _times(cfg)
    if len(cfg.hs) < 3 or len(cfg.deltas) < 2:
        raise ValueError("need >= 3 steps hs (two Richardson differences) and >= 2 deltas")
    gen = torch.Generator().manual_seed(cfg.seed)
    res = Result()
    feature, obj = teacher_student_problem(cfg.d, cfg.width, cfg.points, cfg.teacher, gen)
    kinetic = Relativistic(cfg.eps)
    shape = (cfg.particles, cfg.width, cfg.d)
    theta = feature.sample(cfg.particles, generator=gen)
    assert isinstance(theta, Tensor)
    P = cfg.p0 * torch.randn(*shape, generator=gen, dtype=F64)
    u = torch.randn(*shape, generator=gen, dtype=F64)  # perturbation direction of θ
    v = torch.randn(*shape, generator=gen, dtype=F64)  # ... and of P
    perm = torch.randperm(cfg.particles, generator=gen)
    norm = math.sqrt(float((u.square().sum() + v.square().sum()) / cfg.particles))
    u_rms = math.sqrt(float(u.square().sum()) / cfg.particles) / norm  # D_θ(0) = δ·u_rms
    v_rms = math.sqrt(float(v.square().sum()) / cfg.particles) / norm
    fb = force_bounds(feature, obj)
    t_arr = np.array(times)

    def measure(delta: float, h: float, order: Tensor | None = None) -> StabilityResult:
        th, p, uu, vv = theta, P, u, v
        if order is not None:
            th, p, uu, vv = theta[order], P[order], u[order], v[order]
        return stability(
            obj,
            kinetic,
            cfg.gamma,
            th,
            p,
            times,
            delta=delta,
            direction=(uu, vv),
            h=h,
            method="muon",
            w2_method="exact",
        )

    n_runs = len(cfg.deltas) + 2 * len(cfg.hs) + 1
    done = 0

    def tick(msg: str) -> None:
        nonlocal done
        ctx.progress(done / n_runs, msg)
        done += 1

    with single_thread():
        runs: dict[float, StabilityResult] = {}
        for delta in cfg.deltas:
            tick(f"δ = {delta:g}")
            runs[delta] = measure(delta, cfg.h)
        # well-posedness (i): step refinement of the distance curve and of the solution
        d_ref = cfg.deltas[1]
        curves, finals = [], []
        flow = HamiltonianFlow(obj, kinetic, cfg.gamma)
        for h in cfg.hs:
            tick(f"h = {h:g}")
            curves.append((runs[d_ref] if h == cfg.h else measure(d_ref, h)).coupled.numpy())
            tick(f"solution, h = {h:g}")
            traj = integrate(flow, theta, P, cfg.t_end, h=h, method="muon", record_every=10**9)
            assert isinstance(traj.W, Tensor) and isinstance(traj.P, Tensor)
            finals.append(phase_space(traj.W, traj.P))
        # well-posedness (ii): the same laws with the particles listed in another order
        tick("permuted particles")
        d_perm = cfg.deltas[-1]
        permuted = measure(d_perm, cfg.h, perm)

    # a-priori comparison bound, per δ, at the observation steps
    steps = [round(t / cfg.h) for t in times]
    lam = comparison_rate(fb.lipschitz, cfg.eps, cfg.gamma, cfg.h)
    ratio_max, w2_over = 0.0, 0.0
    bounds: dict[float, np.ndarray] = {}
    for delta, r in runs.items():
        b = comparison_bound(
            fb.lipschitz, cfg.eps, cfg.gamma, cfg.h, steps[-1], start=(delta * u_rms, delta * v_rms)
        )
        bounds[delta] = np.linalg.norm(b[steps], axis=1)
        ratio_max = max(ratio_max, float(np.max(r.coupled.numpy()[1:] / bounds[delta][1:])))
        w2_over = max(w2_over, float(np.max(r.w2.numpy() / r.coupled.numpy())))
    res.checks["distance_within_apriori_bound"] = at_most(
        ratio_max,
        1.0,
        f"max over δ and t > 0 of d(t) / ‖A^(t/h)(D_θ0, D_P0)‖: the comparison recursion of "
        f"the muon scheme with the force's Lipschitz constant a = {fb.lipschitz:.3g} (from "
        "sup|σ'|, sup|σ''|, ‖X‖₂, Lip ∇R) and Lip ∇K_ε = 1/ε is a sure bound for any δ.",
    )
    rates = {delta: r.rate for delta, r in runs.items()}
    res.checks["fitted_rate_below_apriori"] = at_most(
        max(rates.values()),
        lam,
        f"the least-squares rate L of d(t) ≈ C e^(Lt) δ (max over δ) is finite and below the "
        f"growth rate log ρ(A)/h = {lam:.3g} of the comparison recursion.",
    )
    res.checks["w2_below_coupling"] = at_most(
        w2_over,
        1 + 1e-9,
        "the identity coupling is a feasible plan, so W₂ <= d(t); the exact LP (costs from exact "
        "differences) rounds at ~1e-15 relative, so 1 + 1e-9.",
    )

    # step refinement: Richardson differences h -> h/2, fitted order 1 ± (3/2)|κ|·s_h
    hs = np.array(cfg.hs)
    diff_d = np.array([np.max(np.abs(a - b)) / d_ref for a, b in itertools.pairwise(curves)])
    diff_z = np.array([coupling_distance(a, b) for a, b in itertools.pairwise(finals)])
    order_d, order_z = log_slope(hs[:-1], diff_d), log_slope(hs[:-1], diff_z)
    omega = math.sqrt(fb.lipschitz / cfg.eps)  # a-priori frequency of the linearized flow
    x = np.log(hs[:-1])
    s_h = float(np.polyfit(x, hs[:-1], 1)[0])  # LS slope of h on log h over the sweep
    band = 1.5 * omega * s_h
    why = (
        f"global error C h (1 + κh + …), |κ| <~ ω = √(a/ε) = {omega:.2f}; the difference "
        f"h -> h/2 is C h/2 (1 + 3κh/2 + …), so the log-log slope shifts by at most "
        f"(3/2)·ω·s_h = {band:.3f} (s_h: LS slope of h on log h over the sweep): order "
        f"1 ± {band:.3f}."
    )
    res.checks["refinement_order_solution"] = within(order_z, 1 - band, 1 + band, why)
    res.checks["refinement_order_distance"] = within(order_d, 1 - band, 1 + band, why)

    # particle order: relative change of d and W₂ from rounding only
    base = runs[d_perm]
    rel = max(
        float(
            np.max(np.abs(permuted.coupled.numpy() - base.coupled.numpy()) / base.coupled.numpy())
        ),
        float(np.max(np.abs(permuted.w2.numpy() - base.w2.numpy()) / base.w2.numpy())),
    )
    growth = float(np.max(base.coupled.numpy()) / d_perm)
    floor = float(np.min(base.coupled.numpy()) / d_perm)
    n = cfg.particles
    budget = (cfg.t_end * fb.source * n * U64 * growth / (d_perm * floor)) + 2 * n * U64
    res.checks["particle_order_invariance"] = at_most(
        rel,
        budget,
        "reordering changes only the rounding of the particle sums: m moves by <= N·u·sup|F| per "
        "step, the force by c·N·u (c the force's source constant), accumulated over T and grown "
        "at most like the measured d(t)/δ; relative to min d(t), plus N·u for the distances: "
        f"T·c·N·u·max(d/δ)/(δ·min(d/δ)) + 2N·u = {budget:.2g}.",
    )

    mid = cfg.deltas[1]
    res.notes.append(
        "fitted d(t) ≈ C e^(Lt) δ: "
        + "; ".join(
            f"δ = {dl:g}: L = {r.rate:.3f}, C = {r.prefactor:.3f}" for dl, r in runs.items()
        )
        + f". A-priori rate λ = {lam:.2f} (sure but loose: bound/measured at t = {times[-1]:g} ≈ "
        f"{float(bounds[mid][-1] / runs[mid].coupled[-1]):.3g})."
    )
    d_max = max(float(r.coupled.max()) / dl for dl, r in runs.items())
    res.notes.append(
        f"d(t)/δ peaks at {d_max:.2f} and then levels off (damping drives both laws towards the "
        "same minimizer): the least-squares C e^(Lt) averages an early rise and a plateau, so "
        "L is a mean growth over the horizon, not a sustained instability."
    )
    res.series.update(
        times=times,
        deltas=list(cfg.deltas),
        hs=list(cfg.hs),
        coupled={f"{dl:g}": r.coupled for dl, r in runs.items()},
        w2={f"{dl:g}": r.w2 for dl, r in runs.items()},
        rate={f"{dl:g}": r.rate for dl, r in runs.items()},
        prefactor={f"{dl:g}": r.prefactor for dl, r in runs.items()},
        envelope={f"{dl:g}": r.envelope for dl, r in runs.items()},
        apriori_bound={f"{dl:g}": b for dl, b in bounds.items()},
        apriori_rate=lam,
        force_lipschitz=fb.lipschitz,
        refinement_distance_diff=diff_d,
        refinement_solution_diff=diff_z,
        order_distance=order_d,
        order_solution=order_z,
        permuted_coupled=permuted.coupled,
        permutation_rel_change=rel,
    )

    ctx.progress(0.97, "figure")
    fig, (a0, a1, a2) = _plot.figure(3, width=4.6, height=3.9)
    for ax in (a0, a1):
        for i, (delta, r) in enumerate(runs.items()):
            ax.semilogy(
                t_arr,
                r.coupled.numpy() / delta,
                "-",
                color=f"C{i}",
                lw=2,
                label=f"δ = {delta:g}: L = {r.rate:.3f}, C = {r.prefactor:.2f}",
            )
            ax.semilogy(t_arr, r.w2.numpy() / delta, "x", color=f"C{i}", ms=5)
        ax.semilogy([], [], "kx", label="W₂(t)/δ")
        ax.set(xlabel="time t", ylabel="coupling distance d(t) / δ")
    a0.semilogy(t_arr, bounds[mid] / mid, "k--", lw=1, label=f"a-priori bound, rate λ = {lam:.2f}")
    a0.set(title="Two laws at distance δ: d(t) <= C e^(λt) δ")
    a0.legend(fontsize=7, loc="upper left")
    fit = runs[mid]
    a1.semilogy(
        t_arr,
        fit.prefactor * np.exp(fit.rate * t_arr),
        "k:",
        lw=1,
        label=f"fit C e^(Lt), δ = {mid:g}",
    )
    a1.set(title="Zoom: the measured distances")
    a1.legend(fontsize=7, loc="lower right")
    a2.loglog(
        hs[:-1], diff_z, "o-", label=f"solution: RMS|z_h − z_(h/2)| at T (order {order_z:.2f})"
    )
    a2.loglog(
        hs[:-1], diff_d, "s-", label=f"distance: max_t|d_h − d_(h/2)|/δ (order {order_d:.2f})"
    )
    a2.loglog(hs[:-1], diff_z[0] * hs[:-1] / hs[0], "k:", lw=1, label="∝ h")
    a2.set(
        xlabel="step h", ylabel="change when h -> h/2", title="Well-posedness: convergence as h → 0"
    )
    a2.set_xticks(hs[:-1], [f"{h:g}" for h in hs[:-1]])
    a2.xaxis.set_minor_locator(NullLocator())
    a2.legend(fontsize=7, loc="lower right")
    res.figures.append(_plot.save(fig, ctx.figure_path("stability.png")))
    ctx.progress(1.0, "done")
    return res
