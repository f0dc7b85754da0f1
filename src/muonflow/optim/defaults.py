"""The default options of RegMuon, in one place.

:class:`~muonflow.optim.RegMuon` and the functional kernels :func:`~muonflow.optim.regmuon` /
:func:`~muonflow.optim.adamw` read their defaults from :data:`DEFAULTS`, so changing a default
is a one-line edit here (and shows in both signatures). Where each value comes from is said
next to it; the benchmark that settles them (``benchmarks/bench_training.py``: 14 tasks, chosen
on a tuning half and reported on a held-out half) and its tables are in
``docs/benchmark-training.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULTS", "RegMuonDefaults"]


@dataclass(frozen=True)
class RegMuonDefaults:
    """Default options of RegMuon (see :class:`~muonflow.optim.RegMuon` for their meaning)."""

    #: ``η`` of the matrices (before the shape factor ``ρ(m, n)`` of ``adjust_lr``): the lr
    #: whose worst val-loss ratio to the best tuned baseline over the 7 tuning tasks is
    #: smallest (1.174 with ``adamw_lr`` 0.04; at 0.04 the constant-lr ViT is 1.79x, at 0.01
    #: the LSTM 1.23x). The tasks' own best lrs span 0.01 (ViT, Friedman) to 0.08 (LSTM).
    lr: float = 0.02
    #: ``β`` of the momentum (0.9 and 0.98 lost to 0.95 in the study).
    momentum: float = 0.95
    #: ``ε``: relative (``eps_mode="relative"``) 0.03 of the RMS singular value: the best
    #: compromise of the ε sweep in ``benchmarks/train_quality.py``.
    eps: float = 0.03
    eps_mode: str = "relative"
    potential: str = "relativistic"
    #: ``"sum"``: the paper's momentum ``M ← βM + g`` (``"ema"``: torch.optim.Muon's).
    momentum_form: str = "sum"
    #: Nesterov's look-ahead (as torch.optim.Muon); better on every task of the study.
    nesterov: bool = True
    #: decoupled weight decay ``λ`` of both parts.
    weight_decay: float = 0.0
    #: key of :data:`~muonflow.optim.ADJUST_LR`: ``√max(1, m/n)`` (Keller Jordan's Muon).
    adjust_lr: str = "original"
    #: relative accuracy of the map: 1e-2 trains as well as 1e-3 (the study) and lets the
    #: matmul-only path stop earlier (``benchmarks/bench_fast_map.py``).
    tol: float | None = 1e-2
    method: str = "auto"
    #: for parameters given without a module (with a module, each layer type says).
    layout: str = "out_in"
    matrix_view: str = "auto"
    #: the built-in AdamW (embeddings, output layer, vectors, direct parameters): lr 0.04
    #: with the matrix lr 0.02 has the smallest worst ratio of the study (1.174; AdamW part
    #: 0.02: 1.230 at its best lr, 0.08: 1.546); at each task's best matrix lr it beat 0.02 on
    #: both GPT-2s, the Llama (1.838 vs 1.900 val) and the LSTM, tied on the sorter and
    #: Friedman. β₂ 0.95 beat 0.999 in the earlier four-task study.
    adamw_lr: float = 0.04
    adamw_betas: tuple[float, float] = (0.9, 0.95)
    adamw_eps: float = 1e-8
    #: what a step does with a NaN/Inf gradient: ``"raise"`` or ``"skip"``.
    on_nonfinite: str = "raise"
    #: the workspace rule of the batched map calls (see ``max_batch_bytes`` of RegMuon).
    max_batch_bytes: int | str | None = "auto"


#: The defaults every entry point uses.
DEFAULTS = RegMuonDefaults()
