r"""The softmax-gated mixture of experts as a mean-field probability objective.

An expert is a particle :math:`\theta = (r, W_1, W_2)` in the product of matrix spaces
:math:`\mathbb R^{1\times d} \times \mathbb R^{h\times d} \times \mathbb R^{o\times h}`. The
router ``r`` is a vector per expert, stored as a **1×d row matrix** so that a spectral
potential applies to it like to any other block: its single singular value is ``‖r‖₂``, and
``∇K_ε(r) = r/√(‖r‖² + ε²)`` (a regularized normalization).

The feature map is Hilbert-valued (two components, one value per data point ``x_b``):

.. math::
    F(\theta)(x) = \big(e^{\langle r, x\rangle - c(x)}\, W_2 \sigma(W_1 x),\;
                         e^{\langle r, x\rangle - c(x)}\big) \in \mathbb R^{o} \times \mathbb R,
    \qquad R(a, b) = \ell(a / b,\, y),

so :math:`J(\rho) = R(\int F\,d\rho)` evaluates the loss of the softmax-gated MoE output

.. math::
    \frac{\int e^{\langle r,x\rangle} E_\theta(x)\, d\rho}{\int e^{\langle r,x\rangle}\, d\rho}
    = \sum_i \operatorname{softmax}_i(\langle r_i, x\rangle)\, E_{\theta_i}(x)
    \quad (\rho = \rho_N).

**Gate shift.** :math:`c(x) = \max_i \langle r_i, x\rangle` (log-sum-exp shift, detached). The
ratio ``a/b`` is invariant under any common positive factor :math:`e^{-c(x)}` per data point,
hence ``J`` and every particle force are unchanged (``R(sa, sb) = R(a, b)`` gives
``∇R(s m) = ∇R(m)/s`` while ``F`` scales by ``s``), and no exponential exceeds 1. Because the
shift is a maximum over the particles of one call, the feature must see the whole cloud in
one call: :func:`moe_objective` builds the objective without particle chunking.

Shapes follow :mod:`.features`: ``X: [d, B]``, blocks ``r: [N, 1, d]``, ``W1: [N, h, d]``,
``W2: [N, o, h]``, features ``[N, o + 1, B]`` (rows ``0..o-1``: numerator ``a``; row ``o``:
denominator ``b``).

:class:`ExpertParticles` is the same objective on a whole model: the experts of every
:class:`~muonflow.models.moe.MoEFeedForward` layer of a transformer as particles (force
``−E ∂L/∂θ_e``, kinetic weight ``1/E``; docs/theory.md §5).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .._checks import check_finite
from ..models.moe import MoEFeedForward
from ._state import State
from .features import Activation, Feature, Pullback, _activation, _check_dataset
from .objective import ProbabilityObjective
from .risks import Risk, SquaredRisk

__all__ = ["ExpertParticles", "MoEFeature", "RatioRisk", "moe_objective", "softmax_moe_output"]


class MoEFeature(Feature):
    r"""Softmax-gated expert feature :math:`F(r, W_1, W_2) = (g\,W_2\sigma(W_1X),\ g)`.

    ``g = exp(r X − c)`` with the detached shift ``c: [B]`` (``c = max_i r_i X`` when
    ``shift="max"``, ``c = 0`` when ``shift="none"``). With ``S = σ(W_1 X)``,
    ``E = W_2 S`` and a cotangent ``(C_a: [N, o, B], C_b: [N, 1, B])`` the pullback is

    .. math::
        \partial_{W_2} = (g \odot C_a) S^\top, \quad
        \partial_{W_1} = \big((W_2^\top (g\odot C_a)) \odot \sigma'(W_1X)\big) X^\top, \quad
        \partial_r = \Big(g \odot \big(\textstyle\sum_o C_a \odot E + C_b\big)\Big) X^\top .
    """

    def __init__(
        self,
        X: Tensor,
        *,
        hidden: int,
        out: int = 1,
        activation: str | Activation = "tanh",
        shift: str = "max",
    ):
        self.X = _check_dataset(X, "MoEFeature")
        if shift not in ("max", "none"):
            raise ValueError(f"MoEFeature: shift must be 'max' or 'none', got {shift!r}")
        for name, v in (("hidden", hidden), ("out", out)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"MoEFeature: {name} must be an int >= 1, got {v!r}")
        self.shift = shift
        self.activation = _activation(activation)
        d = X.shape[0]
        self.block_shapes = ((1, d), (hidden, d), (out, hidden))
        self.out_shape = (out + 1, X.shape[1])

    def __repr__(self) -> str:
        (_, d), (h, _), (o, _) = self.block_shapes
        return (
            f"MoEFeature(d={d}, hidden={h}, out={o}, B={self.out_shape[1]}, "
            f"σ={self.activation.name}, shift={self.shift!r})"
        )

    def gate(self, r: Tensor) -> Tensor:
        """``g = exp(r X − c)``: ``r: [N, 1, d] -> [N, 1, B]``, entries in ``(0, 1]``."""
        s = r @ self.X.to(r)  # router scores ⟨r_i, x_b⟩: [N, 1, B]
        if self.shift == "max":
            s = s - s.detach().amax(dim=0, keepdim=True)  # c(x_b) = max_i ⟨r_i, x_b⟩
        return s.exp()

    def __call__(self, theta: State) -> Tensor:
        r, W1, W2 = self._blocks(theta)
        g = self.gate(r)
        E = W2 @ self.activation.apply_(W1 @ self.X.to(W1))  # experts' outputs: [N, o, B]
        return torch.cat((g * E, g), dim=1)

    def vjp(self, theta: State, *, value: bool = True) -> tuple[Tensor | None, Pullback]:
        r, W1, W2 = self._blocks(theta)
        X = self.X.to(W1)
        g = self.gate(r)  # [N, 1, B]
        S, dS = self.activation.apply_with_deriv_(W1 @ X)  # σ(W1 X), σ'(W1 X): [N, h, B]
        E = W2 @ S  # [N, o, B]
        out = torch.cat((g * E, g), dim=1) if value else None
        o = W2.shape[1]

        def pullback(c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            Ca, Cb = c[..., :o, :], c[..., o:, :]  # numerator / denominator cotangents
            gCa = g * Ca  # [N, o, B]
            g2 = gCa @ S.mT  # (g ⊙ C_a) Sᵀ: [N, o, h]
            g1 = (W2.mT @ gCa).mul_(dS) @ X.mT  # ((W2ᵀ(g⊙C_a)) ⊙ σ') Xᵀ: [N, h, d]
            gr = (g * ((Ca * E).sum(-2, keepdim=True) + Cb)) @ X.mT  # [N, 1, d]
            return gr, g1, g2

        return out, pullback


class RatioRisk(Risk):
    r"""``R(a, b) = ℓ(a / b)`` for an inner risk ``ℓ`` on ``[o, B]``; ``m = [a; b]: [o+1, B]``.

    With ``u = a/b`` and ``G = ∇ℓ(u)``: :math:`\partial_a R = G / b`,
    :math:`\partial_b R = -\sum_o G \odot u / b`. ``R`` is invariant under ``(a, b) -> (s a, s b)``
    for any positive ``s: [B]``.
    """

    def __init__(self, inner: Risk):
        if not isinstance(inner, Risk) or len(inner.event_shape) != 2:
            raise TypeError(f"RatioRisk: inner must be a Risk on [o, B], got {inner!r}")
        self.inner = inner
        o, B = inner.event_shape
        self.event_shape = (o + 1, B)
        # ∇R is not globally Lipschitz (it blows up as b -> 0); no constant is claimed.
        self.grad_lipschitz = float("inf")

    def __repr__(self) -> str:
        return f"RatioRisk({self.inner!r})"

    def _split(self, m: Tensor) -> tuple[Tensor, Tensor]:
        a, b = m[..., :-1, :], m[..., -1:, :]
        if not bool((b > 0).all()):
            raise ValueError(f"{self!r}: the gate mass b must be > 0, got min {float(b.min())}")
        return a, b

    def _value(self, m: Tensor) -> Tensor:
        a, b = self._split(m)
        return self.inner(a / b)

    def _grad(self, m: Tensor) -> Tensor:
        a, b = self._split(m)
        u = a / b
        G = self.inner.grad(u)
        return torch.cat((G / b, -(G * u).sum(-2, keepdim=True) / b), dim=-2)


def softmax_moe_output(theta: State, X: Tensor, activation: str | Activation = "tanh") -> Tensor:
    r"""Direct softmax-gated MoE output :math:`\sum_i \mathrm{softmax}_i(r_iX)\,E_i(X)`.

    ``θ = (r [N,1,d], W1 [N,h,d], W2 [N,o,h])``, ``X: [d, B]`` -> ``[o, B]``. An independent
    formula (no ratio of integrals; ``E_i = W_{2,i} σ(W_{1,i} X)``) used to check
    :class:`MoEFeature` + :class:`RatioRisk`.
    """
    r, W1, W2 = theta
    act = _activation(activation)
    p = torch.softmax(r @ X, dim=0)  # gate probabilities over experts: [N, 1, B]
    return (p * (W2 @ act.apply_(W1 @ X))).sum(0)


def moe_objective(
    X: Tensor,
    y: Tensor,
    *,
    hidden: int,
    activation: str | Activation = "tanh",
    shift: str = "max",
    systems: int = 1,
) -> ProbabilityObjective:
    r"""The mean-field MoE regression :math:`J(\rho) = \frac{1}{2B}\sum_b \|a_b/b_b - y_b\|^2`.

    ``X: [d, B]`` inputs, ``y: [o, B]`` targets; particles ``(r, W1, W2)`` as in
    :class:`MoEFeature`. Forces are mean-field scaled (``−N ∂J/∂θ_i``); no particle chunking
    (the gate shift is a maximum over the whole cloud).
    """
    check_finite(y, "moe_objective: y")
    if y.ndim != 2 or y.shape[1] != X.shape[-1]:
        raise ValueError(
            f"moe_objective: y must be [o, B] with B = {X.shape[-1]}, got {tuple(y.shape)}"
        )
    feature = MoEFeature(X, hidden=hidden, out=y.shape[0], activation=activation, shift=shift)
    return ProbabilityObjective(feature, RatioRisk(SquaredRisk(y)), systems=systems)


class ExpertParticles:
    r"""The experts of a model as interacting particles (an objective of the dynamics).

    State: the tuple of the stacked expert tensors of every :class:`MoEFeedForward` in
    ``model`` (order ``router, w1, w2`` per layer), each ``[E, ...]``; every block is
    ``[E, m, n]``, a batch of ``E`` matrices, so the blockwise flow maps each expert's block
    separately. The rest of the model is frozen. With ``L(θ)`` the mean loss on the fixed
    batch ``(idx, targets)``:

    .. math::
        J = L(\theta), \qquad \text{force}_e = -E\,\partial L/\partial\theta_e, \qquad
        w = 1/E, \qquad H = J + \frac1E \sum_e \sum_b K_b(P_e^b).

    Args:
        model: a module with at least one :class:`MoEFeedForward`, all with the same ``E``.
        idx, targets: ``[batch, T]`` token ids and next-token targets (``J`` is the mean
            next-token cross-entropy of ``functional_call(model, params, (idx,))``).
    """

    def __init__(self, model: nn.Module, idx: Tensor, targets: Tensor) -> None:
        self.model = model
        self.idx, self.targets = idx, targets
        self.names: list[str] = []
        counts = set()
        for name, mod in model.named_modules():
            if isinstance(mod, MoEFeedForward):
                if mod.layout != "stacked":
                    raise ValueError(
                        f"ExpertParticles: layer {name!r} has layout {mod.layout!r}; experts "
                        "are particles only in the 'stacked' layout"
                    )
                prefix = f"{name}." if name else ""
                self.names += [prefix + p for p in ("router", "w1", "w2")]
                counts.add(mod.n_experts)
        if not self.names:
            raise ValueError("ExpertParticles: the model has no MoEFeedForward layer")
        if len(counts) != 1:
            raise ValueError(f"ExpertParticles: layers disagree on n_experts: {sorted(counts)}")
        self.n_experts = counts.pop()

    def __repr__(self) -> str:
        return f"ExpertParticles(E={self.n_experts}, blocks={len(self.names)})"

    def state(self) -> tuple[Tensor, ...]:
        """The current expert tensors (detached copies)."""
        params = dict(self.model.named_parameters())
        return tuple(params[n].detach().clone() for n in self.names)

    def load(self, W: tuple[Tensor, ...]) -> None:
        """Copy a state into the model's expert parameters."""
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, w in zip(self.names, W, strict=True):
                params[n].copy_(w)

    def _loss(self, W: tuple[Tensor, ...]) -> Tensor:
        if len(W) != len(self.names):
            raise ValueError(f"{self!r}: expected {len(self.names)} blocks, got {len(W)}")
        logits = functional_call(self.model, dict(zip(self.names, W, strict=True)), (self.idx,))
        return nn.functional.cross_entropy(logits.flatten(0, 1), self.targets.flatten())

    def value(self, W: tuple[Tensor, ...]) -> Tensor:
        with torch.no_grad():
            return self._loss(W)

    def value_and_force(self, W: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """``(J, force)`` with ``force = −E ∇J`` (one backward pass)."""
        with torch.enable_grad():
            leaves = tuple(w.detach().requires_grad_(True) for w in W)
            J = self._loss(leaves)
            grads = torch.autograd.grad(J, leaves)
        return J.detach(), tuple(-self.n_experts * g for g in grads)

    def kinetic_weight(self, W: tuple[Tensor, ...]) -> float:
        return 1.0 / self.n_experts
