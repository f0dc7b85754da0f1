r"""The :class:`RegMuon` optimizer: a thin class over routing, the bucket plan and the kernels.

The arithmetic lives in :mod:`~muonflow.optim.kernel`, which parameter gets which update in
:mod:`~muonflow.optim.routing`, the bucket plan in :mod:`~muonflow.optim.plan`, the checks of
groups and checkpoints in :mod:`~muonflow.optim.state`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import signal
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .kernel import Work, adamw, commit, directions, kinetic_energy
from .options import (
    ATTENTION_WARMUP_DECAY,
    ATTENTION_WARMUP_FACTOR,
    DEFAULTS,
    FEW_TOKENS,
    FEW_TOKENS_CONSTANT_FACTOR,
    FEW_TOKENS_WARMUP_FACTOR,
    GROUP_KEYS,
    NORMALIZED_CNN_DECAYS,
    NORMALIZED_MLP_CONSTANT_FACTOR,
    REGRESSION_CAUTIOUS_DECAY,
    WARMUP_LR_FACTOR,
    RegMuonOptions,
    as_float,
    check_number,
)
from .plan import MomentumStacks, auto_workspace_cap, build_plan, is_dtensor, matrix_shape
from .routing import (
    EXECUTION_ORDER,
    REGISTRATION_ORDER,
    FirstForward,
    FirstTokens,
    Routing,
    RoutingWarning,
    attention_layer,
    convolution_layer,
    decay_by_structure,
    input_layer,
    lr_by_schedule,
    lr_by_structure,
    make_rule,
    matrix_layers,
    output_candidates,
    route_module,
    softmax_head,
    warn_unrouted,
)
from .state import check_state_dict, collect_updates, group_options, split_group

__all__ = ["RegMuon"]

#: Why ``RegMuon(model)`` maps the input layer of a network with a regression head at ρ = 1.
INPUT_RHO_WHY = ("(not `original`'s √(fan_out/fan_in): under a regression head the layer that "
                 "reads raw inputs takes a hidden layer's step; docs/benchmark-training.md, "
                 "round 7)")  # fmt: skip

#: What RegMuon._head reads with no output layer (compared by identity): not a softmax head.
NO_HEAD = (False, 1.0)

# Attributes that are not torch.optim.Optimizer state but survive deepcopy and pickle.
_EXTRA_ATTRS: dict[str, Callable[[], Any]] = {
    "options": lambda: DEFAULTS,
    "skipped_steps": lambda: 0,
    "_adamw_rule": lambda: make_rule(None)[0],
    "_explicit_rule": lambda: False,
    "_specs": dict,
    "routing": Routing,
    "_decay_pending": lambda: None,
    "_input_pending": tuple,
    "_unit_rho": dict,
    "_scale_pending": lambda: None,
    "_lr_scale": dict,
    "_warmup_pending": lambda: None,
    "_warmup_scale": dict,
    "_cautious_pending": lambda: None,
    "_cautious": lambda: 0.0,
    "_attention_pending": lambda: None,
    "_attention_tokens": lambda: None,
    "_mlp_pending": lambda: None,
    "_cnn_pending": lambda: None,
    "_vit_pending": lambda: None,
    "_cnn_kernels": frozenset,
    "_matrix_decay": dict,
}


def _read_tokens(ref: weakref.ReferenceType[RegMuon], tokens: int) -> None:
    """:class:`FirstTokens`' callback: a ViT's number of tokens at the first forward, kept by
    its optimizer (if it still exists) until the first step decides the lrs."""
    if (opt := ref()) is not None:
        opt._attention_tokens = tokens


CAUTIOUS_WHY = ("decay only on the entries the step moves toward 0; docs/benchmark-training.md, "
                "round 19")  # fmt: skip


class RegMuon(Optimizer):
    r"""Regularized Muon for a whole model: RegMuon on hidden matrices, AdamW on the rest.

    .. math::
        \begin{aligned}
        &M_t \leftarrow \beta M_{t-1} + g_t \quad \text{(EMA form: }
          \beta M_{t-1} + (1-\beta) g_t) \\
        &X_t \leftarrow g_t + \beta M_t \ \text{(Nesterov; EMA: } (1-\beta) g_t + \beta M_t),
          \ \text{else } M_t \\
        &W_t \leftarrow (1 - \eta\lambda) W_{t-1} - \eta\, \rho(m, n)\,
          \nabla K_{\varepsilon_t}(X_t), \qquad \varepsilon_t = \varepsilon \
          \text{(absolute) or } \varepsilon \|X_t\|_F / \sqrt{\min(m, n)} \ \text{(relative)}
        \end{aligned}

    per matrix, batched (:func:`~muonflow.optim.mirror_map`; the default potential gives
    :math:`X (X^\top X + \varepsilon^2 I)^{-1/2}`). With :math:`\eta = h`, :math:`\beta = 1 -
    \gamma h`, absolute :math:`\varepsilon = \varepsilon_{dyn}/h`, no decay, Nesterov or
    :math:`\rho`, the iterates are the flow's symplectic-Euler scheme (:meth:`from_dynamics`,
    ``docs/theory.md`` §3).

    ``RegMuon(model)`` routes by structure (:mod:`~muonflow.optim.routing`): embeddings, tied
    parameters, the output layer, vectors and undeclared parameters to the built-in AdamW; the
    declared weight matrices of known layers to RegMuon, each with its matrix view and layout;
    ``print(opt.routing)`` shows every decision. A network with no normalization, embedding or
    recurrent layer (and no ``weight_decay=``/``options=``) is decided at its first step from the
    output layer's gradient (:func:`~muonflow.optim.softmax_head`): a softmax head gets decay
    :data:`~muonflow.optim.UNNORMALIZED_DECAY` on the matrices; another head no decay, and its
    input layer (:func:`~muonflow.optim.input_layer`) ρ = 1 unless ``adjust_lr=`` is given,
    and, if the matrices' lr at that step is below the one they were built with (a scheduler's
    warm-up), cautious decay :data:`~muonflow.optim.REGRESSION_CAUTIOUS_DECAY` on the matrices
    (only on the entries the step moves toward 0).
    A network with a normalization layer, no embedding or recurrent layer, whose first matrix
    layer reads the raw input (and no ``lr=``/``adamw_lr=``/``options=``), is decided the same
    way: under a softmax head its lrs are scaled to :data:`~muonflow.optim.NORMALIZED_INPUT_LR`
    and :data:`~muonflow.optim.NORMALIZED_INPUT_ADAMW_LR` (factors kept by the optimizer, so the
    groups' ``lr`` and any scheduler stay as built; :func:`~muonflow.optim.lr_by_structure`).
    A model with an embedding or recurrent layer (and no ``lr=``/``adamw_lr=``/``options=``)
    reads its schedule at the first step: a group whose lr is then below the lr it was built
    with (a scheduler's warm-up) steps with :data:`~muonflow.optim.WARMUP_LR_FACTOR` times its
    scheduled lr (a warm-up and decay's best peak is larger than the best constant lr; the
    groups' ``lr`` stay the scheduler's; :func:`~muonflow.optim.lr_by_schedule`).
    Named parameters, tensors and dict groups work too. Every step, :meth:`add_param_group` and
    :meth:`load_state_dict` is all or nothing (see ``docs/optimizer.md`` and
    ``docs/reliability.md``).

    Args:
        params: an ``nn.Module`` (routed by structure), ``(name, parameter)`` pairs, tensors,
            or group dicts (which may set the :data:`~muonflow.optim.options.GROUP_KEYS` and
            ``"adamw_lr"``, ``"adamw_weight_decay"`` or ``"algorithm"``).
        lr: ``η`` of the matrices (a float or a 0-dim tensor).
        options: a :class:`~muonflow.optim.RegMuonOptions`, where every option is documented
            (default :data:`~muonflow.optim.DEFAULTS`); keyword ``overrides`` replace some.
        adamw: more matrices for AdamW: a predicate ``(name | None, param) -> bool`` or regular
            expressions searched in the names (without a model, ``None`` is
            :func:`~muonflow.optim.default_adamw_rule` and ``()`` sends every matrix to RegMuon).
        output: with a model, its output layer(s) (module, name, list; ``()`` for none).

    Example:
        >>> # xdoctest: +SKIP
        >>> opt = RegMuon(model)               # routed by structure, DEFAULTS
        >>> loss = loss_fn(model(x), y); loss.backward()
        >>> H = opt.hamiltonian(loss)          # optional: loss + kinetic energy, before step()
        >>> opt.step(); opt.zero_grad()

    :meth:`step` runs eagerly (a graph break) inside ``torch.compile``d code.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor | None = None,
        *,
        options: RegMuonOptions | None = None,
        adamw: Callable[[str | None, Tensor], bool] | Iterable[str] | None = None,
        output: Any = None,
        **overrides: Any,
    ) -> None:
        base = DEFAULTS if options is None else options
        if not isinstance(base, RegMuonOptions):
            raise TypeError(f"options must be a RegMuonOptions, got {type(base).__name__}")
        if lr is not None:
            overrides["lr"] = lr
        self.options = base.replace(**overrides) if overrides else base
        self._adamw_rule, self._explicit_rule = make_rule(adamw)
        self.skipped_steps = 0
        # per-parameter (matrix view, layout) from the structure; others use their group's
        self._specs: dict[Tensor, tuple[str, str]] = {}
        self.routing = Routing()
        self._stacks = MomentumStacks()
        self._unrouted = 0
        self._decay_pending: float | None = None  # RegMuon(model)'s decay, until decided
        # RegMuon(model)'s input layer, until the head decides (ρ = 1 under a regression head)
        self._input_pending: tuple[tuple[str, Tensor], ...] = ()
        self._unit_rho: dict[Tensor, str] = {}  # matrices mapped with ρ = 1, by name
        # RegMuon(model)'s lr factors by group index, until the head decides (then _lr_scale)
        self._scale_pending: dict[int, float] | None = None
        self._lr_scale: dict[int, float] = {}  # the decided factors on the groups' lrs
        # RegMuon(model)'s built lrs by group index, until the first step reads the schedule
        self._warmup_pending: dict[int, float] | None = None
        self._warmup_scale: dict[int, float] = {}  # the decided factors under a warm-up
        # RegMuon(model)'s built matrix lr, until the head and the schedule decide the cautious
        # decay of a regressor's matrices (then _cautious: its λ, 0 for none)
        self._cautious_pending: float | None = None
        self._cautious = 0.0
        self._attention_pending: tuple[float, str] | None = None  # a ViT: (built lr, layer)
        self._attention_tokens: int | None = None  # its tokens at the first forward
        self._mlp_pending: float | None = None  # a normalized MLP classifier: its built lr
        self._cnn_pending: float | None = None  # a batch-norm CNN, no decay given: its built lr
        self._vit_pending: float | None = None  # a ViT, no decay given: its built lr
        self._cnn_kernels: frozenset[str] = frozenset()  # and its conv kernels' names
        self._matrix_decay: dict[Tensor, tuple[str, float]] = {}  # own decays: (name, λ)
        model_routing, watch_input = None, False
        if isinstance(params, nn.Module):
            extra = self._adamw_rule if self._explicit_rule else None
            model, model_routing, pairs = params, *route_module(params, output=output,
                                                                extra_adamw=extra)  # fmt: skip
            params = self._model_groups(model_routing, pairs)
            if options is None and not {"lr", "adamw_lr"} & set(overrides):  # by structure
                self._pend_lrs_by_structure(model, model_routing, "weight_decay" in overrides)
            if options is None and "weight_decay" not in overrides:  # none given: by structure
                decay, why = decay_by_structure(model)
                model_routing.decay = why
                if decay:  # set at the first step, if the output layer is a softmax head's
                    self._decay_pending = decay
                    if not isinstance(self.options.lr, Tensor):  # under another head, a
                        self._cautious_pending = float(self.options.lr)  # warm-up's test
                    if "adjust_lr" not in overrides:  # else the user chose the shape factor
                        self._input_pending = _input_matrices(model, model_routing, pairs)
                        watch_input = True
                    model_routing.decay = (f"decided at the first step: {decay:g} if the output "
                                           f"layer is a softmax head, else 0 (cautious "
                                           f"{REGRESSION_CAUTIOUS_DECAY:g} under a warm-up) "
                                           f"{why.split(' ', 1)[1]}")  # fmt: skip
        elif output is not None:
            raise TypeError("output= needs a model: RegMuon(model, output=...)")
        self._in_init = True
        try:
            super().__init__(params, self.options.group("regmuon"))
        finally:
            self._in_init = False
        if model_routing is not None:
            self.routing = model_routing
            if options is None and not {"lr", "adamw_lr"} & set(overrides):  # by the schedule
                factor, why = lr_by_schedule(model)
                model_routing.schedule = f"none ({why})"
                if factor != 1.0:  # decided at the first step, if a warm-up lowered the lrs
                    self._warmup_pending = {gi: g["lr"] for gi, g in enumerate(self.param_groups)
                                            if not isinstance(g["lr"], Tensor)}  # fmt: skip
                    model_routing.schedule = (f"decided at the first step: x {factor:g} on a "
                                              f"group whose lr a warm-up has lowered ({why})")
            self._watch_first_forward(model, watch_input)
        else:
            self.routing.source = "named parameters" if any(
                "param_names" in g for g in self.param_groups) else "parameters"  # fmt: skip
            warn_unrouted(self._unrouted, stacklevel=3)
        del self._unrouted

    def _pend_lrs_by_structure(self, model: nn.Module, routing: Routing, decay_given: bool) -> None:
        """Round 10's lrs by structure (:func:`~muonflow.optim.lr_by_structure`), pending until
        the first step reads the head, with what the class decides with them: a ViT's and an
        MLP's factors, and a CNN's decay on its matrices (unless ``weight_decay`` was given)."""
        lrs, why = lr_by_structure(model)
        if not lrs:
            return
        self._scale_pending = {0: lrs["lr"] / as_float(DEFAULTS.lr),
                               1: lrs["adamw_lr"] / as_float(DEFAULTS.adamw_lr)}
        attention, plain = attention_layer(model), not isinstance(self.options.lr, Tensor)
        if attention is not None and plain:
            self._attention_pending = (float(self.options.lr), attention)
            if not decay_given:
                self._vit_pending = float(self.options.lr)
        elif attention is None and convolution_layer(model) is None and plain:  # an MLP
            self._mlp_pending = float(self.options.lr)
        elif attention is None and plain and not decay_given:  # a CNN
            self._cnn_pending = float(self.options.lr)
            self._cnn_kernels = frozenset(r.name for r in routing.routes if r.view == "conv")
        routing.lr = (f"decided at the first step: matrices {lrs['lr']:g}, AdamW part "
                      f"{lrs['adamw_lr']:g} if the output layer is a softmax head, else the "
                      f"options' ({why})")

    def _watch_first_forward(self, model: nn.Module, watch_input: bool) -> None:
        """Hooks on the model's first forward: a ViT's tokens (round 10's lrs by structure
        pending, :class:`~muonflow.optim.routing.FirstTokens`), and the order of the output
        layer's candidates (chosen by registration order) and, if ``watch_input``, of every
        matrix layer (:meth:`_first_forward`)."""
        if self._attention_pending is not None:
            FirstTokens(model.get_submodule(self._attention_pending[1]),
                        functools.partial(_read_tokens, weakref.ref(self)))
        outputs = (output_candidates(model)
                   if self.routing.output.endswith(f"({REGISTRATION_ORDER})") else [])
        inputs = matrix_layers(model) if watch_input else []
        if outputs or inputs:  # checked against the first forward's order (the inputs, if
            # watched, are every matrix layer: the outputs' candidates among them)
            ref = weakref.ref(self)
            FirstForward(model, inputs or outputs, lambda order: (
                opt._first_forward(model, order, outputs, inputs)
                if (opt := ref()) is not None else None))  # fmt: skip

    def _model_groups(self, routing: Routing, pairs: list[tuple[str, Tensor]]) -> list[dict]:
        groups: dict[str, dict[str, Any]] = {
            a: {"params": [], "param_names": [], "algorithm": a} for a in ("regmuon", "adamw")
        }
        for route, (name, p) in zip(routing.routes, pairs, strict=True):
            groups[route.algorithm]["params"].append((name, p))
            if route.algorithm == "regmuon":
                assert route.view is not None and route.layout is not None
                self._specs[p] = (route.view, route.layout)
        return [groups["regmuon"], groups["adamw"]]

    def _first_forward(self, model: nn.Module, order: list[str], outputs: list[str],
                       inputs: list[str]) -> None:  # fmt: skip
        """The first forward's order of the watched layers: the output layer checked against
        the ``outputs`` (:meth:`_reroute`), the input layer against the ``inputs``
        (:meth:`_reread_input`)."""
        if outputs:
            self._reroute(model, [n for n in order if n in outputs])
        if inputs:
            self._reread_input(model, next((n for n in order if n in inputs), None))

    def _reread_input(self, model: nn.Module, first: str | None) -> None:
        """After the first forward: if the first matrix layer to run is not the input layer
        registration order gave, the input layer's ρ = 1 (decided at the first step under a
        regression head) goes to the one that ran first — while it is still pending."""
        chosen = input_layer(model)
        if first is None or first == chosen or self._decay_pending is None:
            return
        params = dict(model.named_parameters())
        self._input_pending = tuple(
            (r.name, params[r.name]) for r in self.routing.routes
            if r.algorithm == "regmuon" and r.name.startswith(f"{first}."))  # fmt: skip
        warnings.warn(f"RegMuon(model): the input layer is {first!r} (the first matrix layer to "
                      f"run in the first forward), not {chosen!r} (the first registered)",
                      RoutingWarning, stacklevel=2)  # fmt: skip

    def _reroute(self, model: nn.Module, order: list[str]) -> None:
        """After the first forward: if the output layer chosen by registration order is not
        the last candidate to run, route by the execution order (before any state exists)."""
        chosen = self.routing.output.split(" (")[0]
        if not order or order[-1] == chosen:
            return
        extra = self._adamw_rule if self._explicit_rule else None
        routing, pairs = route_module(model, output=order[-1], extra_adamw=extra)
        routing.output = f"{order[-1]} ({EXECUTION_ORDER})"
        routing.decay, routing.lr = self.routing.decay, self.routing.lr
        routing.schedule = self.routing.schedule
        moved = [(old, new, p) for old, new, (_, p) in zip(self.routing.routes, routing.routes,
                 pairs, strict=True) if old.algorithm != new.algorithm]  # fmt: skip
        if any(self.state.get(p) for _, _, p in moved) or len(self.param_groups) < 2:
            warnings.warn(f"RegMuon(model): the output layer is {order[-1]!r} by the order of "
                          f"the first forward, not {chosen!r}, but the optimizer has state or "
                          "groups already; pass output= to route it", RoutingWarning,
                          stacklevel=2)  # fmt: skip
            return
        regmuon, adamw = self._model_groups(routing, pairs)
        for group, new in zip(self.param_groups[:2], (regmuon, adamw), strict=True):
            group["params"] = [p for _, p in new["params"]]
            group["param_names"] = [n for n, _ in new["params"]]
        self._specs = {p: s for p, s in self._specs.items() if any(p is q for q in
                       self.param_groups[0]["params"])}  # fmt: skip
        self.routing = routing
        warnings.warn(f"RegMuon(model): routed by the first forward: the output layer is "
                      f"{order[-1]!r} (the last to run), not {chosen!r} (the last registered)",
                      RoutingWarning, stacklevel=2)  # fmt: skip

    @property
    def on_nonfinite(self) -> str:
        return self.options.on_nonfinite

    @property
    def max_batch_bytes(self) -> int | str | None:
        return self.options.max_batch_bytes

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_dynamics(
        cls,
        params: Any,
        *,
        h: float,
        gamma: float,
        eps: float,
        potential: str = "relativistic",
        P0: Tensor | Sequence[Tensor] | None = None,
    ) -> RegMuon:
        r"""The optimizer whose iterates are the ``"muon"`` symplectic-Euler scheme of the flow.

        .. math::
            P \leftarrow (1 - \gamma h) P - h \nabla f(W), \qquad
            W \leftarrow W + h \nabla K_\varepsilon(P)

        is RegMuon with sum-form momentum, :math:`\eta = h`, :math:`\beta = 1 - \gamma h`,
        absolute :math:`\varepsilon_{opt} = \varepsilon/h`, no Nesterov, no weight decay, no lr
        adjustment and exact maps (``tol=None``), under :math:`P = -hM` (``docs/theory.md``,
        §3). (A potential whose map is not scale-invariant, ``quadratic``: :math:`\eta = h^2`.)
        Every parameter must be a matrix (or a stack ``[..., m, n]``); none goes to AdamW.

        Args:
            params: the parameters ``W`` (tensors ``[..., m, n]`` or named pairs).
            h: step ``> 0``; gamma: damping ``γ >= 0`` with ``γh <= 1``; eps: the dynamics'
                ``ε > 0`` (ignored by potentials without a scale).
            potential: the kinetic energy, a key of :data:`muonflow.spectral.POTENTIALS`.
            P0: initial momenta in dynamics units (one per parameter; default 0).
        """
        h = check_number(h, "h", 0.0, math.inf)
        gamma = check_number(gamma, "gamma", 0.0, math.inf)
        eps = check_number(eps, "eps", 0.0, math.inf)
        if h == 0 or eps == 0:
            raise ValueError(f"h and eps must be > 0, got h={h!r}, eps={eps!r}")
        if gamma * h > 1:
            raise ValueError(f"gamma*h must be <= 1 (momentum 1 - gamma*h >= 0), got {gamma * h!r}")
        kinetic = DEFAULTS.replace(potential=potential).kinetic
        items = [params] if isinstance(params, Tensor) else list(params)
        if not items or not isinstance(items[0], dict):
            items = [{"params": items}]
        groups = [{**dict(g), "algorithm": "regmuon"} for g in items]
        opt = cls(groups, lr=h if kinetic.scale_invariant else h * h, momentum=1 - gamma * h,
                  eps=eps / h, eps_mode="absolute", potential=potential, momentum_form="sum",
                  nesterov=False, weight_decay=0.0, adjust_lr="none", tol=None,
                  matrix_view="batch", adamw=())  # fmt: skip
        if P0 is not None:
            ps = [p for g in opt.param_groups for p in g["params"]]
            P0s = [P0] if isinstance(P0, Tensor) else list(P0)
            if len(P0s) != len(ps):
                raise ValueError(f"P0 has {len(P0s)} tensors for {len(ps)} parameters")
            for p, P in zip(ps, P0s, strict=True):
                if P.shape != p.shape:
                    raise ValueError(
                        f"P0 shape {tuple(P.shape)} != parameter shape {tuple(p.shape)}"
                    )
            for p, P in zip(ps, P0s, strict=True):
                opt.state[p]["momentum_buffer"] = (P.detach() / -h).to(p.dtype).clone()  # M = -P/h
        return opt

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; unless it names its ``"algorithm"``, it is split into RegMuon + AdamW.

        Everything is checked first (parameters, options, matrix views); on an error the
        optimizer is unchanged.
        """
        parts, routes = split_group(param_group, base=self.options, rule=self._adamw_rule,
                                    explicit=self._explicit_rule, specs=self._specs,
                                    param_groups=self.param_groups)  # fmt: skip
        before = len(self.param_groups)
        try:  # checked: this cannot fail, but never leave half a group behind
            for new in parts:
                super().add_param_group(new)
        except BaseException:
            del self.param_groups[before:]
            raise
        self.routing.routes += routes
        unrouted = sum(r.reason == "unrouted matrix" for r in routes)
        if getattr(self, "_in_init", False):
            self._unrouted += unrouted
        else:
            warn_unrouted(unrouted, stacklevel=3)

    # -- deepcopy, pickle, checkpoints ----------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update({k: self.__dict__[k] for k in _EXTRA_ATTRS if k in self.__dict__})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        loading = set(state) == {"state", "param_groups"}  # from load_state_dict, before its
        super().__setstate__(state)  # post hooks: this optimizer's part of loading runs here
        if loading:
            for st in self.state.values():
                if isinstance(st, dict) and "step" in st:
                    st["step"] = int(st["step"])
            self.skipped_steps = self.__dict__.pop("_loading_skipped", 0)
            if "_loading_decay" in self.__dict__:  # a checkpoint without extras keeps ours
                self._decay_pending = self.__dict__.pop("_loading_decay")
                self._unit_rho = self.__dict__.pop("_loading_unit")
                self._cautious_pending, self._cautious = self.__dict__.pop("_loading_cautious")
                self._matrix_decay = self.__dict__.pop("_loading_matrix_decay")
                if self._decay_pending is None:  # decided: so is the input layer's ρ
                    self._input_pending = ()
                self._scale_pending, self._lr_scale = self.__dict__.pop("_loading_scale")
                if self._scale_pending is not None and "(" not in self.routing.lr:
                    self.routing.lr = "decided at the first step (pending in a checkpoint)"
                self._warmup_pending, self._warmup_scale = self.__dict__.pop("_loading_warmup")
                if self.routing.schedule or self._warmup_pending or self._warmup_scale:
                    self.routing.schedule = (
                        "decided at the first step (pending in a checkpoint)"
                        if self._warmup_pending else "from a checkpoint: " + (", ".join(
                            f"group {gi} x {f:g}" for gi, f in sorted(self._warmup_scale.items()))
                            or "none"))  # fmt: skip
        else:  # pickle, deepcopy
            for key, default in _EXTRA_ATTRS.items():
                self.__dict__.setdefault(key, default())
        for group in self.param_groups:  # old checkpoints: new options take their defaults
            group.setdefault("algorithm", "regmuon")
            for key, value in self.options.group(group["algorithm"]).items():
                group.setdefault(key, value)
        self._stacks = MomentumStacks()

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus ``"regmuon": {"skipped_steps": ...}``, added before the
        registered post hooks run."""
        handle = self.register_state_dict_post_hook(_add_extras, prepend=True)
        try:
            return super().state_dict()
        finally:
            handle.remove()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a checkpoint, after checking all of it (groups, options, names, state tensors'
        shapes and values, step counts): a bad checkpoint raises with nothing changed. Named
        parameters are matched by name (a reordered list loads; another routing is refused).
        The registered pre hooks run first, then these checks, the load, then the post hooks."""
        handle = self.register_load_state_dict_pre_hook(_check_and_align)
        try:
            super().load_state_dict(state_dict)
        finally:
            handle.remove()
            self.__dict__.pop("_loading_skipped", None)
            self.__dict__.pop("_loading_decay", None)
            self.__dict__.pop("_loading_unit", None)
            self.__dict__.pop("_loading_cautious", None)
            self.__dict__.pop("_loading_matrix_decay", None)
            self.__dict__.pop("_loading_scale", None)
            self.__dict__.pop("_loading_warmup", None)

    # -- the step -------------------------------------------------------------------------------
    def _spec(self, p: Tensor, o: RegMuonOptions) -> tuple[str, str]:
        """``(matrix view, layout)`` of a RegMuon parameter."""
        return self._specs.get(p) or (o.matrix_view, o.layout)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one step (see the class docstring); returns the closure's loss if given.

        All or nothing: everything is checked, and every matrix's update computed, before any
        parameter or state changes; the commit (in-place elementwise updates) holds Ctrl-C.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        opts = [group_options(g, self.options) for g in self.param_groups]
        self._agree(opts)  # before any other collective
        todo = collect_updates(self.param_groups, self.state, self.options.on_nonfinite)
        if todo is None:
            self.skipped_steps += 1
            return loss
        idle = self._idle()
        decided = (self._decide_decay() if self._decay_pending is not None and not idle
                   else None)  # fmt: skip
        scale = self._decide_scale() if self._scale_pending is not None and not idle else None
        lr_scale = self._lr_scale if scale is None else scale[0]
        warm = (self._decide_warmup() if self._warmup_pending is not None and not idle
                and self._head() is not None else None)  # fmt: skip
        warm_scale = self._warmup_scale if warm is None else warm[0]
        for gi, factor in warm_scale.items():  # the schedule's factor, then the structure's
            opts[gi] = _scaled(opts[gi], self.param_groups[gi]["algorithm"], factor)
        for gi, factor in lr_scale.items():
            opts[gi] = _scaled(opts[gi], self.param_groups[gi]["algorithm"], factor)
        cautious = self._cautious
        if decided is not None:  # a regression head under a warm-up: cautious decay
            cautious = self._decide_cautious(decided)
        unit = self._unit_rho
        if decided is not None and decided[2]:  # a regression head: the input layer at ρ = 1
            unit = {**unit, **{p: name for name, p in self._input_pending}}
        if decided is not None and decided[0]:
            opts[0] = group_options({**self.param_groups[0], "weight_decay": decided[0]},
                                    self.options)  # fmt: skip
        cap = None
        if self.options.max_batch_bytes == "auto":  # one workspace rule for the whole step
            cap = auto_workspace_cap(
                matrix_shape(p.shape, self._spec(p, o)[0])[1:]
                for group, o, items in zip(self.param_groups, opts, todo, strict=True)
                if group["algorithm"] == "regmuon" for p, _ in items
            )  # fmt: skip
        pending = []  # every map of the step, before any change
        for gi, (group, o, items) in enumerate(zip(self.param_groups, opts, todo, strict=True)):
            if items and group["algorithm"] == "regmuon":
                works, installs, owns = self._works(gi, o, items, cap, unit)
                pending.append((works, [directions(w, o) for w in works], o, installs,
                                cautious if gi == 0 else 0.0, owns))  # fmt: skip
        with _holding_interrupts():  # the commit
            if decided is not None:
                self._decay_pending = None
                self.param_groups[0]["weight_decay"] = decided[0]
                self.routing.decay = decided[1]
                if decided[2] and self._input_pending:
                    self._unit_rho = unit
                    self.routing.decay += (f"; the input layer's matrices ("
                                           f"{', '.join(n for n, _ in self._input_pending)}) "
                                           f"are mapped with ρ = 1 {INPUT_RHO_WHY}")  # fmt: skip
                self._input_pending = ()
                self._cautious_pending, self._cautious = None, cautious
                if cautious:
                    self.routing.decay += (f"; the lr at the first step is below the built one "
                                           f"(a warm-up): cautious decay {cautious:g} on the "
                                           f"matrices ({CAUTIOUS_WHY})")  # fmt: skip
            if scale is not None:
                if scale[0] and self._cnn_pending is not None:  # from the next step on
                    self._decay_cnn_matrices(self._cnn_pending)
                if scale[0] and self._vit_pending is not None:
                    self._decay_vit_matrices(self._vit_pending)
                self._scale_pending, self._attention_pending = None, None
                self._mlp_pending, self._cnn_pending, self._vit_pending = None, None, None
                self._cnn_kernels = frozenset()
                self._lr_scale, self.routing.lr = scale
            if warm is not None:
                self._warmup_pending = None
                self._warmup_scale, self.routing.schedule = warm
            for works, ds, o, installs, cautious_g, owns in pending:
                for install in installs:
                    install()
                for w, d, own in zip(works, ds, owns, strict=True):
                    commit(w, d, o, cautious_g, own)
            for group, o, items in zip(self.param_groups, opts, todo, strict=True):
                if items and group["algorithm"] == "adamw":
                    self._adamw_group(o, items)
        return loss

    def _idle(self) -> bool:
        """Whether this step moves nothing, every group's lr 0, while a decision is pending: it
        decides nothing (torch.distributed.checkpoint's ``get_state_dict`` initializes a fresh
        optimizer's state with such a step, on zero gradients). The lrs are read only then."""
        pending = (self._decay_pending is not None or self._scale_pending is not None
                   or self._warmup_pending is not None)  # fmt: skip
        return pending and all(not float(g["lr"]) for g in self.param_groups)

    def _decide_decay(self) -> tuple[float, str, bool] | None:
        """RegMuon(model)'s pending decay by structure, decided from the output layer's
        gradient (:func:`~muonflow.optim.routing.softmax_head`): ``(λ, why, False)`` for a
        softmax head, ``(0, why, True)`` for another head (a regression: the input layer then
        gets ρ = 1), ``(0, why, False)`` with no output layer; ``None`` (still pending) while
        the output layer has no gradient. Changes nothing."""
        decay = self._decay_pending
        assert decay is not None
        if given := self.param_groups[0]["weight_decay"]:  # set by hand, or loaded: it stands
            return (given, f"{given:g} (in param_groups[0] before the first step: set or "
                    "loaded)", False)  # fmt: skip
        head = self._head()
        if head is None:
            return None
        if head is NO_HEAD:
            return 0.0, "0 (no output layer: its gradient decides the decay by structure)", False
        softmax, r = head
        if softmax:
            return decay, (f"{decay:g} (no normalization, embedding or recurrent layer, and a "
                           f"softmax head: its gradient sums to 0 over the outputs, r = {r:.1e})"
                           ), False  # fmt: skip
        return 0.0, (f"0 (the output layer's gradient does not sum to 0 over the outputs, "
                     f"r = {r:.2g}: not a softmax head, the output's scale is the weights')"
                     ), True  # fmt: skip

    def _decide_cautious(self, decided: tuple[float, str, bool]) -> float:
        """RegMuon(model)'s cautious decay of the matrices, decided with the decay by structure
        (``decided``): :data:`~muonflow.optim.REGRESSION_CAUTIOUS_DECAY` under a regression
        head with no decay when the matrices' (float) lr is below the one they were built with
        (a scheduler's warm-up has lowered it), else 0. Changes nothing."""
        built, lr = self._cautious_pending, self.param_groups[0]["lr"]
        if (built is None or not decided[2] or decided[0] or isinstance(lr, Tensor)
                or not lr < built):  # fmt: skip
            return 0.0
        return REGRESSION_CAUTIOUS_DECAY

    def _decide_scale(self) -> tuple[dict[int, float], str] | None:
        """RegMuon(model)'s pending lrs by structure, decided from the output layer's gradient:
        ``(factors by group index, why)``, the factors under a softmax head and none under
        another head or with no output layer; ``None`` (still pending) while the output layer
        has no gradient. Changes nothing."""
        pending = self._scale_pending
        assert pending is not None
        head = self._head()
        if head is None:
            return None
        softmax, r = head
        parts = {"regmuon": "matrices", "adamw": "AdamW part"}
        lrs = ", ".join(f"{parts[self.param_groups[gi]['algorithm']]} lr x {f:g}"
                        for gi, f in pending.items())  # fmt: skip
        structure = self.routing.lr.split("(", 1)[-1]  # the structure's part, with its ")"
        if softmax:
            f, why = self._class_factor()
            factors = {gi: v * f for gi, v in pending.items()}
            if f != 1.0:
                lrs = ", ".join(f"{parts[self.param_groups[gi]['algorithm']]} lr x {v:g}"
                                for gi, v in factors.items())  # fmt: skip
            return factors, (f"{lrs} (a softmax head: its gradient sums to 0 over the "
                             f"outputs, r = {r:.1e}{why}; {structure}")  # fmt: skip
        return {}, f"none, the options' lrs (r = {r:.2g}: not a softmax head; {structure}"

    def _class_factor(self) -> tuple[float, str]:
        """The factor on round 10's lrs, read at the first step, and why: a ViT's (round 22's
        under a warm-up; with at most ``FEW_TOKENS`` tokens round 25's under either schedule), a
        normalized MLP's under a constant lr (round 28's); 1 otherwise."""
        lr, vit = self.param_groups[0]["lr"], self._attention_pending
        built = vit[0] if vit is not None else self._mlp_pending
        if isinstance(lr, Tensor) or built is None:
            return 1.0, ""
        warm = lr < built
        schedule = ("under a warm-up (the lr at the first step is below the built one)"
                    if warm else "under a constant lr")  # fmt: skip
        if vit is None:  # an MLP: no attention layer, no convolution
            if warm:
                return 1.0, ""
            f = NORMALIZED_MLP_CONSTANT_FACTOR
            return f, f"; x {f:g} {schedule}, an MLP (no attention layer or convolution)"
        tokens = self._attention_tokens
        if tokens is not None and tokens <= FEW_TOKENS:
            f = FEW_TOKENS_WARMUP_FACTOR if warm else FEW_TOKENS_CONSTANT_FACTOR
            return f, (f"; x {f:g} {schedule}, attention layer {vit[1]!r} read {tokens} tokens "
                       f"at the first forward (at most {FEW_TOKENS})")  # fmt: skip
        if not warm:
            return 1.0, ""
        return ATTENTION_WARMUP_FACTOR, (f"; x {ATTENTION_WARMUP_FACTOR:g} {schedule}, "
                                         f"attention layer {vit[1]!r}")  # fmt: skip

    def _decay_vit_matrices(self, built: float) -> None:
        """Round 39's rule, at the step that decides round 10's lrs for a ViT under a softmax
        head: under a warm-up (the lr at this step below the built one) its RegMuon matrices decay
        :data:`~muonflow.optim.ATTENTION_WARMUP_DECAY` from the next step on (the groups'
        ``weight_decay``); under a constant lr none. Said in the routing."""
        if not self.param_groups[0]["lr"] < built:
            return
        for group in self.param_groups:
            if group["algorithm"] == "regmuon":
                group["weight_decay"] = ATTENTION_WARMUP_DECAY
        self.routing.decay += (f"; the matrices decay {ATTENTION_WARMUP_DECAY:g} from the next "
                               f"step on (a ViT under a softmax head and a warm-up; "
                               f"docs/benchmark-training.md, round 39)")  # fmt: skip

    def _decay_cnn_matrices(self, built: float) -> None:
        """Rounds 33, 35 and 37's rules, at the step that decides round 10's lrs for a CNN under a
        softmax head: by the schedule (a constant lr: the lr at this step the built one; else a
        warm-up), the pair :data:`~muonflow.optim.NORMALIZED_CNN_DECAYS` gives the conv kernels
        and the other RegMuon matrices their decoupled decays from the next step on — one decay
        for both as the RegMuon groups' ``weight_decay``, two as the matrices' own decays; said in
        the routing."""
        warm = self.param_groups[0]["lr"] < built
        schedule = "a warm-up" if warm else "a constant lr"
        kernels, linear = NORMALIZED_CNN_DECAYS[schedule]
        why = (f"(a batch-norm CNN under a softmax head and {schedule}; "
               f"docs/benchmark-training.md, rounds 33, 35 and 37)")  # fmt: skip
        if kernels == linear:
            if kernels:
                for group in self.param_groups:
                    if group["algorithm"] == "regmuon":
                        group["weight_decay"] = kernels
                self.routing.decay += (f"; the matrices decay {kernels:g} from the next step "
                                       f"on {why}")  # fmt: skip
            return
        mats = [(n, p) for g in self.param_groups if g["algorithm"] == "regmuon"
                for n, p in zip(g["param_names"], g["params"], strict=True)]  # as routed now
        self._matrix_decay = {p: (n, d) for n, p in mats
                              if (d := kernels if n in self._cnn_kernels else linear)}
        said = [f"({', '.join(n for n, _ in mats if (n in self._cnn_kernels) == conv) or 'none'})"
                f" by {d:g}" for conv, d in ((True, kernels), (False, linear))]
        self.routing.decay += (f"; the matrices decay from the next step on: the conv kernels "
                               f"{said[0]}, the other matrices {said[1]} {why}")  # fmt: skip

    def _decide_warmup(self) -> tuple[dict[int, float], str]:
        """RegMuon(model)'s lr factors by schedule, decided at its first step with an output
        layer's gradient (not all zero), as the rules by structure are: ``(factors by
        group index, why)``, :data:`~muonflow.optim.WARMUP_LR_FACTOR` for each group whose
        (float) lr is below the one it was built with — a scheduler's warm-up has lowered it —
        and none for the others. Changes nothing."""
        built = self._warmup_pending
        assert built is not None
        warm = {gi: WARMUP_LR_FACTOR for gi, lr in built.items()
                if gi < len(self.param_groups)
                and not isinstance(now := self.param_groups[gi]["lr"], Tensor) and now < lr}
        structure = self.routing.schedule.rsplit("(", 1)[-1]  # the layer's part, with its ")"
        if not warm:
            return {}, ("none (the lrs at the first step are the built ones: no warm-up; "
                        f"{structure}")
        parts = {"regmuon": "matrices", "adamw": "AdamW part"}
        which = " and ".join(parts[self.param_groups[gi]["algorithm"]] for gi in warm)
        return warm, (f"x {WARMUP_LR_FACTOR:g} on the scheduled lrs of the {which} (below the "
                      "built lrs at the first step: a warm-up, read as warm-up and decay, whose "
                      f"best peak is about twice the best constant lr; {structure}")  # fmt: skip

    def _head(self) -> tuple[bool, float] | None:
        """``(softmax?, r)`` of the output layer's gradient (:func:`softmax_head`; ``NO_HEAD``
        with no output layer), ``None`` while it has no gradient or an all-zero one."""
        outputs = {r.name for r in self.routing.routes
                   if r.reason == "output layer" and len(r.shape) >= 2}  # fmt: skip
        heads = [p for g in self.param_groups for n, p in
                 zip(g.get("param_names") or [None] * len(g["params"]), g["params"],
                     strict=True) if n in outputs]  # fmt: skip
        if not heads:
            return NO_HEAD
        if any(p.grad is None for p in heads):
            return None
        grads = [p.grad.full_tensor() if is_dtensor(p.grad) else p.grad for p in heads]
        if not any(bool(g.any()) for g in grads):  # no information (torch.distributed.
            return None  # checkpoint's state init steps with zero gradients and lr 0)
        found = [softmax_head(g) for g in grads]
        return all(ok for ok, _ in found), max(x for _, x in found)

    def _agree(self, opts: list[RegMuonOptions]) -> None:
        """With DTensor parameters, every rank must hold the same optimizer (names, shapes,
        routing, options), or they would exchange mismatched matrices: one tiny all-reduce of a
        fingerprint per step, and on a mismatch an error on every rank naming the difference."""
        key = tuple((id(g), len(g["params"]), g["algorithm"], o.matrix_view, o.layout)
                    for g, o in zip(self.param_groups, opts, strict=True))  # fmt: skip
        if getattr(self, "_fingerprint", (None,))[0] != key:  # the parameters' part, cached
            entries: list[str] = []
            for gi, (g, o) in enumerate(zip(self.param_groups, opts, strict=True)):
                names = g.get("param_names") or [None] * len(g["params"])
                for j, (p, n) in enumerate(zip(g["params"], names, strict=True)):
                    spec = self._spec(p, o) if g["algorithm"] == "regmuon" else "adamw"
                    entries.append(f"param_groups[{gi}][{j}] = {n} {tuple(p.shape)} {spec}")
            meshes = {id(p.device_mesh): p.device_mesh for g in self.param_groups
                      for p in g["params"] if is_dtensor(p)}  # fmt: skip
            self._fingerprint = (key, entries, list(meshes.values()))
        if self._fingerprint[2]:
            from .dtensor import agree_on

            groups = [f"param_groups[{gi}] options = {o!r}" for gi, o in enumerate(opts)]
            agree_on(groups + self._fingerprint[1], self._fingerprint[2])

    def _works(
        self,
        gi: int,
        o: RegMuonOptions,
        items: list[tuple[Tensor, Tensor]],
        cap: int | None,
        unit: dict[Tensor, str],
    ) -> tuple[list[Work], list[Callable[[], None]], list[tuple[tuple[int, float], ...]]]:
        """The bucket plan of a group's update, read from its momentum stacks; the stacks that
        must be installed into the state at the commit (nothing changes before); per bucket,
        ``(position, λ)`` of its members with their own decay (``_matrix_decay``)."""
        params, grads = [p for p, _ in items], [g for _, g in items]
        works, installs, owns = [], [], []
        rhos = [1.0 if p in unit else None for p in params] if unit else None
        for b in build_plan(params, [self._spec(p, o) for p in params], o.adjust_lr,
                            o.max_batch_bytes, cap, rhos):  # fmt: skip
            ps = [params[i] for i in b.members]
            dtype = o.momentum_dtype_for(ps[0].dtype)
            key = (gi, b.m, b.n, b.rho, b.layout, ps[0].dtype, ps[0].device, dtype)
            stack, bufs, install = self._stacks.stack(key, self.state, ps, b, dtype)
            if install is not None:
                installs.append(install)
            works.append(Work.of(b, ps, [grads[i] for i in b.members], bufs, stack))
            owns.append(tuple((j, self._matrix_decay[p][1]) for j, p in enumerate(ps)
                              if p in self._matrix_decay))  # fmt: skip
        return works, installs, owns

    def _adamw_group(self, o: RegMuonOptions, items: list[tuple[Tensor, Tensor]]) -> None:
        for p, _ in items:
            st = self.state[p]
            if "exp_avg" not in st:
                st["step"] = 0
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["step"] = int(st["step"]) + 1
        sts = [self.state[p] for p, _ in items]
        adamw([p for p, _ in items], [g for _, g in items], [s["exp_avg"] for s in sts],
              [s["exp_avg_sq"] for s in sts], [s["step"] for s in sts], o)  # fmt: skip

    # -- energy diagnostics ---------------------------------------------------------------------
    @torch.no_grad()
    def kinetic_energy(self) -> Tensor:
        r"""Total kinetic energy :math:`\sum K_{\varepsilon_{dyn}}(P)` in dynamics units (float64).

        For every RegMuon matrix with momentum :math:`M` (sum form; EMA buffers are divided by
        :math:`1-\beta`): the step :math:`h = \eta\rho` (:math:`\sqrt{\eta\rho}` for a potential
        that is not scale-invariant), :math:`P = -hM`, :math:`\varepsilon_{dyn} =
        h\,\varepsilon_M` (:func:`~muonflow.optim.kernel.kinetic_energy`). With
        :meth:`from_dynamics` this is exactly the flow's :math:`K(P)`, and
        ``loss + kinetic_energy()`` *before* ``step()`` is the Hamiltonian :math:`H(W_k, P_k)`
        (``docs/theory.md``, §2-3); otherwise a diagnostic. AdamW parameters contribute 0.
        """
        total = torch.zeros((), dtype=torch.float64)
        for gi, group in enumerate(self.param_groups):
            if group["algorithm"] != "regmuon":
                continue
            o = _scaled(group_options(group, self.options), "regmuon",
                        self._warmup_scale.get(gi, 1.0))
            o = _scaled(o, "regmuon", self._lr_scale.get(gi, 1.0))
            held = [(p, self.state[p]["momentum_buffer"]) for p in group["params"]
                    if "momentum_buffer" in self.state.get(p, {})]  # fmt: skip
            if held:
                total = total + kinetic_energy([m for _, m in held],
                                               [self._spec(p, o) for p, _ in held], o)  # fmt: skip
        return total

    def hamiltonian(self, loss: Tensor | float) -> Tensor:
        """``loss + kinetic_energy()``, float64 0-dim (call it after backward, before step)."""
        if isinstance(loss, Tensor):
            value = loss.detach().to(device="cpu", dtype=torch.float64)
        else:
            value = torch.tensor(float(loss), dtype=torch.float64)
        return value + self.kinetic_energy()


@contextlib.contextmanager
def _holding_interrupts() -> Iterator[None]:
    """Hold SIGINT (Ctrl-C) until the block ends, then deliver it: a step's commit is never cut
    in half. Only the main thread receives signals; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[Any] = []
    old = signal.signal(signal.SIGINT, lambda *args: held.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if held:
            signal.raise_signal(signal.SIGINT)


def _add_extras(opt: Optimizer, state_dict: dict[str, Any]) -> None:
    extras: dict[str, Any] = {"skipped_steps": cast(RegMuon, opt).skipped_steps}
    if cast(RegMuon, opt)._decay_pending is not None:
        extras["decay_pending"] = cast(RegMuon, opt)._decay_pending
    if cast(RegMuon, opt)._unit_rho:
        extras["unit_rho"] = sorted(cast(RegMuon, opt)._unit_rho.values())
    if cast(RegMuon, opt)._cautious_pending is not None:
        extras["cautious_pending"] = cast(RegMuon, opt)._cautious_pending
    if cast(RegMuon, opt)._cautious:
        extras["cautious"] = cast(RegMuon, opt)._cautious
    if cast(RegMuon, opt)._matrix_decay:
        extras["matrix_decay"] = sorted([n, lam] for n, lam in
                                        cast(RegMuon, opt)._matrix_decay.values())
    for key, factors in (("lr_scale_pending", cast(RegMuon, opt)._scale_pending),
                         ("lr_scale", cast(RegMuon, opt)._lr_scale),
                         ("warmup_pending", cast(RegMuon, opt)._warmup_pending),
                         ("warmup_scale", cast(RegMuon, opt)._warmup_scale)):  # fmt: skip
        if factors:
            extras[key] = [[gi, f] for gi, f in sorted(factors.items())]
    state_dict["regmuon"] = extras
    if state_dict["param_groups"]:  # DCP keeps param_groups, not extras: one string there too
        state_dict["param_groups"][0][GROUP_EXTRAS] = json.dumps(extras, sort_keys=True)


#: The key of ``state_dict()["param_groups"][0]`` that repeats the ``"regmuon"`` extras as one
#: JSON string: torch.distributed.checkpoint's state dicts keep a group's entries and drop other
#: top-level keys, and a string is one leaf whatever the decisions are (a DCP load fills the
#: leaves of a fresh optimizer's state dict, whose decisions are still pending).
GROUP_EXTRAS = "regmuon_extras"


def _group_extras(groups: Any) -> dict[str, Any] | None:
    """The extras a checkpoint's groups repeat (:data:`GROUP_EXTRAS`), decoded and checked to
    be a dict; ``None`` if no group holds them."""
    if not isinstance(groups, list | tuple):
        return None
    texts = [g[GROUP_EXTRAS] for g in groups if isinstance(g, dict) and GROUP_EXTRAS in g]
    if not texts:
        return None
    try:
        extras = json.loads(texts[0]) if isinstance(texts[0], str) else None
    except ValueError:
        extras = None
    if len(texts) > 1 or not isinstance(extras, dict):
        raise ValueError(f"state_dict['param_groups'][0][{GROUP_EXTRAS!r}] must be one JSON "
                         f"object (RegMuon's extras), got {texts!r}")  # fmt: skip
    return extras


def _scaled(o: RegMuonOptions, algorithm: str, factor: float) -> RegMuonOptions:
    """A group's options with its lr times ``factor`` (RegMuon(model)'s lrs by structure); kept
    per distinct options (every step scales every group) unless an lr is a Tensor, which a
    scheduler may change in place."""
    if factor == 1.0:
        return o
    if isinstance(o.lr, Tensor) or isinstance(o.adamw_lr, Tensor):
        return _scaled_now(o, algorithm, factor)
    return _scaled_cached(o, algorithm, factor)


def _scaled_now(o: RegMuonOptions, algorithm: str, factor: float) -> RegMuonOptions:
    if algorithm == "adamw":
        return o.replace(adamw_lr=o.adamw_lr * factor)
    return o.replace(lr=o.lr * factor)


_scaled_cached = functools.lru_cache(maxsize=64)(_scaled_now)


def _pending_and_decided(
    opt: RegMuon, extras: dict[str, Any], pending: str, decided: str
) -> tuple[dict[int, float] | None, dict[int, float]]:
    """A checkpoint's entries ``pending`` (what waits for the first step: the factors by
    structure, or the built lrs the schedule's test compares with) and ``decided`` (the factors
    then set), checked: each a list of ``[group index, positive finite float]`` pairs, indices of
    this optimizer's groups; not both."""
    found: list[dict[int, float]] = []
    for key in (pending, decided):
        pairs = extras.get(key, [])
        ok = isinstance(pairs, list) and all(
            isinstance(x, list | tuple) and len(x) == 2 and type(x[0]) is int
            and 0 <= x[0] < len(opt.param_groups) and type(x[1]) is float
            and math.isfinite(x[1]) and x[1] > 0.0
            for x in pairs)  # fmt: skip
        if not ok:
            raise ValueError(f"state_dict['regmuon'][{key!r}] must be a list of [group index, "
                             f"positive finite float] pairs, got {pairs!r}")  # fmt: skip
        found.append({gi: f for gi, f in pairs})
    if found[0] and found[1]:
        raise ValueError(f"state_dict['regmuon'] has both {pending!r} and {decided!r}")
    return found[0] or None, found[1]


def _cautious_of(extras: dict[str, Any]) -> tuple[float | None, float]:
    """A checkpoint's ``cautious_pending`` (the built matrix lr the first step compares with)
    and ``cautious`` (the decided λ), checked: positive finite floats, not both."""
    found = []
    for key in ("cautious_pending", "cautious"):
        x = extras.get(key)
        if x is not None and (type(x) is not float or not math.isfinite(x) or x <= 0.0):
            raise ValueError(f"state_dict['regmuon'][{key!r}] must be a positive finite float, "
                             f"got {x!r}")  # fmt: skip
        found.append(x)
    if found[0] is not None and found[1] is not None:
        raise ValueError("state_dict['regmuon'] has both 'cautious_pending' and 'cautious'")
    return found[0], found[1] or 0.0


def _unit_rho_of(opt: RegMuon, names: Any, key: str = "unit_rho") -> dict[Tensor, str]:
    """The matrices a checkpoint's ``unit_rho`` (or ``key``) names, checked: names of this
    optimizer's RegMuon matrices."""
    if names is None:
        return {}
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"state_dict['regmuon'][{key!r}] must be a list of parameter names, "
                         f"got {names!r}")  # fmt: skip
    mine = {n: p for g in opt.param_groups if g["algorithm"] == "regmuon" and "param_names" in g
            for n, p in zip(g["param_names"], g["params"], strict=True)}  # fmt: skip
    unknown = [n for n in names if n not in mine]
    if unknown:
        raise ValueError(f"state_dict['regmuon'][{key!r}] names {unknown}, not matrices "
                         "of this optimizer's RegMuon part")  # fmt: skip
    return {mine[n]: n for n in names}


def _matrix_decay_of(opt: RegMuon, extras: dict[str, Any]) -> dict[Tensor, tuple[str, float]]:
    """A checkpoint's ``matrix_decay``, ``[[name, λ], ...]`` (the matrices with their own decay),
    checked: names of this optimizer's RegMuon matrices, each once, with a positive finite float;
    ``{}`` if absent."""
    entry = extras.get("matrix_decay")
    if entry is None:
        return {}
    ok = isinstance(entry, list) and entry and all(
        isinstance(x, list) and len(x) == 2 and isinstance(x[0], str) and type(x[1]) is float
        and math.isfinite(x[1]) and x[1] > 0.0 for x in entry)  # fmt: skip
    if not ok or len({x[0] for x in entry}) != len(entry):
        raise ValueError("state_dict['regmuon']['matrix_decay'] must be a list of [parameter "
                         f"name, positive finite float] pairs, each name once, got {entry!r}")
    mats = _unit_rho_of(opt, [x[0] for x in entry], "matrix_decay")
    lams = dict(entry)
    return {p: (n, lams[n]) for p, n in mats.items()}


def _input_matrices(
    model: nn.Module, routing: Routing, pairs: list[tuple[str, Tensor]]
) -> tuple[tuple[str, Tensor], ...]:
    """``(name, parameter)`` of the matrices of ``model``'s input layer
    (:func:`~muonflow.optim.routing.input_layer`) that RegMuon maps."""
    layer = input_layer(model)
    if layer is None:
        return ()
    return tuple((name, p) for route, (name, p) in zip(routing.routes, pairs, strict=True)
                 if route.algorithm == "regmuon" and name.startswith(f"{layer}."))  # fmt: skip


def _check_and_align(optimizer: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """The last load pre hook: check the checkpoint whole, match named parameters by name, and
    take out RegMuon's extras (restored by ``__setstate__`` during the load)."""
    opt = cast(RegMuon, optimizer)
    if "regmuon" not in state_dict and isinstance(state_dict, dict):  # DCP: the groups' copy
        extras = _group_extras(state_dict.get("param_groups"))
        if extras is not None:
            state_dict = {**state_dict, "regmuon": extras}
    groups = check_state_dict(state_dict, opt.param_groups, opt._specs, opt.options)
    groups = [{k: v for k, v in g.items() if k != GROUP_EXTRAS} for g in groups]
    opt.__dict__["_loading_skipped"] = int(state_dict.get("regmuon", {}).get("skipped_steps", 0))
    if "regmuon" in state_dict:  # its extras say what is pending (nothing: decided)
        opt.__dict__["_loading_decay"] = state_dict["regmuon"].get("decay_pending")
        opt.__dict__["_loading_unit"] = _unit_rho_of(opt, state_dict["regmuon"].get("unit_rho"))
        opt.__dict__["_loading_cautious"] = _cautious_of(state_dict["regmuon"])
        opt.__dict__["_loading_matrix_decay"] = _matrix_decay_of(opt, state_dict["regmuon"])
        for attr, keys in (("_loading_scale", ("lr_scale_pending", "lr_scale")),
                           ("_loading_warmup", ("warmup_pending", "warmup_scale"))):
            opt.__dict__[attr] = _pending_and_decided(opt, state_dict["regmuon"], *keys)
    return {**{k: v for k, v in state_dict.items() if k != "regmuon"}, "param_groups": [
        {"algorithm": g["algorithm"], **saved}  # old checkpoints without "algorithm"
        for g, saved in zip(opt.param_groups, groups, strict=True)]}  # fmt: skip


assert set(GROUP_KEYS) <= set(DEFAULTS.group("regmuon"))
# Eager inside torch.compile (a graph break), as torch.optim does for its non-traceable
# methods: torch._disable_dynamo imports torch._dynamo at the first call, not at import.
RegMuon.step = torch._disable_dynamo(RegMuon.step)  # type: ignore[method-assign]
