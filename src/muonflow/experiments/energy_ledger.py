r"""Experiment 13 — the energy ledger of symplectic vs standard momentum discretizations.

Every scheme of :mod:`muonflow.dynamics` keeps a ledger: its ``dissipated`` increment
:math:`d_k` (a quadrature of :math:`\gamma\int\langle P, \nabla K(P)\rangle`) and the per-step
ledger error :math:`e_k = (H_{k+1} - H_k) + d_k`, which is 0 for the exact flow. Compared here:

- ``muon`` — symplectic Euler (momentum first): Muon with sum-form momentum;
- ``conformal_leapfrog`` — conformal-symplectic, second order;
- ``hamiltonian_descent`` — implicit damping, then the same drift;
- ``euler`` — explicit Euler (not symplectic);
- ``nesterov`` — the *standard momentum* variant practical Muon implementations default to
  (Nesterov: :math:`M \leftarrow \beta M + g`, :math:`W \leftarrow W - \eta\nabla K(g + \beta M)`),
  in dynamics units :math:`P' = \beta P + hF(W)`, :math:`W' = W + h\nabla K(\beta P' + hF(W))`,
  ledger increment :math:`\gamma h\langle P, \nabla K(\beta P' + hF)\rangle`. It is consistent
  (first order) but not symplectic: with ``Quadratic`` kinetic energy and ``γ = 0`` its step has
  determinant :math:`1 - h^2\omega^2 < 1` on a mode of frequency ``ω`` — it dissipates energy
  numerically.

*Damped runs* (matrix factorization, nonconvex): the mean per-step ledger error scales like
:math:`h^{p+1}` (``p`` the scheme's order), and the accumulated error at ``T`` shows whether the
per-step errors cancel (symplectic) or add up coherently (standard schemes).

*Undamped runs* (``γ = 0``, quadratic objective, relativistic ``K`` in its nonlinear range):
a symplectic scheme conserves a modified energy :math:`\tilde H = H + O(h)`, so
:math:`|H - H_0|` stays bounded — its maximum over the last quarter of a long run is about that
over the first quarter — while a non-symplectic scheme drifts secularly (a linear drift makes
that ratio 4; Euler gains energy, Nesterov loses it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.ticker import NullFormatter
from torch import Tensor

from ..dynamics import HamiltonianFlow, integrate
from ..spectral import Relativistic
from . import _plot
from ._dynamics_problems import (
    F64,
    FactorizationObjective,
    QuadraticObjective,
    log_slope,
    single_thread,
    spd,
)
from .base import Context, Result, at_least, at_most, experiment, within

SCHEMES = ("muon", "conformal_leapfrog", "hamiltonian_descent", "euler", "nesterov")
ORDERS = {"muon": 1, "conformal_leapfrog": 2, "hamiltonian_descent": 1, "euler": 1, "nesterov": 1}
SYMPLECTIC = ("muon", "conformal_leapfrog")


@dataclass(frozen=True)
class Config:
    m: int = 8                  # rows of W
    n: int = 4                  # columns
    rank: int = 2               # rank of the factorization target (damped runs)
    scale: float = 0.5          # W₀ and the target's factor ~ scale·N(0,1)
    eps: float = 0.5            # ε of the damped runs
    gamma: float = 0.7          # damping of the damped runs
    t_end: float = 2.0          # horizon of the damped runs
    hs: tuple[float, ...] = (0.04, 0.02, 0.01, 0.005)  # step sizes of the damped runs
    free_eps: float = 1.0       # ε of the undamped runs (‖P₀‖ ~ ε: the map is nonlinear)
    free_a: tuple[float, float] = (0.5, 2.0)  # eigenvalue range of A (undamped runs)
    free_h: float = 0.05        # step of the undamped runs
    free_t_end: float = 60.0    # horizon of the undamped runs
    seed: int = 0


def _tensor(x: object) -> Tensor:
    assert isinstance(x, Tensor)  # single-matrix states here
    return x


def nesterov(
    flow: HamiltonianFlow, W0: Tensor, P0: Tensor, h: float, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    r"""Nesterov-form Muon in dynamics units; returns ``H_k`` and ``dissipated_k``.

    :math:`P' = \beta P + hF(W)`, :math:`W' = W + h\nabla K(\beta P' + hF(W))`,
    :math:`d = \gamma h\langle P, \nabla K(\beta P' + hF(W))\rangle`, ``β = 1 − γh``.
    """
    beta = 1 - flow.gamma * h
    W, P = W0, P0
    H, D = [float(flow.hamiltonian(W, P))], [0.0]
    F = _tensor(flow.value_and_force(W)[1])
    for _ in range(steps):
        P_new = beta * P + h * F  # M ← βM + g
        V = _tensor(flow.velocity(beta * P_new + h * F))  # ∇K(g + βM) in dynamics units
        D.append(D[-1] + flow.gamma * h * float((P * V).sum()))
        W, P = W + h * V, P_new
        J, force = flow.value_and_force(W)
        F = _tensor(force)
        H.append(float(J) + float(flow.kinetic_energy(W, P)))
    return np.array(H), np.array(D)


def ledger(
    flow: HamiltonianFlow, W0: Tensor, P0: Tensor, t_end: float, h: float, scheme: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(H_k, dissipated_k)`` of ``scheme`` (a registered integrator or ``"nesterov"``)."""
    if scheme == "nesterov":
        return nesterov(flow, W0, P0, h, round(t_end / h))
    traj = integrate(flow, W0, P0, t_end, h=h, method=scheme)
    return traj.H.numpy(), traj.dissipated.numpy()


@experiment(
    "energy_ledger",
    title="Energy ledger: symplectic (Muon, conformal leapfrog) vs standard momentum schemes",
    claim=(
        "The Hamiltonian structure favours structure-preserving discretizations: the Muon "
        "(symplectic Euler) and conformal-leapfrog schemes keep the energy ledger H − H(0) + "
        "γ∫⟨P,∇K⟩ better than explicit Euler and Nesterov-style momentum, whose per-step errors "
        "add up coherently and whose energy drifts without damping."
    ),
    config=Config,
    profiles={
        "smoke": {"hs": (0.04, 0.02, 0.01), "t_end": 1.0, "free_t_end": 24.0},
        "full": {"m": 16, "n": 8, "hs": (0.04, 0.02, 0.01, 0.005, 0.0025), "t_end": 4.0,
                 "free_t_end": 200.0},
    },
)
def run(cfg: Config, ctx: Context) -> Result:
    gen = torch.Generator().manual_seed(cfg.seed)
    res = Result()
    B = cfg.scale * torch.randn(cfg.m, cfg.rank, generator=gen, dtype=F64)
    damped = HamiltonianFlow(FactorizationObjective(B @ B.T), Relativistic(cfg.eps), cfg.gamma)
    W0 = cfg.scale * torch.randn(cfg.m, cfg.n, generator=gen, dtype=F64)
    P0 = torch.randn(cfg.m, cfg.n, generator=gen, dtype=F64)
    A = spd(np.geomspace(*cfg.free_a, cfg.m).tolist(), gen)
    free = HamiltonianFlow(QuadraticObjective(A), Relativistic(cfg.free_eps), 0.0)
    Wf0 = torch.randn(cfg.m, cfg.n, generator=gen, dtype=F64)
    Pf0 = cfg.free_eps * torch.randn(cfg.m, cfg.n, generator=gen, dtype=F64)

    per_step: dict[str, list[float]] = {}
    accumulated: dict[str, list[float]] = {}
    coherence: dict[str, float] = {}
    residual_curves: dict[str, list[float]] = {}
    drift: dict[str, float] = {}
    free_curves: dict[str, list[float]] = {}
    with single_thread():
        for i, scheme in enumerate(SCHEMES):
            ctx.progress(i / (len(SCHEMES) + 1), f"damped: {scheme}")
            per_step[scheme], accumulated[scheme] = [], []
            for h in cfg.hs:
                H, D = ledger(damped, W0, P0, cfg.t_end, h, scheme)
                r = H - H[0] + D  # ledger residual after k steps
                e = np.abs(np.diff(r))  # per-step ledger error |ΔH + d|
                per_step[scheme].append(float(e.mean()))
                accumulated[scheme].append(float(abs(r[-1])))
            coherence[scheme] = float(abs(r[-1]) / e.sum())  # at the smallest h
            residual_curves[scheme] = np.abs(r).tolist()
            if scheme != "hamiltonian_descent":  # at γ = 0 it is the muon scheme
                ctx.progress((i + 0.5) / (len(SCHEMES) + 1), f"undamped: {scheme}")
                H, _ = ledger(free, Wf0, Pf0, cfg.free_t_end, cfg.free_h, scheme)
                err = np.abs(H - H[0])
                q = len(err) // 4
                drift[scheme] = float(err[3 * q:].max() / err[1 : q + 1].max())
                free_curves[scheme] = (H / H[0]).tolist()

        # linearized frequency on the damped path: ω² <= Lip(∇J)/ε, ‖∇²J‖ <= 3‖W‖₂² + ‖M‖₂
        path = integrate(damped, W0, P0, cfg.t_end, h=cfg.hs[-1], method="muon",
                         record_states=True)
        assert isinstance(path.Ws, Tensor)
        lip = 3 * float(torch.linalg.matrix_norm(path.Ws, 2).max()) ** 2 + float(
            torch.linalg.matrix_norm(B @ B.T, 2))
        h_omega = max(cfg.hs) * (lip / cfg.eps) ** 0.5

    orders = {s: log_slope(cfg.hs, per_step[s]) for s in SCHEMES}
    for s in SCHEMES:
        p = ORDERS[s] + 1
        res.checks[f"per_step_ledger_order_{s}"] = within(
            orders[s], p - 0.15, p + 0.15,
            f"a scheme of order {ORDERS[s]} errs by O(h^{p}) per step; the next term is O(hω) "
            f"relative (hω <= {h_omega:.2f} at the largest h, ω² = Lip(∇J)/ε on the path), which "
            f"moves a log–log fit over the sweep by ~0.4·hω = {0.4 * h_omega:.2f} < 0.15.",
        )
    for other in ("euler", "nesterov"):
        res.checks[f"muon_vs_{other}_accumulated_ledger_error"] = at_most(
            accumulated["muon"][-1] / accumulated[other][-1], 1.0,
            f"the claim: at the same h (smallest), |H(T) − H(0) + D(T)| of the symplectic Muon "
            f"scheme is below that of {other} (ratio <= 1).",
        )
    for s in SYMPLECTIC:
        res.checks[f"undamped_energy_bounded_{s}"] = at_most(
            drift[s], 2.0,
            "γ = 0: max|H − H(0)| over the last quarter / over the first: a conserved modified "
            "energy keeps it ~1, a secular (linear) drift makes it 4; 2 separates the two.",
        )
    for s in ("euler", "nesterov"):
        res.checks[f"undamped_energy_drifts_{s}"] = at_least(
            drift[s], 2.0,
            "γ = 0: the same ratio for a non-symplectic scheme (Euler gains, Nesterov loses "
            "energy every step): a secular drift makes it >= 4; 2 separates bounded from drift.",
        )
    res.series.update(
        hs=list(cfg.hs), per_step_ledger_error=per_step, accumulated_ledger_error=accumulated,
        fitted_orders=orders, coherence_at_smallest_h=coherence, undamped_drift_ratio=drift,
        h_omega_max=h_omega,
    )
    res.notes.append(
        "coherence |Σe_k| / Σ|e_k| of the per-step ledger errors at the smallest h: "
        + ", ".join(f"{s} {c:.2f}" for s, c in coherence.items())
        + " (1: every step errs the same way; symplectic schemes partly cancel)."
    )

    ctx.progress(0.95, "figure")
    fig, (a0, a1, a2) = _plot.figure(3, width=4.5)
    style = dict(zip(SCHEMES, ("o-", "s-", "^--", "x-", "d-"), strict=True))
    hs = np.array(cfg.hs)
    for s in SCHEMES:
        a0.loglog(hs, per_step[s], style[s], label=f"{s} (slope {orders[s]:.2f})", ms=4)
    a0.loglog(hs, per_step["muon"][0] * (hs / hs[0]) ** 2, "k:", lw=1, label="∝ h²")
    a0.loglog(hs, per_step["conformal_leapfrog"][0] * (hs / hs[0]) ** 3, "k--", lw=1,
              label="∝ h³")
    a0.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: no overlapping ticks
    a0.set(xlabel="step size h", ylabel="mean per-step |ΔH + Δdissipated|",
           title=f"Per-step ledger error (γ = {cfg.gamma:g})")
    a0.legend(fontsize=6)
    h_min = cfg.hs[-1]
    for s in SCHEMES:
        r = np.array(residual_curves[s])
        a1.semilogy(np.arange(len(r))[1:] * h_min, np.maximum(r[1:], 1e-18), label=s)
    a1.set(xlabel="time t", ylabel="|H(t) − H(0) + dissipated(t)|",
           title=f"Accumulated ledger error (h = {h_min:g})")
    a1.legend(fontsize=6)
    for s, c in free_curves.items():
        a2.plot(np.arange(len(c)) * cfg.free_h, c, label=f"{s} (ratio {drift[s]:.1f})")
    a2.set(xlabel="time t", ylabel="H(t) / H(0)",
           title=f"No damping (γ = 0, h = {cfg.free_h:g})")
    a2.legend(fontsize=6)
    res.figures.append(_plot.save(fig, ctx.figure_path("energy_ledger.png")))
    ctx.progress(1.0, "done")
    return res
