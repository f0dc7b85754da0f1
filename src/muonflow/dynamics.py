r"""Damped Hamiltonian dynamics of inertial Muon, its integrators and an exact energy ledger.

The mathematics: docs/theory.md §2 (the flow, the dissipation identity) and §3 (the schemes).

For an objective :math:`J` and a spectral potential :math:`K` (the kinetic energy) the flow is

.. math::
    \dot W = \nabla K(P), \qquad \dot P = -\nabla J(W) - \gamma P, \qquad H(W, P) = J(W) + K(P),

and it dissipates energy at the rate :math:`dH/dt = -\gamma \langle P, \nabla K(P) \rangle \le 0`:

.. math::
    H(t) - H(0) + \mathrm{dissipated}(t) = 0, \qquad
    \mathrm{dissipated}(t) = \gamma \int_0^t \langle P, \nabla K(P)\rangle\, ds .

States are a tensor ``[..., m, n]`` or a tuple of such (blocks of a product space); every block
carries its own potential (or all share one), leading dims are a batch. A general
:class:`Objective` supplies a *force* ``F`` and a *kinetic weight* ``w``; the flow is then

.. math::
    \dot W = \nabla K(P), \qquad \dot P = F(W) - \gamma P, \qquad
    H = J(W) + w \sum_{b} \sum_{\mathrm{batch}} K_b(P_b), \qquad
    \frac{dH}{dt} = -\gamma\, w \sum \langle P, \nabla K(P) \rangle,

which holds whenever :math:`F = -\nabla J / w`. Plain objectives have ``w = 1`` and
``F = -∇J``; a mean-field probability objective over ``N`` particles has ``w = 1/N`` and the
mean-field force :math:`F_i = -N\,\partial J/\partial \theta_i`.

Muon is the symplectic-Euler discretization
-------------------------------------------
The ``"muon"`` scheme is, in this order (the momentum first, then the parameter with the
*new* momentum),

.. math::
    P_{k+1} = (1 - \gamma h)\, P_k + h\, F(W_k), \qquad
    W_{k+1} = W_k + h\, \nabla K_\varepsilon(P_{k+1}).

With :math:`P = -hM` it is, iterate for iterate, Muon with sum-form momentum

.. math::
    M_{k+1} = \beta M_k + g_k, \qquad W_{k+1} = W_k - \eta\, \nabla K_{\varepsilon_{opt}}(M_{k+1}),
    \qquad \eta = h, \quad \beta = 1 - \gamma h, \quad \varepsilon_{opt} = \varepsilon / h,

with :math:`g_k = \nabla J(W_k)`, because :math:`\nabla K` is odd and invariant under the joint
scaling, :math:`\nabla K_{\varepsilon/h}(X/h) = \nabla K_\varepsilon(X)`. EMA-form momentum
:math:`B = (1-\beta) M` (as in ``torch.optim.Muon``) needs
:math:`\varepsilon_B = (1-\beta)\varepsilon/h = \gamma\varepsilon`.

Integrators and their ledgers
-----------------------------
Every scheme of :data:`INTEGRATORS` declares its ``order``. ``dissipated`` is accumulated with a
quadrature consistent with the scheme (``w`` the kinetic weight, :math:`V = \nabla K`):

``muon`` (order 1)
    :math:`P' = (1-\gamma h)P + hF(W)`, :math:`W' = W + hV(P')`;
    increment :math:`\gamma h w \langle P, V(P')\rangle`.
``hamiltonian_descent`` (order 1)
    :math:`P' = (P + hF(W))/(1+\gamma h)`, :math:`W' = W + hV(P')`;
    right-point increment :math:`\gamma h w \langle P', V(P')\rangle`.
``conformal_leapfrog`` (order 2)
    damp-kick-drift-kick-damp with the exact factors :math:`e^{-\gamma h/2}`;
    midpoint increment :math:`\gamma h w \langle P_{1/2}, V(P_{1/2})\rangle`.
``euler`` (order 1)
    :math:`W' = W + hV(P)`, :math:`P' = P + h(F(W) - \gamma P)`;
    left-point increment :math:`\gamma h w \langle P, V(P)\rangle`.
``rk4`` (order 4)
    classic Runge–Kutta on :math:`(W, P, \mathrm{dissipated})`; RK4 weights on the stage powers.
``reference`` (order 8)
    SciPy ``solve_ivp`` DOP853, adaptive, float64, ``rtol = 1e-12``; ``dissipated`` is
    integrated as an extra state component.

The muon increment is the one the scheme's exact discrete identity singles out. With the
Bregman divergences :math:`D_K(P, P') = K(P) - K(P') - \langle \nabla K(P'), P - P'\rangle \ge 0`
and :math:`D_J(W', W) = J(W') - J(W) + w\langle F(W), W' - W\rangle`,

.. math::
    H_{k+1} - H_k = -\gamma h w \langle P_k, \nabla K(P_{k+1})\rangle
    - w D_K(P_k, P_{k+1}) + D_J(W_{k+1}, W_k),

so the ledger residual :math:`H_k - H_0 + \mathrm{dissipated}_k = \sum_j (D_J - w D_K)` is a sum
of :math:`O(h^2)` terms: :math:`O(h)` over a unit of time, shrinking at the scheme's order.

Energy decrease of the muon scheme (derived here, tested). By Fenchel–Young,

.. math::
    -\gamma h\langle P, V'\rangle - D_K(P, P')
    = (1-\gamma h)\langle P, V'\rangle - K(P) - K^*(V') \le K^*((1-\gamma h)V') - K^*(V'),

with equality at :math:`P = \nabla K^*((1-\gamma h)V')`. For an ``L``-smooth :math:`J` (``w = 1``)
:math:`D_J \le \tfrac{L h^2}{2}\|V'\|_F^2`, and for ``relativistic(ε)`` and ``huber(ε)``,
:math:`k^*(u) - k^*(cu) \ge \tfrac{\varepsilon}{2}(1 - c^2) u^2` on :math:`|u| \le 1` (equality as
:math:`u \to 0`; for the relativistic profile the quotient by :math:`u^2` is
:math:`\varepsilon(1-c^2)/(\sqrt{1-c^2u^2} + \sqrt{1-u^2})`, increasing in ``u``). Hence ``H``
is non-increasing at every step, from every state, whenever

.. math::
    \varepsilon\, \big(1 - (1-\gamma h)^2\big) \ge L h^2
    \iff h \le h_{\max} = \frac{2\gamma\varepsilon}{L + \gamma^2 \varepsilon},

and the bound is sharp for quadratics (:func:`muon_energy_step_bound`). Explicit Euler has no such
step: from :math:`P = 0` its first step raises ``H`` by :math:`K(hF(W)) > 0` for every ``h > 0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from ._checks import check_choice, check_matrix, check_scale
from ._deps import progress_bar, require

__all__ = [
    "INTEGRATORS",
    "FunctionObjective",
    "HamiltonianFlow",
    "Integrator",
    "NonFiniteStateError",
    "Objective",
    "State",
    "Trajectory",
    "integrate",
    "muon_energy_step_bound",
]

#: A point of parameter (or momentum) space: one matrix tensor ``[..., m, n]`` or a tuple of
#: them (the blocks of a product space).
State = Tensor | tuple[Tensor, ...]
Blocks = tuple[Tensor, ...]


# -- objectives ---------------------------------------------------------------------------------
@runtime_checkable
class Objective(Protocol):
    """What the flow needs from an objective.

    ``value_and_force`` returns ``(J, F)`` with ``J`` a 0-dim tensor and ``F`` of ``W``'s
    structure and shapes; the flow's energy identity holds when ``F = -∇J / kinetic_weight``.
    Implementations that use autograd must enable it locally (``torch.enable_grad()``): the
    integrators may call them under ``torch.no_grad()``. Returned tensors should be detached.
    """

    def value(self, W: State) -> Tensor:
        """``J(W)``, a 0-dim tensor."""
        ...

    def value_and_force(self, W: State) -> tuple[Tensor, State]:
        """``(J(W), F(W))``; ``F = -∇J`` for plain objectives."""
        ...

    def kinetic_weight(self, W: State) -> float:
        """The weight ``w`` of the kinetic energy (``1.0`` for plain objectives)."""
        ...


def _check_value(J: Any, where: str) -> Tensor:
    if not isinstance(J, Tensor) or J.numel() != 1 or not J.is_floating_point():
        got = tuple(J.shape) if isinstance(J, Tensor) else type(J).__name__
        raise TypeError(f"{where} must return a real floating scalar tensor, got {got}")
    return J.reshape(())


class FunctionObjective:
    r"""A plain objective ``f(W) -> scalar`` with force :math:`F = -\nabla f` by autograd.

    ``f`` receives ``W`` as it is integrated (a tensor ``[..., m, n]`` or a tuple of blocks) and
    returns a 0-dim tensor. :meth:`value_and_force` costs one forward and one backward pass.
    """

    def __init__(self, f: Callable[[State], Tensor]) -> None:
        if not callable(f):
            raise TypeError(f"objective must be callable, got {type(f).__name__}")
        self.f = f

    def value(self, W: State) -> Tensor:
        with torch.no_grad():
            return _check_value(self.f(W), "objective").detach()

    def value_and_force(self, W: State) -> tuple[Tensor, State]:
        blocks, is_tuple = _split(W)
        with torch.enable_grad():
            leaves = tuple(b.detach().requires_grad_(True) for b in blocks)
            J = _check_value(self.f(_join(leaves, is_tuple)), "objective")
            grads: Sequence[Tensor | None] = (
                torch.autograd.grad(J, leaves, allow_unused=True)
                if J.requires_grad
                else (None,) * len(leaves)  # f does not depend on W
            )
        force = tuple(
            torch.zeros_like(b) if g is None else g.neg_()
            for g, b in zip(grads, blocks, strict=True)
        )
        return J.detach(), _join(force, is_tuple)

    def kinetic_weight(self, W: State) -> float:
        return 1.0

    def __repr__(self) -> str:
        return f"FunctionObjective({getattr(self.f, '__name__', repr(self.f))})"


def _as_objective(objective: Any) -> Objective:
    if hasattr(objective, "value_and_force"):
        missing = [
            m for m in ("value", "value_and_force", "kinetic_weight") if not hasattr(objective, m)
        ]
        if missing:
            raise TypeError(
                f"objective {type(objective).__name__} has value_and_force but lacks "
                f"{', '.join(missing)} (see muonflow.dynamics.Objective)"
            )
        return objective
    if callable(objective):
        return FunctionObjective(objective)
    raise TypeError(
        "objective must be a callable W -> scalar or implement the Objective protocol "
        f"(value, value_and_force, kinetic_weight); got {type(objective).__name__}"
    )


# -- block helpers ------------------------------------------------------------------------------
def _split(x: State) -> tuple[Blocks, bool]:
    """``(blocks, is_tuple)``: a tensor is one block."""
    if isinstance(x, Tensor):
        return (x,), False
    return tuple(x), True


def _join(blocks: Sequence[Tensor], is_tuple: bool) -> State:
    return tuple(blocks) if is_tuple else blocks[0]


def _all_finite(blocks: Blocks) -> bool:
    """Whether every entry is finite. A finite sum implies it (a NaN or an Inf entry makes the
    sum NaN or Inf); only a non-finite sum, possibly an overflow, needs the entrywise check,
    which costs several times more."""
    return all(math.isfinite(float(b.sum())) or bool(torch.isfinite(b).all()) for b in blocks)


def _inner(X: Blocks, Y: Blocks) -> Tensor:
    """``Σ_blocks ⟨X, Y⟩`` (Frobenius, summed over the batch) as a float64 0-dim tensor."""
    total = torch.zeros((), dtype=torch.float64, device=X[0].device)
    for x, y in zip(X, Y, strict=True):
        total = total + torch.vdot(x.reshape(-1), y.reshape(-1)).double()
    return total


def _check_state(x: Any, name: str) -> tuple[Blocks, bool]:
    if isinstance(x, Tensor):
        return (check_matrix(x, name).detach(),), False
    if isinstance(x, tuple | list):
        if not x:
            raise ValueError(
                f"{name} must have at least one block, got an empty {type(x).__name__}"
            )
        return tuple(check_matrix(b, f"{name}[{i}]").detach() for i, b in enumerate(x)), True
    raise TypeError(
        f"{name} must be a tensor [..., m, n] or a tuple of them, got {type(x).__name__}"
    )


# -- the flow -----------------------------------------------------------------------------------
class HamiltonianFlow:
    r"""The damped Hamiltonian flow of an objective under a spectral kinetic energy.

    .. math::
        \dot W = \nabla K(P), \qquad \dot P = F(W) - \gamma P, \qquad
        H(W, P) = J(W) + w \sum_b \sum_{\text{batch}} K_b(P_b).

    Args:
        objective: a callable ``f(W) -> scalar`` (wrapped in :class:`FunctionObjective`, force
            ``-∇f`` by autograd, ``w = 1``) or an :class:`Objective` (e.g. a mean-field
            ``ProbabilityObjective``: force ``-N ∂J/∂θ_i``, ``w = 1/N``), used as is.
        kinetic: a spectral potential (:mod:`muonflow.spectral`) applied to every block, or a
            tuple with one potential per block.
        gamma: the damping ``γ >= 0``.

    States ``W, P`` are tensors ``[..., m, n]`` or tuples of them; ``∇K`` is ``kinetic.grad``
    (method ``"auto"``), the same kernel the optimizer uses.
    """

    def __init__(self, objective: Any, kinetic: Any, gamma: float) -> None:
        self.objective = _as_objective(objective)
        self.kinetic = _check_kinetic(kinetic)
        if isinstance(gamma, Tensor):
            raise TypeError(f"gamma must be a float, got a tensor of shape {tuple(gamma.shape)}")
        self.gamma = float(check_scale(gamma, "gamma", allow_zero=True))

    # -- structure --------------------------------------------------------------------------
    def potentials(self, n_blocks: int) -> tuple[Any, ...]:
        """The potential of each of ``n_blocks`` blocks."""
        if isinstance(self.kinetic, tuple):
            if len(self.kinetic) != n_blocks:
                raise ValueError(
                    f"kinetic has {len(self.kinetic)} potentials but the state has {n_blocks} "
                    "block(s); give one potential per block or a single shared one"
                )
            return self.kinetic
        return (self.kinetic,) * n_blocks

    def kinetic_weight(self, W: State) -> float:
        """The weight ``w`` multiplying the kinetic energy and the dissipation."""
        w = self.objective.kinetic_weight(W)
        if isinstance(w, Tensor):
            w = float(w)
        if not (isinstance(w, int | float) and math.isfinite(w) and w > 0):
            raise ValueError(f"objective.kinetic_weight must be a finite number > 0, got {w!r}")
        return float(w)

    # -- fields and energies (public, reused by the particle system and the optimizer) --------
    def value(self, W: State) -> Tensor:
        """The objective ``J(W)``, a 0-dim tensor."""
        return _check_value(self.objective.value(W), "objective.value")

    def value_and_force(self, W: State) -> tuple[Tensor, State]:
        """``(J(W), F(W))`` with ``F`` of ``W``'s structure."""
        J, F = self.objective.value_and_force(W)
        return _check_value(J, "objective.value_and_force").detach(), F

    def force(self, W: State) -> State:
        """The force ``F(W)`` (``-∇J`` for plain objectives): ``W``'s structure and shapes."""
        return self.value_and_force(W)[1]

    def velocity(self, P: State) -> State:
        r"""``Ẇ = ∇K(P)`` blockwise: ``P_b: [..., m, n] -> [..., m, n]``."""
        Pb, is_tuple = _split(P)
        return _join(_velocity(self.potentials(len(Pb)), Pb), is_tuple)

    def kinetic_energy(self, W: State, P: State) -> Tensor:
        r""":math:`w \sum_b \sum_{\text{batch}} K_b(P_b)`, a 0-dim tensor."""
        Pb, _ = _split(P)
        return self.kinetic_weight(W) * _kinetic(self.potentials(len(Pb)), Pb)

    def hamiltonian(self, W: State, P: State) -> Tensor:
        """``H = J(W) + K(P)``, a 0-dim float64 tensor."""
        return self.value(W).double() + self.kinetic_energy(W, P)

    def power(self, W: State, P: State, V: State | None = None) -> Tensor:
        r"""The dissipated power :math:`\gamma w \sum \langle P, \nabla K(P)\rangle = -dH/dt \ge 0`.

        ``V`` (optional) is a precomputed ``velocity(P)``. Returns a 0-dim float64 tensor.
        """
        Pb, _ = _split(P)
        Vb = _split(V)[0] if V is not None else _velocity(self.potentials(len(Pb)), Pb)
        return (self.gamma * self.kinetic_weight(W)) * _inner(Pb, Vb)

    def vector_field(self, W: State, P: State) -> tuple[State, State]:
        r"""``(Ẇ, Ṗ) = (∇K(P), F(W) − γP)``."""
        Pb, is_tuple = _split(P)
        Fb, _ = _split(self.force(W))
        dP = tuple(f - self.gamma * p for f, p in zip(Fb, Pb, strict=True))
        return self.velocity(P), _join(dP, is_tuple)

    def __repr__(self) -> str:
        return f"HamiltonianFlow({self.objective!r}, {self.kinetic!r}, gamma={self.gamma})"


def _check_kinetic(kinetic: Any) -> Any:
    def ok(k: Any) -> bool:
        return callable(getattr(k, "grad", None)) and callable(getattr(k, "energy", None))

    if isinstance(kinetic, tuple | list):
        if not kinetic:
            raise ValueError("kinetic must be a potential or a non-empty tuple of potentials")
        for i, k in enumerate(kinetic):
            if not ok(k):
                raise TypeError(
                    f"kinetic[{i}] must be a spectral potential, got {type(k).__name__}"
                )
        return tuple(kinetic)
    if not ok(kinetic):
        raise TypeError(
            "kinetic must be a spectral potential (with .energy and .grad), "
            f"got {type(kinetic).__name__}"
        )
    return kinetic


def _velocity(potentials: Sequence[Any], P: Blocks) -> Blocks:
    return tuple(k.grad(p) for k, p in zip(potentials, P, strict=True))


def _kinetic(potentials: Sequence[Any], P: Blocks) -> Tensor:
    """``Σ_b Σ_batch K_b(P_b)`` as a float64 0-dim tensor (unweighted)."""
    total = torch.zeros((), dtype=torch.float64, device=P[0].device)
    for k, p in zip(potentials, P, strict=True):
        total = total + k.energy(p).sum().double()
    return total


# -- errors and results ---------------------------------------------------------------------------
class NonFiniteStateError(FloatingPointError):
    """The state (or the objective) became non-finite; integration stopped early.

    Attributes: ``step`` and ``time`` where it happened, ``last_step``/``last_time``/
    ``last_energy`` of the last finite state, ``trajectory`` recorded up to that state.
    """

    def __init__(
        self,
        message: str,
        *,
        step: int,
        time: float,
        last_step: int,
        last_time: float,
        last_energy: float,
        trajectory: Trajectory | None = None,
    ) -> None:
        super().__init__(message)
        self.step, self.time = step, time
        self.last_step, self.last_time, self.last_energy = last_step, last_time, last_energy
        self.trajectory = trajectory


class _NonFinite(Exception):
    """Internal: raised by the checked evaluations; the driver adds step/time and re-raises."""


@dataclass(frozen=True)
class Trajectory:
    r"""Energies along an integration, and its end point.

    Fields (tensors of length ``T``, float64, on the state's device): ``t``; ``H = J + K``;
    ``J`` (objective); ``K`` (weighted kinetic energy); ``dissipated``
    :math:`= \gamma \int_0^t w\langle P, \nabla K(P)\rangle ds` (the scheme's quadrature, see the
    module docs). ``W``, ``P``: the final state (the input's structure and dtype). ``Ws``,
    ``Ps``: the recorded states stacked along a new leading time dim ``[T, ..., m, n]`` (per
    block) when ``record_states=True``, else ``None``. ``nfev``: force evaluations performed.
    """

    t: Tensor
    H: Tensor
    J: Tensor
    K: Tensor
    dissipated: Tensor
    W: State
    P: State
    Ws: State | None
    Ps: State | None
    method: str
    h: float | None
    nfev: int

    def residual(self) -> Tensor:
        r"""Ledger residual :math:`H(t) - H(0) + \mathrm{dissipated}(t)`; 0 for the exact flow."""
        return self.H - self.H[0] + self.dissipated

    def __len__(self) -> int:
        return int(self.t.numel())


# -- the evaluation context of one integration ----------------------------------------------------
class _System:
    """Checked, counted evaluations for one integration (structure, potentials, weight fixed)."""

    def __init__(self, flow: HamiltonianFlow, is_tuple: bool, W0: Blocks) -> None:
        self.flow = flow
        self.objective = flow.objective
        self.is_tuple = is_tuple
        self.potentials = flow.potentials(len(W0))
        self.gamma = flow.gamma
        self.weight = flow.kinetic_weight(_join(W0, is_tuple))
        self.nfev = 0

    def force(self, W: Blocks) -> tuple[Tensor, Blocks]:
        if not _all_finite(W):
            raise _NonFinite("W")
        J, F = self.objective.value_and_force(_join(W, self.is_tuple))
        self.nfev += 1
        J = _check_value(J, "objective.value_and_force").detach()
        if not math.isfinite(float(J)):
            raise _NonFinite(f"objective value J = {float(J)}")
        Fb, _ = _split(F)
        return J, tuple(f.detach() for f in Fb)

    def velocity(self, P: Blocks) -> Blocks:
        if not _all_finite(P):
            raise _NonFinite("P")
        return _velocity(self.potentials, P)

    def kinetic(self, P: Blocks) -> Tensor:
        if not _all_finite(P):
            raise _NonFinite("P")
        return self.weight * _kinetic(self.potentials, P)

    def power_factor(self, h: float) -> float:
        """``γ h w``: multiplies ``⟨P, ∇K(P)⟩`` in a dissipated increment."""
        return self.gamma * h * self.weight

    def check_force_shapes(self, W: Blocks, F: Blocks) -> None:
        if len(F) != len(W) or any(f.shape != w.shape for f, w in zip(F, W, strict=False)):
            raise ValueError(
                f"objective force has shapes {[tuple(f.shape) for f in F]}, "
                f"expected the state's {[tuple(w.shape) for w in W]}"
            )


class _Point(NamedTuple):
    """A state with the objective value and force at ``W`` (first-same-as-last cache)."""

    W: Blocks
    P: Blocks
    J: Tensor
    F: Blocks


# -- integrators --------------------------------------------------------------------------------
class Integrator:
    """A scheme: ``name``, ``order`` (global error ``O(h^order)``), ``adaptive``.

    Fixed-step schemes implement :meth:`step`, mapping a point (with ``J``, ``F`` at ``W``)
    to the next one and returning the dissipated increment of the step (float64 0-dim).
    """

    name: ClassVar[str]
    order: ClassVar[int]
    adaptive: ClassVar[bool] = False

    def step(self, s: _System, x: _Point, h: float) -> tuple[_Point, Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<integrator {self.name!r} order={self.order}>"


def _axpy(a: float, X: Blocks, b: float, Y: Blocks) -> Blocks:
    """``a X + b Y`` blockwise."""
    return tuple(torch.add(x if a == 1.0 else a * x, y, alpha=b) for x, y in zip(X, Y, strict=True))


class Muon(Integrator):
    r"""Symplectic Euler, momentum first: exactly Muon with sum-form momentum.

    .. math::
        P' = (1-\gamma h) P + h F(W), \quad W' = W + h \nabla K(P'), \quad
        \Delta\mathrm{dissipated} = \gamma h w \langle P, \nabla K(P')\rangle .
    """

    name = "muon"
    order = 1

    def step(self, s: _System, x: _Point, h: float) -> tuple[_Point, Tensor]:
        beta = 1.0 - s.gamma * h
        P = tuple(torch.add(beta * p, f, alpha=h) for p, f in zip(x.P, x.F, strict=True))
        V = s.velocity(P)  # ∇K(P'), P' = (1-γh)P + hF(W)
        W = tuple(torch.add(w, v, alpha=h) for w, v in zip(x.W, V, strict=True))  # W + h∇K(P')
        d = s.power_factor(h) * _inner(x.P, V)  # γhw⟨P, ∇K(P')⟩
        J, F = s.force(W)
        return _Point(W, P, J, F), d


class HamiltonianDescent(Integrator):
    r"""First explicit Hamiltonian-descent method: implicit damping.

    .. math::
        P' = \frac{P + h F(W)}{1 + \gamma h}, \quad W' = W + h \nabla K(P'), \quad
        \Delta\mathrm{dissipated} = \gamma h w \langle P', \nabla K(P')\rangle .
    """

    name = "hamiltonian_descent"
    order = 1

    def step(self, s: _System, x: _Point, h: float) -> tuple[_Point, Tensor]:
        c = 1.0 / (1.0 + s.gamma * h)
        P = tuple(c * (p + h * f) for p, f in zip(x.P, x.F, strict=True))  # (P + hF)/(1+γh)
        V = s.velocity(P)
        W = tuple(torch.add(w, v, alpha=h) for w, v in zip(x.W, V, strict=True))
        d = s.power_factor(h) * _inner(P, V)  # right-point rule: γhw⟨P', ∇K(P')⟩
        J, F = s.force(W)
        return _Point(W, P, J, F), d


class ConformalLeapfrog(Integrator):
    r"""Conformal-symplectic leapfrog: the damping sub-flow exactly, Störmer–Verlet between.

    .. math::
        P_{1/2} = e^{-\gamma h/2} P + \tfrac h2 F(W), \quad W' = W + h \nabla K(P_{1/2}), \quad
        P' = e^{-\gamma h/2}\big(P_{1/2} + \tfrac h2 F(W')\big),

    with the midpoint rule
    :math:`\Delta\mathrm{dissipated} = \gamma h w \langle P_{1/2}, \nabla K(P_{1/2})\rangle`.
    """

    name = "conformal_leapfrog"
    order = 2

    def step(self, s: _System, x: _Point, h: float) -> tuple[_Point, Tensor]:
        a = math.exp(-s.gamma * h / 2)
        Ph = _axpy(a, x.P, h / 2, x.F)  # e^{-γh/2}P + (h/2)F(W)
        V = s.velocity(Ph)
        W = tuple(torch.add(w, v, alpha=h) for w, v in zip(x.W, V, strict=True))
        d = s.power_factor(h) * _inner(Ph, V)
        J, F = s.force(W)
        P = tuple(a * (p + (h / 2) * f) for p, f in zip(Ph, F, strict=True))
        return _Point(W, P, J, F), d


class Euler(Integrator):
    r"""Explicit Euler (energy can increase at any step size).

    .. math::
        W' = W + h \nabla K(P), \quad P' = P + h (F(W) - \gamma P), \quad
        \Delta\mathrm{dissipated} = \gamma h w \langle P, \nabla K(P)\rangle .
    """

    name = "euler"
    order = 1

    def step(self, s: _System, x: _Point, h: float) -> tuple[_Point, Tensor]:
        V = s.velocity(x.P)
        W = tuple(torch.add(w, v, alpha=h) for w, v in zip(x.W, V, strict=True))
        P = tuple(p + h * (f - s.gamma * p) for p, f in zip(x.P, x.F, strict=True))
        d = s.power_factor(h) * _inner(x.P, V)
        J, F = s.force(W)
        return _Point(W, P, J, F), d


class RK4(Integrator):
    r"""Classic fixed-step Runge–Kutta 4 on the augmented state ``(W, P, dissipated)``.

    Stages :math:`\dot W = \nabla K(P)`, :math:`\dot P = F(W) - \gamma P`,
    :math:`\dot D = \gamma w \langle P, \nabla K(P)\rangle`, weights ``(1, 2, 2, 1)/6``.
    """

    name = "rk4"
    order = 4

    def step(self, s: _System, x: _Point, h: float) -> tuple[_Point, Tensor]:
        g = s.gamma

        def deriv(P: Blocks, F: Blocks) -> tuple[Blocks, Blocks, Tensor]:
            V = s.velocity(P)
            dP = tuple(f - g * p for f, p in zip(F, P, strict=True))
            return V, dP, _inner(P, V)

        V1, dP1, q1 = deriv(x.P, x.F)
        W2, P2 = _axpy(1.0, x.W, h / 2, V1), _axpy(1.0, x.P, h / 2, dP1)
        V2, dP2, q2 = deriv(P2, s.force(W2)[1])
        W3, P3 = _axpy(1.0, x.W, h / 2, V2), _axpy(1.0, x.P, h / 2, dP2)
        V3, dP3, q3 = deriv(P3, s.force(W3)[1])
        W4, P4 = _axpy(1.0, x.W, h, V3), _axpy(1.0, x.P, h, dP3)
        V4, dP4, q4 = deriv(P4, s.force(W4)[1])
        c = h / 6
        W = tuple(
            w + c * (a + 2 * b + 2 * e + f)
            for w, a, b, e, f in zip(x.W, V1, V2, V3, V4, strict=True)
        )
        P = tuple(
            p + c * (a + 2 * b + 2 * e + f)
            for p, a, b, e, f in zip(x.P, dP1, dP2, dP3, dP4, strict=True)
        )
        d = s.power_factor(h) * (q1 + 2 * q2 + 2 * q3 + q4) / 6
        J, F = s.force(W)
        return _Point(W, P, J, F), d


class Reference(Integrator):
    r"""Adaptive DOP853 (SciPy ``solve_ivp``) in float64; ``dissipated`` is an extra state
    component, :math:`\dot D = \gamma w \langle P, \nabla K(P)\rangle`. See :func:`integrate`.
    """

    name = "reference"
    order = 8
    adaptive = True


#: Registry of integrators by name (torchdiffeq-style); each declares its ``order``.
INTEGRATORS: dict[str, Integrator] = {
    cls.name: cls() for cls in (Reference, Muon, HamiltonianDescent, ConformalLeapfrog, Euler, RK4)
}


def muon_energy_step_bound(L: float, eps: float, gamma: float) -> float:
    r"""Largest ``h`` at which the ``muon`` scheme never increases ``H`` (module docs derive it).

    .. math:: h_{\max} = \frac{2\gamma\varepsilon}{L + \gamma^2\varepsilon}

    for an ``L``-smooth objective (``L`` the largest Hessian eigenvalue; for
    :math:`J = \tfrac12\langle W, AW\rangle`, ``L = λ_max(A)``) and ``relativistic(ε)`` or
    ``huber(ε)`` kinetic energy (``Quadratic`` is ``ε = 1``). Sharp for quadratics.
    """
    L = float(check_scale(L, "L", allow_zero=False))
    eps = float(check_scale(eps, "eps", allow_zero=False))
    gamma = float(check_scale(gamma, "gamma", allow_zero=True))
    return 2 * gamma * eps / (L + gamma * gamma * eps)


# -- the entry point ----------------------------------------------------------------------------
def integrate(
    flow: HamiltonianFlow,
    W0: State,
    P0: State,
    t_end: float,
    *,
    h: float | None = None,
    method: str = "reference",
    record_every: int = 1,
    record_states: bool = False,
    progress: bool = False,
    rtol: float | None = None,
    atol: float | None = None,
) -> Trajectory:
    r"""Integrate the flow from ``(W0, P0)`` over ``[0, t_end]`` with a registered scheme.

    Args:
        flow: the :class:`HamiltonianFlow`.
        W0, P0: the initial state: tensors ``[..., m, n]`` or tuples of them with equal
            structure, shapes, dtypes and devices. They are not modified.
        t_end: final time ``>= 0``.
        h: step size ``> 0`` for the fixed-step methods (required). Steps are ``t_k = k h``;
            if ``t_end/h`` is not an integer (to ``1e-9`` relative) the last step is shortened to
            end at ``t_end``. For ``"reference"`` the solver chooses its steps and ``h``, if
            given, only sets the output grid ``0, h, 2h, …, t_end``.
        method: a key of :data:`INTEGRATORS`.
        record_every: record every ``record_every``-th step (or output point); the first and
            last are always recorded.
        record_states: also keep the recorded states (``Trajectory.Ws``, ``Trajectory.Ps``).
        progress: show a progress bar (tqdm, on stderr).
        rtol, atol: tolerances of ``"reference"`` only (defaults ``1e-12`` and
            ``rtol · max(1, max|y0|)``). The reference computes in float64, so the objective must
            accept float64 states.

    Returns:
        A :class:`Trajectory`; ``trajectory.residual()`` is the ledger residual
        :math:`H(t) - H(0) + \mathrm{dissipated}(t)`.

    Raises:
        ValueError / TypeError: bad arguments (messages name the argument and the value).
        NonFiniteStateError: the state or the objective became non-finite (step, time and the
            last finite energy are in the message and the attributes).
    """
    if not isinstance(flow, HamiltonianFlow):
        raise TypeError(f"flow must be a HamiltonianFlow, got {type(flow).__name__}")
    method = check_choice(method, "method", INTEGRATORS)
    scheme = INTEGRATORS[method]
    t_end = float(check_scale(t_end, "t_end", allow_zero=True))
    if isinstance(record_every, bool) or not isinstance(record_every, int) or record_every < 1:
        raise ValueError(f"record_every must be an integer >= 1, got {record_every!r}")
    Wb, is_tuple = _check_state(W0, "W0")
    Pb, p_tuple = _check_state(P0, "P0")
    _check_pair(Wb, is_tuple, Pb, p_tuple)
    if scheme.adaptive:
        step = None if h is None else float(check_scale(h, "h", allow_zero=False))
        rt = 1e-12 if rtol is None else float(check_scale(rtol, "rtol", allow_zero=False))
        at = None if atol is None else float(check_scale(atol, "atol", allow_zero=False))
        return _integrate_reference(
            _System(flow, is_tuple, Wb), Wb, Pb, t_end, step, rtol=rt, atol=at,
            record_every=record_every, record_states=record_states, progress=progress,
        )  # fmt: skip
    if h is None:
        raise ValueError(f"method {method!r} needs a step size h > 0, got h=None")
    if isinstance(h, bool) or not isinstance(h, int | float) or not (math.isfinite(h) and h > 0):
        raise ValueError(f"h must be a finite number > 0 for method {method!r}, got h={h!r}")
    if rtol is not None or atol is not None:
        raise ValueError(
            f"rtol/atol apply to method 'reference' only, got rtol={rtol}, atol={atol} "
            f"for method {method!r}"
        )
    return _integrate_fixed(
        _System(flow, is_tuple, Wb), scheme, Wb, Pb, t_end, float(h), record_every=record_every,
        record_states=record_states, progress=progress,
    )  # fmt: skip


def _check_pair(W: Blocks, w_tuple: bool, P: Blocks, p_tuple: bool) -> None:
    if w_tuple != p_tuple or len(W) != len(P):
        raise ValueError(
            f"W0 and P0 must have the same structure: W0 is "
            f"{f'a tuple of {len(W)} blocks' if w_tuple else 'a tensor'}, P0 is "
            f"{f'a tuple of {len(P)} blocks' if p_tuple else 'a tensor'}"
        )
    for i, (w, p) in enumerate(zip(W, P, strict=True)):
        name = f"[{i}]" if w_tuple else ""
        if w.shape != p.shape:
            raise ValueError(
                f"P0{name} shape {tuple(p.shape)} does not match W0{name} shape {tuple(w.shape)}"
            )
        if w.dtype != p.dtype or w.device != p.device:
            raise ValueError(
                f"P0{name} ({p.dtype}, {p.device}) must have W0{name}'s dtype and device "
                f"({w.dtype}, {w.device})"
            )


def _step_count(t_end: float, h: float) -> tuple[int, float]:
    """``(n, h_last)``: ``n`` steps of ``h``, the last one ``h_last`` so they end at ``t_end``."""
    ratio = t_end / h
    n = round(ratio)
    if n >= 1 and abs(ratio - n) <= 1e-9 * max(1.0, ratio):
        return n, h
    n = math.ceil(ratio)
    return n, t_end - (n - 1) * h


class _Recorder:
    """Collects ledger rows (and optionally states) at recorded steps."""

    def __init__(self, record_states: bool) -> None:
        self.record_states = record_states
        self.t: list[float] = []
        self.J: list[Tensor] = []
        self.K: list[Tensor] = []
        self.D: list[Tensor] = []
        self.Ws: list[Blocks] = []
        self.Ps: list[Blocks] = []

    def add(self, t: float, J: Tensor, K: Tensor, D: Tensor, W: Blocks, P: Blocks) -> None:
        self.t.append(t)
        self.J.append(J.double())
        self.K.append(K)
        self.D.append(D)
        if self.record_states:
            self.Ws.append(W)
            self.Ps.append(P)

    def build(
        self,
        W: Blocks,
        P: Blocks,
        like: Blocks,
        is_tuple: bool,
        method: str,
        h: float | None,
        nfev: int,
    ) -> Trajectory:
        dev = like[0].device
        J, K, D = torch.stack(self.J), torch.stack(self.K), torch.stack(self.D)
        Ws = Ps = None
        if self.record_states:
            Ws = _join(_stack_blocks(self.Ws, like), is_tuple)
            Ps = _join(_stack_blocks(self.Ps, like), is_tuple)
        return Trajectory(
            t=torch.tensor(self.t, dtype=torch.float64, device=dev),
            H=J + K,
            J=J,
            K=K,
            dissipated=D,
            W=_join(tuple(w.to(x.dtype) for w, x in zip(W, like, strict=True)), is_tuple),
            P=_join(tuple(p.to(x.dtype) for p, x in zip(P, like, strict=True)), is_tuple),
            Ws=Ws,
            Ps=Ps,
            method=method,
            h=h,
            nfev=nfev,
        )


def _stack_blocks(states: list[Blocks], like: Blocks) -> Blocks:
    return tuple(torch.stack([st[b] for st in states]).to(like[b].dtype) for b in range(len(like)))


def _nonfinite_error(
    what: str,
    method: str,
    step: int,
    time: float,
    last: tuple[int, float, float],
    traj: Trajectory | None,
) -> NonFiniteStateError:
    last_step, last_time, last_energy = last
    return NonFiniteStateError(
        f"integration with method {method!r} stopped: non-finite {what} at step {step} "
        f"(t = {time:.6g}); last finite energy H = {last_energy:.6g} at step {last_step} "
        f"(t = {last_time:.6g}). A smaller step size h (or a smaller t_end) may help.",
        step=step,
        time=time,
        last_step=last_step,
        last_time=last_time,
        last_energy=last_energy,
        trajectory=traj,
    )


def _energy_or_nan(s: _System, J: Tensor, P: Blocks) -> float:
    try:
        return float(J.double() + s.kinetic(P))
    except (_NonFinite, ValueError, RuntimeError):
        return math.nan


def _integrate_fixed(
    s: _System,
    scheme: Integrator,
    W0: Blocks,
    P0: Blocks,
    t_end: float,
    h: float,
    *,
    record_every: int,
    record_states: bool,
    progress: bool,
) -> Trajectory:
    n, h_last = _step_count(t_end, h) if t_end > 0 else (0, h)
    rec = _Recorder(record_states)
    D = torch.zeros((), dtype=torch.float64, device=W0[0].device)
    try:
        J0, F0 = s.force(W0)
        s.check_force_shapes(W0, F0)
        rec.add(0.0, J0, s.kinetic(P0), D, W0, P0)
    except _NonFinite as e:
        raise _nonfinite_error(str(e), scheme.name, 0, 0.0, (0, 0.0, math.nan), None) from None
    x = _Point(W0, P0, J0, F0)
    with progress_bar(progress, total=n, desc=f"integrate[{scheme.name}]", leave=False) as bar:
        for k in range(n):
            hk = h if k < n - 1 else h_last
            tk1 = (k + 1) * h if k < n - 1 else t_end
            try:
                x_new, d = scheme.step(s, x, hk)
                D = D + d
                if (k + 1) % record_every == 0 or k == n - 1:
                    rec.add(tk1, x_new.J, s.kinetic(x_new.P), D, x_new.W, x_new.P)
            except _NonFinite as e:
                last = (k, k * h, _energy_or_nan(s, x.J, x.P))
                traj = rec.build(x.W, x.P, W0, s.is_tuple, scheme.name, h, s.nfev)
                raise _nonfinite_error(str(e), scheme.name, k + 1, tk1, last, traj) from None
            x = x_new
            bar.update(1)
    return rec.build(x.W, x.P, W0, s.is_tuple, scheme.name, h, s.nfev)


def _integrate_reference(
    s: _System,
    W0: Blocks,
    P0: Blocks,
    t_end: float,
    h: float | None,
    *,
    rtol: float,
    atol: float | None,
    record_every: int,
    record_states: bool,
    progress: bool,
) -> Trajectory:
    dev = W0[0].device
    W64 = tuple(w.double() for w in W0)
    P64 = tuple(p.double() for p in P0)
    shapes = [w.shape for w in W64]
    sizes = [w.numel() for w in W64]
    nb = len(W64)
    y0 = torch.cat(
        [b.reshape(-1) for b in (*W64, *P64)] + [torch.zeros(1, dtype=torch.float64, device=dev)]
    )
    y0_np = y0.cpu().numpy()
    if atol is None:
        atol = rtol * max(1.0, float(np.abs(y0_np).max()))

    def unpack(y: Tensor) -> tuple[Blocks, Blocks]:
        parts = torch.split(y[:-1], sizes + sizes)
        W = tuple(q.view(sh) for q, sh in zip(parts[:nb], shapes, strict=True))
        P = tuple(q.view(sh) for q, sh in zip(parts[nb:], shapes, strict=True))
        return W, P

    # DOP853 may evaluate the field at trial states; the last finite one is kept for the error.
    last: dict[str, Any] = {"t": 0.0, "y": y0, "nfev": 0, "t_try": 0.0}
    bar = progress_bar(progress, total=t_end, desc="integrate[reference]", leave=False)
    solve_ivp = require("scipy.integrate", "the reference ODE solver").solve_ivp

    def fun(t: float, y_np: np.ndarray) -> np.ndarray:
        last["t_try"] = t
        y = torch.tensor(y_np, dtype=torch.float64, device=dev)
        W, P = unpack(y)
        _, F = s.force(W)
        V = s.velocity(P)
        last.update(t=t, y=y, nfev=last["nfev"] + 1)
        dP = tuple(f - s.gamma * p for f, p in zip(F, P, strict=True))
        power = (s.gamma * s.weight) * _inner(P, V)
        if t > bar.n:
            bar.update(t - bar.n)
        return torch.cat([b.reshape(-1) for b in (*V, *dP)] + [power.reshape(1)]).cpu().numpy()

    try:
        _, F0 = s.force(W64)
        s.check_force_shapes(W64, F0)
        if t_end == 0:
            ts, ys = np.zeros(1), y0_np[:, None]
        else:
            t_eval = None
            if h is not None:
                n, _ = _step_count(t_end, h)
                t_eval = np.minimum(np.arange(n + 1) * h, t_end)
                t_eval[-1] = t_end
            sol = solve_ivp(
                fun, (0.0, t_end), y0_np, method="DOP853", t_eval=t_eval, rtol=rtol, atol=atol
            )
            if sol.status != 0:  # e.g. a finite-time blow-up: the step size underflows
                Wl, Pl = unpack(last["y"])
                energy = _energy_or_nan(s, s.flow.value(_join(Wl, s.is_tuple)), Pl)
                raise RuntimeError(
                    f"reference solver failed at t = {sol.t[-1]:.6g}: {sol.message} "
                    f"(energy H = {energy:.6g} at the last field evaluation, t = {last['t']:.6g})"
                )
            ts, ys = sol.t, sol.y
    except _NonFinite as e:
        Wl, Pl = unpack(last["y"])
        energy = _energy_or_nan(s, s.flow.value(_join(Wl, s.is_tuple)), Pl)
        raise NonFiniteStateError(
            f"integration with method 'reference' stopped: non-finite {e} at field evaluation "
            f"{last['nfev'] + 1} (t ≈ {last['t_try']:.6g}); last finite energy H = {energy:.6g} "
            f"(t = {last['t']:.6g}). Check the objective and the initial state.",
            step=last["nfev"] + 1,
            time=last["t_try"],
            last_step=last["nfev"],
            last_time=last["t"],
            last_energy=energy,
        ) from None
    finally:
        bar.close()
    keep = np.unique(np.r_[np.arange(0, len(ts), record_every), len(ts) - 1])
    Y = torch.from_numpy(np.ascontiguousarray(ys[:, keep].T)).to(dev)  # [T, dim]
    rec = _Recorder(record_states)
    # Energies of the recorded states, one state at a time (output, not the solver's hot path).
    for j, i in enumerate(keep):
        W, P = unpack(Y[j])
        with torch.no_grad():
            J = s.flow.value(_join(W, s.is_tuple))
        rec.add(float(ts[i]), J, s.kinetic(P), Y[j, -1], W, P)
    Wf, Pf = unpack(Y[-1])
    return rec.build(Wf, Pf, W0, s.is_tuple, "reference", h, s.nfev)
