r"""Probability objectives :math:`J(\rho) = R(\int F\,d\rho)` and their particle forces.

The mathematics: docs/theory.md §5.

For particles :math:`\theta_1..\theta_N` (each a matrix, or a tuple of matrix blocks) with
empirical measure :math:`\rho_N = \frac1N\sum_i \delta_{\theta_i}`:

.. math::
    m_\rho = \int F\,d\rho = \frac1N \sum_i F(\theta_i), \qquad J(\rho) = R(m_\rho),

    \frac{\delta J}{\delta\rho}(\theta) = \langle \nabla R(m_\rho), F(\theta)\rangle,

    \text{force}_i = -\nabla_\theta \frac{\delta J}{\delta\rho}(\theta_i)
                   = -DF(\theta_i)^\top \nabla R(m_\rho)
                   = -N\,\frac{\partial J(\rho_N)}{\partial\theta_i}.

The last identity is the **mean-field scaling**: the force on a particle does not shrink as
``N`` grows. :class:`ProbabilityObjective` implements the objective protocol of
:mod:`muonflow.dynamics` (``value``, ``value_and_force``, ``kinetic_weight = 1/N``), so
``HamiltonianFlow(ProbabilityObjective(...), K, γ)`` integrates the interacting particle
system

.. math::
    \dot\theta_i = \nabla K(P_i), \quad \dot P_i = \text{force}_i - \gamma P_i, \qquad
    H_N = J(\rho_N) + \frac1N \sum_i K(P_i).

All particles are handled in one batched pass: a forward of the feature map over ``[N, ...]``
and one pullback (explicit formulas for the features of :mod:`.features`, one autograd
pass for a plain callable). ``chunk_size`` bounds the memory of the feature activations by
processing particles in slabs (then the forward runs twice: once for ``m_ρ``, once with the
pullback).

``systems = S > 1`` packs ``S`` independent particle systems of ``N`` particles each into
one state of ``S·N`` particles (system-major: particle ``i`` belongs to system ``i // N``).
Each system has its own measure and force; ``value`` is the mean of the ``S`` objectives and
``kinetic_weight = 1/(S N)``, so the ``H`` and dissipation of a flow are the means over
systems. This lets replicas (chaos, PDE comparisons) run in one integration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from ._state import State, as_blocks, describe, from_blocks
from .features import Feature, Pullback
from .risks import Risk, make_risk

__all__ = ["ProbabilityObjective", "teacher_student"]


class ProbabilityObjective:
    r"""The objective :math:`J(\rho) = R(\int F\,d\rho)` over particle clouds.

    Args:
        feature: ``θ: [N, ...]`` (or a tuple of blocks ``[N, ...]``) ``-> [N, *out]``; a
            :class:`~muonflow.meanfield.features.Feature` (explicit pullback) or any
            differentiable callable (pullback by autograd).
        risk: ``m: [*out] -> 0-dim``; a :class:`~muonflow.meanfield.risks.Risk` (batched,
            explicit gradient) or any differentiable callable (gradient by autograd).
        systems: number ``S`` of independent systems packed along the particle axis.
        chunk_size: process at most this many particles at a time (``None``: all at once).

    Shapes: ``N_total = S·N`` is the leading dim of the state; ``m`` is ``[*out]`` (or
    ``[S, *out]`` per system where noted).
    """

    def __init__(
        self,
        feature: Callable[[Any], Tensor],
        risk: Callable[[Tensor], Tensor],
        *,
        systems: int = 1,
        chunk_size: int | None = None,
    ) -> None:
        if not callable(feature):
            raise TypeError(f"ProbabilityObjective: feature must be callable, got {feature!r}")
        if not callable(risk):
            raise TypeError(f"ProbabilityObjective: risk must be callable, got {risk!r}")
        if isinstance(systems, bool) or not isinstance(systems, int) or systems < 1:
            raise ValueError(f"ProbabilityObjective: systems must be an int >= 1, got {systems!r}")
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(
                f"ProbabilityObjective: chunk_size must be None or an int >= 1, got {chunk_size!r}"
            )
        self.feature = feature
        self.risk = risk
        self.systems = systems
        self.chunk_size = chunk_size

    def __repr__(self) -> str:
        extra = f", systems={self.systems}" if self.systems > 1 else ""
        extra += f", chunk_size={self.chunk_size}" if self.chunk_size else ""
        return f"ProbabilityObjective({describe(self.feature)}, {describe(self.risk)}{extra})"

    def with_systems(self, systems: int) -> ProbabilityObjective:
        """The same objective with ``systems`` independent systems packed per state."""
        return ProbabilityObjective(
            self.feature, self.risk, systems=systems, chunk_size=self.chunk_size
        )

    # -- shapes ------------------------------------------------------------------------
    def _split(self, theta: State, name: str = "θ") -> tuple[tuple[Tensor, ...], bool, int]:
        blocks, is_tuple = as_blocks(theta, f"{self!r}: {name}")
        n = blocks[0].shape[0]
        if n == 0:
            shapes = ", ".join(str(tuple(x.shape)) for x in blocks)
            raise ValueError(f"{self!r} needs at least one particle; got {name} of shape {shapes}")
        if n % self.systems:
            raise ValueError(
                f"{self!r}: the particle count {n} of {name} is not a multiple of systems="
                f"{self.systems}"
            )
        return blocks, is_tuple, n

    def num_particles(self, theta: State) -> int:
        """``N``: particles per system."""
        return self._split(theta)[2] // self.systems

    def kinetic_weight(self, theta: State) -> float:
        """``1/(S N)``: the weight of each particle's kinetic energy in ``H_N``."""
        return 1.0 / self._split(theta)[2]

    def _chunks(self, n: int) -> Iterator[slice]:
        step = n if self.chunk_size is None else self.chunk_size
        for a in range(0, n, step):
            yield slice(a, min(a + step, n))

    # -- features ----------------------------------------------------------------------
    def _call_feature(self, blocks: tuple[Tensor, ...], is_tuple: bool) -> Tensor:
        F = self.feature(from_blocks(blocks, is_tuple))
        return self._check_features(F, blocks)

    def _vjp(self, blocks: tuple[Tensor, ...], is_tuple: bool) -> tuple[Tensor, Pullback]:
        """``(F(θ), c -> DF(θ)ᵀ c)``, explicit when the feature has ``vjp``, else autograd."""
        vjp = getattr(self.feature, "vjp", None)
        if vjp is not None:
            F, pullback = vjp(from_blocks(blocks, is_tuple))
            return self._check_features(F, blocks), pullback
        return self._autograd_vjp(blocks, is_tuple)

    def _pullback(self, blocks: tuple[Tensor, ...], is_tuple: bool) -> Pullback:
        """``c -> DF(θ)ᵀ c`` alone (a :class:`Feature` may skip work the value needs)."""
        if isinstance(self.feature, Feature):
            return self.feature.vjp(from_blocks(blocks, is_tuple), value=False)[1]
        return self._vjp(blocks, is_tuple)[1]

    def _autograd_vjp(self, blocks: tuple[Tensor, ...], is_tuple: bool) -> tuple[Tensor, Pullback]:
        with torch.enable_grad():
            leaves = tuple(x.detach().requires_grad_(True) for x in blocks)
            F = self.feature(from_blocks(leaves, is_tuple))
            self._check_features(F, blocks)

        def pullback(c: Tensor) -> State:
            grads = torch.autograd.grad(F, leaves, grad_outputs=c.expand_as(F), allow_unused=True)
            out = tuple(
                torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves, strict=True)
            )
            return from_blocks(out, is_tuple)

        return F.detach(), pullback

    def _check_features(self, F: Any, blocks: tuple[Tensor, ...]) -> Tensor:
        n = blocks[0].shape[0]
        got = ", ".join(str(tuple(x.shape)) for x in blocks)
        if not isinstance(F, Tensor) or F.ndim < 1 or F.shape[0] != n:
            shape = tuple(F.shape) if isinstance(F, Tensor) else type(F).__name__
            raise ValueError(
                f"feature {describe(self.feature)} must map θ of shape {got} to [{n}, ...]; "
                f"got {shape}"
            )
        event = getattr(self.risk, "event_shape", None)
        if event is not None and tuple(F.shape[1:]) != tuple(event):
            raise ValueError(
                f"feature {describe(self.feature)} returns per-particle values of shape "
                f"{tuple(F.shape[1:])}, but risk {describe(self.risk)} expects "
                f"{tuple(event)}"
            )
        return F

    def _reduce(self, F: Tensor, rows: slice, n: int, m_sum: Tensor, w: Tensor | None) -> None:
        """Accumulate ``Σ_i w_i F_i`` of the rows ``rows`` into ``m_sum: [S, *out]``."""
        if w is not None:
            m_sum[0] += torch.tensordot(w[rows].to(F), F, dims=1)
        elif self.systems == 1:
            m_sum[0] += F.sum(0)
        else:
            per = n // self.systems
            if rows.start % per == 0 and (rows.stop - rows.start) % per == 0:
                # whole systems: a reshape-sum (much faster than a scatter)
                s0 = rows.start // per
                m_sum[s0 : s0 + F.shape[0] // per] += F.reshape(-1, per, *F.shape[1:]).sum(1)
            else:
                sys_idx = torch.arange(rows.start, rows.stop, device=F.device) // per
                m_sum.index_add_(0, sys_idx, F)

    def _mean(
        self,
        blocks: tuple[Tensor, ...],
        is_tuple: bool,
        n: int,
        weights: Tensor | None = None,
        first: Tensor | None = None,
    ) -> Tensor:
        """``m: [S, *out]``; ``first`` are the features of the whole state if known."""
        m_sum: Tensor | None = None
        for rows in self._chunks(n):
            F = (
                first
                if first is not None
                else self._call_feature(tuple(x[rows] for x in blocks), is_tuple)
            )
            if m_sum is None:
                m_sum = F.new_zeros((self.systems, *F.shape[1:]))
            self._reduce(F, rows, n, m_sum, weights)
        assert m_sum is not None
        m = m_sum if weights is not None else m_sum * (self.systems / n)
        if not bool(torch.isfinite(m).all()):
            self._raise_nonfinite(blocks, is_tuple, n)
        return m

    def _raise_nonfinite(self, blocks: tuple[Tensor, ...], is_tuple: bool, n: int) -> None:
        bad: list[int] = []
        for rows in self._chunks(n):
            F = self._call_feature(tuple(x[rows] for x in blocks), is_tuple)
            ok = torch.isfinite(F.reshape(F.shape[0], -1)).all(1)
            bad += (torch.nonzero(~ok).flatten() + rows.start).tolist()
        shape = ", ".join(str(tuple(x.shape)) for x in blocks)
        if bad:
            raise ValueError(
                f"feature {describe(self.feature)} returned non-finite values for {len(bad)} of "
                f"{n} particles (θ of shape {shape}; first bad indices {bad[:5]})"
            )
        raise ValueError(
            f"the mean feature of {describe(self.feature)} overflowed (θ of shape {shape})"
        )

    # -- risk --------------------------------------------------------------------------
    def _risk_values(self, m: Tensor) -> Tensor:
        """``R(m_s)`` for ``m: [S, *out]`` -> ``[S]``."""
        if isinstance(self.risk, Risk):
            J = self.risk(m)
        else:
            vals = [self.risk(ms) for ms in m]
            for v, ms in zip(vals, m, strict=True):
                if not isinstance(v, Tensor) or v.ndim != 0:
                    shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                    raise ValueError(
                        f"risk {describe(self.risk)} must return a 0-dim tensor for a mean "
                        f"feature of shape {tuple(ms.shape)}; got {shape}"
                    )
            J = torch.stack(vals)
        if not bool(torch.isfinite(J).all()):
            raise ValueError(
                f"risk {describe(self.risk)} is not finite at the mean feature "
                f"(shape {tuple(m.shape[1:])}): {J.tolist()}"
            )
        return J

    def _risk_grad(self, m: Tensor) -> tuple[Tensor, Tensor]:
        """``(R(m_s), ∇R(m_s))`` for ``m: [S, *out]``."""
        if isinstance(self.risk, Risk):
            return self._risk_values(m), self.risk.grad(m)
        with torch.enable_grad():
            mm = m.detach().requires_grad_(True)
            J = self._risk_values(mm)
            (g,) = torch.autograd.grad(J.sum(), mm)
        return J.detach(), g

    # -- public API --------------------------------------------------------------------
    def mean_feature(self, theta: State, weights: Tensor | None = None) -> Tensor:
        r"""``m_ρ = Σ_i w_i F(θ_i)`` (``w_i = 1/N`` by default).

        Returns ``[*out]`` for one system, ``[S, *out]`` when ``systems = S > 1``. ``weights``
        (``[N]``, one system only) give a weighted measure, e.g. quadrature weights.
        """
        blocks, is_tuple, n = self._split(theta)
        if weights is not None:
            if self.systems != 1:
                raise ValueError(f"{self!r}: weights need systems=1")
            if weights.shape != (n,):
                raise ValueError(
                    f"{self!r}: weights must have shape [{n}], got {tuple(weights.shape)}"
                )
        m = self._mean(blocks, is_tuple, n, weights)
        return m[0] if self.systems == 1 else m

    def risk_value(self, m: Tensor) -> Tensor:
        """``R(m)`` for a mean feature ``m: [*out]`` of any measure (0-dim)."""
        return self._risk_values(m.unsqueeze(0))[0]

    def values(self, theta: State) -> Tensor:
        """``J(ρ_s)`` of each packed system: ``[S]``."""
        blocks, is_tuple, n = self._split(theta)
        return self._risk_values(self._mean(blocks, is_tuple, n))

    def value(self, theta: State, weights: Tensor | None = None) -> Tensor:
        """``J(ρ_N)`` (0-dim; the mean over systems when ``S > 1``)."""
        m = self.mean_feature(theta, weights)
        return self._risk_values(m.reshape(self.systems, *m.shape[self.systems > 1 :])).mean()

    def first_variation(self, theta: State, at: State | None = None) -> Tensor:
        r"""``δJ/δρ(θ') = ⟨∇R(m_ρ), F(θ')⟩`` at the points ``at`` (default: the particles).

        ``ρ`` is the empirical measure of ``theta`` (one system). Returns ``[N_at]``.
        """
        if self.systems != 1:
            raise ValueError(f"{self!r}: first_variation needs systems=1")
        blocks, is_tuple, n = self._split(theta)
        _, g = self._risk_grad(self._mean(blocks, is_tuple, n))
        pts, pts_tuple, n_at = self._split(theta if at is None else at, "at")
        out = []
        for rows in self._chunks(n_at):
            F = self._call_feature(tuple(x[rows] for x in pts), pts_tuple)
            out.append((F * g).reshape(F.shape[0], -1).sum(1))
        return torch.cat(out)

    def force_at(self, at: State, m: Tensor) -> State:
        r"""The mean-field force field ``−DF(θ)ᵀ ∇R(m)`` at the points ``at`` for a given ``m``.

        ``m: [*out]`` is the mean feature of any measure (e.g. a grid density); ``at`` is a
        state ``[N_at, ...]``. Returns a state like ``at``.
        """
        blocks, is_tuple = as_blocks(at, f"{self!r}: at")
        _, g = self._risk_grad(m.unsqueeze(0))
        single = ProbabilityObjective(self.feature, self.risk, chunk_size=self.chunk_size)
        n = blocks[0].shape[0]
        with torch.no_grad():
            force = tuple(torch.empty_like(x) for x in blocks)
            for rows in single._chunks(n):
                pullback = single._pullback(tuple(x[rows] for x in blocks), is_tuple)
                single._store_force(force, rows, pullback(g[0]), blocks)
        return from_blocks(force, is_tuple)

    def _cotangent(self, g: Tensor, rows: slice, n: int) -> Tensor:
        """The cotangent ``∇R(m_s)`` of the rows' systems: ``[*out]`` or ``[rows, *out]``."""
        if self.systems == 1:
            return g[0]
        sys_idx = torch.arange(rows.start, rows.stop, device=g.device) // (n // self.systems)
        return g[sys_idx]

    def _store_force(
        self, force: tuple[Tensor, ...], rows: slice, grads: State, blocks: tuple[Tensor, ...]
    ) -> None:
        """``force[b][rows] = −grads[b]`` after checking the pullback's shapes."""
        gb, _ = as_blocks(grads, f"pullback of {describe(self.feature)}")
        want = tuple(x[rows].shape for x in blocks)
        if len(gb) != len(want) or any(g.shape != w for g, w in zip(gb, want, strict=False)):
            raise ValueError(
                f"the pullback of feature {describe(self.feature)} must return blocks of shape "
                f"{[tuple(w) for w in want]}, got {[tuple(g.shape) for g in gb]}"
            )
        for f, g in zip(force, gb, strict=True):
            torch.neg(g, out=f[rows])

    def value_and_force(self, theta: State) -> tuple[Tensor, State]:
        r"""``(J(ρ_N), force)`` with ``force_i = −N ∂J/∂θ_i = −DF(θ_i)ᵀ ∇R(m_ρ)``.

        One forward and one pullback over all particles (two forwards when chunked). The
        force has the structure of ``theta`` (a tensor, or a tuple of blocks); ``J`` is the
        mean over packed systems.
        """
        blocks, is_tuple, n = self._split(theta)
        with torch.no_grad():
            force = tuple(torch.empty_like(x) for x in blocks)
            if self.chunk_size is None or n <= self.chunk_size:
                everything = slice(0, n)
                F, pullback = self._vjp(blocks, is_tuple)
                J, g = self._risk_grad(self._mean(blocks, is_tuple, n, first=F))
                del F
                self._store_force(
                    force, everything, pullback(self._cotangent(g, everything, n)), blocks
                )
            else:
                J, g = self._risk_grad(self._mean(blocks, is_tuple, n))
                for rows in self._chunks(n):
                    pullback = self._pullback(tuple(x[rows] for x in blocks), is_tuple)
                    self._store_force(force, rows, pullback(self._cotangent(g, rows, n)), blocks)
        return J.mean(), from_blocks(force, is_tuple)


def teacher_student(
    feature: Callable[[Any], Tensor],
    teacher: State,
    *,
    risk: str = "squared",
    systems: int = 1,
    chunk_size: int | None = None,
    **risk_options: float,
) -> ProbabilityObjective:
    """A teacher–student objective: targets are the mean features of a fixed teacher cloud.

    ``teacher`` is a state ``[N_t, ...]``; the target is ``m_teacher = (1/N_t) Σ F(θ_t)``
    and ``risk`` names a risk of :func:`~muonflow.meanfield.risks.make_risk` (for
    ``"logistic"`` the labels are ``sign(m_teacher)``, for ``"cross_entropy"`` the teacher's
    argmax class). ``J`` attains its minimum on the teacher's measure for the regression
    risks (``J = 0`` for ``"squared"`` and ``"huber"``).
    """
    with torch.no_grad():
        target = ProbabilityObjective(feature, lambda m: m.sum()).mean_feature(teacher)
    return ProbabilityObjective(
        feature,
        make_risk(risk, target, **risk_options),
        systems=systems,
        chunk_size=chunk_size,
    )
