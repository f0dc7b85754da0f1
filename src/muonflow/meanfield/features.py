r"""Feature maps :math:`F: \Theta \to \mathcal H` evaluated on a fixed dataset.

A feature map sends a batch of particles ``θ: [N, ...]`` (or a tuple of block tensors, one
per matrix block of the particle) to ``[N, *out_shape]``: the values of each particle's
"network" on the dataset ``X: [d, B]`` (the Hilbert space :math:`\mathcal H` is
``R^{out_shape}``). The mean-field model output is :math:`m_\rho = \int F\,d\rho`, the
particle average of the features.

Every feature here also gives its pullback in closed form through :meth:`Feature.vjp`,

.. math::  c \mapsto DF(\theta_i)^\top c \qquad (\text{for all } i \text{ at once}),

which is what the particle forces need (:class:`~muonflow.meanfield.ProbabilityObjective`
falls back to autograd for plain callables). ``c`` is either shared by all particles
(``[*out_shape]``) or given per particle (``[N, *out_shape]``).

=====================  ==========================  =======================  ================
feature                particle blocks             F(θ)                     out_shape
=====================  ==========================  =======================  ================
:class:`Neuron`        W ``[m, d]``                σ(W X)                   ``[m, B]``
:class:`SubNetwork`    W1 ``[h, d]``, W2 ``[o, h]``  W2 σ(W1 X)               ``[o, B]``
:class:`RandomFeatures`  A ``[o, k]``              A Φ, Φ = σ(Ω X)/√k fixed  ``[o, B]``
=====================  ==========================  =======================  ================

All activations are smooth (``C^∞``), as the mean-field theory (Lipschitz forces) needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_choice, check_finite
from ._state import State, as_blocks

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "Feature",
    "Neuron",
    "RandomFeatures",
    "SubNetwork",
]

#: A pullback ``c -> DF(θ)ᵀ c``: a cotangent ``[*out]`` or ``[N, *out]`` to a state like θ.
Pullback = Callable[[Tensor], State]


@dataclass(frozen=True)
class Activation:
    """A smooth scalar activation ``σ`` with its derivative.

    ``fn(h)`` is ``σ(h)``; ``deriv(h, s)`` is ``σ'(h)`` given ``h`` and ``s = σ(h)`` (so that
    ``tanh' = 1 − s²`` reuses the forward value). ``d1`` and ``d2`` are ``sup|σ'|`` and
    ``sup|σ''|`` over R (used by Lipschitz bounds in stability checks). ``inplace`` (optional)
    computes ``σ`` overwriting its argument, and ``output_only`` says that ``deriv`` reads
    only ``s``; together they let the features evaluate ``σ`` and ``σ'`` with one fresh
    buffer less per call (the activations are the largest tensors of a particle step).
    """

    name: str
    fn: Callable[[Tensor], Tensor]
    deriv: Callable[[Tensor, Tensor], Tensor]
    d1: float
    d2: float
    inplace: Callable[[Tensor], Tensor] | None = None
    output_only: bool = False

    def apply_(self, h: Tensor) -> Tensor:
        """``σ(h)``, overwriting ``h`` when an in-place kernel exists (the caller owns ``h``)."""
        return self.inplace(h) if self.inplace is not None else self.fn(h)

    def apply_with_deriv_(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(σ(h), σ'(h))``, overwriting ``h`` when ``σ'`` does not need it."""
        if self.inplace is not None and self.output_only:
            s = self.inplace(h)
            return s, self.deriv(s, s)
        s = self.fn(h)
        return s, self.deriv(h, s)


def _one(s: Tensor) -> Tensor:
    return torch.ones((), dtype=s.dtype, device=s.device)


def _gelu_deriv(h: Tensor, s: Tensor) -> Tensor:
    # d/dh [h Φ(h)] = Φ(h) + h φ(h)
    cdf = 0.5 * (1 + torch.erf(h / math.sqrt(2)))
    pdf = torch.exp(-0.5 * h.square()) / math.sqrt(2 * math.pi)
    return cdf + h * pdf


#: Registry of smooth activations by name.
ACTIVATIONS: dict[str, Activation] = {
    # tanh'' = −2 tanh (1 − tanh²), maximal at tanh² = 1/3: 4/(3√3)
    "tanh": Activation(
        "tanh",
        torch.tanh,
        lambda h, s: torch.addcmul(_one(s), s, s, value=-1),  # 1 − s², one pass
        1.0,
        4 / (3 * math.sqrt(3)),
        inplace=torch.tanh_,
        output_only=True,
    ),
    # σ'' = σ(1−σ)(1−2σ), maximal at σ = 1/2 ± 1/(2√3): 1/(6√3)
    "sigmoid": Activation(
        "sigmoid",
        torch.sigmoid,
        lambda h, s: torch.addcmul(s, s, s, value=-1),  # s − s², one pass
        0.25,
        1 / (6 * math.sqrt(3)),
        inplace=torch.sigmoid_,
        output_only=True,
    ),
    # softplus = log(1 + e^h) (logaddexp: no linear cut-off, unlike torch's threshold=20);
    # softplus' = sigmoid, softplus'' = sigmoid' <= 1/4
    "softplus": Activation(
        "softplus",
        lambda h: torch.logaddexp(h, torch.zeros_like(h)),
        lambda h, s: torch.sigmoid(h),
        1.0,
        0.25,
    ),
    "sin": Activation("sin", torch.sin, lambda h, s: torch.cos(h), 1.0, 1.0, inplace=torch.sin_),
    # gelu' = Φ + hφ peaks at h = √2 (gelu'' = (2 − h²)φ vanishes there);
    # |gelu''| peaks at h = 0 with 2φ(0)
    "gelu": Activation(
        "gelu",
        torch.nn.functional.gelu,
        _gelu_deriv,
        0.5 * (1 + math.erf(1.0)) + math.sqrt(2) * math.exp(-1.0) / math.sqrt(2 * math.pi),
        2 / math.sqrt(2 * math.pi),
    ),
    "identity": Activation(
        "identity", lambda h: h, lambda h, s: torch.ones_like(h), 1.0, 0.0, output_only=True
    ),
}


def _activation(activation: str | Activation) -> Activation:
    if isinstance(activation, Activation):
        return activation
    return ACTIVATIONS[check_choice(activation, "activation", ACTIVATIONS)]


def _check_dataset(X: Tensor, name: str) -> Tensor:
    if not isinstance(X, Tensor) or not X.is_floating_point() or X.is_complex():
        raise TypeError(f"{name}: the dataset X must be a real floating tensor [d, B]")
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name}: the dataset X must have shape [d, B], got {tuple(X.shape)}")
    check_finite(X, f"{name}: dataset X")
    return X


class Feature:
    """Base class of feature maps ``θ: [N, *block_shapes] -> [N, *out_shape]``.

    Subclasses set :attr:`block_shapes` (the per-particle shape of each block) and
    :attr:`out_shape`, and implement :meth:`__call__` and :meth:`vjp`.
    """

    #: per-particle shape of each block, e.g. ``((16, 8), (8, 16))``.
    block_shapes: tuple[tuple[int, ...], ...]
    #: per-particle output shape, e.g. ``(o, B)``.
    out_shape: tuple[int, ...]

    def __call__(self, theta: State) -> Tensor:
        """``F(θ_i)`` for all particles: ``[N, *out_shape]``."""
        raise NotImplementedError

    def vjp(self, theta: State, *, value: bool = True) -> tuple[Tensor | None, Pullback]:
        """``(F(θ), pullback)`` with ``pullback(c) = DF(θ_i)ᵀ c`` (a state like θ).

        With ``value=False`` the first entry may be ``None`` (a feature may then skip work
        that only the value needs, e.g. the last GEMM of :class:`SubNetwork`).
        """
        raise NotImplementedError

    def sample(
        self,
        n: int,
        *,
        std: float = 1.0,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> State:
        """``n`` i.i.d. particles with N(0, std²) entries (a tensor, or a tuple of blocks)."""
        blocks = tuple(
            std * torch.randn((n, *s), generator=generator, dtype=dtype) for s in self.block_shapes
        )
        return blocks if len(blocks) > 1 else blocks[0]

    def _blocks(self, theta: State) -> tuple[Tensor, ...]:
        blocks, _ = as_blocks(theta, f"{self!r}: θ")
        if len(blocks) != len(self.block_shapes) or any(
            tuple(x.shape[1:]) != s for x, s in zip(blocks, self.block_shapes, strict=False)
        ):
            want = ", ".join(f"[N, {', '.join(map(str, s))}]" for s in self.block_shapes)
            got = ", ".join(str(tuple(x.shape)) for x in blocks)
            raise ValueError(f"{self!r} expects particle blocks ({want}), got ({got})")
        return blocks


class Neuron(Feature):
    r"""Single-block neuron :math:`F(W) = \sigma(W X)`.

    ``W: [N, m, d]``, ``X: [d, B]`` -> ``[N, m, B]``. Pullback:
    :math:`DF(W)^\top c = (c \odot \sigma'(W X)) X^\top`.
    """

    def __init__(self, X: Tensor, *, width: int = 1, activation: str | Activation = "tanh"):
        self.X = _check_dataset(X, "Neuron")
        self.activation = _activation(activation)
        self.block_shapes = ((width, X.shape[0]),)
        self.out_shape = (width, X.shape[1])

    def __repr__(self) -> str:
        m, d = self.block_shapes[0]
        return f"Neuron(width={m}, d={d}, B={self.out_shape[1]}, σ={self.activation.name})"

    def __call__(self, theta: State) -> Tensor:
        (W,) = self._blocks(theta)
        return self.activation.apply_(W @ self.X.to(W))

    def vjp(self, theta: State, *, value: bool = True) -> tuple[Tensor | None, Pullback]:
        (W,) = self._blocks(theta)
        X = self.X.to(W)
        s, ds = self.activation.apply_with_deriv_(W @ X)  # σ(W X), σ'(W X): [N, m, B]

        def pullback(c: Tensor) -> Tensor:
            return (c * ds) @ X.mT  # (c ⊙ σ'(h)) Xᵀ: [N, m, d]

        return s, pullback


class SubNetwork(Feature):
    r"""Two-block sub-network :math:`F(W_1, W_2) = W_2\,\sigma(W_1 X)`.

    ``W1: [N, h, d]``, ``W2: [N, o, h]``, ``X: [d, B]`` -> ``[N, o, B]``. With
    :math:`S = \sigma(W_1 X)`, the pullback is

    .. math::  \partial_{W_2} = c\,S^\top, \qquad
               \partial_{W_1} = \big((W_2^\top c) \odot \sigma'(W_1 X)\big) X^\top .
    """

    def __init__(
        self, X: Tensor, *, hidden: int, out: int = 1, activation: str | Activation = "tanh"
    ):
        self.X = _check_dataset(X, "SubNetwork")
        self.activation = _activation(activation)
        self.block_shapes = ((hidden, X.shape[0]), (out, hidden))
        self.out_shape = (out, X.shape[1])

    def __repr__(self) -> str:
        (h, d), (o, _) = self.block_shapes
        act = self.activation.name
        return f"SubNetwork(d={d}, hidden={h}, out={o}, B={self.out_shape[1]}, σ={act})"

    def __call__(self, theta: State) -> Tensor:
        W1, W2 = self._blocks(theta)
        return W2 @ self.activation.apply_(W1 @ self.X.to(W1))

    def vjp(self, theta: State, *, value: bool = True) -> tuple[Tensor | None, Pullback]:
        W1, W2 = self._blocks(theta)
        X = self.X.to(W1)
        S, dS = self.activation.apply_with_deriv_(W1 @ X)  # σ(W1 X), σ'(W1 X): [N, hidden, B]
        out = W2 @ S if value else None  # [N, o, B]

        def pullback(c: Tensor) -> tuple[Tensor, Tensor]:
            g2 = c @ S.mT  # c Sᵀ: [N, o, hidden]
            g1 = (W2.mT @ c).mul_(dS) @ X.mT  # ((W2ᵀ c) ⊙ σ'(h)) Xᵀ: [N, hidden, d]
            return g1, g2

        return out, pullback


class RandomFeatures(Feature):
    r"""Random-features model: :math:`F(A) = A\,\Phi`, :math:`\Phi = \sigma(\Omega X)/\sqrt{k}`.

    ``Ω: [k, d]`` has i.i.d. N(0, 1/d) entries and is fixed at construction; the particle is
    the read-out ``A: [N, o, k]``; output ``[N, o, B]``. ``F`` is linear in the particle, so
    with the squared risk ``J`` is a convex quadratic of ``ρ``. Pullback:
    :math:`DF(A)^\top c = c\,\Phi^\top`.
    """

    def __init__(
        self,
        X: Tensor,
        *,
        num_features: int,
        out: int = 1,
        activation: str | Activation = "tanh",
        generator: torch.Generator | None = None,
    ):
        self.X = _check_dataset(X, "RandomFeatures")
        self.activation = _activation(activation)
        d = X.shape[0]
        omega = torch.randn((num_features, d), generator=generator, dtype=X.dtype) / math.sqrt(d)
        self.omega = omega
        self.phi = self.activation.fn(omega @ X) / math.sqrt(num_features)  # Φ: [k, B]
        self.block_shapes = ((out, num_features),)
        self.out_shape = (out, X.shape[1])

    def __repr__(self) -> str:
        o, k = self.block_shapes[0]
        return f"RandomFeatures(k={k}, out={o}, B={self.out_shape[1]}, σ={self.activation.name})"

    def __call__(self, theta: State) -> Tensor:
        (A,) = self._blocks(theta)
        return A @ self.phi.to(A)

    def vjp(self, theta: State, *, value: bool = True) -> tuple[Tensor | None, Pullback]:
        (A,) = self._blocks(theta)
        phi = self.phi.to(A)
        n = A.shape[0]

        def pullback(c: Tensor) -> Tensor:
            g = c @ phi.mT  # c Φᵀ: [o, k] or [N, o, k]
            return g.expand(n, *g.shape[-2:]).contiguous()

        return A @ phi, pullback
