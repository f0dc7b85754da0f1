r"""Experiment 13 — the energy ledger of symplectic vs standard momentum discretizations.

Every scheme of :mod:`muonflow.dynamics` keeps a ledger: its ``dissipated`` increment
:math:`d_k` (a quadrature of :math:`\gamma\int\langle P, \nabla K(P)\rangle`) and the per-step
ledger error :math:`e_k = (H_{k+1} - H_k) + d_k`, which is 0 for the exact flow. Compared here:

- ``muon`` — symplectic Euler (momentum first): Muon with sum-form momentum;
- ``conformal_leapfrog`` — conformal-symplectic, second order;
- ``hamiltonian_descent`` — implicit damping, then the same drift;
- ``euler`` — explicit Euler (not symplectic);
- ``rk4`` — classic Runge–Kutta, its ledger integrated with the RK4 weights (order 4);
- ``nesterov`` — the *standard momentum* variant practical Muon implementations default to
  (Nesterov: :math:`M \leftarrow \beta M + g`, :math:`W \leftarrow W - \eta\nabla K(g + \beta M)`),
  in dynamics units :math:`P' = \beta P + hF(W)`, :math:`W' = W + h\nabla K(\beta P' + hF(W))`,
  ledger increment :math:`\gamma h\langle P, \nabla K(\beta P' + hF)\rangle`. It is consistent
  (first order) but not symplectic: with ``Quadratic`` kinetic energy and ``γ = 0`` its step has
  determinant :math:`1 - h^2\omega^2 < 1` on a mode of frequency ``ω`` — it dissipates energy
  numerically.

*Damped runs* (matrix factorization, nonconvex): the mean per-step ledger error scales like
:math:`h^{p+1}` (``p`` the scheme's order: a claim check for every scheme), and the accumulated
error at ``T`` shows whether the per-step errors cancel (symplectic) or add up coherently
(standard schemes).

*Undamped runs* (``γ = 0``, quadratic objective, relativistic ``K`` in its nonlinear range):
a symplectic scheme conserves a modified energy :math:`\tilde H = H + O(h)`, so
:math:`|H - H_0|` stays bounded — its maximum over the last quarter of a long run is about that
over the first quarter — while a non-symplectic scheme drifts secularly (a linear drift makes
that ratio 4; Euler gains energy, Nesterov loses it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..dynamics import INTEGRATORS, HamiltonianFlow, integrate
from ..spectral import Relativistic
from ._dynamics_problems import (
    F64,
    FactorizationObjective,
    QuadraticObjective,
    log_slope,
    single_thread,
    spd,
)
from ._meanfield_problems import tanh_force_constants, targets, teacher_student_problem
from .base import Check, Progress, at_least, at_most, experiment, require, within

SCHEMES = ("muon", "conformal_leapfrog", "hamiltonian_descent", "euler", "rk4", "nesterov")
#: the Nesterov form is written here (first order); the others declare their order
ORDERS = {**{s: INTEGRATORS[s].order for s in SCHEMES if s != "nesterov"}, "nesterov": 1}
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
    particles: int = 8          # a particle system (tanh neurons, w = 1/N) under the muon scheme
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


def validate(cfg: Config) -> None:
    require(len(cfg.hs) >= 2, f"hs needs >= 2 step sizes, got {cfg.hs}")
    for h in cfg.hs:
        n = cfg.t_end / h
        require(abs(n - round(n)) < 1e-9 * n, f"t_end = {cfg.t_end} must be a multiple of h = {h}")
    require(cfg.free_t_end >= 8 * cfg.free_h, "free_t_end must span >= 8 steps (quarters)")
    require(cfg.rank <= cfg.m, f"rank must be <= m = {cfg.m}, got {cfg.rank}")


def simulate(cfg: Config, progress: Progress) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(cfg.seed)
    B = cfg.scale * torch.randn(cfg.m, cfg.rank, generator=gen, dtype=F64)
    damped = HamiltonianFlow(FactorizationObjective(B @ B.T), Relativistic(cfg.eps), cfg.gamma)
    W0 = cfg.scale * torch.randn(cfg.m, cfg.n, generator=gen, dtype=F64)
    P0 = torch.randn(cfg.m, cfg.n, generator=gen, dtype=F64)
    A = spd(np.geomspace(*cfg.free_a, cfg.m).tolist(), gen)
    free = HamiltonianFlow(QuadraticObjective(A), Relativistic(cfg.free_eps), 0.0)
    Wf0 = torch.randn(cfg.m, cfg.n, generator=gen, dtype=F64)
    Pf0 = cfg.free_eps * torch.randn(cfg.m, cfg.n, generator=gen, dtype=F64)
    damped_out: dict[str, Any] = {}
    free_out: dict[str, Any] = {}
    with single_thread():
        for i, scheme in enumerate(SCHEMES):
            progress(i / (len(SCHEMES) + 1), f"damped: {scheme}")
            per_step, accumulated = [], []
            for h in cfg.hs:
                H, D = ledger(damped, W0, P0, cfg.t_end, h, scheme)
                r = H - H[0] + D  # ledger residual after k steps
                e = np.abs(np.diff(r))  # per-step ledger error |ΔH + d|
                per_step.append(float(e.mean()))
                accumulated.append(float(abs(r[-1])))
            damped_out[scheme] = {
                "per_step": np.array(per_step), "accumulated": np.array(accumulated),
                "residual_smallest_h": r,  # at the smallest h
                "coherence": float(abs(r[-1]) / e.sum()),
            }
            if scheme not in ("hamiltonian_descent", "rk4"):  # γ = 0: hd is the muon scheme
                progress((i + 0.5) / (len(SCHEMES) + 1), f"undamped: {scheme}")
                H, _ = ledger(free, Wf0, Pf0, cfg.free_t_end, cfg.free_h, scheme)
                free_out[scheme] = H / H[0]
        progress(0.9, "damped: particles, muon")
        particles = _particle_ledger(cfg, gen)
        # linearized frequency on the damped path: ω² <= Lip(∇J)/ε, ‖∇²J‖ <= 3‖W‖₂² + ‖M‖₂
        path = integrate(damped, W0, P0, cfg.t_end, h=cfg.hs[-1], method="muon",
                         record_states=True)
        assert isinstance(path.Ws, Tensor)
        lip = 3 * float(torch.linalg.matrix_norm(path.Ws, 2).max()) ** 2 + float(
            torch.linalg.matrix_norm(B @ B.T, 2))
    progress(1.0, "done")
    return {"damped": damped_out, "undamped_H_over_H0": free_out, "particles": particles,
            "h_omega_max": max(cfg.hs) * (lip / cfg.eps) ** 0.5}


def _particle_ledger(cfg: Config, gen: torch.Generator) -> dict[str, Any]:
    """The muon scheme's mean per-step ledger error on N teacher–student particles (the
    kinetic weight is w = 1/N), over the step sweep."""
    feature, obj = teacher_student_problem(3, 2, 16, 4, gen)
    theta = feature.sample(cfg.particles, generator=gen)
    assert isinstance(theta, Tensor)
    P = 0.3 * torch.randn(theta.shape, generator=gen, dtype=F64)
    flow = HamiltonianFlow(obj, Relativistic(cfg.eps), cfg.gamma)
    per_step = []
    for h in cfg.hs:
        H, D = ledger(flow, theta, P, cfg.t_end, h, "muon")
        per_step.append(float(np.abs(np.diff(H - H[0] + D)).mean()))
    a, _ = tanh_force_constants(feature.X, targets(obj), 2)
    return {"per_step": np.array(per_step), "h_omega_max": max(cfg.hs) * (a / cfg.eps) ** 0.5}


def _drift(H_rel: np.ndarray) -> float:
    """max |H − H(0)| over the last quarter / over the first quarter of a run."""
    err = np.abs(H_rel - 1)
    q = len(err) // 4
    return float(err[3 * q:].max() / err[1 : q + 1].max())


def checks(s: dict[str, Any], cfg: Config) -> dict[str, Check]:
    out: dict[str, Check] = {}
    hw = float(s["h_omega_max"])
    d = s["damped"]
    for sch in SCHEMES:
        p = ORDERS[sch] + 1
        band = max(0.15, 0.4 * hw)
        out[f"per_step_ledger_order_{sch}"] = within(
            log_slope(cfg.hs, d[sch]["per_step"]), p - band, p + band, kind="claim",
            why=f"the dissipation identity, discretized: a scheme of order {ORDERS[sch]} with a "
            f"consistent quadrature of γ∫⟨P,∇K(P)⟩ errs by O(h^{p}) per step; the next term is "
            f"O(hω) relative (hω <= {hw:.2f} at the largest h, ω² = Lip(∇J)/ε on the path), "
            f"which moves a log–log fit over the sweep by ~0.4·hω: {p} ± {band:.2f}.",
            catches="an integrator or ledger quadrature of the wrong order, or a ledger that is "
            "not the scheme's energy loss (a doubled increment, damping dropped from the step but "
            "kept in the ledger: then the error per step is O(h)).",
        )
    hw_p = float(s["particles"]["h_omega_max"])
    band = max(0.15, 0.4 * hw_p)
    out["per_step_ledger_order_particles_muon"] = within(
        log_slope(cfg.hs, s["particles"]["per_step"]), 2 - band, 2 + band, kind="claim",
        why=f"{cfg.particles} interacting particles (H_N = J + (1/N)ΣK(P_i), dissipation weighted "
        f"by 1/N) under the muon scheme: per-step ledger error O(h²); hω <= {hw_p:.2f} (ω² = a/ε, "
        f"a the force's Lipschitz constant): 2 ± {band:.2f}.",
        catches="a particle ledger whose dissipation is not weighted by the kinetic weight 1/N "
        "(then each step errs by O(h)), or a particle force that is not −∇(N·J).",
    )
    for other in ("euler", "nesterov"):
        out[f"muon_vs_{other}_accumulated_ledger_error"] = at_most(
            d["muon"]["accumulated"][-1] / d[other]["accumulated"][-1], 1.0, kind="claim",
            why=f"the claim: at the same h (smallest), |H(T) − H(0) + D(T)| of the symplectic "
            f"Muon scheme is below that of {other} (ratio <= 1).",
            catches="a Muon scheme that is not symplectic Euler (momentum and position updated "
            "in the wrong order), whose per-step errors then add up coherently.",
        )
    drift = {sch: _drift(H) for sch, H in s["undamped_H_over_H0"].items()}
    for sch in SYMPLECTIC:
        out[f"undamped_energy_bounded_{sch}"] = at_most(
            drift[sch], 2.0, kind="claim",
            why="γ = 0: max|H − H(0)| over the last quarter / over the first: a conserved "
            "modified energy keeps it ~1, a secular (linear) drift makes it 4; 2 separates the "
            "two.",
            catches="a non-symplectic update (explicit Euler's W ← W + h∇K(P_old)) in the Muon "
            "or leapfrog scheme.",
        )
    for sch in ("euler", "nesterov"):
        out[f"undamped_energy_drifts_{sch}"] = at_least(
            drift[sch], 2.0, kind="claim",
            why="γ = 0: the same ratio for a non-symplectic scheme (Euler gains, Nesterov loses "
            "energy every step): a secular drift makes it >= 4; 2 separates bounded from drift.",
            catches="a contrast that is not one: the standard scheme silently replaced by a "
            "symplectic one (then the symplectic advantage is untested).",
        )
    return out


def notes(s: dict[str, Any], cfg: Config) -> list[str]:
    return [
        "coherence |Σe_k| / Σ|e_k| of the per-step ledger errors at the smallest h: "
        + ", ".join(f"{sch} {float(c['coherence']):.2f}" for sch, c in s["damped"].items())
        + " (1: every step errs the same way; symplectic schemes partly cancel)."
    ]


def figure(s: dict[str, Any], cfg: Config) -> dict[str, Any]:
    from matplotlib.ticker import NullFormatter

    from . import _plot

    d = s["damped"]
    orders = {sch: log_slope(cfg.hs, d[sch]["per_step"]) for sch in SCHEMES}
    fig, (a0, a1, a2) = _plot.figure(3, width=4.5)
    style = dict(zip(SCHEMES, ("o-", "s-", "^--", "x-", "v-", "d-"), strict=True))
    hs = np.array(cfg.hs)
    for sch in SCHEMES:
        a0.loglog(hs, d[sch]["per_step"], style[sch], label=f"{sch} (slope {orders[sch]:.2f})",
                  ms=4)
    a0.loglog(hs, d["muon"]["per_step"][0] * (hs / hs[0]) ** 2, "k:", lw=1, label="∝ h²")
    a0.loglog(hs, d["conformal_leapfrog"]["per_step"][0] * (hs / hs[0]) ** 3, "k--", lw=1,
              label="∝ h³")
    a0.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: no overlapping ticks
    a0.set(xlabel="step size h", ylabel="mean per-step |ΔH + Δdissipated|",
           title=f"Per-step ledger error (γ = {cfg.gamma:g})")
    a0.legend(fontsize=6)
    h_min = cfg.hs[-1]
    for sch in SCHEMES:
        r = np.abs(d[sch]["residual_smallest_h"])
        a1.semilogy(np.arange(len(r))[1:] * h_min, np.maximum(r[1:], 1e-18), label=sch)
    a1.set(xlabel="time t", ylabel="|H(t) − H(0) + dissipated(t)|",
           title=f"Accumulated ledger error (h = {h_min:g})")
    a1.legend(fontsize=6)
    for sch, c in s["undamped_H_over_H0"].items():
        a2.plot(np.arange(len(c)) * cfg.free_h, c, label=f"{sch} (ratio {_drift(c):.1f})")
    a2.set(xlabel="time t", ylabel="H(t) / H(0)",
           title=f"No damping (γ = 0, h = {cfg.free_h:g})")
    a2.legend(fontsize=6)
    return {"energy_ledger.png": fig}


experiment(
    "energy_ledger",
    title="Energy ledger: symplectic (Muon, conformal leapfrog) vs standard momentum schemes",
    claim=(
        "The Hamiltonian structure favours structure-preserving discretizations: the Muon "
        "(symplectic Euler) and conformal-leapfrog schemes keep the energy ledger H − H(0) + "
        "γ∫⟨P,∇K⟩ better than explicit Euler and Nesterov-style momentum, whose per-step errors "
        "add up coherently and whose energy drifts without damping."
    ),
    config=Config,
    simulate=simulate,
    checks=checks,
    figure=figure,
    notes=notes,
    validate=validate,
    profiles={
        "smoke": {"hs": (0.04, 0.02, 0.01), "t_end": 1.0, "free_t_end": 24.0},
        "full": {"m": 16, "n": 8, "hs": (0.04, 0.02, 0.01, 0.005, 0.0025), "t_end": 4.0,
                 "free_t_end": 200.0},
    },
    version=3,
)
