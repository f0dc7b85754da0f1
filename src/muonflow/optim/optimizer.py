r"""The :class:`RegMuon` optimizer: routing, grouping and packing, state, diagnostics.

The arithmetic lives in :mod:`muonflow.optim.functional`; which parameter gets which update
in :mod:`muonflow.optim.routing`; the checks of groups and checkpoints in
:mod:`muonflow.optim._state`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .._checks import check_choice
from ..spectral import POTENTIALS
from . import diagnostics
from ._packing import MomentumPacks
from ._state import (
    GROUP_OPTIONS,
    NONFINITE_POLICIES,
    check_state_dict,
    collect_updates,
    split_group,
    validate_group,
)
from .defaults import DEFAULTS
from .functional import (
    adamw as adamw_kernel,
)
from .functional import (
    auto_workspace_cap,
    check_max_batch_bytes,
    check_number,
    dtensor_layout,
    lr_factor,
    matrix_shape,
    orthogonalize,
    regmuon,
)
from .routing import Routing, make_rule, route_module, warn_unrouted

__all__ = ["RegMuon"]

# Attributes that are not torch.optim.Optimizer state but survive deepcopy and pickle.
_EXTRA_ATTRS: dict[str, Callable[[], Any]] = {
    "on_nonfinite": lambda: DEFAULTS.on_nonfinite,
    "max_batch_bytes": lambda: DEFAULTS.max_batch_bytes,
    "skipped_steps": lambda: 0,
    "_adamw_lr": lambda: DEFAULTS.adamw_lr,
    "_adamw_weight_decay": lambda: DEFAULTS.weight_decay,
    "_adamw_rule": lambda: make_rule(None)[0],
    "_explicit_rule": lambda: False,
    "_specs": dict,
    "routing": Routing,
}


class RegMuon(Optimizer):
    r"""Regularized Muon for a whole model: RegMuon on hidden matrices, AdamW on the rest.

    .. math::
        \begin{aligned}
        &\rule{110mm}{0.4pt} \\
        &\textbf{input}: \eta \text{ (lr)},\ \beta \text{ (momentum)},\
          \varepsilon \text{ (eps)},\ \lambda \text{ (weight decay)},\
          K \text{ (potential)},\ \rho(m, n) \text{ (adjust\_lr)} \\
        &\textbf{initialize}: M_0 \leftarrow 0 \\
        &\textbf{for}\ t = 1, 2, \ldots: \\
        &\hspace{5mm} g_t \leftarrow \nabla f_t(W_{t-1}) \\
        &\hspace{5mm} M_t \leftarrow \beta M_{t-1} + g_t \quad
          \text{(EMA form: } M_t \leftarrow \beta M_{t-1} + (1-\beta) g_t) \\
        &\hspace{5mm} X_t \leftarrow g_t + \beta M_t \ \text{if nesterov (EMA: } (1-\beta) g_t
          + \beta M_t),\ \text{else } M_t \\
        &\hspace{5mm} \varepsilon_t \leftarrow \varepsilon\ \text{(absolute)}\ \text{or}\
          \varepsilon\, \|X_t\|_F / \sqrt{\min(m, n)}\ \text{(relative)} \\
        &\hspace{5mm} W_t \leftarrow (1 - \eta\lambda) W_{t-1}
          - \eta\, \rho(m, n)\, \nabla K_{\varepsilon_t}(X_t) \\
        &\rule{110mm}{0.4pt}
        \end{aligned}

    :math:`\nabla K_\varepsilon` is applied to each matrix separately, batched
    (:func:`~muonflow.optim.regmuon`): ``relativistic`` (default)
    :math:`X (X^\top X + \varepsilon^2 I)^{-1/2}`, ``huber`` :math:`U \min(\Sigma/\varepsilon, 1)
    V^\top`, ``nuclear`` :math:`U V^\top` (exact polar factor: ``torch.optim.Muon``'s rule
    without the Newton–Schulz approximation), ``quadratic`` the identity (heavy ball).

    **It is exactly the discretized Hamiltonian flow** (SPEC §3): with :math:`\eta = h`,
    :math:`\beta = 1 - \gamma h`, absolute :math:`\varepsilon = \varepsilon_{dyn}/h`, no weight
    decay, no Nesterov and :math:`\rho = 1`, the iterates are the symplectic-Euler scheme
    :math:`P \leftarrow (1-\gamma h) P - h\nabla f(W)`,
    :math:`W \leftarrow W + h \nabla K_{\varepsilon_{dyn}}(P)` with :math:`P = -hM`
    (:meth:`from_dynamics`).

    **Routing** (:mod:`muonflow.optim.routing`, ``docs/optimizer.md``). ``RegMuon(model)``
    routes by structure: embeddings and parameters tied to them, the output layer, vectors and
    parameters a module holds without declaring them weight matrices go to the built-in AdamW;
    the declared weight matrices of known layers (``Linear``, HF ``Conv1D``, conv kernels,
    attention, RNNs, stacked experts) to RegMuon, each with its matrix view and layout. It
    gives two groups, ``[RegMuon, AdamW]``. Named parameters, tensors and dict groups work too:
    each group is split by ``param_groups[i]["algorithm"]``, names are routed by ``adamw``, and
    matrices with neither a name nor a module go to RegMuon with one ``RoutingWarning``.
    ``print(opt.routing)`` shows every decision. Tied parameters are updated once; parameters
    without ``.grad`` or without elements are skipped.

    **ε and the momentum form.** ``eps_mode="absolute"`` uses ε as is, in the units of the
    momentum's singular values: exact Hamiltonian dynamics, and the kinetic energy of
    :meth:`kinetic_energy` is the paper's. With EMA momentum the buffer is
    :math:`B = (1-\beta) M`, so EMA with ``eps = ε_B`` equals sum form with
    ``eps = ε_B / (1-β)``. ``eps_mode="relative"`` uses ε times the RMS singular value of each
    map input: the update is invariant under rescaling the loss, and sum and EMA forms agree.

    **Batched, all or nothing.** Same-shape matrices of a group share one packed momentum
    tensor (each ``state["momentum_buffer"]`` is a view of it) and one batched map call, or a
    few chunks under ``max_batch_bytes``. :meth:`step`, :meth:`add_param_group` and
    :meth:`load_state_dict` check everything before changing anything; options and routing
    survive ``copy.deepcopy`` and pickling.

    Args:
        params: an ``nn.Module`` (routed by structure), ``(name, parameter)`` pairs, tensors,
            or dicts defining parameter groups; groups may override every option below except
            ``adamw``, ``output``, ``on_nonfinite`` and ``max_batch_bytes`` (and may give
            ``"adamw_lr"``/``"adamw_weight_decay"``, or ``"algorithm"``).
        lr: ``η`` of the matrices.
        momentum: ``β`` in ``[0, 1]`` (sum form; ``[0, 1)`` for EMA).
        eps: ``ε > 0`` (relative by default: singular directions weaker than ``ε`` times the
            RMS singular value are damped instead of amplified). Ignored by
            ``nuclear``/``quadratic``.
        eps_mode: ``"relative"`` or ``"absolute"``.
        potential: a key of :data:`muonflow.spectral.POTENTIALS`.
        momentum_form: ``"sum"`` (the paper's) or ``"ema"`` (``torch.optim.Muon``'s).
        nesterov: use the Nesterov input.
        weight_decay: decoupled weight decay ``λ`` of both parts.
        adjust_lr: key of :data:`~muonflow.optim.ADJUST_LR`: ``"original"``
            ``√max(1, m/n)``, ``"match_rms_adamw"`` ``0.2√max(m, n)``, or ``"none"``.
        tol: requested relative accuracy of the map ``∇K`` (loose values let
            ``method="auto"`` choose a fast matmul-only path; ``None``: exact to the dtype's
            round-off, as :meth:`from_dynamics` uses).
        method: ``"auto"`` or a key of :data:`muonflow.polar.POLAR_METHODS`.
        layout: for parameters given without a module: ``"out_in"`` (``nn.Linear``) or
            ``"in_out"`` (``Conv1D``-style ``[in, out]``); only ``ρ`` depends on it.
        matrix_view: for parameters given without a module: ``"auto"``, ``"conv"``,
            ``"batch"`` or ``"split:K"`` (see :func:`~muonflow.optim.matrix_shape`).
        adamw_lr: ``η`` of the AdamW part.
        adamw_betas: ``(β1, β2)`` of AdamW.
        adamw_eps: AdamW's ``ϵ``.
        adamw_weight_decay: AdamW's ``λ`` (default: ``weight_decay``).
        adamw: more matrices for AdamW: a predicate ``(name | None, param) -> bool`` or an
            iterable of regular expressions searched in the names. Without a model, ``None``
            means :func:`~muonflow.optim.default_adamw_rule` and ``()`` sends every matrix to
            RegMuon; with a model, it adds to the structural rules.
        output: with a model: its output layer(s) (a module, a qualified name, or a list;
            ``()`` for none), overriding the automatic choice.
        on_nonfinite: ``"raise"``: a NaN/Inf gradient raises ``ValueError`` naming the
            parameter, with every parameter and all optimizer state unchanged; ``"skip"``: the
            step is skipped (nothing changes) and counted in :attr:`skipped_steps`. Non-finite
            optimizer state (a corrupt momentum buffer) always raises.
        max_batch_bytes: ``"auto"``, an int (cap on the bytes of one batched map input) or
            ``None`` (one call per stack). Results do not depend on it beyond round-off.

    Defaults come from :data:`~muonflow.optim.DEFAULTS`.

    Example:
        >>> # xdoctest: +SKIP
        >>> opt = RegMuon(model)               # routed by structure
        >>> print(opt.routing)                 # which parameter went where, and why
        >>> loss = loss_fn(model(x), y)
        >>> loss.backward()
        >>> H = opt.hamiltonian(loss)          # optional: loss + kinetic energy, before step()
        >>> opt.step(); opt.zero_grad()

    ``torch.compile``: :meth:`step` runs eagerly (a graph break) inside compiled code; compile
    the model or the training step around it.
    """

    def __init__(
        self,
        params: Any,
        lr: float = DEFAULTS.lr,
        momentum: float = DEFAULTS.momentum,
        eps: float = DEFAULTS.eps,
        *,
        eps_mode: str = DEFAULTS.eps_mode,
        potential: str = DEFAULTS.potential,
        momentum_form: str = DEFAULTS.momentum_form,
        nesterov: bool = DEFAULTS.nesterov,
        weight_decay: float = DEFAULTS.weight_decay,
        adjust_lr: str = DEFAULTS.adjust_lr,
        tol: float | None = DEFAULTS.tol,
        method: str = DEFAULTS.method,
        layout: str = DEFAULTS.layout,
        matrix_view: str = DEFAULTS.matrix_view,
        adamw_lr: float = DEFAULTS.adamw_lr,
        adamw_betas: tuple[float, float] = DEFAULTS.adamw_betas,
        adamw_eps: float = DEFAULTS.adamw_eps,
        adamw_weight_decay: float | None = None,
        adamw: Callable[[str | None, Tensor], bool] | Iterable[str] | None = None,
        output: Any = None,
        on_nonfinite: str = DEFAULTS.on_nonfinite,
        max_batch_bytes: int | str | None = DEFAULTS.max_batch_bytes,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "eps": eps,
            "eps_mode": eps_mode,
            "potential": potential,
            "momentum_form": momentum_form,
            "nesterov": nesterov,
            "weight_decay": weight_decay,
            "adjust_lr": adjust_lr,
            "tol": tol,
            "method": method,
            "layout": layout,
            "matrix_view": matrix_view,
            "betas": tuple(adamw_betas) if isinstance(adamw_betas, list) else adamw_betas,
            "adamw_eps": adamw_eps,
        }
        assert tuple(defaults) == GROUP_OPTIONS
        validate_group({**defaults, "algorithm": "regmuon"})
        adamw_wd = weight_decay if adamw_weight_decay is None else adamw_weight_decay
        validate_group({**defaults, "algorithm": "adamw", "lr": adamw_lr, "weight_decay": adamw_wd})
        self._adamw_lr = adamw_lr
        self._adamw_weight_decay = adamw_wd
        self._adamw_rule, self._explicit_rule = make_rule(adamw)
        self.on_nonfinite = check_choice(on_nonfinite, "on_nonfinite", NONFINITE_POLICIES)
        self.max_batch_bytes = check_max_batch_bytes(max_batch_bytes)
        self.skipped_steps = 0
        # per-parameter (matrix view, layout) from the structure; others use their group's
        self._specs: dict[Tensor, tuple[str, str]] = {}
        self.routing = Routing()
        self._packs = MomentumPacks()  # the stacked momentum storage
        self._unrouted = 0
        model_routing = None
        if isinstance(params, nn.Module):
            extra = self._adamw_rule if self._explicit_rule else None
            model_routing, pairs = route_module(params, output=output, extra_adamw=extra)
            params = self._model_groups(model_routing, pairs, adamw_lr, adamw_wd)
        elif output is not None:
            raise TypeError("output= needs a model: RegMuon(model, output=...)")
        self._in_init = True
        try:
            super().__init__(params, defaults)
        finally:
            self._in_init = False
        if model_routing is not None:
            self.routing = model_routing
        else:
            self.routing.source = "named parameters" if any(
                "param_names" in g for g in self.param_groups) else "parameters"  # fmt: skip
            warn_unrouted(self._unrouted, stacklevel=3)
        del self._unrouted

    def _model_groups(
        self, routing: Routing, pairs: list[tuple[str, Tensor]], adamw_lr: float, adamw_wd: float
    ) -> list[dict[str, Any]]:
        groups: dict[str, dict[str, Any]] = {
            "regmuon": {"params": [], "param_names": [], "algorithm": "regmuon"},
            "adamw": {"params": [], "param_names": [], "algorithm": "adamw", "lr": adamw_lr,
                      "weight_decay": adamw_wd},
        }  # fmt: skip
        for route, (name, p) in zip(routing.routes, pairs, strict=True):
            groups[route.algorithm]["params"].append((name, p))
            if route.algorithm == "regmuon":
                assert route.view is not None and route.layout is not None
                self._specs[p] = (route.view, route.layout)
        return [groups["regmuon"], groups["adamw"]]

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
        adjustment and exact maps (``tol=None``), under :math:`P = -hM`. (``quadratic``: its
        map is not scale-invariant, so :math:`\eta = h^2` instead.) Every parameter must be a
        matrix (or a stack ``[..., m, n]``); none is routed to AdamW.

        Args:
            params: the parameters ``W`` (tensors ``[..., m, n]`` or named pairs).
            h: step ``> 0``; gamma: damping ``γ >= 0`` with ``γh <= 1``; eps: the dynamics'
                ``ε > 0`` (ignored by ``nuclear``/``quadratic``).
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
        check_choice(potential, "potential", POTENTIALS)
        items = [params] if isinstance(params, Tensor) else list(params)
        if not items or not isinstance(items[0], dict):
            items = [{"params": items}]
        groups = [{**dict(g), "algorithm": "regmuon"} for g in items]
        opt = cls(
            groups,
            lr=h * h if potential == "quadratic" else h,
            momentum=1 - gamma * h,
            eps=eps / h,
            eps_mode="absolute",
            potential=potential,
            momentum_form="sum",
            nesterov=False,
            weight_decay=0.0,
            adjust_lr="none",
            tol=None,
            matrix_view="batch",
            adamw=(),
        )
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
                opt.state[p]["momentum_buffer"] = (P.detach() / -h).to(p.dtype).clone()  # M = -P/h
        return opt

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; unless it names its ``"algorithm"``, it is split into RegMuon + AdamW.

        Everything is checked first (parameters, options, matrix views); on an error the
        optimizer is unchanged.
        """
        parts, routes = split_group(
            param_group, defaults=self.defaults, rule=self._adamw_rule,
            explicit=self._explicit_rule, specs=self._specs, adamw_lr=self._adamw_lr,
            adamw_weight_decay=self._adamw_weight_decay, param_groups=self.param_groups,
        )  # fmt: skip
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
        super().__setstate__(state)
        for key, default in _EXTRA_ATTRS.items():
            if key not in self.__dict__:
                self.__dict__[key] = default()
        self._packs = MomentumPacks()
        for group in self.param_groups:  # old checkpoints: new options take their defaults
            for key in GROUP_OPTIONS:
                group.setdefault(key, self.defaults[key])
            group.setdefault("algorithm", "regmuon")

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["regmuon"] = {"skipped_steps": self.skipped_steps}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a checkpoint, after checking all of it (groups, options, state tensors' shapes
        and values, step counts): a bad checkpoint raises with nothing changed."""
        check_state_dict(state_dict, self.param_groups, self._specs, self.defaults)
        extra = state_dict.get("regmuon", {})
        sd = {k: v for k, v in state_dict.items() if k != "regmuon"}
        sd["param_groups"] = [  # old checkpoints without "algorithm": this optimizer's
            {"algorithm": g["algorithm"], **saved}
            for g, saved in zip(self.param_groups, state_dict["param_groups"], strict=True)
        ]
        super().load_state_dict(sd)
        for st in self.state.values():
            if "step" in st:
                st["step"] = int(st["step"])
        self.skipped_steps = int(extra.get("skipped_steps", 0))
        self._packs = MomentumPacks()

    # -- the step -------------------------------------------------------------------------------
    def _spec(self, p: Tensor, group: Mapping[str, Any]) -> tuple[str, str]:
        """``(matrix view, layout)`` of a RegMuon parameter."""
        return self._specs.get(p) or (group["matrix_view"], group["layout"])

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one step (see the class docstring); returns the closure's loss if given.

        All or nothing: everything is checked before any parameter or state changes.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = collect_updates(self.param_groups, self.state, self.on_nonfinite)
        if work is None:
            self.skipped_steps += 1
            return loss
        cap = None
        if self.max_batch_bytes == "auto":
            cap = auto_workspace_cap(
                matrix_shape(p.shape, self._spec(p, group)[0])[1:]
                for group, items in zip(self.param_groups, work, strict=True)
                if group["algorithm"] == "regmuon"
                for p, _ in items
            )
        for gi, (group, items) in enumerate(zip(self.param_groups, work, strict=True)):
            if not items:
                continue
            if group["algorithm"] == "adamw":
                self._adamw_group(group, items)
            else:
                self._regmuon_group(gi, group, items, cap)
        return loss

    def _adamw_group(self, group: dict[str, Any], items: list[tuple[Tensor, Tensor]]) -> None:
        params, grads, m, v, steps = [], [], [], [], []
        for p, g in items:
            st = self.state[p]
            if "exp_avg" not in st:
                st["step"] = 0
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["step"] = int(st["step"]) + 1
            params.append(p)
            grads.append(g)
            m.append(st["exp_avg"])
            v.append(st["exp_avg_sq"])
            steps.append(st["step"])
        adamw_kernel(
            params,
            grads,
            m,
            v,
            steps,
            lr=group["lr"],
            betas=tuple(group["betas"]),
            eps=group["adamw_eps"],
            weight_decay=group["weight_decay"],
        )

    def _map_stack(self, X: Tensor, group: dict[str, Any]) -> Tensor:
        """``∇K(X)`` of a stack ``X: [B, m, n]`` with ``group``'s options: every map call of a
        step goes through here (a distributed variant overrides this one method)."""
        return orthogonalize(
            X, potential=group["potential"], eps=group["eps"], eps_mode=group["eps_mode"],
            tol=group["tol"], method=group["method"],
        )  # fmt: skip

    def _regmuon_group(
        self, gi: int, group: dict[str, Any], items: list[tuple[Tensor, Tensor]], cap: int | None
    ) -> None:
        specs = [self._spec(p, group) for p, _ in items]
        packs: dict[tuple[Any, ...], list[tuple[Tensor, int]]] = {}
        for (p, _), (view, layout) in zip(items, specs, strict=True):
            k, m, n = matrix_shape(p.shape, view)
            rho = lr_factor(m, n, layout, group["adjust_lr"])
            dl = dtensor_layout(p, view)  # None unless p is a DTensor (FSDP2)
            packs.setdefault((m, n, p.dtype, p.device, rho, dl), []).append((p, k))
        for key, members in packs.items():
            params, counts = [p for p, _ in members], [k for _, k in members]
            self._packs.pack(self.state, gi, key, params, counts, key[:2], dlayout=key[5])
        regmuon(
            [p for p, _ in items],
            [g for _, g in items],
            [self.state[p]["momentum_buffer"] for p, _ in items],
            lr=group["lr"],
            momentum=group["momentum"],
            eps=group["eps"],
            eps_mode=group["eps_mode"],
            potential=group["potential"],
            momentum_form=group["momentum_form"],
            nesterov=group["nesterov"],
            weight_decay=group["weight_decay"],
            adjust_lr=group["adjust_lr"],
            tol=group["tol"],
            method=group["method"],
            layout=[s[1] for s in specs],
            matrix_view=[s[0] for s in specs],
            max_batch_bytes=self.max_batch_bytes,
            workspace_cap=cap,
            map_fn=functools.partial(self._map_stack, group=group),
            check_finite=False,  # checked by _prepare, for every group before any change
        )

    # -- energy diagnostics ---------------------------------------------------------------------
    @torch.no_grad()
    def kinetic_energy(self) -> Tensor:
        r"""Total kinetic energy :math:`\sum K_{\varepsilon_{dyn}}(P)` in dynamics units (float64).

        For every RegMuon matrix with momentum :math:`M` (sum form; EMA buffers are divided by
        :math:`1-\beta`), the dynamics step is :math:`h = \eta\rho` (the effective lr;
        ``quadratic``: :math:`h = \sqrt{\eta\rho}`), the momentum :math:`P = -hM` and the scale
        :math:`\varepsilon_{dyn} = h\,\varepsilon_M` (absolute; relative: ε times the RMS
        singular value of ``M``). With :meth:`from_dynamics` (absolute ε, no Nesterov, no weight
        decay, constant lr) this is exactly the :math:`K(P)` of SPEC §3, and
        ``loss + kinetic_energy()`` evaluated *before* ``step()`` is the Hamiltonian
        :math:`H(W_k, P_k)` (non-increasing when ``h`` is small enough; see
        :mod:`muonflow.dynamics`). Otherwise it is a diagnostic. AdamW parameters contribute 0.
        """
        return diagnostics.total_kinetic_energy(self.param_groups, self.state, self._spec)

    def hamiltonian(self, loss: Tensor | float) -> Tensor:
        """``loss + kinetic_energy()``, float64 0-dim (call it after backward, before step)."""
        if isinstance(loss, Tensor):
            value = loss.detach().to(device="cpu", dtype=torch.float64)
        else:
            value = torch.tensor(float(loss), dtype=torch.float64)
        return value + self.kinetic_energy()


# Eager inside torch.compile (a graph break), as torch.optim does for its non-traceable
# methods: torch._disable_dynamo imports torch._dynamo at the first call, not at import.
RegMuon.step = torch._disable_dynamo(RegMuon.step)  # type: ignore[method-assign]
