"""Validation of RegMuon's groups and state: everything is checked before anything changes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_choice
from .functional import (
    LAYOUTS,
    check_matrix_view,
    first_nonfinite,
    is_dtensor,
    matrix_shape,
    validate_adamw_options,
    validate_regmuon_options,
)
from .routing import Route, route_params

ALGORITHMS = ("regmuon", "adamw")
NONFINITE_POLICIES = ("raise", "skip")

#: The per-group options (the keys of ``defaults``; groups may override each).
GROUP_OPTIONS = (
    "lr",
    "momentum",
    "eps",
    "eps_mode",
    "potential",
    "momentum_form",
    "nesterov",
    "weight_decay",
    "adjust_lr",
    "tol",
    "method",
    "layout",
    "matrix_view",
    "betas",
    "adamw_eps",
)

#: The state keys of a parameter, per algorithm (all present or none).
STATE_KEYS = {"regmuon": ("momentum_buffer",), "adamw": ("step", "exp_avg", "exp_avg_sq")}


def validate_group(group: Mapping[str, Any]) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the option and value if ``group`` is invalid."""
    check_choice(group["algorithm"], "algorithm", ALGORITHMS)
    if group["algorithm"] == "adamw":
        validate_adamw_options(
            lr=group["lr"], betas=group["betas"], eps=group["adamw_eps"],
            weight_decay=group["weight_decay"],
        )  # fmt: skip
        return
    validate_regmuon_options(**{k: group[k] for k in (
        "lr", "momentum", "eps", "eps_mode", "potential", "momentum_form", "nesterov",
        "weight_decay", "adjust_lr", "tol", "method")})  # fmt: skip
    check_choice(group["layout"], "layout", LAYOUTS)
    check_matrix_view(group["matrix_view"])


def param_label(group: Mapping[str, Any], gi: int, j: int) -> str:
    names = group.get("param_names")
    if names:
        return repr(names[j])
    return f"param_groups[{gi}]['params'][{j}]"


def _check_tensor_like(value: Any, p: Tensor, what: str, *, exact: bool) -> None:
    """``value`` is a real floating tensor of ``p``'s shape (``exact``: and dtype, device)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{what} must be a Tensor, got {type(value).__name__}")
    if value.is_complex() or not value.is_floating_point():
        raise TypeError(f"{what} must be a real floating tensor, got {value.dtype}")
    if value.shape != p.shape:
        raise ValueError(f"{what} has shape {tuple(value.shape)}, expected {tuple(p.shape)}")
    if is_dtensor(value) != is_dtensor(p):  # e.g. a single-process checkpoint into FSDP2
        raise ValueError(
            f"{what} is {'a DTensor' if is_dtensor(value) else 'a plain tensor'} but the "
            f"parameter is {'a DTensor' if is_dtensor(p) else 'a plain tensor'}: load sharded "
            "state with torch.distributed.checkpoint.state_dict.set_state_dict (a single-process "
            "state dict with options=StateDictOptions(full_state_dict=True))"
        )
    if value.is_sparse or value.layout != torch.strided:
        raise ValueError(f"{what} has a {value.layout} layout; only strided is supported")
    if exact and (value.dtype != p.dtype or value.device != p.device):
        raise ValueError(
            f"{what} is {value.dtype} on {value.device}; the parameter is {p.dtype} on {p.device}"
        )


def check_param_state(
    state: Any, p: Tensor, algorithm: str, label: str, *, exact: bool = True, finite: bool = False
) -> None:
    """One parameter's state: the keys of its algorithm (all or none), tensors of its shape,
    step counts ``>= 0``; ``finite``: no NaN/Inf. Raises naming the parameter and the key."""
    if not isinstance(state, Mapping):
        raise TypeError(f"the state of {label} must be a dict, got {type(state).__name__}")
    want = STATE_KEYS[algorithm]
    keys = set(state)
    if keys and keys != set(want):
        raise ValueError(
            f"the state of {label} ({algorithm}) has keys {sorted(keys)}; expected "
            f"{list(want)} or none (was it saved by an optimizer that routed it elsewhere?)"
        )
    for key in want:
        if key not in state:
            continue
        value = state[key]
        what = f"state[{key!r}] of {label}"
        if key == "step":
            v = value.item() if isinstance(value, Tensor) and value.numel() == 1 else value
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{what} must be an int >= 0, got {value!r}")
            continue
        _check_tensor_like(value, p, what, exact=exact)
        if finite and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{what} has NaN or Inf entries")
        if key == "exp_avg_sq" and bool((value < 0).any()):
            raise ValueError(f"{what} has negative entries")


def check_state_dict(
    state_dict: Any,
    groups: Sequence[Mapping[str, Any]],
    specs: Mapping[Tensor, tuple[str, str]],
    defaults: Mapping[str, Any],
) -> None:
    """A checkpoint fits these groups: same structure and algorithms, valid options, valid
    state (keys, shapes, finite values, step counts), valid ``"regmuon"`` extras. Raises a
    ``ValueError``/``TypeError`` saying what and where; changes nothing."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
    for key in ("state", "param_groups"):
        if key not in state_dict:
            raise ValueError(f"state_dict has no {key!r} entry")
    saved_groups, state = state_dict["param_groups"], state_dict["state"]
    if not isinstance(saved_groups, Sequence) or not isinstance(state, Mapping):
        raise TypeError("state_dict['param_groups'] must be a list and ['state'] a dict")
    if len(saved_groups) != len(groups):
        raise ValueError(
            f"the checkpoint has {len(saved_groups)} parameter groups, this optimizer {len(groups)}"
        )
    index: dict[Any, tuple[Tensor, str, str]] = {}
    for gi, (saved, group) in enumerate(zip(saved_groups, groups, strict=True)):
        if not isinstance(saved, Mapping) or "params" not in saved:
            raise ValueError(f"param_groups[{gi}] of the checkpoint is not a group: {saved!r}")
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(
                f"param_groups[{gi}] of the checkpoint has {len(saved['params'])} parameters, "
                f"this optimizer's {len(group['params'])}"
            )
        merged = {**defaults, "algorithm": group["algorithm"], **saved}
        if merged["algorithm"] != group["algorithm"]:
            raise ValueError(
                f"param_groups[{gi}] of the checkpoint is {merged['algorithm']!r}, this "
                f"optimizer's is {group['algorithm']!r}: the routing differs (build the "
                "optimizer the way the checkpoint's was built)"
            )
        try:
            validate_group(merged)
        except (TypeError, ValueError) as e:
            raise type(e)(f"param_groups[{gi}] of the checkpoint: {e}") from None
        for j, (pid, p) in enumerate(zip(saved["params"], group["params"], strict=True)):
            if pid in index:
                raise ValueError(f"the checkpoint lists parameter id {pid!r} twice")
            index[pid] = (p, group["algorithm"], param_label(group, gi, j))
            if group["algorithm"] == "regmuon":
                view = specs.get(p, (merged["matrix_view"], merged["layout"]))[0]
                try:
                    matrix_shape(p.shape, view)
                except ValueError as e:
                    raise ValueError(f"param_groups[{gi}] of the checkpoint: {e}") from None
    for pid, st in state.items():
        if pid not in index:
            raise ValueError(f"the checkpoint has state for unknown parameter id {pid!r}")
        p, algorithm, label = index[pid]
        # load_state_dict casts floating state to the parameter's dtype and device
        check_param_state(st, p, algorithm, label, exact=False, finite=True)
    extra = state_dict.get("regmuon", {})
    if not isinstance(extra, Mapping):
        raise TypeError(f"state_dict['regmuon'] must be a dict, got {extra!r}")
    skipped = extra.get("skipped_steps", 0)
    if isinstance(skipped, bool) or not isinstance(skipped, int) or skipped < 0:
        raise ValueError(
            f"state_dict['regmuon']['skipped_steps'] must be an int >= 0, got {skipped!r}"
        )


# -- parameter groups ----------------------------------------------------------------------------
def check_items(
    raw: Any, param_groups: Sequence[Mapping[str, Any]]
) -> list[tuple[str | None, Tensor]]:
    """``(name, tensor)`` pairs of a group's ``"params"``, checked, tied duplicates removed."""
    if isinstance(raw, nn.Module):
        raise TypeError("pass a model as RegMuon(model), not inside a parameter group")
    if isinstance(raw, set):
        raise TypeError("parameters must be an ordered collection (a list), not a set")
    raw = [raw] if isinstance(raw, Tensor) else list(raw)
    seen: set[int] = set()
    items: list[tuple[str | None, Tensor]] = []
    existing = {id(p) for g in param_groups for p in g["params"]}
    for item in raw:
        name, p = item if isinstance(item, tuple) and len(item) == 2 else (None, item)
        if not isinstance(p, Tensor):
            raise TypeError(f"RegMuon can only optimize Tensors, got {type(p).__name__}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"parameter names must be strings, got {name!r}")
        if p.is_complex():
            raise TypeError(f"RegMuon does not support complex parameters ({p.dtype})")
        if not p.is_floating_point():
            raise TypeError(f"RegMuon needs floating parameters, got {p.dtype}")
        if not (p.is_leaf or p.retains_grad):
            raise ValueError("can't optimize a non-leaf Tensor")
        if id(p) in existing:
            raise ValueError(f"parameter {name or tuple(p.shape)} is already in another group")
        if id(p) in seen:
            continue  # a tied parameter listed twice: updated once
        seen.add(id(p))
        items.append((name, p))
    named = {n is not None for n, _ in items}
    if len(named) > 1:
        raise ValueError("all parameters of a group must have names, or none")
    if named and any(("param_names" in g) != (True in named) for g in param_groups):
        raise ValueError("all parameter groups must have names, or none")
    return items


def split_group(
    param_group: Any,
    *,
    defaults: Mapping[str, Any],
    rule: Callable[[str | None, Tensor], bool],
    explicit: bool,
    specs: Mapping[Tensor, tuple[str, str]],
    adamw_lr: float,
    adamw_weight_decay: float,
    param_groups: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[Route]]:
    """A user group as checked RegMuon/AdamW groups (unless it names its ``"algorithm"``) and
    the routing of its parameters; raises (changing nothing) on any invalid entry."""
    if not isinstance(param_group, dict):
        raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
    if "params" not in param_group:
        raise ValueError("param_group has no 'params'")
    group = dict(param_group)
    items = check_items(group.pop("params"), param_groups)
    adamw_lr = group.pop("adamw_lr", adamw_lr)
    adamw_wd = group.pop("adamw_weight_decay", adamw_weight_decay)
    algorithm = group.pop("algorithm", None)
    view = group.get("matrix_view", defaults["matrix_view"])
    layout = group.get("layout", defaults["layout"])
    if algorithm is None:
        routes = route_params(items, rule, explicit, view, layout)
    else:
        check_choice(algorithm, "algorithm", ALGORITHMS)
        routes = [
            Route(n if n is not None else f"params[{i}]", tuple(p.shape), algorithm,
                  "group algorithm", "",
                  *(specs.get(p, (view, layout)) if algorithm == "regmuon" else (None, None)))
            for i, (n, p) in enumerate(items)
        ]  # fmt: skip
    named = any(n is not None for n, _ in items)
    parts = []
    for algo in ALGORITHMS:
        members = [it for it, r in zip(items, routes, strict=True) if r.algorithm == algo]
        if not members and algo != algorithm:
            continue
        new = {**defaults, **group, "algorithm": algo}
        if algo == "adamw":  # the AdamW half of a split group takes the AdamW lr and decay
            new["lr"] = adamw_lr if algorithm is None else group.get("lr", adamw_lr)
            new["weight_decay"] = (
                adamw_wd if algorithm is None else group.get("weight_decay", adamw_wd)
            )
        if isinstance(new.get("betas"), list):
            new["betas"] = tuple(new["betas"])
        validate_group(new)
        for _, p in members:
            if algo == "regmuon":
                matrix_shape(p.shape, specs.get(p, (new["matrix_view"], ""))[0])
        new["params"] = list(members) if named else [p for _, p in members]
        if named or "param_names" in group:
            new["param_names"] = [n for n, _ in members]
        parts.append(new)
    return parts, routes


# -- the step ------------------------------------------------------------------------------------
def collect_updates(
    param_groups: Sequence[Mapping[str, Any]], state: Mapping[Tensor, Any], on_nonfinite: str
) -> list[list[tuple[Tensor, Tensor]]] | None:
    """Per group, the ``(param, grad)`` pairs a step updates; ``None``: skip the step.

    Raises, before anything is modified, for sparse/complex/mis-shaped gradients, malformed
    or non-finite state and (``on_nonfinite="raise"``) non-finite gradients; ``None`` for a
    non-finite gradient under ``"skip"``. Parameters without gradient or elements are left out.
    """
    work: list[list[tuple[Tensor, Tensor]]] = []
    grads: list[Tensor] = []
    bufs: list[Tensor] = []
    where: list[tuple[int, int]] = []
    buf_where: list[tuple[int, int]] = []
    for gi, group in enumerate(param_groups):
        items = []
        for j, p in enumerate(group["params"]):
            g = p.grad
            if g is None or p.numel() == 0:
                continue
            if g.is_sparse or g.layout != torch.strided:
                raise RuntimeError(
                    f"RegMuon does not support sparse gradients: parameter "
                    f"{param_label(group, gi, j)} has a {g.layout} gradient"
                )
            if g.is_complex() or p.is_complex():
                raise TypeError(
                    f"RegMuon does not support complex tensors: parameter "
                    f"{param_label(group, gi, j)} ({p.dtype}, gradient {g.dtype})"
                )
            if g.shape != p.shape:
                raise ValueError(
                    f"gradient of {param_label(group, gi, j)} has shape {tuple(g.shape)}, "
                    f"expected {tuple(p.shape)}"
                )
            st = state.get(p)
            if st:
                check_param_state(st, p, group["algorithm"], param_label(group, gi, j))
                if group["algorithm"] == "regmuon":
                    bufs.append(st["momentum_buffer"])
                    buf_where.append((gi, j))
            items.append((p, g))
            grads.append(g)
            where.append((gi, j))
        work.append(items)
    bad = first_nonfinite(grads + bufs) if grads else None
    if bad is None:
        return work
    if bad >= len(grads):
        gi, j = buf_where[bad - len(grads)]
        raise ValueError(
            f"the momentum buffer of {param_label(param_groups[gi], gi, j)} has NaN or Inf "
            "entries: the optimizer state is corrupt (edited, or loaded from a bad source); no "
            "parameter or optimizer state was changed"
        )
    if on_nonfinite == "skip":
        return None
    gi, j = where[bad]
    raise ValueError(
        f"non-finite gradient (NaN or Inf) in parameter {param_label(param_groups[gi], gi, j)} "
        f"of shape {tuple(grads[bad].shape)}; no parameter or optimizer state was changed "
        "(pass on_nonfinite='skip' to skip such steps)"
    )
