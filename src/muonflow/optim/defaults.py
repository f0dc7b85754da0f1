"""The default options of RegMuon, in one place.

:class:`~muonflow.optim.RegMuon` and the functional kernels :func:`~muonflow.optim.regmuon` /
:func:`~muonflow.optim.adamw` read their defaults from :data:`DEFAULTS`, so changing a default
is a one-line edit here (and shows in both signatures). Where each value comes from is said
next to it; the benchmark that settles them is described in ``docs/optimizer.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULTS", "RegMuonDefaults"]


@dataclass(frozen=True)
class RegMuonDefaults:
    """Default options of RegMuon (see :class:`~muonflow.optim.RegMuon` for their meaning)."""

    #: ``η`` of the matrices (before the shape factor ``ρ(m, n)`` of ``adjust_lr``).
    lr: float = 0.02
    #: ``β`` of the momentum.
    momentum: float = 0.95
    #: ``ε``: relative (``eps_mode="relative"``) 0.03 of the RMS singular value: the best
    #: compromise of the ε sweep in ``benchmarks/train_quality.py``.
    eps: float = 0.03
    eps_mode: str = "relative"
    potential: str = "relativistic"
    #: ``"sum"``: the paper's momentum ``M ← βM + g`` (``"ema"``: torch.optim.Muon's).
    momentum_form: str = "sum"
    nesterov: bool = False
    #: decoupled weight decay ``λ`` of both parts.
    weight_decay: float = 0.0
    #: key of :data:`~muonflow.optim.ADJUST_LR`: ``√max(1, m/n)`` (Keller Jordan's Muon).
    adjust_lr: str = "original"
    #: relative accuracy of the map: loose enough for the fast matmul-only path.
    tol: float | None = 1e-3
    method: str = "auto"
    #: for parameters given without a module (with a module, each layer type says).
    layout: str = "out_in"
    matrix_view: str = "auto"
    #: the built-in AdamW (embeddings, output layer, vectors, direct parameters).
    adamw_lr: float = 1e-3
    adamw_betas: tuple[float, float] = (0.9, 0.999)
    adamw_eps: float = 1e-8
    #: what a step does with a NaN/Inf gradient: ``"raise"`` or ``"skip"``.
    on_nonfinite: str = "raise"
    #: the workspace rule of the batched map calls (see ``max_batch_bytes`` of RegMuon).
    max_batch_bytes: int | str | None = "auto"


#: The defaults every entry point uses.
DEFAULTS = RegMuonDefaults()
