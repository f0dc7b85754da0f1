r"""Eulerian reference solver of the phase-space mean-field equation for scalar parameters.

The equation and its dissipation identity: docs/theory.md §5.

For a scalar parameter :math:`\theta \in \mathbb R` with momentum :math:`P \in \mathbb R`
(particles of shape ``[N, 1, 1]``) the mean-field limit of the particle system is the
Vlasov-type equation on a phase-space density :math:`\mu_t(\theta, P)`

.. math::
    \partial_t \mu + \partial_\theta\big(\mu\, k'(P)\big)
        + \partial_P\big(\mu\,(f(\theta; \rho_t) - \gamma P)\big) = 0, \qquad
    f(\theta; \rho) = -\partial_\theta \frac{\delta J}{\delta\rho}(\theta)
                    = -F'(\theta)^\top \nabla R(m_\rho),

with :math:`\rho_t` the θ-marginal of :math:`\mu_t` and :math:`m_\rho = \int F\,d\rho`. It
dissipates :math:`\mathcal H(\mu) = J(\rho) + \int K\,d\mu` at the rate
:math:`\gamma\int P\,k'(P)\,d\mu`.

Discretization (:func:`solve_vlasov`): a conservative finite-volume method on a uniform
``n_theta x n_p`` grid of cell masses. Face values come from a MUSCL reconstruction with
limited slopes (monotonized-central by default), fluxes are upwind, and the method of lines
is integrated with the three-stage strong-stability-preserving Runge–Kutta scheme
(SSP-RK3). Second order in space away from extrema, third order in time; mass is conserved
exactly except for what leaves through the boundary (zero inflow), which is reported as
``outflow``. The mean feature uses the cell-centre quadrature
:math:`m = \sum_i \rho_i F(\theta_i)` (second order). Nothing here uses particles: this is
the independent reference against which the particle system is checked.

The model enters only through a :class:`ScalarModel` — five closed-form callables ``F``,
``f(θ; m)``, ``R``, ``k``, ``k'``. Pass one written from the formulas (as the reproduction's
``particles_vs_pde`` does, so that the reference shares no force or map code with the particle
system), or a :class:`ProbabilityObjective` and a potential (adapted by
:meth:`ScalarModel.from_library`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_choice, check_finite, check_scale
from ..spectral import SpectralPotential
from .objective import ProbabilityObjective

__all__ = ["LIMITERS", "PDESolution", "PhaseGrid", "ScalarModel", "solve_vlasov"]


@dataclass(frozen=True)
class ScalarModel:
    r"""A scalar mean-field model in closed form: what :func:`solve_vlasov` needs, nothing more.

    - ``feature(θ)``: ``[n] -> [n, *out]``, :math:`F(\theta)`;
    - ``force(θ, m)``: ``([n], [*out]) -> [n]``,
      :math:`f(\theta; m) = -F'(\theta)^\top\nabla R(m)` (the mean-field force);
    - ``risk(m)``: ``[*out] -> 0-dim``, :math:`R(m)`;
    - ``kinetic(P)``, ``velocity(P)``: ``[n] -> [n]``, :math:`k(P)` and :math:`k'(P)`.
    """

    feature: Callable[[Tensor], Tensor]
    force: Callable[[Tensor, Tensor], Tensor]
    risk: Callable[[Tensor], Tensor]
    kinetic: Callable[[Tensor], Tensor]
    velocity: Callable[[Tensor], Tensor]

    @classmethod
    def from_library(
        cls, objective: ProbabilityObjective, kinetic: SpectralPotential
    ) -> ScalarModel:
        """The model of a single-system objective on scalar particles and a potential."""
        if objective.systems != 1:
            raise ValueError(f"solve_vlasov needs a single-system objective, got {objective!r}")

        def scalar(x: Tensor) -> Tensor:
            return x.reshape(-1, 1, 1)

        def force(th: Tensor, m: Tensor) -> Tensor:
            f = objective.force_at(scalar(th), m)
            assert isinstance(f, Tensor)  # scalar particles: a single block
            return f.reshape(-1)

        return cls(
            feature=lambda th: objective.feature(scalar(th)),
            force=force,
            risk=objective.risk_value,
            kinetic=lambda p: kinetic.energy(scalar(p)).reshape(-1),
            velocity=lambda p: kinetic.grad(scalar(p)).reshape(-1),
        )


@dataclass(frozen=True)
class PhaseGrid:
    """A uniform grid on ``[theta_lo, theta_hi] x [p_lo, p_hi]`` with ``n_theta x n_p`` cells."""

    theta_lo: float
    theta_hi: float
    p_lo: float
    p_hi: float
    n_theta: int
    n_p: int

    def __post_init__(self) -> None:
        if not (self.theta_hi > self.theta_lo and self.p_hi > self.p_lo):
            raise ValueError(f"PhaseGrid needs lo < hi on both axes, got {self}")
        if self.n_theta < 4 or self.n_p < 4:
            raise ValueError(f"PhaseGrid needs at least 4 cells per axis, got {self}")

    @property
    def d_theta(self) -> float:
        return (self.theta_hi - self.theta_lo) / self.n_theta

    @property
    def d_p(self) -> float:
        return (self.p_hi - self.p_lo) / self.n_p

    def theta_centers(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """Cell centres along θ: ``[n_theta]``."""
        return self.theta_lo + (torch.arange(self.n_theta, dtype=dtype) + 0.5) * self.d_theta

    def p_centers(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """Cell centres along P: ``[n_p]``."""
        return self.p_lo + (torch.arange(self.n_p, dtype=dtype) + 0.5) * self.d_p

    def p_faces(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """Cell faces along P: ``[n_p + 1]``."""
        return self.p_lo + torch.arange(self.n_p + 1, dtype=dtype) * self.d_p

    def gaussian_masses(
        self,
        mean: tuple[float, float],
        std: tuple[float, float],
        dtype: torch.dtype = torch.float64,
    ) -> Tensor:
        r"""Exact cell masses ``[n_theta, n_p]`` of the product law N(μθ, sθ²) ⊗ N(μP, sP²).

        Each mass is a product of normal-CDF differences, so the initial datum carries no
        quadrature error; the mass outside the domain is simply absent.
        """

        def axis(lo: float, d: float, n: int, mu: float, s: float) -> Tensor:
            faces = lo + torch.arange(n + 1, dtype=torch.float64) * d
            cdf = 0.5 * torch.erfc(-(faces - mu) / (s * math.sqrt(2)))
            return cdf[1:] - cdf[:-1]

        a = axis(self.theta_lo, self.d_theta, self.n_theta, mean[0], std[0])
        b = axis(self.p_lo, self.d_p, self.n_p, mean[1], std[1])
        return torch.outer(a, b).to(dtype)


@dataclass(frozen=True)
class PDESolution:
    """The Eulerian solution at the requested times (``T`` of them).

    Fields: ``t [T]``; ``mass [T, n_theta, n_p]`` (cell masses); ``mean_feature [T, *out]``;
    ``J [T]``; ``K [T]`` (``∫K dμ``); ``H [T] = J + K``; ``dissipated [T]``
    (``γ∫₀ᵗ∫P k'(P) dμ ds``); ``outflow [T]`` (mass that left the domain); ``steps``.
    """

    t: Tensor
    mass: Tensor
    mean_feature: Tensor
    J: Tensor
    K: Tensor
    H: Tensor
    dissipated: Tensor
    outflow: Tensor
    steps: int


def _minmod(a: Tensor, b: Tensor) -> Tensor:
    return torch.where(a * b > 0, torch.sign(a) * torch.minimum(a.abs(), b.abs()), 0 * a)


def _slope_mc(dl: Tensor, dr: Tensor) -> Tensor:
    # monotonized central: minmod(2Δ−, 2Δ+, (Δ− + Δ+)/2)
    return _minmod(_minmod(2 * dl, 2 * dr), 0.5 * (dl + dr))


#: Slope limiters for the MUSCL reconstruction: name -> slope(Δ−, Δ+).
LIMITERS = {
    "mc": _slope_mc,
    "minmod": _minmod,
    "none": lambda dl, dr: 0.5 * (dl + dr),  # unlimited central slope (Fromm)
}


def _face_fluxes(u: Tensor, vel: Tensor, dim: int, limiter: str) -> Tensor:
    """Upwind MUSCL fluxes ``vel * u_face`` at all ``n + 1`` faces along ``dim``.

    ``u: [n_theta, n_p]`` densities, zero outside (two ghost cells per side); ``vel``
    broadcasts against the faces (``n + 1`` along ``dim``).
    """
    pad = [0, 0, 0, 0]
    pad[2 * (1 - dim)] = pad[2 * (1 - dim) + 1] = 2  # F.pad orders the last dim first
    g = torch.nn.functional.pad(u, pad)  # [.., n + 4, ..] along dim
    d = torch.diff(g, dim=dim)  # n + 3 differences
    n3 = d.shape[dim]
    slope = LIMITERS[limiter](d.narrow(dim, 0, n3 - 1), d.narrow(dim, 1, n3 - 1))
    m = slope.shape[dim]  # n + 2: the real cells and one ghost cell on each side
    # ghost cells are empty and flat, so nothing flows in whatever the limiter
    slope.narrow(dim, 0, 1).zero_()
    slope.narrow(dim, m - 1, 1).zero_()
    cells = g.narrow(dim, 1, m)
    left = (cells + 0.5 * slope).narrow(dim, 0, m - 1)  # u_L at the n + 1 faces
    right = (cells - 0.5 * slope).narrow(dim, 1, m - 1)  # u_R at the n + 1 faces
    return torch.where(vel > 0, vel * left, vel * right)


def solve_vlasov(
    objective: ProbabilityObjective | ScalarModel,
    kinetic: SpectralPotential | None,
    gamma: float,
    grid: PhaseGrid,
    mass0: Tensor,
    times: Tensor | list[float],
    *,
    cfl: float = 0.4,
    limiter: str = "mc",
) -> PDESolution:
    r"""Solve the scalar phase-space mean-field equation on ``grid`` from ``mass0``.

    Args:
        objective: a :class:`ScalarModel`, or a :class:`ProbabilityObjective` whose feature
            accepts scalar particles ``θ: [n, 1, 1]`` (one system).
        kinetic: with a :class:`ProbabilityObjective`, the potential ``K`` (on ``1 x 1``
            matrices ``∇K(P) = k'(P)``; smooth: ``relativistic``, ``huber``, ``quadratic``);
            ``None`` with a :class:`ScalarModel`.
        gamma: damping ``γ >= 0``.
        grid: the phase-space grid.
        mass0: ``[n_theta, n_p]`` non-negative initial cell masses (e.g.
            :meth:`PhaseGrid.gaussian_masses`).
        times: increasing output times ``>= 0``.
        cfl: Courant number of each SSP-RK3 step,
            ``dt = cfl / (max|k'|/Δθ + max|f − γP|/ΔP)``.
        limiter: slope limiter, a key of :data:`LIMITERS`.

    Returns:
        :class:`PDESolution` (float64).
    """
    model, t_out = _check_vlasov(objective, kinetic, gamma, grid, mass0, times, cfl, limiter)
    fv = _FiniteVolume(model, float(gamma), grid, limiter)
    u = mass0.to(torch.float64) / fv.cell
    t = dissipated = outflow = 0.0
    steps = 0
    snaps: list[tuple[Tensor, Tensor, Tensor, Tensor, float, float]] = []
    for t_next in t_out.tolist():
        while t < t_next - 1e-14 * max(1.0, t_next):
            b = fv.field(u)
            dt = cfl / (fv.a_max / grid.d_theta + float(b.abs().max()) / grid.d_p)
            dt = min(dt, t_next - t)
            u, d_diss, d_out = fv.ssp_rk3(u, b, dt)
            dissipated, outflow = dissipated + d_diss, outflow + d_out
            t += dt
            steps += 1
        m, J, K = fv.observe(u)
        snaps.append((u * fv.cell, m, J, K, dissipated, outflow))
    J_t = torch.stack([s[2] for s in snaps])
    K_t = torch.stack([s[3] for s in snaps])
    return PDESolution(
        t=t_out,
        mass=torch.stack([s[0] for s in snaps]),
        mean_feature=torch.stack([s[1] for s in snaps]),
        J=J_t,
        K=K_t,
        H=J_t + K_t,
        dissipated=torch.tensor([s[4] for s in snaps], dtype=torch.float64),
        outflow=torch.tensor([s[5] for s in snaps], dtype=torch.float64),
        steps=steps,
    )


def _check_vlasov(
    objective: ProbabilityObjective | ScalarModel,
    kinetic: SpectralPotential | None,
    gamma: float,
    grid: PhaseGrid,
    mass0: Tensor,
    times: Tensor | list[float],
    cfl: float,
    limiter: str,
) -> tuple[ScalarModel, Tensor]:
    """Validate :func:`solve_vlasov`'s inputs: ``(the model, the output times)``."""
    check_scale(gamma, "gamma", allow_zero=True)
    check_scale(cfl, "cfl", allow_zero=False)
    check_choice(limiter, "limiter", LIMITERS)
    if isinstance(objective, ScalarModel):
        if kinetic is not None:
            raise ValueError("solve_vlasov: a ScalarModel carries its own kinetic energy")
        model = objective
    else:
        if kinetic is None:
            raise ValueError("solve_vlasov: a ProbabilityObjective needs a kinetic potential")
        model = ScalarModel.from_library(objective, kinetic)
    shape = (grid.n_theta, grid.n_p)
    if not isinstance(mass0, Tensor) or tuple(mass0.shape) != shape:
        got = tuple(mass0.shape) if isinstance(mass0, Tensor) else type(mass0).__name__
        raise ValueError(f"solve_vlasov: mass0 must have shape {list(shape)}, got {got}")
    check_finite(mass0, "solve_vlasov: mass0")
    if float(mass0.min()) < 0:
        raise ValueError("solve_vlasov: mass0 must be non-negative")
    t_out = torch.as_tensor(times, dtype=torch.float64).flatten()
    if t_out.numel() == 0 or float(t_out[0]) < 0 or bool((t_out.diff() < 0).any()):
        raise ValueError(f"solve_vlasov: times must be non-negative and increasing, got {t_out}")
    return model, t_out


class _FiniteVolume:
    """The discretized right-hand side of the scalar Vlasov equation on ``grid`` (densities
    ``u: [n_theta, n_p]``), its SSP-RK3 step and the observed energies."""

    def __init__(self, model: ScalarModel, gamma: float, grid: PhaseGrid, limiter: str) -> None:
        f64 = torch.float64
        self.model, self.gamma, self.grid, self.limiter = model, gamma, grid, limiter
        self.cell = grid.d_theta * grid.d_p
        self.th = grid.theta_centers(f64)  # scalar parameters at the cell centres: [n_theta]
        self.F_nodes = model.feature(self.th)  # [n_theta, *out]
        if self.F_nodes.shape[0] != grid.n_theta:
            raise ValueError(
                f"solve_vlasov: the feature must map θ of shape {tuple(self.th.shape)} to "
                f"[{grid.n_theta}, ...], got {tuple(self.F_nodes.shape)}"
            )
        p_c = grid.p_centers(f64)
        self.p_f = grid.p_faces(f64)
        # θ-velocity k'(P_j): [1, n_p], constant along θ: the faces of column j share a_j
        self.a = model.velocity(p_c).reshape(1, -1)
        self.k_c = model.kinetic(p_c).reshape(1, -1)  # k(P_j)
        self.power_c = p_c.reshape(1, -1) * self.a  # P k'(P)
        self.a_max = float(self.a.abs().max())

    def marginal_mean(self, u: Tensor) -> Tensor:
        rho = u.sum(1) * self.cell  # θ-marginal masses [n_theta]
        return torch.tensordot(rho, self.F_nodes, dims=1)  # m = Σ_i ρ_i F(θ_i)

    def field(self, u: Tensor) -> Tensor:
        """The P-velocity at the P-faces, ``f(θ_i; ρ) − γP``: ``[n_theta, n_p + 1]``."""
        f = self.model.force(self.th, self.marginal_mean(u)).reshape(-1, 1)
        return f - self.gamma * self.p_f.reshape(1, -1)

    def rhs(self, u: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """``(du/dt, mass leaving through the boundary per unit time)``."""
        g = self.grid
        ft = _face_fluxes(u, self.a, 0, self.limiter)  # [n_theta + 1, n_p]
        fp = _face_fluxes(u, b, 1, self.limiter)  # [n_theta, n_p + 1]
        du = -torch.diff(ft, dim=0) / g.d_theta - torch.diff(fp, dim=1) / g.d_p
        # ghost cells carry no inflow, so the boundary fluxes are pure outflow
        out = (ft[-1].sum() - ft[0].sum()) * g.d_p + (fp[:, -1].sum() - fp[:, 0].sum()) * g.d_theta
        return du, out

    def ssp_rk3(self, u: Tensor, b: Tensor, dt: float) -> tuple[Tensor, float, float]:
        """One Shu–Osher SSP-RK3 step: ``(u', dissipated, outflow)`` over the step; the ledger
        integrals use the same stage weights 1/6, 1/6, 2/3."""
        k1, o1 = self.rhs(u, b)
        u1 = u + dt * k1
        k2, o2 = self.rhs(u1, self.field(u1))
        u2 = 0.75 * u + 0.25 * (u1 + dt * k2)
        k3, o3 = self.rhs(u2, self.field(u2))
        pw = [float((v * self.power_c).sum() * self.cell) for v in (u, u1, u2)]
        dissipated = self.gamma * dt * (pw[0] / 6 + pw[1] / 6 + 2 * pw[2] / 3)
        outflow = dt * float(o1 / 6 + o2 / 6 + 2 * o3 / 3)
        return u / 3 + (2 / 3) * (u2 + dt * k3), dissipated, outflow

    def observe(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(m, J = R(m), K = ∫k dμ)``."""
        m = self.marginal_mean(u)
        return m, self.model.risk(m), (u * self.k_c).sum() * self.cell
