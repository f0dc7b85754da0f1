r"""Spectral potentials: kinetic energies and mirror maps on matrices.

A spectral potential is :math:`K(P) = \sum_{i \le r} k(\sigma_i(P))` for an even convex
scalar ``k`` with ``k(0) = 0``. Then

.. math::
    \nabla K(P) = U \mathrm{diag}(k'(\sigma)) V^\top, \qquad
    K^*(Y) = \sum_i k^*(\sigma_i(Y)), \qquad \nabla K^* = (\nabla K)^{-1},

and Fenchel–Young holds with equality:
:math:`K(P) + K^*(\nabla K(P)) = \langle P, \nabla K(P)\rangle`.

Each potential is one small class giving the scalar functions ``k, k', k*, (k*)'`` (and
``k'(σ)/σ`` as a function of ``σ²`` for the Gram path); :class:`SpectralPotential` turns
them into batched matrix maps over ``[..., m, n]``. With a scale ``ε`` the potentials obey
:math:`K_\varepsilon(P) = \varepsilon K_1(P/\varepsilon)`, so
:math:`\nabla K_\varepsilon(P) = \nabla K_1(P/\varepsilon)`.

=================  ==============================  ======================  =========================
potential          k(σ)                            k'(σ)                   k*(u), |u| <= 1
=================  ==============================  ======================  =========================
``Relativistic``   √(σ²+ε²) − ε                    σ/√(σ²+ε²)              ε(1 − √(1−u²))
``Huber``          σ²/2ε (σ<=ε), σ − ε/2           min(σ/ε, 1)             ε u²/2
``Nuclear``        σ                               1 (σ>0), 0 at 0         0
``Quadratic``      σ²/2                            σ                       u²/2 (all u)
=================  ==============================  ======================  =========================

Outside ``|u| <= 1`` the conjugates are ``+inf`` (except ``Quadratic``).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from ._checks import check_choice, check_matrix, check_scale
from .polar import (
    POLAR_METHODS,
    polar_factor,
    regularized_polar,
    spectral_map,
    unit_roundoff,
    work_dtype,
)

__all__ = ["Huber", "Nuclear", "Quadratic", "Relativistic", "SpectralPotential", "potential"]


def _eps_like(eps: float | Tensor, x: Tensor) -> Tensor:
    """``eps`` as a tensor broadcasting against singular values ``x: [..., r]``."""
    e = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    return e.unsqueeze(-1) if e.ndim else e


def _domain_slack(dtype: torch.dtype) -> float:
    """Relative slack on the domain ``||Y||_op <= 1`` of ``K*``.

    Huber and Nuclear map singular values to exactly 1; computed maps land within about
    ``u·(σ_max/ε)²`` of it (the Gram-path error bound of :mod:`muonflow.polar`), so a point within
    ``√u`` of the boundary (1.5e-8 in float64, 2.4e-4 in float32) is taken to be on it.
    """
    return unit_roundoff(dtype) ** 0.5


class SpectralPotential:
    """Base class: a spectral potential from its scalar profile ``k``.

    Subclasses set :attr:`name` and implement :meth:`k`, :meth:`dk`, :meth:`kstar`,
    :meth:`dkstar` (elementwise on singular values, ``eps`` a tensor broadcasting against
    them) and, for the fast Gram path, :meth:`dk_over_s` (``k'(σ)/σ`` as a function of
    ``lam = σ²``). All matrix methods are batched over leading dims and keep dtype/device;
    half precision is computed in float32 internally.

    **Traits** the optimizer and the dynamics read (never the name): :attr:`uses_eps`,
    :attr:`scale_invariant`, :attr:`elementwise`, :attr:`methods`, :attr:`gram_methods`. A new
    potential is one subclass plus a line in :data:`POTENTIALS`.
    """

    name: ClassVar[str]
    #: ``K*`` is finite only on ``||Y||_op <= domain_radius``.
    domain_radius: ClassVar[float] = 1.0
    #: the potential has a scale ``ε`` (``K_ε(P) = ε K_1(P/ε)``).
    uses_eps: ClassVar[bool] = True
    #: ``∇K`` is homogeneous of degree 0 (with ``ε`` scaled alike): ``∇K_{cε}(cP) = ∇K_ε(P)``.
    #: Then RegMuon's step is ``h = η`` in dynamics units; otherwise (degree 1) ``h = √η``.
    scale_invariant: ClassVar[bool] = True
    #: ``∇K`` acts entry by entry (so the map of a shard is the shard of the map).
    elementwise: ClassVar[bool] = False
    #: the ``method`` values of :meth:`grad`.
    methods: ClassVar[tuple[str, ...]] = ("auto", "eigh", "svd")
    #: methods for which ``∇K(X) = X (XᵀX + ε²I)^{-1/2}`` may be computed from a Gram matrix
    #: alone (:func:`muonflow.polar.inv_sqrt_from_gram`; RegMuon's distributed Gram scheme).
    gram_methods: ClassVar[tuple[str, ...]] = ()
    #: the scale ε in singular-value units (a float, or one value per matrix of a batch).
    eps: float | Tensor

    def __init__(self, eps: float | Tensor = 0.0) -> None:
        self.eps = eps

    @classmethod
    def at(cls, eps: float | Tensor) -> SpectralPotential:
        """The potential at scale ``eps`` (ignored unless :attr:`uses_eps`), unchecked: for
        callers that computed ``eps`` > 0 themselves (the optimizer's relative ε)."""
        obj = cls.__new__(cls)
        SpectralPotential.__init__(obj, eps if cls.uses_eps else 0.0)
        return obj

    # -- scalar profile ---------------------------------------------------------------
    def k(self, s: Tensor, eps: Tensor) -> Tensor:
        raise NotImplementedError

    def dk(self, s: Tensor, eps: Tensor) -> Tensor:
        raise NotImplementedError

    def kstar(self, u: Tensor, eps: Tensor) -> Tensor:
        """``k*(u)`` on the domain ``|u| <= domain_radius`` (the base class adds ``+inf``)."""
        raise NotImplementedError

    def dkstar(self, u: Tensor, eps: Tensor) -> Tensor:
        raise NotImplementedError

    def dk_over_s(self, lam: Tensor, eps: Tensor) -> Tensor:
        """``k'(σ)/σ`` with ``lam = σ²`` (finite at ``lam = 0``)."""
        raise NotImplementedError

    # -- matrix maps --------------------------------------------------------------------
    def energy(self, P: Tensor) -> Tensor:
        """``K(P) = Σ_i k(σ_i(P))``: ``[..., m, n] -> [...]``; differentiable by autograd."""
        P = check_matrix(P, "P")
        X = P.to(work_dtype(P.dtype))
        sigma = torch.linalg.svdvals(X)
        return self.k(sigma, _eps_like(self.eps, sigma)).sum(-1).to(P.dtype)

    def grad(self, P: Tensor, *, method: str = "auto", tol: float | None = None) -> Tensor:
        """``∇K(P) = U diag(k'(σ)) Vᵀ``: ``[..., m, n] -> [..., m, n]``.

        ``method``: ``"auto"``/``"eigh"`` (Gram eigendecomposition) or ``"svd"``.
        """
        P = check_matrix(P, "P")
        method = check_choice(method, "method", {"auto", "eigh", "svd"})
        return spectral_map(
            P, self.eps, self.dk_over_s, method="svd" if method == "svd" else "eigh", tol=tol
        )

    def conjugate(self, Y: Tensor) -> Tensor:
        """``K*(Y) = Σ_i k*(σ_i(Y))``: ``[..., m, n] -> [...]``, ``+inf`` where ``||Y||_op > 1``."""
        Y = check_matrix(Y, "Y")
        X = Y.to(work_dtype(Y.dtype))
        u = torch.linalg.svdvals(X)
        inside = u[..., 0] <= self.domain_radius * (1 + _domain_slack(X.dtype))
        val = self.kstar(u.clamp_max(self.domain_radius), _eps_like(self.eps, u)).sum(-1)
        return torch.where(inside, val, torch.full_like(val, math.inf)).to(Y.dtype)

    def conjugate_grad(self, Y: Tensor) -> Tensor:
        """``∇K*(Y) = U diag((k*)'(σ)) Vᵀ`` (the inverse of :meth:`grad` where it is invertible).

        Raises ``ValueError`` if ``Y`` is outside the domain where ``K*`` is differentiable.
        """
        Y = check_matrix(Y, "Y")
        X = Y.to(work_dtype(Y.dtype))
        U, u, Vh = torch.linalg.svd(X, full_matrices=False)
        self._check_conjugate_domain(u)
        du = self.dkstar(u, _eps_like(self.eps, u))
        return ((U * du.unsqueeze(-2)) @ Vh).to(Y.dtype)

    def _check_conjugate_domain(self, u: Tensor) -> None:
        top = float(u[..., 0].max())
        if top > self.domain_radius * (1 + _domain_slack(u.dtype)):
            raise ValueError(
                f"conjugate_grad of {self!r} needs ||Y||_op <= {self.domain_radius}, "
                f"got {top:.6g}"
            )

    def __repr__(self) -> str:
        if isinstance(self.eps, Tensor) or self.eps:
            return f"{type(self).__name__}(eps={self.eps})"
        return f"{type(self).__name__}()"


class Relativistic(SpectralPotential):
    r"""The regularized Muon potential :math:`k(σ) = \sqrt{σ^2+ε^2} - ε` (default).

    Its gradient :math:`P(P^\top P+ε^2 I)^{-1/2}` has operator norm ``< 1`` (the speed
    limit), is ``1/ε``-Lipschitz, and tends to the polar factor as ``ε -> 0``. ``K`` is the
    Fenchel-dual smoothing of the nuclear norm: ``K(P) = sup_{||Y||_op <= 1} <Y,P> - K*(Y)``.
    """

    name = "relativistic"
    methods = ("auto", *POLAR_METHODS)
    gram_methods = ("auto", "eigh", "poly")

    def __init__(self, eps: float | Tensor) -> None:
        super().__init__(check_scale(eps, "eps", allow_zero=False))

    def k(self, s: Tensor, eps: Tensor) -> Tensor:
        # √(σ²+ε²) − ε, written as σ²/(√(σ²+ε²)+ε) below ε (no cancellation) and with hypot
        # above it (no overflow of σ²); both branches are finite so autograd stays clean.
        small = s <= eps
        s_lo = torch.where(small, s, torch.zeros_like(s))
        lo = s_lo.square() / (torch.hypot(s_lo, eps) + eps)
        hi = torch.hypot(s, eps) - eps
        return torch.where(small, lo, hi)

    def dk(self, s: Tensor, eps: Tensor) -> Tensor:
        return s / torch.hypot(s, eps)

    def kstar(self, u: Tensor, eps: Tensor) -> Tensor:
        # ε(1 − √(1−u²)) = ε u² / (1 + √(1−u²))
        return eps * u.square() / (1 + torch.sqrt((1 - u.square()).clamp_min(0)))

    def dkstar(self, u: Tensor, eps: Tensor) -> Tensor:
        return eps * u / torch.sqrt(1 - u.square())

    def dk_over_s(self, lam: Tensor, eps: Tensor) -> Tensor:
        return torch.rsqrt(lam + eps.square())

    def grad(self, P: Tensor, *, method: str = "auto", tol: float | None = None) -> Tensor:
        return regularized_polar(P, self.eps, method=method, tol=tol)

    def _check_conjugate_domain(self, u: Tensor) -> None:
        top = float(u[..., 0].max())
        if top >= 1:
            raise ValueError(f"conjugate_grad of {self!r} needs ||Y||_op < 1, got {top:.6g}")


class Huber(SpectralPotential):
    """Quadratic Fenchel smoothing of the nuclear norm: ``k'(σ) = min(σ/ε, 1)`` (clipping)."""

    name = "huber"

    def __init__(self, eps: float | Tensor) -> None:
        super().__init__(check_scale(eps, "eps", allow_zero=False))

    def k(self, s: Tensor, eps: Tensor) -> Tensor:
        small = s <= eps
        s_lo = torch.where(small, s, torch.zeros_like(s))
        return torch.where(small, s_lo.square() / (2 * eps), s - eps / 2)

    def dk(self, s: Tensor, eps: Tensor) -> Tensor:
        return torch.minimum(s / eps, torch.ones_like(s))

    def kstar(self, u: Tensor, eps: Tensor) -> Tensor:
        return eps * u.square() / 2

    def dkstar(self, u: Tensor, eps: Tensor) -> Tensor:
        return eps * u

    def dk_over_s(self, lam: Tensor, eps: Tensor) -> Tensor:
        # 1/max(√λ, ε); √ is taken of ε²/4 in place of λ = 0 (same value, and no 0·∞ = NaN
        # in its derivative, which is 0 there)
        return 1 / torch.maximum(torch.sqrt(torch.where(lam > 0, lam, eps.square() / 4)), eps)


class Nuclear(SpectralPotential):
    """Idealized Muon: ``K(P) = ||P||_*`` (``ε = 0``, non-smooth); ``∇K`` is the polar factor.

    At zero singular values the (sub)gradient chosen is 0, so ``grad(0) = 0``.
    """

    name = "nuclear"
    uses_eps = False

    def __init__(self) -> None:
        super().__init__(0.0)

    def k(self, s: Tensor, eps: Tensor) -> Tensor:
        return s

    def dk(self, s: Tensor, eps: Tensor) -> Tensor:
        return (s > 0).to(s.dtype)

    def kstar(self, u: Tensor, eps: Tensor) -> Tensor:
        return torch.zeros_like(u)

    def dkstar(self, u: Tensor, eps: Tensor) -> Tensor:
        return torch.zeros_like(u)

    def grad(self, P: Tensor, *, method: str = "auto", tol: float | None = None) -> Tensor:
        check_choice(method, "method", {"auto", "eigh", "svd"})
        return polar_factor(P)

    def dk_over_s(self, lam: Tensor, eps: Tensor) -> Tensor:
        cutoff = lam.amax(-1, keepdim=True) * unit_roundoff(lam.dtype) ** 2
        return torch.where(lam > cutoff, torch.rsqrt(lam.clamp_min(1e-300)), torch.zeros_like(lam))


class Quadratic(SpectralPotential):
    """Euclidean kinetic energy ``K(P) = ||P||_F²/2``: ``∇K`` is the identity (heavy ball)."""

    name = "quadratic"
    domain_radius = math.inf
    uses_eps = False
    scale_invariant = False
    elementwise = True

    def __init__(self) -> None:
        super().__init__(0.0)

    def energy(self, P: Tensor) -> Tensor:
        P = check_matrix(P, "P")
        X = P.to(work_dtype(P.dtype))
        return (X.square().sum(dim=(-2, -1)) / 2).to(P.dtype)

    def k(self, s: Tensor, eps: Tensor) -> Tensor:
        return s.square() / 2

    def dk(self, s: Tensor, eps: Tensor) -> Tensor:
        return s

    def kstar(self, u: Tensor, eps: Tensor) -> Tensor:
        return u.square() / 2

    def dkstar(self, u: Tensor, eps: Tensor) -> Tensor:
        return u

    def dk_over_s(self, lam: Tensor, eps: Tensor) -> Tensor:
        return torch.ones_like(lam)

    def grad(self, P: Tensor, *, method: str = "auto", tol: float | None = None) -> Tensor:
        check_choice(method, "method", {"auto", "eigh", "svd"})
        return check_matrix(P, "P").clone()

    def conjugate(self, Y: Tensor) -> Tensor:
        return self.energy(check_matrix(Y, "Y"))

    def conjugate_grad(self, Y: Tensor) -> Tensor:
        return check_matrix(Y, "Y").clone()


#: Registry of potentials by name: ``potential("relativistic", eps=0.1)``.
POTENTIALS: dict[str, type[SpectralPotential]] = {
    cls.name: cls for cls in (Relativistic, Huber, Nuclear, Quadratic)
}


def potential(name: str, eps: float | Tensor | None = None) -> SpectralPotential:
    """Build a potential by registry name; ``eps`` is required exactly for the smoothed ones."""
    check_choice(name, "potential", POTENTIALS)
    cls = POTENTIALS[name]
    if cls.uses_eps:
        if eps is None:
            raise ValueError(f"potential {name!r} needs eps > 0")
        return cls(eps)
    if eps not in (None, 0, 0.0):
        raise ValueError(f"potential {name!r} takes no eps, got eps={eps}")
    return cls()
