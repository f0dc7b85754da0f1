r"""A softmax-gated mixture-of-experts feed-forward layer with stacked experts.

The layer is the mean-field MoE of :mod:`muonflow.meanfield.moe` evaluated on tokens: with
``E`` experts :math:`\theta_e = (r_e, W_{1,e}, W_{2,e})` and the uniform measure
:math:`\rho_E = \frac1E\sum_e\delta_{\theta_e}`,

.. math::
    y(x) = \sum_e \operatorname{softmax}_e(\langle r_e, x\rangle)\, W_{2,e}\,\sigma(W_{1,e} x)
         = \frac{\int e^{\langle r,x\rangle} W_2\sigma(W_1x)\,d\rho_E}
                {\int e^{\langle r,x\rangle}\,d\rho_E} .

It is dense and smooth (every expert sees every token; ``σ`` is GELU by default), so it is
exactly the objective the blockwise Muon flow acts on. Experts are stored stacked —
``router: [E, 1, d]`` (each router a 1×d row matrix), ``w1: [E, m, d]``, ``w2: [E, d, m]`` —
so :class:`~muonflow.optim.RegMuon` orthogonalizes every expert's block separately (3-D
tensors are batches of matrices) and the forward pass is two GEMMs over all experts at once
(no Python loop over experts). At fixed total width ``E·m`` the cost does not depend on ``E``.

``layout="dense"`` stores the same weights as the matrices of the equivalent dense layer —
``router: [E, d]``, ``w1: [E·m, d]``, ``w2: [d, E·m]`` — so a matrix optimizer sees one
matrix per block (one *global* orthogonalization of all experts together; the only way
``torch.optim.Muon``, which takes 2-D parameters only, reaches the experts). Both layouts
compute the same function and, from the same seed, start from the same weights.

The experts of a model as a particle system of the dynamics live in
:class:`muonflow.meanfield.moe.ExpertParticles` (``ExpertParticles`` here is a deprecated
alias, kept for one release).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .transformer import Transformer, TransformerConfig

__all__ = ["LAYOUTS", "MoEFeedForward", "moe_transformer"]

#: Parameter layouts of :class:`MoEFeedForward`: per-expert stacks or the dense layer's matrices.
LAYOUTS = ("stacked", "dense")

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": nn.functional.gelu,
    "tanh": torch.tanh,
    "silu": nn.functional.silu,
}


class MoEFeedForward(nn.Module):
    r"""Dense softmax-gated MoE: ``x: [..., d] -> [..., d]``.

    .. math::
        p = \operatorname{softmax}(x R^\top), \quad
        h = \sigma(x W_1^\top) \in \mathbb R^{E m}, \quad
        y = (p \otimes \mathbf 1_m \odot h)\, W_2^{\top}

    with ``R: [E, d]`` the routers, ``W1: [E·m, d]`` the experts' first layers stacked by rows
    and ``W2: [d, E·m]`` their second layers side by side. ``torch.softmax`` subtracts the
    per-token maximum score (the log-sum-exp shift), which leaves the output unchanged.

    Args:
        d_model: ``d``.
        n_experts: ``E >= 1``.
        d_expert: hidden width ``m`` of each expert.
        activation: ``"gelu"`` (default), ``"tanh"`` or ``"silu"`` (smooth).
        init_std: standard deviation of the initial weights (default 0.02, as the trunk).
        layout: ``"stacked"`` (default; ``router [E, 1, d]``, ``w1 [E, m, d]``,
            ``w2 [E, d, m]``: one matrix per expert and block) or ``"dense"`` (``router [E, d]``,
            ``w1 [E·m, d]``, ``w2 [d, E·m]``: one matrix per block). The initial weights are
            drawn in the stacked layout and rearranged, so both layouts give the same layer.
    """

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        d_expert: int,
        *,
        activation: str = "gelu",
        init_std: float = 0.02,
        layout: str = "stacked",
    ) -> None:
        super().__init__()
        for name, v in (("d_model", d_model), ("n_experts", n_experts), ("d_expert", d_expert)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"MoEFeedForward: {name} must be an int >= 1, got {v!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"MoEFeedForward: unknown activation {activation!r}; valid: {sorted(_ACTIVATIONS)}"
            )
        if layout not in LAYOUTS:
            raise ValueError(f"MoEFeedForward: unknown layout {layout!r}; valid: {list(LAYOUTS)}")
        E, m, d = n_experts, d_expert, d_model
        self.activation = activation
        self.layout = layout
        self.dims = (E, m, d)  # (n_experts, d_expert, d_model)
        router = init_std * torch.randn(E, 1, d)
        w1 = init_std * torch.randn(E, m, d)
        w2 = init_std * torch.randn(E, d, m)
        if layout == "dense":
            router = router.reshape(E, d)
            w1 = w1.reshape(E * m, d)
            w2 = w2.permute(1, 0, 2).reshape(d, E * m)  # [d, E·m]: column block e is w2[e]
        self.router = nn.Parameter(router)
        self.w1 = nn.Parameter(w1)
        self.w2 = nn.Parameter(w2)

    @property
    def n_experts(self) -> int:
        return self.dims[0]

    def extra_repr(self) -> str:
        E, m, d = self.dims
        return (
            f"d_model={d}, n_experts={E}, d_expert={m}, activation={self.activation}, "
            f"layout={self.layout}"
        )

    def dense_weights(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(R [E, d], W1 [E·m, d], W2ᵀ [E·m, d])`` as views or copies of the parameters."""
        E, m, d = self.dims
        if self.layout == "dense":
            return self.router, self.w1, self.w2.T
        return (
            self.router.view(E, d),
            self.w1.reshape(E * m, d),
            self.w2.transpose(1, 2).reshape(E * m, d),  # row block e is w2[e]ᵀ
        )

    def gates(self, x: Tensor) -> Tensor:
        """Softmax gate probabilities ``[..., E]`` (rows sum to 1)."""
        E, _, d = self.dims
        return torch.softmax(x @ self.router.reshape(E, d).T, dim=-1)  # a view in both layouts

    def forward(self, x: Tensor) -> Tensor:
        E, m, d = self.dims
        if x.shape[-1] != d:
            raise ValueError(f"MoEFeedForward expects x of shape [..., {d}], got {tuple(x.shape)}")
        _, W1, W2t = self.dense_weights()
        p = self.gates(x)  # [..., E]
        h = _ACTIVATIONS[self.activation](x @ W1.T)  # σ(W1 x): [..., E·m]
        h = (h.unflatten(-1, (E, m)) * p.unsqueeze(-1)).flatten(-2)  # p_e σ(W1_e x)
        return h @ W2t  # Σ_e W2_e (p_e σ(W1_e x))


def moe_transformer(
    cfg: TransformerConfig,
    n_experts: int,
    *,
    d_expert: int | None = None,
    activation: str = "gelu",
    layout: str = "stacked",
) -> Transformer:
    """A :class:`Transformer` whose every feed-forward is a :class:`MoEFeedForward`.

    ``d_expert`` defaults to ``cfg.d_mlp // n_experts`` (fixed total width ``E·m = d_mlp``:
    the mean-field regime as ``E`` grows). ``layout``: see :class:`MoEFeedForward`; the same
    seed gives the same network in both layouts.
    """
    if d_expert is None:
        if cfg.d_mlp % n_experts:
            raise ValueError(f"d_mlp {cfg.d_mlp} is not divisible by n_experts {n_experts}")
        d_expert = cfg.d_mlp // n_experts
    model = Transformer(cfg)
    for block in model.blocks:
        block.mlp = MoEFeedForward(
            cfg.d_model, n_experts, d_expert, activation=activation, layout=layout
        )
    return model


def __getattr__(name: str) -> Any:
    if name == "ExpertParticles":  # moved next to the MoE objective; alias for one release
        warnings.warn(
            "muonflow.models.moe.ExpertParticles moved to muonflow.meanfield.moe.ExpertParticles;"
            " the old name will be removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        from ..meanfield.moe import ExpertParticles

        return ExpertParticles
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
