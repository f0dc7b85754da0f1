"""RegMuon's options: one frozen, validated type, :class:`RegMuonOptions`, and its :data:`DEFAULTS`.

An options value is checked once, when it is made (a bad value raises naming the option and the
value), and then passed whole: to :class:`~muonflow.optim.RegMuon`, the functional kernels, the
kinetic energy and the DTensor path. Where each default comes from is said next to it; the
benchmark that settles them and its tables are in ``docs/benchmark-training.md``.

``torch.optim`` keeps options per parameter group, in dicts that schedulers edit; a group's
dict uses the keys of :data:`GROUP_KEYS` (``"betas"`` and ``"adamw_eps"`` for AdamW's), and
:meth:`RegMuonOptions.of_group` reads a group back into options, validated.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._checks import check_choice
from ..spectral import POTENTIALS, SpectralPotential

__all__ = ["DEFAULTS", "GROUP_KEYS", "RegMuonOptions"]

MOMENTUM_FORMS = ("sum", "ema")
EPS_MODES = ("absolute", "relative")
LAYOUTS = ("out_in", "in_out")
NONFINITE_POLICIES = ("raise", "skip")
MOMENTUM_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
#: The option keys of a parameter group dict (``torch.optim`` style; saved in checkpoints):
#: the matrix options under their own names, then AdamW's betas and ϵ.
MATRIX_KEYS = ("lr", "momentum", "eps", "eps_mode", "potential", "momentum_form", "nesterov",
               "weight_decay", "adjust_lr", "tol", "method", "layout", "matrix_view")  # fmt: skip
GROUP_KEYS = (*MATRIX_KEYS, "betas", "adamw_eps")


def check_number(value: Any, name: str, lo: float, hi: float, *, hi_open: bool = False) -> float:
    """``float(value)`` if it is a real number (or a one-element real tensor, as torch.optim
    accepts for ``lr``) in ``[lo, hi]`` (``[lo, hi)``); raise naming ``name`` otherwise."""
    if isinstance(value, Tensor) and value.is_floating_point():
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element, got shape {tuple(value.shape)}")
        value = float(value.item())
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
    v = float(value)
    if not (math.isfinite(v) and lo <= v <= hi) or (hi_open and v == hi):
        interval = f"[{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    return v


def check_positive(value: Any, name: str, alt: str = "", hint: str = "") -> float:
    if check_number(value, name, 0.0, math.inf) == 0:
        raise ValueError(f"{name} must be > 0{alt}, got {value!r}{hint}")
    return float(value)


@dataclass(frozen=True)
class RegMuonOptions:
    """Every option of RegMuon, validated when made (see :class:`~muonflow.optim.RegMuon`).

    ``options.replace(lr=0.02)`` gives a validated copy with some options changed.
    """

    #: ``η`` of the matrices (before the shape factor ``ρ(m, n)`` of ``adjust_lr``): the lr
    #: whose worst val-loss ratio to the best tuned baseline over the 7 tuning tasks of
    #: ``benchmarks/bench_training.py`` is smallest (1.174 with ``adamw_lr`` 0.04; at 0.04 the
    #: constant-lr ViT is 1.79x, at 0.01 the LSTM 1.23x). The tasks' own best lrs span 0.01
    #: (ViT, Friedman) to 0.08 (LSTM). A 0-dim tensor is accepted.
    lr: float | Tensor = 0.02
    #: ``β`` of the momentum (0.9 and 0.98 lost to 0.95 in the study).
    momentum: float = 0.95
    #: ``ε``: relative (``eps_mode="relative"``) 0.03 of the RMS singular value: the best
    #: compromise of the ε sweep in ``benchmarks/train_quality.py``.
    eps: float = 0.03
    eps_mode: str = "relative"
    #: the kinetic energy ``K``: a key of :data:`muonflow.spectral.POTENTIALS`.
    potential: str = "relativistic"
    #: ``"sum"``: the paper's momentum ``M ← βM + g`` (``"ema"``: torch.optim.Muon's).
    momentum_form: str = "sum"
    #: Nesterov's look-ahead (as torch.optim.Muon); better on every task of the study.
    nesterov: bool = True
    #: decoupled weight decay ``λ`` of the matrices (and of AdamW unless ``adamw_weight_decay``).
    weight_decay: float = 0.0
    #: key of :data:`~muonflow.optim.ADJUST_LR`: ``√max(1, m/n)`` (Keller Jordan's Muon).
    adjust_lr: str = "original"
    #: relative accuracy of the map: the loosest of 0.01, 0.03, 0.1, 0.2 whose final test loss
    #: differs from 0.01's by less than one paired SE on each of 4 tasks x 8 seeds
    #: (``benchmarks/bench_tol.py``: 0.2 is 1.1 SE worse on the MoE; 0.03, non-monotone,
    #: 1.8 SE worse on GPT-2). At 0.1 the map's error (<= 4e-2) stays below Newton–Schulz's own
    #: distance to the polar factor (0.15-0.25). ``None``: exact.
    tol: float | None = 0.1
    #: ``"auto"`` or a method the potential offers (``SpectralPotential.methods``).
    method: str = "auto"
    #: for parameters given without a module (with a module, each layer type says).
    layout: str = "out_in"
    matrix_view: str = "auto"
    #: the built-in AdamW (embeddings, output layer, vectors, direct parameters): lr 0.04
    #: with the matrix lr 0.02 has the smallest worst ratio of the study (1.174; AdamW part
    #: 0.02: 1.230 at its best lr, 0.08: 1.546); at each task's best matrix lr it beat 0.02 on
    #: both GPT-2s, the Llama (1.838 vs 1.900 val) and the LSTM, tied on the sorter and
    #: Friedman. β₂ 0.95 beat 0.999 in the earlier four-task study.
    adamw_lr: float | Tensor = 0.04
    adamw_betas: tuple[float, float] = (0.9, 0.95)
    adamw_eps: float = 1e-8
    #: ``None``: ``weight_decay``.
    adamw_weight_decay: float | None = None
    #: what a step does with a NaN/Inf gradient: ``"raise"`` or ``"skip"``.
    on_nonfinite: str = "raise"
    #: the workspace rule of the batched map calls (see ``max_batch_bytes`` of RegMuon).
    max_batch_bytes: int | str | None = "auto"
    #: the dtype of the momentum state: ``None`` (the parameter's) or ``"bfloat16"`` (half the
    #: memory of float32 state; the update is computed in the parameter's dtype and the new
    #: momentum rounded once per step) or ``"float32"``.
    momentum_dtype: str | None = None

    def __post_init__(self) -> None:
        from .plan import ADJUST_LR, check_matrix_view

        betas = self.adamw_betas
        if not (isinstance(betas, tuple | list) and len(betas) == 2):
            raise ValueError(f"betas must be a pair of floats, got {betas!r}")
        object.__setattr__(self, "adamw_betas", tuple(betas))
        for i, b in enumerate(betas):
            check_number(b, f"betas[{i}]", 0.0, 1.0, hi_open=True)
        check_number(self.lr, "lr", 0.0, math.inf)
        check_number(self.adamw_lr, "lr", 0.0, math.inf)
        check_number(self.weight_decay, "weight_decay", 0.0, math.inf)
        if self.adamw_weight_decay is not None:
            check_number(self.adamw_weight_decay, "weight_decay", 0.0, math.inf)
        form = check_choice(self.momentum_form, "momentum_form", MOMENTUM_FORMS)
        # Sum form allows β = 1 (no damping: the conservative flow γ = 0); EMA needs β < 1.
        check_number(self.momentum, "momentum", 0.0, 1.0, hi_open=form == "ema")
        check_positive(self.eps, "eps", hint=" (use potential='nuclear')")
        check_choice(self.eps_mode, "eps_mode", EPS_MODES)
        kinetic = self.kinetic
        if not isinstance(self.nesterov, bool):
            raise TypeError(f"nesterov must be a bool, got {self.nesterov!r}")
        check_choice(self.adjust_lr, "adjust_lr", ADJUST_LR)
        if self.tol is not None:
            check_positive(self.tol, "tol", alt=" or None")
        check_choice(self.method, f"method (potential {self.potential!r})", kinetic.methods)
        check_choice(self.layout, "layout", LAYOUTS)
        check_matrix_view(self.matrix_view)
        check_positive(self.adamw_eps, "adamw_eps")
        check_choice(self.on_nonfinite, "on_nonfinite", NONFINITE_POLICIES)
        if self.momentum_dtype is not None:
            check_choice(self.momentum_dtype, "momentum_dtype", MOMENTUM_DTYPES)
        mbb = self.max_batch_bytes
        if not (mbb is None or mbb == "auto") and (
            isinstance(mbb, bool) or not isinstance(mbb, int) or mbb < 1
        ):
            raise ValueError(f"max_batch_bytes must be a positive int, 'auto' or None, got {mbb!r}")

    @property
    def kinetic(self) -> type[SpectralPotential]:
        """The potential's class (its traits: ``uses_eps``, ``scale_invariant``, ``methods``)."""
        return POTENTIALS[check_choice(self.potential, "potential", POTENTIALS)]

    @property
    def adamw_decay(self) -> float:
        return self.weight_decay if self.adamw_weight_decay is None else self.adamw_weight_decay

    def replace(self, **changes: Any) -> RegMuonOptions:
        """A validated copy with ``changes``; an unknown name raises listing the valid ones."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            valid = ", ".join(f.name for f in dataclasses.fields(self))
            raise TypeError(f"unknown RegMuon option(s) {unknown}; valid: {valid}")
        return dataclasses.replace(self, **changes)

    # -- torch.optim parameter groups --------------------------------------------------------
    def group(self, algorithm: str) -> dict[str, Any]:
        """The option entries of a parameter group of ``algorithm`` (:data:`GROUP_KEYS`)."""
        out = {k: getattr(self, k) for k in MATRIX_KEYS}
        out.update(betas=self.adamw_betas, adamw_eps=self.adamw_eps)
        if algorithm == "adamw":
            out.update(lr=self.adamw_lr, weight_decay=self.adamw_decay)
        return out

    def of_group(self, group: Mapping[str, Any]) -> RegMuonOptions:
        """These options with a group's entries (an AdamW group's ``lr``/``weight_decay`` are
        AdamW's), validated; missing entries keep these values. Validated once per distinct
        entries (every step reads every group: the result is kept, keyed by the entries' values
        and types); a Tensor lr, which a scheduler may change in place, is validated each time.
        """
        get = {k: group[k] for k in GROUP_KEYS if k in group}
        adamw = group.get("algorithm") == "adamw"
        if not any(isinstance(v, Tensor) for v in (*get.values(), self.lr, self.adamw_lr)):
            try:
                key = tuple((k, type(v), v) for k, v in get.items())
                return _of_group_cached((self, adamw, key))
            except TypeError:  # unhashable entries (a list of betas)
                pass
        return self._of_entries(get, adamw)

    def _of_entries(self, get: dict[str, Any], adamw: bool) -> RegMuonOptions:
        get = dict(get)
        betas, adamw_eps = get.pop("betas", self.adamw_betas), get.pop("adamw_eps", self.adamw_eps)
        if adamw:
            return self.replace(adamw_lr=get.get("lr", self.adamw_lr), adamw_betas=betas,
                                adamw_eps=adamw_eps,
                                adamw_weight_decay=get.get("weight_decay", self.adamw_decay))
        return self.replace(**get, adamw_betas=betas, adamw_eps=adamw_eps)  # fmt: skip

    def momentum_dtype_for(self, param_dtype: torch.dtype) -> torch.dtype:
        """The dtype of a parameter's momentum state."""
        return param_dtype if self.momentum_dtype is None else MOMENTUM_DTYPES[self.momentum_dtype]

    def map_key(self) -> tuple[Any, ...]:
        """What the map of a stack depends on (the DTensor path, the kinetic energy)."""
        return (self.potential, self.eps, self.eps_mode, self.tol, self.method)


#: The defaults every entry point uses.
@functools.lru_cache(maxsize=256)
def _of_group_cached(key: tuple[Any, ...]) -> RegMuonOptions:
    base, adamw, items = key
    return base._of_entries({k: v for k, _, v in items}, adamw)


DEFAULTS = RegMuonOptions()

#: The matrices' decoupled decay that ``RegMuon(model)`` sets, by structure, for a model with
#: no normalization, embedding or recurrent layer (:func:`.routing.decay_by_structure`) whose
#: output layer is a softmax head (:func:`.routing.softmax_head`, read from its first
#: gradient); its AdamW part keeps ``DEFAULTS``' decay, 0. Such a network's output scales with
#: the product of its weights' norms, and Muon's fixed-size steps grow them linearly: a softmax
#: loss is lowest at infinite margins, so on small data the margins inflate after the fit and
#: the held-out loss climbs. With decay ``λ`` the spectral norm of each matrix settles near
#: ``ρ(m, n)/λ``. A regressor's loss has a finite optimum that this bound keeps out of reach
#: (it underfits), hence the head test. Chosen on the training benchmark's 14 development
#: tasks (tuning seeds; the three such models there): the smallest worst ratio to the best
#: tuned baseline, 1.13, at 2 (1: 1.67, 1.5: 1.22, 3: 1.19, 4: 2.68; 0, the default before:
#: 7.3); ``docs/benchmark-training.md``.
UNNORMALIZED_DECAY = 2.0

#: The step ``RegMuon(model)`` sets, by structure, for a model with a normalization layer, no
#: embedding and no recurrent layer, whose first matrix layer reads the raw input (a ViT's
#: patch projection, a CNN with batch norm, an MLP with LayerNorm:
#: :func:`.routing.lr_by_structure`) when its output layer is a softmax head (read from its
#: first gradient): the matrices' lr (``DEFAULTS.lr / 4``) and the AdamW part's
#: (``DEFAULTS.adamw_lr / 16``), applied as factors on the groups' lrs so that a scheduler
#: built before the first step keeps its shape. With ``DEFAULTS``' step these classifiers fit
#: their small training sets exactly and the held-out loss climbs (batch-norm CNNs at 11-31x
#: the tuned loss). Chosen on the 10 such classifiers of the training benchmark's rounds 1-8
#: (tuning seeds; an 18-point grid of both lrs and the decay: the smallest worst ratio to the
#: best tuned baseline, 1.70, against 8.54 for ``DEFAULTS``); better on the six of round 9
#: (2.6-6 paired SE) and, its held-out test, on six of round 10's seven (batch-norm CNNs
#: 30.5x -> 1.7x and 11.4x -> 1.7x; iris worse, 0.46x -> 1.75x, 1.2 SE);
#: ``docs/benchmark-training.md``. Under a regression head it lost (round 9: 1.21x -> 1.66x),
#: hence the head test.
NORMALIZED_INPUT_LR = 0.005
NORMALIZED_INPUT_ADAMW_LR = 0.0025

#: The factor ``RegMuon(model)`` puts on its scheduled lrs when a scheduler warms them up (a
#: group whose lr at the first step is below the lr it was built with), for a model with an
#: embedding or recurrent layer (:func:`.routing.lr_by_schedule`). A warm-up is read as the
#: start of a schedule that decays to zero, whose best peak is larger than the best constant
#: lr: the decay removes the noise floor a constant lr must leave. The tuned
#: ``torch.optim.Muon``'s matrix lr on the training benchmark's 16 language and sequence models
#: of rounds 1-11 is 0.02 (5 of 7) under a constant lr and 0.04 (8 of 9) under warm-up and
#: linear decay. Chosen on those nine (tuning seeds; factors 1.5, 2, 3: the smallest worst
#: ratio to the best tuned baseline, 1.230 -> 1.038); on the 37 seen models of other classes
#: trained so, no factor helped (normalized classifiers: mean log ratio 0.54 -> 0.70 at 2).
#: Held out: round 12 (``docs/benchmark-training.md``).
WARMUP_LR_FACTOR = 2.0

#: The cautious decay ``RegMuon(model)`` sets, by structure and schedule, on the matrices of a
#: network with no normalization, embedding or recurrent layer whose output layer is not a
#: softmax head (a regressor: no decay by structure, read from its first gradient) when the
#: matrices' lr at the first step is below the one they were built with (a scheduler's
#: warm-up): with the step ``W ← W − ηρD``, also ``W ← W − ηλ 1[D ⊙ W ≥ 0] ⊙ W`` (``W`` before
#: the step) — decay only on the entries the step moves toward 0, so it never opposes the fit.
#: Chosen after round 18 on
#: the 52 regressors seen trained under warm-up and decay (tuning seeds; the paired rule: the
#: one λ of 0.25-4 worse by 2 paired SE on none of them; mean log ratio to the best tuned
#: baseline 0.224 -> 0.168, better on 46); under a constant lr every λ harmed some (none is
#: set). Held out: round 19, better in the mean on five of the six regressors it changed, worse
#: by 2 paired SE on none (``docs/benchmark-training.md``). A plain decay (rounds 15-18)
#: helped most regressors too and cost the Friedman #3 models, whose target needs large
#: weights, 2-11%.
REGRESSION_CAUTIOUS_DECAY = 0.25

#: The factor ``RegMuon(model)`` puts on round 10's lrs by structure
#: (:data:`NORMALIZED_INPUT_LR`, :data:`NORMALIZED_INPUT_ADAMW_LR`) for a model with an attention
#: layer (a ViT; one with :data:`FEW_TOKENS` or fewer takes :data:`FEW_TOKENS_WARMUP_FACTOR`
#: instead) when a scheduler's warm-up has lowered the matrices' lr at the first step: a ViT
#: trained to the end of a decay takes the larger step (matrices 0.015, AdamW part 0.0075). The
#: tuned ``torch.optim.Muon`` of the ViTs seen puts their matrices at 0.01-0.02 more often than
#: at 0.005. Chosen after round 21 on the 18 ViTs seen (tuning seeds; the paired rule: under a
#: warm-up the one factor of 1.5-4 worse by 2 paired SE on none of the ten, mean log ratio
#: 0.503 -> 0.374; under a constant lr none helped). Held out: round 22, better in the mean on
#: all three ViTs it changed, worse by 2 paired SE on none (``docs/benchmark-training.md``).
ATTENTION_WARMUP_FACTOR = 3.0

#: The decoupled decay ``RegMuon(model)`` gives a ViT's matrices (round 10's class with an
#: attention layer, under a softmax head, no ``weight_decay=`` or ``lr=`` given) under a warm-up
#: (the lr at the step that reads the head below the built one), from the next step on; none under
#: a constant lr. A normalized network gets no decay by structure, and the tuned
#: ``torch.optim.Muon`` decays the matrices of 26 of the 42 ViTs seen. Chosen after round 38 on
#: those 42 (tuning seeds; the paired rule per schedule): under a warm-up decay 1 worse by 2 paired
#: SE on none of 22 (mean log ratio 0.282 -> 0.204, better on 18), under a constant lr every decay
#: of 0.25-1 worse by 2 SE on four or five of 20. Held out: round 39
#: (``docs/benchmark-training.md``).
ATTENTION_WARMUP_DECAY = 1.0

#: A ViT "with few tokens": its first attention layer reads at most this many tokens at the
#: model's first forward (a ViT with 4x4 patches on 8x8 images reads five, one with 2x2 patches
#: seventeen; the benchmark has no ViT in between).
FEW_TOKENS = 8

#: The factors ``RegMuon(model)`` puts on round 10's lrs (:data:`NORMALIZED_INPUT_LR`,
#: :data:`NORMALIZED_INPUT_ADAMW_LR`) for a ViT with :data:`FEW_TOKENS` or fewer, in place of
#: :data:`ATTENTION_WARMUP_FACTOR`: under a warm-up (matrices 0.01, AdamW part 0.005) and under a
#: constant lr (0.0025, 0.00125). Round 22's factor cost the ViTs with 4x4 patches, whose tuned
#: ``torch.optim.Muon`` puts the matrices at 0.0025-0.01. Chosen after round 23 on the ten such
#: ViTs seen (tuning seeds; the paired rule per schedule class: mean log ratio 0.443 -> 0.347
#: under a warm-up, 0.211 -> 0.196 under a constant lr, worse by 2 paired SE on none). Held out:
#: round 24 rejected it (better in the mean on four of six, worse by 2 SE on none); its
#: replication on round 25, with the bar fixed before its runs (over both sets' twelve ViTs,
#: better on nine, worse by 2 SE on none), adopted it (``docs/benchmark-training.md``).
FEW_TOKENS_WARMUP_FACTOR = 2.0
FEW_TOKENS_CONSTANT_FACTOR = 0.5

#: The factor ``RegMuon(model)`` puts on round 10's lrs (:data:`NORMALIZED_INPUT_LR`,
#: :data:`NORMALIZED_INPUT_ADAMW_LR`) for a normalized MLP classifier — round 10's class with
#: neither an attention layer nor a convolution (a LayerNorm MLP on a table or the digits) — under
#: a constant lr (matrices 0.0025, AdamW part 0.00125); none under a warm-up. Round 27's screen, on
#: the twelve such classifiers seen (tuning seeds; the paired rule), found every larger step worse
#: by 2 SE on one to five and picked 0.5 under both schedules; its test on round 27 was better on
#: all four constant-lr MLPs and worse by 3-6 SE on three of the four under a warm-up (rejected).
#: Restricted to a constant lr and tested on round 28's eight new constant-lr MLPs with the bar
#: fixed before their runs (better on six, worse by 2 SE on none): better on seven, worse by 2 SE on
#: none, adopted (``docs/benchmark-training.md``).
NORMALIZED_MLP_CONSTANT_FACTOR = 0.5

#: The decoupled decays ``RegMuon(model)`` gives a batch-norm CNN classifier's matrices (round
#: 10's class with a convolution and no attention layer, under a softmax head, no
#: ``weight_decay=`` given), by the schedule read at the step that reads the head (a constant lr:
#: the lr at that step the built one; else a warm-up): ``(the conv kernels', the other matrices')``
#: — the hidden linear layers — from the next step on. A conv kernel behind batch norm is
#: scale-invariant: decay holds its norm where a fixed-size step turns it by about ``√(2ηλ)``
#: whatever the lr. The linear layer is not: its decay bounds the scale of the features the
#: softmax head reads, as :data:`UNNORMALIZED_DECAY` does for a network without normalization.
#: Round 33 adopted decay 1 on every matrix under a constant lr; round 34's screen (46 batch-norm
#: CNNs seen) found its gain came through the linear layer (the kernels' decay alone worse by 2 SE
#: on 14-17 of 27) and that the kernels' decay is what the narrow warm-up CNNs want, where the
#: linear layer's costs them. Round 35's screen of the two apart (tuning seeds; the paired rule
#: per schedule) picked ``(0, 4)`` under a constant lr (mean log ratio to the best tuned baseline
#: 0.209 -> -0.041, better on 26 of 27) and ``(4, 1)`` under a warm-up (0.433 -> 0.197, better on
#: all 19), each worse by 2 paired SE on none; held out: round 35. Round 37's screen of the
#: kernels' decay above 4 under a warm-up (23 warm-up CNNs seen) picked ``(8, 1)`` (mean log ratio
#: 0.214 -> 0.179, better on 19, worse by 2 SE on none; 32 worse by 2 SE on four); held out:
#: round 37 (``docs/benchmark-training.md``).
NORMALIZED_CNN_DECAYS: dict[str, tuple[float, float]] = {
    "a constant lr": (0.0, 4.0),
    "a warm-up": (8.0, 1.0),
}


def as_float(x: float | Tensor) -> float:
    """A Python float of an option that may be a 0-dim tensor (``lr``)."""
    return float(x.item()) if isinstance(x, Tensor) else float(x)


def is_half(dtype: torch.dtype) -> bool:
    return dtype in (torch.float16, torch.bfloat16)
