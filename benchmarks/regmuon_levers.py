r"""Prototypes of RegMuon levers the core does not have yet, for ``bench_training.py``'s study.

Each is built from RegMuon's public options, its ``adamw=`` predicate and one subclass hook
(``_map_stack``, through which every map call of a step goes); none changes the library.
``docs/benchmark-training.md`` reports what each one did and what the core would need.

- :func:`input_layers`: the layers that read the model's raw input (the first module, in
  registration order, that is an embedding or holds a declared weight matrix, unless it is
  the embedding) — sent to the AdamW part with ``RegMuon(model, adamw=...)``.
- ``eps_adapt``: an ε relative to a *long-horizon* average of the map input's scale instead
  of the current one. Per matrix ``X_t`` (``m x n``, ``r = min(m, n)``),

  .. math::
      v_t = \beta_v v_{t-1} + (1-\beta_v) \|X_t\|_F^2 / r, \qquad
      \varepsilon_t = c \sqrt{v_t / (1 - \beta_v^t)},

  so while the scale holds the update is RegMuon's with relative ε ≈ ``c``, and as the
  signal fades (``‖X_t‖ ≪ √v_t``) the step shrinks like ``X_t / ε_t`` (heavy ball) instead
  of keeping Muon's size. With ``"peak": True`` the average is replaced by the largest
  ``‖X_s‖_F^2 / r`` so far (``beta`` unused): ε never falls with the signal, so a step that has
  faded to a fraction of its peak is shrunk for good, as a fit's gradient vanishes.
- ``cautious_wd``: decoupled decay applied only where the step already shrinks the weight,
  ``W ← W − η(u + λ 1[u ⊙ W ≥ 0] ⊙ W)`` (cautious weight decay), on both parts.
- ``input_rho``: the shape factor of the input layer (:func:`input_layers`). Under
  ``original`` a first ``Linear(4, 64)`` gets ρ = √(64/4) = 4 times a hidden layer's step;
  ``"one"`` maps it with ρ = 1, ``"sqrt"`` with √ρ, ``"one_regression"`` with ρ = 1 only when
  the output layer's first gradient is not a softmax head's
  (:func:`muonflow.optim.routing.softmax_head`, as the decay by structure reads it).
- ``guard``: an energy guard. H = f + K falls along the damped flow; a step along which the
  loss rose to first order, ``⟨∇f(W_t), W_t − W_{t−1}⟩ > 0``, overshot: that matrix's
  momentum is reset before its next step (``guard=True``), or, graded (``guard=κ``), damped
  by ``max(0, 1 − κ c)`` with ``c`` the cosine of the two (extra friction while the
  potential rises).
- ``warmup_lr``: a larger step under a schedule that warms up. The best tuned peak lr of
  ``torch.optim.Muon`` under warm-up and decay to zero is about twice its best constant lr on
  the benchmark's models (a decay to zero removes the noise floor a constant lr must leave), so
  a group whose lr, at the optimizer's first step, is below the lr it was built with (a
  scheduler's warm-up has scaled it) steps with ``factor`` times its scheduled lr from then on
  (the groups' ``lr`` and the scheduler stay as they are). Decided once, at the first step.
  It replaces ``RegMuon(model)``'s own lr by schedule (:func:`muonflow.optim.lr_by_schedule`,
  round 12's adoption of this lever at factor 2 for models with an embedding or recurrent
  layer), so ``warmup_lr = 1`` is ``RegMuon(model)`` as it was before it.
- ``regression_decay``: decay on a regressor's matrices. ``RegMuon(model)``'s decay by
  structure (:func:`muonflow.optim.decay_by_structure`: a network with no normalization,
  embedding or recurrent layer) gives the matrices :data:`muonflow.optim.UNNORMALIZED_DECAY`
  under a softmax head and 0 under another head, read from the output layer's first gradient;
  with ``regression_decay = λ`` the other head gets λ instead, everything else as it is (the
  input layer still at ρ = 1). Decoupled decay bounds ``‖W‖_op ≲ ρ/λ`` (the decay's evidence in
  ``docs/benchmark-training.md``), a bound on the network's Lipschitz constant: a regressor
  with noise inputs or a noisy target fits less of its noise, one whose target needs large
  weights fits less of it.
- ``regression_cautious``: the same decision, with **cautious** decay λ on the matrices instead:
  after ``RegMuon(model)``'s step ``W ← W − ηu`` (no decay under such a head),
  ``W ← W − ηλ 1[u ⊙ W ≥ 0] ⊙ W`` on every matrix that had a gradient — the decay only where
  the step already moves the entry toward 0, so it never opposes the fit. Applied from the step
  at which the decision is made (the first with the output layer's gradient), as the plain
  decay is.
- ``regression_noise``: a step that reads the gradient's noise, under the same decision (a head
  that is not a softmax one in a network without normalization, embedding or recurrent layer).
  Muon's update keeps its size whatever share of the gradient is minibatch noise, so on a small
  noisy table (the diabetes MLPs: 265 rows, half the target's variance noise) the weights keep
  walking once the signal is fitted. Per parameter (both parts), from its raw gradients
  :math:`g_t`,

  .. math::
      m_t = \beta m_{t-1} + (1-\beta) g_t, \qquad v_t = \beta v_{t-1} + (1-\beta)\|g_t\|_F^2,
      \qquad \beta = 0.9,

  with bias correction :math:`\hat m_t = m_t/(1-\beta^t)`, :math:`\hat v_t = v_t/(1-\beta^t)`.
  If :math:`g_t = G + n_t` with independent noise,
  :math:`\mathbb{E}\|\hat m_t\|^2 = \|G\|^2 + \kappa_t \operatorname{tr}\Sigma` and
  :math:`\mathbb{E}\hat v_t = \|G\|^2 + \operatorname{tr}\Sigma` with
  :math:`\kappa_t = (1-\beta)(1+\beta^t) / ((1+\beta)(1-\beta^t))`, so the signal's share
  of the gradient's energy is estimated by

  .. math::
      \varphi_t = \operatorname{clip}\Big(\frac{\|\hat m_t\|^2 - \kappa_t \hat v_t}
      {(1-\kappa_t)\hat v_t}, 0, 1\Big),

  and the parameter's step (everything the optimizer did to it this step, decay included) is
  scaled by :math:`\varphi_t^a`, ``a = regression_noise`` (1 at the first step, where
  :math:`\kappa_1 = 1`). A fitted signal under a noise floor shrinks the step toward 0; a clean
  target keeps it.
- ``softmax_noise``: the same scaled step, for the class of round 10's lrs by structure instead
  (a network with a normalization layer, no embedding or recurrent layer, whose first matrix
  layer reads the raw input, under a softmax head: where ``RegMuon(model)`` decides its smaller
  lrs at the first step). Such a classifier fits its small training set exactly and its
  held-out loss climbs after the fit, its step keeping Muon's size on a gradient that has become
  a few examples' noise.
- ``attention_lr``: a larger step for a ViT. Where ``RegMuon(model)`` decides round 10's smaller
  lrs at the first step (:func:`muonflow.optim.lr_by_structure` under a softmax head) and the
  model has an attention layer (a module whose class name contains ``"Attention"``), the decided
  factors on the groups' lrs are multiplied by ``f`` (``f = 2``: matrices 0.01, AdamW part
  0.005, from the deciding step on). Adopted after round 22 at ``f = 3`` under a warm-up
  (``muonflow.optim.ATTENTION_WARMUP_FACTOR``); the lever replaces the library's rule, so
  ``attention_lr = 1`` is ``RegMuon(model)`` as it was before it.
- ``attention_split = [a, b]``: a ViT's two lrs apart. Where ``attention_lr`` would apply, the
  matrices' decided factor is multiplied by ``a`` and the AdamW part's by ``b`` (``[2, 8]``:
  matrices 0.01, AdamW part 0.02), under any schedule; it replaces the library's rule, as
  ``attention_lr`` does (``[3, 3]`` under a warm-up and ``[1, 1]`` under a constant lr are
  ``RegMuon(model)`` today).
- ``few_tokens = g``: a ViT with few tokens apart. Where ``attention_lr`` would apply and the
  model's first attention layer reads at most :data:`FEW_TOKENS` tokens at the model's first
  forward (``muonflow.optim.FEW_TOKENS``, read as ``RegMuon(model)`` reads it; a ViT with 4x4
  patches on 8x8 images: four and a class token), round 10's decided
  factors times ``g`` in place of round 22's factor, under either schedule (``g = 1``: round
  10's step); a ViT with more tokens keeps ``RegMuon(model)``'s decision. Adopted after round 25
  at ``g = 2`` under a warm-up and ``0.5`` under a constant lr
  (``muonflow.optim.FEW_TOKENS_WARMUP_FACTOR``, ``FEW_TOKENS_CONSTANT_FACTOR``); the lever
  replaces the library's factor for such a ViT.
- ``few_rows = f``: a regressor reading a small table. The layer that reads the raw input
  (:func:`muonflow.optim.input_layer`) is watched by a forward pre-hook while gradients are on
  (training forwards): it counts the distinct rows it reads (a row: one sample's input, bytes
  equal) and the rows read in all. The table is **small** once the rows read reach twice the
  distinct ones (each row read twice on average) with at most :data:`FEW_ROWS` distinct, and
  large as soon as more than :data:`FEW_ROWS` are distinct; the hook is removed when it has
  decided. Minibatches drawn with replacement from ``N`` rows reach it at about ``1.6 N`` rows
  read with ``0.8 N`` distinct, so the bound holds for tables up to about 1.25x
  :data:`FEW_ROWS`; drawn by epochs, after two. From the step after a small table is found, a
  model whose output layer's first gradient is not a softmax head's and that has no embedding
  or recurrent layer steps with its groups' lrs times ``f`` (both parts, their decay with them);
  every other model as ``RegMuon(model)``. A diabetes MLP reads 265 rows, a Friedman one 2000.
  Rejected by round 26's test (``f`` = 1/16 under a warm-up, 1/32 under a constant lr: the three
  held-out diabetes MLPs within 1% of the best tuned loss, four Friedman MLPs on 265-900 rows
  2-4x it).
- ``mlp_split = [a, b]``: a normalized MLP classifier's two lrs. Where ``RegMuon(model)``
  decides round 10's smaller lrs at the first step (a normalized network reading raw inputs,
  under a softmax head) and the model has neither an attention layer nor a convolution (a
  LayerNorm MLP on a table or the digits), the matrices' decided factor is multiplied by ``a`` and
  the AdamW part's by ``b`` (``[8, 4]``: matrices 0.04, AdamW part 0.01); ViTs and CNNs as
  ``RegMuon(model)``. Adopted after round 28 at ``[0.5, 0.5]`` under a constant lr only
  (``muonflow.optim.NORMALIZED_MLP_CONSTANT_FACTOR``); the lever replaces the library's factor,
  so ``[1, 1]`` is round 10's step.
- ``norm_part_decay = d``: decay on a normalized classifier's AdamW part. Where
  ``RegMuon(model)`` decides round 10's smaller lrs at the first step (a normalized network
  reading raw inputs, under a softmax head) and the model has no attention layer (a LayerNorm MLP
  or a batch-norm CNN), the AdamW part's groups (the output layer, the norms' gains, the biases)
  get decoupled decay ``d`` (``p ← p − η d p``, ``η`` the part's decided lr) from the step after
  the deciding one, under any schedule; ViTs, regressors and every other model as
  ``RegMuon(model)``. With normalization before it the output layer's weights set the logits'
  scale, and on a fitted training set Adam's step keeps its size: the margins grow and the
  held-out cross-entropy climbs. The decay bounds that scale (``‖W‖ ≲ 1/d`` per entry).
  Rejected at round 29's screen: under a constant lr decay 1 was better on 19 of 21 seen and worse
  by 13 SE on the narrow digits MLP, still fitting at its last step.
- ``fit_part_decay = [d, c]``: the same decay, switched on once the training set is fitted. For
  the same models, from the step at which round 10's lrs are decided, the optimizer averages the
  squared norm of the output layer's weight gradient, ``v_t = β v_{t-1} + (1-β)‖G_t‖_F^2``
  (β = :data:`FIT_BETA`, bias-corrected ``v̂_t``), and keeps its peak; once
  ``√(v̂_t / peak) ≤ c`` (the head's gradient has fallen to ``c`` of its largest: a softmax head's
  gradient is ``p − y``, which vanishes as every training example is fitted) the AdamW part's
  groups get decoupled decay ``d`` from the next step on, for good. A model still fitting keeps
  ``RegMuon(model)``'s step. Rejected by round 29's test (the iris and wine MLPs worse by 4-6 SE);
  adopted after round 30 at ``[2, 0.1]`` for a batch-norm CNN only, and withdrawn after round 31
  (on CNNs reading other images it fired on two of eight and lost by 2.4 SE on the near-separable
  strokes, with no win by 2 SE: its bar).
- ``cnn_decay = d``: decay on a batch-norm CNN's matrices. Where ``RegMuon(model)`` decides round
  10's smaller lrs at the first step (a normalized network reading raw inputs, under a softmax
  head) and the model has a convolution and no attention layer, the RegMuon groups (the conv
  kernels, the hidden linear layers) get decoupled decay ``d`` (``W ← (1 − η d) W``, ``η`` the
  matrices' decided lr) from the step after the deciding one, under any schedule; LayerNorm MLPs,
  ViTs and every other model as ``RegMuon(model)``. A conv kernel followed by batch norm is
  scale-invariant: the loss does not see its norm, and a fixed-size step grows that norm, which
  shrinks the step's effect on the kernel's direction (its effective lr falls as ``1/‖W‖²``).
  Decay holds the norm at an equilibrium. The tuned ``torch.optim.Muon`` decays the matrices of
  15 of the 19 batch-norm CNNs on the digits by 2 (its decay grid 0-2), and round 11's screen,
  where matrix decay ruined every ViT, found decay 0.5 better on all five batch-norm CNNs then seen.
  Rejected by round 32's test at 1 under a constant lr and 0.25 under a warm-up (a warm-up CNN
  worse by 3.3 SE); adopted after round 33 at 1 under a constant lr only
  (replaced after round 35 by ``muonflow.optim.NORMALIZED_CNN_DECAYS``). The lever replaces the
  library's rule.
- ``conv_decay = d``: the same decay on a batch-norm CNN's conv kernels only. For the same models,
  from the step after the deciding one and under any schedule, each conv kernel (the weight of a
  convolution, a RegMuon matrix) gets ``W ← (1 − η d) W`` before its step (``η`` the matrices'
  decided lr, the order of the core's decoupled decay); the hidden linear layers and the AdamW
  part get none, and round 33's rule is off (the lever replaces it). Only a kernel followed by
  batch norm is scale-invariant; the hidden linear layer is not, and its decay bounds the
  function's scale. Round 32's screen found every decay of the whole set of matrices worse by 2
  SE on a narrow warm-up CNN (hidden width 32, batch 32), larger decays on more of them; with a
  scale-invariant kernel the step's equilibrium angle depends on ``η d`` alone (``√(2 η d)``
  per step), so the kernels can take the tuned ``torch.optim.Muon``'s ``η λ`` (0.01-0.02 on most
  batch-norm CNNs of the digits) without the linear layer's bound. Rejected at round 34's screen:
  under a constant lr every decay was worse by 2 SE on 14-17 of 27 CNNs (round 33's decay of
  every matrix gains through the linear layer), under a warm-up each on one to four of 19.
- ``cnn_decays = [c, l]``: the two parts of that decay apart. For the same models, from the step
  after the deciding one and under any schedule, ``W ← (1 − η c) W`` on each conv kernel and
  ``W ← (1 − η l) W`` on each other RegMuon matrix (the hidden linear layers) before its step
  (round 33's rule is ``[1, 1]`` under a constant lr; the lever replaces the library's rule).
  Round 35's screen picked ``[0, 4]`` under a constant lr and ``[4, 1]`` under a warm-up, and its
  held-out test adopted them (``muonflow.optim.NORMALIZED_CNN_DECAYS``, the same steps bit for
  bit).
- ``vit_decay = d``: decay on a ViT's matrices. Where ``RegMuon(model)`` decides round 10's
  smaller lrs at the first step (a normalized network reading raw inputs, under a softmax head)
  and the model has an attention layer, the RegMuon groups get decoupled decay ``d`` (``W ← (1 −
  η d) W``, ``η`` the matrices' lr as the core's step reads it, round 22's and round 25's factors
  included) from the step after the deciding one, under any schedule; every other model as
  ``RegMuon(model)``. A ViT gets no decay today (the decay by structure gives a normalized network
  none); the tuned ``torch.optim.Muon`` decays the matrices of 26 of the 42 ViTs seen through
  round 25 (by 0.1 on ten, 0.5 on nine, 2 on seven), and round 9's decay 2, at round 7's larger
  step, ruined every ViT.
- ``cnn_split = [a, b]``: a batch-norm CNN's two lrs. Where ``RegMuon(model)`` decides round 10's
  smaller lrs at the first step and the model has a convolution and no attention layer, the
  matrices' factor times ``a`` and the AdamW part's times ``b`` (the decays of rounds 33-37 follow
  the matrices' lr: ``W ← (1 − η d) W``); every other model as ``RegMuon(model)``. The tuned
  ``torch.optim.Muon`` of the 35 warm-up batch-norm CNNs seen through round 40 takes a matrix lr
  at least twice round 10's on 15 and an AdamW part at least twice round 10's on 23 (of the 31
  constant-lr ones: 7 and 18); round 12's screen found twice both lrs worse on every batch-norm
  CNN, before any of them decayed.
- ``mlp_beta2 = b``: the AdamW part's β2 (the output layer, the norms' gains, the biases) of a
  normalized MLP — a model that ``muonflow.optim.lr_by_structure`` gives round 10's lrs, with
  neither an attention layer nor a convolution — read from the model at construction; every other
  model as ``RegMuon(model)``. Today's part averages its squared gradient over about 20 steps (β2
  0.95), so its step keeps its size as the gradient fades after the training set is fitted; with
  a longer average (torch's AdamW default 0.999, ``torch.optim.Muon``'s documented defaults' part)
  the step falls with the gradient: a step that reads the signal fading, on the part where the
  margins keep growing (round 29). The LayerNorm MLP classifiers on the breast-cancer table and
  the digits are eleven of the 32 losses to ``torch.optim.Muon``'s documented defaults.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from muonflow.optim import (
    DEFAULTS,
    FEW_TOKENS,
    RegMuon,
    RegMuonOptions,
    input_layer,
    kernel,
    lr_by_structure,
)
from muonflow.optim import optimizer as optimizer_module
from muonflow.optim.routing import _structural_kind, attention_layer, convolution_layer

__all__ = ["LEVERS", "LeverRegMuon", "RowCount", "build_lever_regmuon", "input_layers"]

#: The prototype levers :func:`build_lever_regmuon` accepts, with the type of their setting.
LEVERS = {"input_adamw": bool, "eps_adapt": dict, "cautious_wd": float, "guard": bool | float,
          "input_rho": str, "warmup_lr": float, "regression_decay": float,
          "regression_cautious": float, "regression_noise": float, "softmax_noise": float,
          "attention_lr": float, "attention_split": list, "few_tokens": float,
          "few_rows": float, "mlp_split": list, "norm_part_decay": float,
          "fit_part_decay": list, "cnn_decay": float, "conv_decay": float,
          "cnn_decays": list, "vit_decay": float, "cnn_split": list, "mlp_beta2": float}
#: ``regression_noise``'s averaging factor β (a window of about ten steps).
NOISE_BETA = 0.9
#: ``few_rows``'s bound: a table with at most this many distinct rows is small. Fixed with round
#: 26's set, before the ``fewrows`` screen: the regressors seen read 265 rows (the diabetes
#: table's fitting rows) or 2000 (every Friedman problem's).
FEW_ROWS = 1000
#: ``fit_part_decay``'s averaging factor β on the head gradient's squared norm (about ten steps).
FIT_BETA = 0.9
#: ``input_rho``'s settings: the input layer's shape factor as a function of ``original``'s ρ.
INPUT_RHO: dict[str, Callable[[float], float]] = {
    "one": lambda rho: 1.0, "sqrt": math.sqrt, "one_regression": lambda rho: 1.0,
}


def input_layers(model: nn.Module) -> list[str]:
    """Names of the modules that read ``model``'s raw input (``[]`` if an embedding does):
    :func:`muonflow.optim.input_layer`, as a list."""
    name = input_layer(model)
    return [] if name is None else [name]


class RowCount:
    """``few_rows``: the distinct rows ``module`` reads in its training forwards (those with
    gradients on), until it has decided whether the table is small (:attr:`small`, with
    :attr:`table` its distinct rows; ``None`` until then). The module docstring's rule."""

    def __init__(self, module: nn.Module, bound: int = FEW_ROWS) -> None:
        self.bound = bound
        self.rows: set[bytes] = set()
        self.read = 0
        self.small: bool | None = None
        self.table: int | None = None
        self._handle = module.register_forward_pre_hook(self._count)

    def _count(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not torch.is_grad_enabled() or not args or not isinstance(args[0], Tensor):
            return
        x = args[0].detach()
        flat = x.reshape(x.shape[0] if x.dim() > 1 else 1, -1).cpu().numpy()
        self.rows.update(row.tobytes() for row in flat)
        self.read += len(flat)
        if len(self.rows) > self.bound or self.read >= 2 * len(self.rows):
            self.small, self.table = len(self.rows) <= self.bound, len(self.rows)
            self.rows = set()
            self._handle.remove()


class LeverRegMuon(RegMuon):
    """``RegMuon`` with the prototype levers ``eps_adapt``, ``cautious_wd``, ``guard``,
    ``input_rho`` and ``warmup_lr``.

    ``eps_adapt = {"scale": c, "beta": β_v}`` replaces the map's ε by the long-horizon rule of
    the module docstring (``eps``/``eps_mode`` are ignored); ``cautious_wd = λ`` applies the
    cautious decay (the groups' own ``weight_decay`` must be 0); ``guard`` resets (``True``) or
    damps (a float κ) a matrix's momentum after an uphill step; ``input_rho`` (a key of
    :data:`INPUT_RHO`) changes the input layer's shape factor in the step's bucket plan;
    ``warmup_lr = f`` steps each group that a warm-up has scaled at the first step with ``f``
    times its scheduled lr (float lrs only); ``regression_decay = λ`` decays the matrices of a
    network the decay by structure decides under a head that is not a softmax one by λ;
    ``regression_cautious = λ`` decays them cautiously instead; ``regression_noise = a`` scales
    such a network's every step by the signal's share of its gradient to the power ``a``, and
    ``softmax_noise = a`` the steps of a normalized classifier reading raw inputs, and
    ``attention_lr = f`` a ViT's round-10 lrs times ``f``, ``attention_split = [a, b]`` its
    matrices' times ``a`` and its AdamW part's times ``b``, ``few_tokens = g`` a ViT with few
    tokens' times ``g``, ``few_rows = f`` a regressor reading a small table's steps times ``f``,
    ``cnn_split = [a, b]`` a batch-norm CNN's round-10 matrix lr times ``a`` and AdamW part times
    ``b`` (the module docstring).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        eps_adapt: dict[str, float] | None = None,
        cautious_wd: float = 0.0,
        guard: bool | float = False,
        input_rho: str | None = None,
        warmup_lr: float | None = None,
        regression_decay: float = 0.0,
        regression_cautious: float = 0.0,
        regression_noise: float = 0.0,
        softmax_noise: float = 0.0,
        attention_lr: float | None = None,
        attention_split: list[float] | None = None,
        few_tokens: float | None = None,
        few_rows: float | None = None,
        mlp_split: list[float] | None = None,
        norm_part_decay: float = 0.0,
        fit_part_decay: list[float] | None = None,
        cnn_decay: float | None = None,
        conv_decay: float | None = None,
        cnn_decays: list[float] | None = None,
        vit_decay: float = 0.0,
        cnn_split: list[float] | None = None,
        **options: Any,
    ) -> None:
        if cautious_wd and options.get("weight_decay", 0.0):
            raise ValueError("cautious_wd replaces weight_decay: pass one of them")
        if input_rho is not None and input_rho not in INPUT_RHO:
            raise ValueError(f"input_rho must be one of {sorted(INPUT_RHO)}, got {input_rho!r}")
        if warmup_lr is not None and not (math.isfinite(warmup_lr) and warmup_lr > 0):
            raise ValueError(f"warmup_lr must be a finite factor > 0, got {warmup_lr!r}")
        if not (math.isfinite(regression_decay) and regression_decay >= 0):
            raise ValueError(f"regression_decay must be a finite decay >= 0, "
                             f"got {regression_decay!r}")  # fmt: skip
        if not (math.isfinite(regression_cautious) and regression_cautious >= 0):
            raise ValueError(f"regression_cautious must be a finite decay >= 0, "
                             f"got {regression_cautious!r}")  # fmt: skip
        for name, value in (("regression_noise", regression_noise),
                            ("softmax_noise", softmax_noise)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite exponent >= 0, got {value!r}")
        if attention_lr is not None and not (math.isfinite(attention_lr) and attention_lr > 0):
            raise ValueError(f"attention_lr must be a finite factor > 0, got {attention_lr!r}")
        for name, pair in (("attention_split", attention_split), ("mlp_split", mlp_split),
                           ("cnn_split", cnn_split)):
            if pair is not None and not (
                    len(pair) == 2
                    and all(isinstance(f, int | float) and math.isfinite(f) and f > 0
                            for f in pair)):  # fmt: skip
                raise ValueError(f"{name} must be two finite factors > 0 (the matrices', the "
                                 f"AdamW part's), got {pair!r}")  # fmt: skip
        if few_tokens is not None and not (math.isfinite(few_tokens) and few_tokens > 0):
            raise ValueError(f"few_tokens must be a finite factor > 0, got {few_tokens!r}")
        if few_rows is not None and not (math.isfinite(few_rows) and few_rows > 0):
            raise ValueError(f"few_rows must be a finite factor > 0, got {few_rows!r}")
        if not (math.isfinite(norm_part_decay) and norm_part_decay >= 0):
            raise ValueError(f"norm_part_decay must be a finite decay >= 0, "
                             f"got {norm_part_decay!r}")  # fmt: skip
        if fit_part_decay is not None and not (
                len(fit_part_decay) == 2
                and all(isinstance(x, int | float) and math.isfinite(x) for x in fit_part_decay)
                and fit_part_decay[0] >= 0 and 0 < fit_part_decay[1] <= 1):  # fmt: skip
            raise ValueError(f"fit_part_decay must be [d, c], a finite decay d >= 0 and a "
                             f"threshold 0 < c <= 1, got {fit_part_decay!r}")  # fmt: skip
        if cnn_decay is not None and not (math.isfinite(cnn_decay) and cnn_decay >= 0):
            raise ValueError(f"cnn_decay must be a finite decay >= 0, got {cnn_decay!r}")
        if conv_decay is not None and not (math.isfinite(conv_decay) and conv_decay >= 0):
            raise ValueError(f"conv_decay must be a finite decay >= 0, got {conv_decay!r}")
        if cnn_decays is not None and not (
                len(cnn_decays) == 2
                and all(isinstance(x, int | float) and math.isfinite(x) and x >= 0
                        for x in cnn_decays)):  # fmt: skip
            raise ValueError(f"cnn_decays must be [c, l], two finite decays >= 0 (the conv "
                             f"kernels', the other matrices'), got {cnn_decays!r}")  # fmt: skip
        if not (math.isfinite(vit_decay) and vit_decay >= 0):
            raise ValueError(f"vit_decay must be a finite decay >= 0, got {vit_decay!r}")
        if sum(x is not None for x in (cnn_decay, conv_decay, cnn_decays)) > 1:
            raise ValueError("cnn_decay, conv_decay and cnn_decays are decays of the same "
                             "kernels: pass one of them")  # fmt: skip
        if norm_part_decay and fit_part_decay is not None:
            raise ValueError("norm_part_decay and fit_part_decay are two decays of the same "
                             "part: pass one of them")  # fmt: skip
        if sum(x is not None for x in (attention_lr, attention_split, few_tokens)) > 1:
            raise ValueError("attention_lr, attention_split and few_tokens are factors on the "
                             "same lrs: pass one of them")  # fmt: skip
        if regression_decay and regression_cautious:
            raise ValueError("regression_decay and regression_cautious are two decays of the "
                             "same matrices: pass one of them")  # fmt: skip
        super().__init__(model, **options)
        if regression_decay or regression_cautious:  # replaces RegMuon(model)'s own (round 19)
            self._cautious_pending = None
        self.regression_decay = regression_decay
        self.regression_cautious = regression_cautious
        self.regression_noise = regression_noise
        self.softmax_noise = softmax_noise
        self.attention_lr = attention_lr
        self.attention_split = None if attention_split is None else [*map(float, attention_split)]
        if attention_lr is not None or attention_split is not None:  # replace round 22's factor
            self._attention_pending = None
        self._attention = any("attention" in type(m).__name__.lower() for m in model.modules())
        self.few_tokens = few_tokens  # on the tokens RegMuon(model) reads (_attention_tokens)
        self.mlp_split = None if mlp_split is None else [*map(float, mlp_split)]
        if mlp_split is not None:  # replaces round 28's factor
            self._mlp_pending = None
        self._mlp = not self._attention and convolution_layer(model) is None
        self.norm_part_decay = norm_part_decay
        self.fit_part_decay = None if fit_part_decay is None else [*map(float, fit_part_decay)]
        self.cnn_decay = cnn_decay
        if cnn_decay is not None:  # replaces the library's rule (0: none)
            self._cnn_pending = None
        self._cnn = not self._attention and convolution_layer(model) is not None
        self.conv_decay = conv_decay
        self.cnn_decays = None if cnn_decays is None else [*map(float, cnn_decays)]
        if conv_decay is not None or cnn_decays is not None:  # replace the library's rule
            self._cnn_pending = None
        self._kernels = [m.weight for m in model.modules()
                         if isinstance(m, nn.modules.conv._ConvNd)]  # fmt: skip
        self.vit_decay = vit_decay
        self.cnn_split = None if cnn_split is None else [*map(float, cnn_split)]
        self._conv_on = False  # decided: the matrices decay by kind from the next step on
        self._class = False  # round 10's lrs decided, no attention layer: the decays' models
        self._fit: tuple[float, float, int] | None = None  # (v, peak, t) of the head's gradient
        self._fitted = False
        self._noise: dict[Tensor, tuple[Tensor, Tensor, int]] = {}  # p -> (m, v, t)
        self._decision: tuple[float, str, bool] | None = None  # the last _decide_decay's
        self._regressor = False  # decided at the first step: a head that is not a softmax one
        self.warmup_lr = warmup_lr
        if warmup_lr is not None:  # replaces RegMuon(model)'s own lr by schedule (round 12)
            self._warmup_pending = None
        self._built_lrs = [g["lr"] for g in self.param_groups]
        self._warmed: list[bool] | None = None  # per group, decided at the first step
        self.eps_adapt = eps_adapt
        self.cautious_wd = cautious_wd
        self.guard = guard
        self.input_rho = input_rho
        modules = dict(model.named_modules())
        mapped = {id(p) for g in self.param_groups if g["algorithm"] == "regmuon"
                  for p in g["params"]}  # fmt: skip
        self._inputs = {id(p) for name in input_layers(model)
                        for p in modules[name].parameters() if id(p) in mapped}  # fmt: skip
        self._input_on: bool | None = None if input_rho == "one_regression" else True
        self._softmax: bool | None = None  # the output layer's first gradient a softmax head's
        self.few_rows = few_rows
        plain = not any(_structural_kind(m) in ("embedding", "recurrent")
                        for m in model.modules())  # fmt: skip
        reads = input_layer(model)
        self._rows = (RowCount(modules[reads]) if few_rows is not None and plain
                      and reads is not None else None)  # fmt: skip
        self._scale: dict[int, tuple[Tensor, int]] = {}  # map call index -> (v, t)
        self._calls = 0
        self._last: dict[Tensor, Tensor] = {}  # guard: the weights before the last step

    def _decide_decay(self) -> tuple[float, str, bool] | None:
        """RegMuon(model)'s decision (λ, why, regression), with λ = ``regression_decay`` where
        it gives 0 under a head that is not a softmax one (the input layer stays at ρ = 1)."""
        decided = super()._decide_decay()
        if decided is not None and decided[2] and self.regression_decay:
            decided = (self.regression_decay, f"{self.regression_decay:g} (the "
                       f"regression_decay lever; {decided[1]})", True)  # fmt: skip
        self._decision = decided
        return decided

    def _decide_scale(self) -> tuple[dict[int, float], str] | None:
        """RegMuon(model)'s decision on round 10's lrs, in a model with an attention layer its
        factors times ``attention_lr``, or the matrices' times ``a`` and the AdamW part's times
        ``b`` of ``attention_split``; with ``few_tokens`` and at most :data:`FEW_TOKENS` tokens,
        round 10's factors times ``few_tokens``."""
        tokens = self._attention_tokens  # read by RegMuon(model) at the first forward
        few = self.few_tokens is not None and tokens is not None and tokens <= FEW_TOKENS
        if few:  # round 22's factor replaced
            self._attention_pending = None
        decided = super()._decide_scale()
        if decided is not None and decided[0] and self._cnn and self.cnn_split is not None:
            a, b = self.cnn_split
            factors = {gi: f * (a if self.param_groups[gi]["algorithm"] == "regmuon" else b)
                       for gi, f in decided[0].items()}  # fmt: skip
            return factors, f"{decided[1]}; matrices x {a:g}, AdamW part x {b:g} (cnn_split)"
        if decided is not None and decided[0] and self._mlp and self.mlp_split is not None:
            a, b = self.mlp_split
            factors = {gi: f * (a if self.param_groups[gi]["algorithm"] == "regmuon" else b)
                       for gi, f in decided[0].items()}  # fmt: skip
            return factors, f"{decided[1]}; matrices x {a:g}, AdamW part x {b:g} (mlp_split)"
        if decided is None or not decided[0] or not self._attention:
            return decided
        if few:
            assert self.few_tokens is not None
            factors = {gi: f * self.few_tokens for gi, f in decided[0].items()}
            return factors, (f"{decided[1]}; x {self.few_tokens:g} ({tokens} tokens: the "
                             "few_tokens lever)")  # fmt: skip
        if self.attention_split is not None:
            a, b = self.attention_split
            factors = {gi: f * (a if self.param_groups[gi]["algorithm"] == "regmuon" else b)
                       for gi, f in decided[0].items()}  # fmt: skip
            return factors, f"{decided[1]}; matrices x {a:g}, AdamW part x {b:g} (attention_split)"
        if self.attention_lr is None:
            return decided
        factors = {gi: f * self.attention_lr for gi, f in decided[0].items()}
        return factors, f"{decided[1]}; x {self.attention_lr:g} (the attention_lr lever)"

    def _adaptive_map(self, X: Tensor, o: RegMuonOptions) -> Tensor:
        """The map with the long-horizon (or the peak's) ε, per map call of the step, in order."""
        assert self.eps_adapt is not None
        c = self.eps_adapt["scale"]
        ms = X.float().square().sum((-2, -1)) / min(X.shape[-2:])  # mean squared singular value
        v, t = self._scale.get(self._calls, (torch.zeros_like(ms), 0))
        if self.eps_adapt.get("peak"):
            v, t = torch.maximum(v, ms), t + 1
            eps = c * v.sqrt()
        else:
            beta = self.eps_adapt["beta"]
            v, t = beta * v + (1 - beta) * ms, t + 1
            eps = c * (v / (1 - beta**t)).sqrt()
        self._scale[self._calls] = (v, t)
        self._calls += 1
        eps = torch.where(eps > 0, eps, torch.ones_like(eps))  # a zero stack maps to zero anyway
        return o.kinetic.at(eps).grad(X, method=o.method, tol=o.tol)

    def _step_with_adaptive_eps(self) -> None:
        """RegMuon's step with :func:`muonflow.optim.kernel.mirror_map`, the step's one
        interception point, replaced by :meth:`_adaptive_map` while it runs."""
        real = kernel.mirror_map

        def adaptive(X: Tensor, o: RegMuonOptions = DEFAULTS, /, **overrides: Any) -> Tensor:
            return self._adaptive_map(X, o.replace(**overrides) if overrides else o)

        kernel.mirror_map = adaptive
        try:
            super().step()
        finally:
            kernel.mirror_map = real

    def _softmax_head(self) -> bool | None:
        """Whether the output layer's first gradient is a softmax head's, read as
        ``RegMuon(model)`` reads it (no output layer: not one); ``None`` while it has none."""
        if self._softmax is None and (head := self._head()) is not None:
            self._softmax = head is not optimizer_module.NO_HEAD and head[0]
        return self._softmax

    def _input_rho_on(self) -> bool | None:
        """Whether ``input_rho`` applies: always, or (``"one_regression"``) when the output
        layer's first gradient is not a softmax head's; ``None`` while it has no gradient."""
        if self._input_on is None and (softmax := self._softmax_head()) is not None:
            self._input_on = not softmax
        return self._input_on

    def _few_rows_factor(self) -> float:
        """``few_rows``' factor on this step's lrs: ``f`` once a small table is found under a
        head that is not a softmax one, else 1."""
        if self._rows is None or not self._rows.small or self._softmax_head() is not False:
            return 1.0
        assert self.few_rows is not None
        return self.few_rows

    def _step_with_input_rho(self, step: Callable[[], None]) -> None:
        """``step`` with the bucket plan's ρ of the input layer's matrices changed (they must
        form their own buckets: their shapes are their own in every model the study runs)."""
        real = optimizer_module.build_plan
        scale = INPUT_RHO[self.input_rho or "one"]
        inputs = self._inputs

        def plan(params: Any, *args: Any, **kwargs: Any) -> Any:
            out = []
            for b in real(params, *args, **kwargs):
                mine = [id(params[i]) in inputs for i in b.members]
                if any(mine) and not all(mine):
                    raise ValueError("input_rho: the input layer shares a bucket with other "
                                     "matrices of its shape")  # fmt: skip
                out.append(dataclasses.replace(b, rho=scale(b.rho)) if any(mine) else b)
            return out

        optimizer_module.build_plan = plan
        try:
            step()
        finally:
            optimizer_module.build_plan = real

    def _warmup_factors(self) -> list[float]:
        """Each group's factor on its scheduled lr this step (``warmup_lr``): ``f`` for a group
        whose lr at the first step was below its built lr, else 1."""
        if self.warmup_lr is None:
            return [1.0] * len(self.param_groups)
        if self._warmed is None:
            self._warmed = [not isinstance(g["lr"], Tensor) and g["lr"] < built
                            for g, built in zip(self.param_groups, self._built_lrs, strict=True)]
        return [self.warmup_lr if w else 1.0 for w in self._warmed]

    def _observe_noise(self) -> None:
        """``regression_noise``: each parameter's averages ``m`` and ``v`` of its gradient."""
        b = NOISE_BETA
        grads = {p: p.grad.float() for g in self.param_groups for p in g["params"]
                 if p.grad is not None}  # fmt: skip
        if not all(bool(torch.isfinite(x).all()) for x in grads.values()):
            return  # the step will be skipped: its gradient is not observed either
        for p, grad in grads.items():
            m, v, t = self._noise.get(p, (torch.zeros_like(grad), grad.new_zeros(()), 0))
            self._noise[p] = (m.mul_(b).add_(grad, alpha=1 - b),
                              v.mul_(b).add_(grad.square().sum(), alpha=1 - b), t + 1)

    @staticmethod
    def signal_share(m: Tensor, v: Tensor, t: int) -> float:
        """φ_t of the module docstring: the signal's estimated share of the gradient's energy
        (1 at the first step and where no gradient has been seen)."""
        b = NOISE_BETA
        kappa = (1 - b) * (1 + b**t) / ((1 + b) * (1 - b**t))
        vhat = float(v) / (1 - b**t)
        if kappa >= 1 or not vhat > 0:
            return 1.0
        mhat2 = float(m.square().sum()) / (1 - b**t) ** 2
        return min(1.0, max(0.0, (mhat2 - kappa * vhat) / ((1 - kappa) * vhat)))

    def _part_decay(self, d: float) -> None:
        """Decoupled decay ``d`` on the AdamW part's groups, from the next step on."""
        for g in self.param_groups:
            if g["algorithm"] == "adamw":
                g["weight_decay"] = d

    def _head_norm2(self) -> float:
        """The squared Frobenius norm of the output layer's weight gradient (0 without one)."""
        outputs = {r.name for r in self.routing.routes
                   if r.reason == "output layer" and len(r.shape) >= 2}  # fmt: skip
        heads = [p for g in self.param_groups for n, p in zip(g["param_names"], g["params"],
                                                                strict=True) if n in outputs]
        return sum(float(p.grad.float().square().sum()) for p in heads if p.grad is not None)

    def _observe_head_fall(self) -> bool:
        """``fit_part_decay``: average this step's squared norm of the output layer's weight
        gradient into ``v``, keep the peak of ``v̂``; whether ``√(v̂ / peak) ≤ c``."""
        b = FIT_BETA
        v, peak, t = self._fit or (0.0, 0.0, 0)
        v, t = b * v + (1 - b) * self._head_norm2(), t + 1
        vhat = v / (1 - b**t)
        peak = max(peak, vhat)
        self._fit = (v, peak, t)
        assert self.fit_part_decay is not None
        return peak > 0 and math.sqrt(vhat / peak) <= self.fit_part_decay[1]

    def _decay_kernels(self) -> None:
        """``conv_decay`` (``cnn_decays = [c, l]``): ``W ← (1 − η d) W`` on each conv kernel
        (``c``; ``l`` on each other matrix) in a RegMuon group with a gradient, ``η`` that
        group's lr as the core's step reads it (the scheduled lr, then the factor by schedule,
        then the one by structure), before the step; none if a gradient is not finite (the
        core skips the step)."""
        if not all(bool(torch.isfinite(p.grad).all()) for g in self.param_groups
                   for p in g["params"] if p.grad is not None):  # fmt: skip
            return
        kernels = {id(k) for k in self._kernels}
        for gi, g in enumerate(self.param_groups):
            if g["algorithm"] != "regmuon":
                continue
            lr = g["lr"]
            for factor in (self._warmup_scale.get(gi, 1.0), self._lr_scale.get(gi, 1.0)):
                lr = lr if factor == 1.0 else lr * factor
            c, other = (self.cnn_decays if self.cnn_decays is not None
                        else (self.conv_decay or 0.0, 0.0))  # fmt: skip
            for p in g["params"]:
                d = c if id(p) in kernels else other
                if d and p.grad is not None:
                    p.mul_(1 - lr * d)

    def _matrices(self) -> list[Tensor]:
        return [p for g in self.param_groups if g["algorithm"] == "regmuon" for p in g["params"]]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if closure is not None:
            raise ValueError("LeverRegMuon.step takes no closure")
        self._calls = 0
        if self.guard:
            for p in self._matrices():
                last = self._last.get(p)
                buf = self.state[p].get("momentum_buffer")
                if last is not None and buf is not None and p.grad is not None:
                    power = float((p.grad * (p - last)).sum())  # > 0: the loss rose along it
                    if power > 0 and self.guard is True:
                        buf.zero_()
                    elif power > 0:
                        c = power / max(float(p.grad.norm() * (p - last).norm()), 1e-30)
                        buf.mul_(max(0.0, 1.0 - float(self.guard) * c))
        if self.regression_noise or self.softmax_noise:
            self._observe_noise()
        before = {}
        if (self.cautious_wd or self.guard or self.regression_cautious or self.regression_noise
                or self.softmax_noise):  # fmt: skip
            before = {p: p.detach().clone() for g in self.param_groups for p in g["params"]}
        pending, skipped = self._decay_pending is not None, self.skipped_steps
        scaling = self._scale_pending is not None
        inner = super().step if self.eps_adapt is None else self._step_with_adaptive_eps
        scheduled = [g["lr"] for g in self.param_groups]
        rows = self._few_rows_factor()
        for g, f in zip(self.param_groups, self._warmup_factors(), strict=True):
            g["lr"] = g["lr"] * f * rows
        try:
            if self._conv_on:
                self._decay_kernels()
            if self.input_rho is not None and self._inputs and self._input_rho_on():
                self._step_with_input_rho(inner)
            else:
                inner()
        finally:
            for g, lr in zip(self.param_groups, scheduled, strict=True):
                g["lr"] = lr
        if pending and self._decay_pending is None:  # decided (and committed) by this step
            self._regressor = self._decision is not None and self._decision[2]
        decided = scaling and self._scale_pending is None and bool(self._lr_scale)
        if decided and not self._attention:  # round 10's lrs, decided by this step
            self._class = True
            if self.norm_part_decay:
                self._part_decay(self.norm_part_decay)
            if self.cnn_decay and self._cnn:
                for g in self.param_groups:
                    if g["algorithm"] == "regmuon":
                        g["weight_decay"] = self.cnn_decay
            self._conv_on = bool(self.conv_decay or self.cnn_decays) and self._cnn
        if decided and self._attention and self.vit_decay:  # a ViT of round 10's class
            for g in self.param_groups:
                if g["algorithm"] == "regmuon":
                    g["weight_decay"] = self.vit_decay
        if (self._class and self.fit_part_decay is not None and not self._fitted
                and self.skipped_steps == skipped and self._observe_head_fall()):  # fmt: skip
            self._fitted = True
            self._part_decay(self.fit_part_decay[0])
        if self.regression_cautious and self._regressor and self.skipped_steps == skipped:
            for g in self.param_groups:
                if g["algorithm"] != "regmuon":
                    continue
                for p in g["params"]:
                    if p.grad is not None:
                        old = before[p]
                        mask = (p - old) * old <= 0  # u ⊙ W >= 0 with u = -(p - old)/lr
                        p.sub_(old * mask, alpha=g["lr"] * self.regression_cautious)
        exponent = (self.regression_noise if self._regressor else
                    self.softmax_noise if self._lr_scale else 0.0)  # fmt: skip
        if exponent and self.skipped_steps == skipped:
            for p, (m, v, t) in self._noise.items():
                s = self.signal_share(m, v, t) ** exponent
                p.mul_(s).add_(before[p], alpha=1.0 - s)  # before + s (after - before)
        if self.guard:
            self._last = {p: before[p] for p in self._matrices()}
        if self.cautious_wd:
            for g in self.param_groups:
                for p in g["params"]:
                    old = before[p]
                    mask = (p - old) * old <= 0  # u ⊙ W >= 0 with u = -(p - old)/lr
                    p.sub_(old * mask, alpha=g["lr"] * self.cautious_wd)
        return None


def build_lever_regmuon(
    model: nn.Module, options: dict[str, Any], levers: dict[str, Any]
) -> RegMuon:
    """``RegMuon(model, **options)`` with the prototype ``levers`` (keys of :data:`LEVERS`)."""
    bad = set(levers) - set(LEVERS)
    if bad:
        raise ValueError(f"unknown levers {sorted(bad)}; valid: {sorted(LEVERS)}")
    kw = dict(options)
    if "adamw_betas" in kw:
        kw["adamw_betas"] = tuple(kw["adamw_betas"])
    if levers.get("input_adamw"):
        names = {f"{m}." for m in input_layers(model)}
        kw["adamw"] = lambda name, p: name is not None and any(name.startswith(m) for m in names)
    if "input_rho" in levers:  # over `original`'s ρ: RegMuon(model)'s own input rule off
        kw.setdefault("adjust_lr", "original")
    if "mlp_beta2" in levers:
        b2 = levers["mlp_beta2"]
        if not (isinstance(b2, int | float) and 0 <= b2 < 1):
            raise ValueError(f"mlp_beta2 must be a β2 in [0, 1), got {b2!r}")
        if (lr_by_structure(model)[0] and attention_layer(model) is None
                and convolution_layer(model) is None):  # fmt: skip
            kw["adamw_betas"] = (DEFAULTS.adamw_betas[0], float(b2))
    rest = {k: v for k, v in levers.items() if k not in ("input_adamw", "mlp_beta2")}
    if not rest:
        return RegMuon(model, **kw)
    if "eps_adapt" in rest:
        e = rest["eps_adapt"]
        if not (math.isfinite(e["scale"]) and e["scale"] > 0
                and (e.get("peak") is True or 0 < e.get("beta", 0) < 1)):
            raise ValueError("eps_adapt needs scale > 0 and beta in (0, 1) or peak=True, "
                             f"got {e!r}")
    return LeverRegMuon(model, **rest, **kw)
