r"""Risks :math:`R: \mathcal H \to \mathbb R` on the mean feature :math:`m = \int F\,d\rho`.

The Hilbert space is ``R^{event_shape}`` with ``event_shape = (..., B)``: the last axis runs
over the ``B`` data points and every risk is an average over them. All risks are batched
over leading dims (``m: [..., *event_shape] -> [...]``) and give their gradient in closed
form (:meth:`Risk.grad`, checked against autograd in the tests).

=======================  ==============================================  =========================
risk                     R(m)                                            ∇R(m)
=======================  ==============================================  =========================
:class:`SquaredRisk`     (1/2B) Σ (m − y)²                               (m − y)/B
:class:`HuberRisk`       (1/B) Σ h_δ(m − y), h_δ(r) = r²/2 or δ(|r|−δ/2)  clamp(m − y, −δ, δ)/B
:class:`LogisticRisk`    (1/B) Σ log(1 + e^{−y m}), y ∈ {−1, +1}          −y s(−y m)/B (s sigmoid)
:class:`CrossEntropyRisk`  (1/B) Σ_b [logsumexp_c m_cb − m_{y_b b}]       (softmax_c(m) − onehot)/B
=======================  ==============================================  =========================
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_choice, check_finite, check_scale

__all__ = [
    "RISKS",
    "CrossEntropyRisk",
    "HuberRisk",
    "LogisticRisk",
    "Risk",
    "SquaredRisk",
    "make_risk",
]


class Risk:
    """Base class: a smooth risk on ``R^{event_shape}``, batched over leading dims.

    Subclasses set :attr:`event_shape` and implement :meth:`_value` and :meth:`_grad` on a
    validated ``m: [..., *event_shape]``.
    """

    #: shape of one point of the Hilbert space, e.g. ``(o, B)``; the last axis is the data.
    event_shape: tuple[int, ...]
    #: a Lipschitz constant of ∇R in the Euclidean norm of ``R^{event_shape}``.
    grad_lipschitz: float

    def __call__(self, m: Tensor) -> Tensor:
        """``R(m)``: ``[..., *event_shape] -> [...]``; differentiable by autograd."""
        return self._value(self._check(m))

    def grad(self, m: Tensor) -> Tensor:
        """``∇R(m)``: ``[..., *event_shape] -> [..., *event_shape]``."""
        return self._grad(self._check(m))

    @property
    def num_points(self) -> int:
        """``B``: the number of data points the risk averages over."""
        return self.event_shape[-1]

    def _check(self, m: Tensor) -> Tensor:
        k = len(self.event_shape)
        if (
            not isinstance(m, Tensor)
            or m.ndim < k
            or tuple(m.shape[m.ndim - k :]) != self.event_shape
        ):
            shape = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
            raise ValueError(
                f"{self!r} expects a mean feature of shape [..., "
                f"{', '.join(map(str, self.event_shape))}], got {shape}"
            )
        return m

    def _sum_event(self, x: Tensor) -> Tensor:
        return x.sum(dim=tuple(range(-len(self.event_shape), 0)))

    def _value(self, m: Tensor) -> Tensor:
        raise NotImplementedError

    def _grad(self, m: Tensor) -> Tensor:
        raise NotImplementedError


def _check_target(y: Tensor, name: str) -> Tensor:
    if not isinstance(y, Tensor) or not y.is_floating_point() or y.is_complex():
        raise TypeError(f"{name}: target must be a real floating tensor [..., B]")
    if y.ndim < 1 or y.numel() == 0:
        raise ValueError(
            f"{name}: target must have shape [..., B] with B >= 1, got {tuple(y.shape)}"
        )
    check_finite(y, f"{name}: target")
    return y


class SquaredRisk(Risk):
    r""":math:`R(m) = \frac{1}{2B}\sum (m - y)^2`; ``∇R = (m − y)/B``, Lipschitz ``1/B``."""

    def __init__(self, target: Tensor):
        self.target = _check_target(target, "SquaredRisk")
        self.event_shape = tuple(target.shape)
        self.grad_lipschitz = 1.0 / self.num_points

    def __repr__(self) -> str:
        return f"SquaredRisk(target shape {self.event_shape})"

    def _value(self, m: Tensor) -> Tensor:
        r = m - self.target.to(m)
        return self._sum_event(r.square()) / (2 * self.num_points)

    def _grad(self, m: Tensor) -> Tensor:
        return (m - self.target.to(m)) / self.num_points


class HuberRisk(Risk):
    r""":math:`R(m) = \frac1B\sum h_\delta(m - y)` (quadratic for ``|r| <= δ``, linear beyond).

    ``∇R = clamp(m − y, −δ, δ)/B`` (Lipschitz ``1/B``; ``R`` is ``C^1`` with a piecewise
    constant Hessian).
    """

    def __init__(self, target: Tensor, delta: float = 1.0):
        self.target = _check_target(target, "HuberRisk")
        self.delta = float(check_scale(delta, "delta", allow_zero=False))
        self.event_shape = tuple(target.shape)
        self.grad_lipschitz = 1.0 / self.num_points

    def __repr__(self) -> str:
        return f"HuberRisk(target shape {self.event_shape}, delta={self.delta})"

    def _value(self, m: Tensor) -> Tensor:
        r = (m - self.target.to(m)).abs()
        d = self.delta
        small = r <= d
        h = torch.where(small, 0.5 * r.square(), d * (r - 0.5 * d))
        return self._sum_event(h) / self.num_points

    def _grad(self, m: Tensor) -> Tensor:
        return (m - self.target.to(m)).clamp(-self.delta, self.delta) / self.num_points


class LogisticRisk(Risk):
    r""":math:`R(m) = \frac1B\sum \log(1 + e^{-y m})` with labels ``y ∈ {−1, +1}``.

    ``∇R = −y·sigmoid(−y m)/B`` (Lipschitz ``1/(4B)``).
    """

    def __init__(self, labels: Tensor):
        labels = _check_target(labels, "LogisticRisk")
        if not bool(((labels == 1) | (labels == -1)).all()):
            raise ValueError("LogisticRisk: labels must be -1 or +1")
        self.labels = labels
        self.event_shape = tuple(labels.shape)
        self.grad_lipschitz = 0.25 / self.num_points

    def __repr__(self) -> str:
        return f"LogisticRisk(labels shape {self.event_shape})"

    def _value(self, m: Tensor) -> Tensor:
        z = -self.labels.to(m) * m
        return self._sum_event(torch.nn.functional.softplus(z)) / self.num_points

    def _grad(self, m: Tensor) -> Tensor:
        y = self.labels.to(m)
        return -y * torch.sigmoid(-y * m) / self.num_points


class CrossEntropyRisk(Risk):
    r"""Softmax cross-entropy over ``C`` classes: ``m: [..., C, B]`` are logits.

    :math:`R(m) = \frac1B\sum_b \big[\log\sum_c e^{m_{cb}} - m_{y_b b}\big]`,
    ``∇R = (softmax_c(m) − onehot(y))/B`` (Lipschitz ``1/(2B)``).
    """

    def __init__(self, labels: Tensor, num_classes: int):
        if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.dtype != torch.long:
            raise TypeError("CrossEntropyRisk: labels must be a 1-D int64 tensor [B]")
        if labels.numel() == 0 or int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise ValueError(f"CrossEntropyRisk: labels must lie in [0, {num_classes})")
        self.labels = labels
        self.num_classes = num_classes
        self.event_shape = (num_classes, labels.shape[0])
        self.grad_lipschitz = 0.5 / self.num_points

    def __repr__(self) -> str:
        return f"CrossEntropyRisk(C={self.num_classes}, B={self.num_points})"

    def _onehot(self, m: Tensor) -> Tensor:
        return torch.nn.functional.one_hot(self.labels.to(m.device), self.num_classes).mT.to(m)

    def _value(self, m: Tensor) -> Tensor:
        lse = torch.logsumexp(m, dim=-2)  # [..., B]
        picked = (m * self._onehot(m)).sum(-2)
        return (lse - picked).sum(-1) / self.num_points

    def _grad(self, m: Tensor) -> Tensor:
        return (torch.softmax(m, dim=-2) - self._onehot(m)) / self.num_points


#: Registry of risks by name.
RISKS: dict[str, type[Risk]] = {
    "squared": SquaredRisk,
    "huber": HuberRisk,
    "logistic": LogisticRisk,
    "cross_entropy": CrossEntropyRisk,
}


def make_risk(name: str, target: Tensor, **options: float) -> Risk:
    """Build a risk by registry name from teacher outputs ``target: [..., B]``.

    ``"squared"`` and ``"huber"`` regress on ``target``; ``"logistic"`` uses the labels
    ``sign(target)`` (zeros count as +1); ``"cross_entropy"`` takes ``target: [C, B]`` as
    teacher logits and uses ``argmax`` over classes.
    """
    check_choice(name, "risk", RISKS)
    target = _check_target(target, f"make_risk({name!r})")
    if name == "squared":
        return SquaredRisk(target, **options)
    if name == "huber":
        return HuberRisk(target, **options)
    if name == "logistic":
        return LogisticRisk(torch.where(target >= 0, 1.0, -1.0).to(target), **options)
    if target.ndim != 2:
        raise ValueError(
            f"make_risk('cross_entropy') needs teacher logits [C, B], got {tuple(target.shape)}"
        )
    return CrossEntropyRisk(target.argmax(0), num_classes=target.shape[0], **options)
