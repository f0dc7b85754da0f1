"""RegMuon's groups, state and checkpoints: everything is checked before anything changes."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_choice
from .kernel import check_like, first_nonfinite
from .options import RegMuonOptions
from .plan import matrix_shape
from .routing import Route, route_params

ALGORITHMS = ("regmuon", "adamw")
#: The state keys of a parameter, per algorithm (all present or none).
STATE_KEYS = {"regmuon": ("momentum_buffer",), "adamw": ("step", "exp_avg", "exp_avg_sq")}
Specs = Mapping[Tensor, tuple[str, str]]


def group_options(group: Mapping[str, Any], base: RegMuonOptions) -> RegMuonOptions:
    """The validated options of a group dict (raises naming the option and the value)."""
    check_choice(group.get("algorithm", ""), "algorithm", ALGORITHMS)
    return base.of_group(group)


def param_label(group: Mapping[str, Any], gi: int, j: int) -> str:
    names = group.get("param_names")
    return repr(names[j]) if names else f"param_groups[{gi}]['params'][{j}]"


def check_param_state(
    state: Any, p: Tensor, algorithm: str, label: str, *, exact: bool = True, finite: bool = False
) -> None:
    """One parameter's state: the keys of its algorithm (all or none), tensors of its shape,
    step counts ``>= 0``; ``finite``: no NaN/Inf. Raises naming the parameter and the key."""
    if not isinstance(state, Mapping):
        raise TypeError(f"the state of {label} must be a dict, got {type(state).__name__}")
    want = STATE_KEYS[algorithm]
    if state and set(state) != set(want):
        raise ValueError(
            f"the state of {label} ({algorithm}) has keys {sorted(state)}; expected "
            f"{list(want)} or none (was it saved by an optimizer that routed it elsewhere?)"
        )
    for key in want if state else ():
        value, what = state[key], f"state[{key!r}] of {label}"
        if key == "step":
            v = value.item() if isinstance(value, Tensor) and value.numel() == 1 else value
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{what} must be an int >= 0, got {value!r}")
            continue
        # a momentum buffer may be kept in another floating dtype (momentum_dtype)
        check_like(value, p, what, exact=exact, any_dtype=key == "momentum_buffer")
        if finite and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{what} has NaN or Inf entries")
        if key == "exp_avg_sq" and bool((value < 0).any()):
            raise ValueError(f"{what} has negative entries")


# -- checkpoints ---------------------------------------------------------------------------------
def _by_name(saved_groups: Sequence[Any], groups: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The checkpoint's groups with their parameters in this optimizer's order, matched by name
    (both sides named). Raises naming the first name that is missing, extra, or in another
    group (a checkpoint routed differently)."""
    where = {n: (gi, pid) for gi, g in enumerate(saved_groups)
             for n, pid in zip(g["param_names"], g["params"], strict=True)}  # fmt: skip
    out = []
    for gi, group in enumerate(groups):
        names = list(group["param_names"])
        for n in names:
            if n not in where:
                raise ValueError(f"the checkpoint has no parameter {n!r} (param_groups[{gi}])")
            if where[n][0] != gi:
                raise ValueError(
                    f"parameter {n!r} is in param_groups[{where[n][0]}] of the checkpoint "
                    f"({saved_groups[where[n][0]].get('algorithm', '?')}) and in "
                    f"param_groups[{gi}] ({group['algorithm']}) here: the routing differs "
                    "(build the optimizer the way the checkpoint's was built)"
                )
        extra = sorted(set(saved_groups[gi]["param_names"]) - set(names))
        if extra:
            raise ValueError(f"param_groups[{gi}] of the checkpoint has parameters {extra} "
                             "that this optimizer's has not")  # fmt: skip
        out.append({**saved_groups[gi], "param_names": names,
                    "params": [where[n][1] for n in names]})  # fmt: skip
    return out


def check_state_dict(
    state_dict: Any, groups: Sequence[Mapping[str, Any]], specs: Specs, base: RegMuonOptions
) -> list[Any]:
    """A checkpoint fits these groups: same structure and algorithms (and names, where both
    sides have them), valid options, valid state (keys, shapes, finite values, step counts),
    valid ``"regmuon"`` extras. Returns its groups in this optimizer's parameter order; raises a
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
    for gi, (saved, group) in enumerate(zip(saved_groups, groups, strict=True)):
        if not isinstance(saved, Mapping) or "params" not in saved:
            raise ValueError(f"param_groups[{gi}] of the checkpoint is not a group: {saved!r}")
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(
                f"param_groups[{gi}] of the checkpoint has {len(saved['params'])} parameters, "
                f"this optimizer's {len(group['params'])}"
            )
    if all("param_names" in g for g in (*saved_groups, *groups)):
        saved_groups = _by_name(saved_groups, groups)
    index: dict[Any, tuple[Tensor, str, str]] = {}
    for gi, (saved, group) in enumerate(zip(saved_groups, groups, strict=True)):
        merged = {"algorithm": group["algorithm"], **saved}
        if merged["algorithm"] != group["algorithm"]:
            raise ValueError(
                f"param_groups[{gi}] of the checkpoint is {merged['algorithm']!r}, this "
                f"optimizer's is {group['algorithm']!r}: the routing differs (build the "
                "optimizer the way the checkpoint's was built)"
            )
        try:
            opts = group_options(merged, base)
        except (TypeError, ValueError) as e:
            raise type(e)(f"param_groups[{gi}] of the checkpoint: {e}") from None
        for j, (pid, p) in enumerate(zip(saved["params"], group["params"], strict=True)):
            if pid in index:
                raise ValueError(f"the checkpoint lists parameter id {pid!r} twice")
            index[pid] = (p, group["algorithm"], param_label(group, gi, j))
            if group["algorithm"] == "regmuon":
                try:
                    matrix_shape(p.shape, specs.get(p, (opts.matrix_view, ""))[0])
                except ValueError as e:
                    raise ValueError(f"param_groups[{gi}] of the checkpoint: {e}") from None
    for pid, st in state.items():
        if not isinstance(pid, int):  # not a parameter's state: torch keeps it as it is
            continue
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
    pending = extra.get("decay_pending")
    if pending is not None and (isinstance(pending, bool) or not isinstance(pending, int | float)
                                or not math.isfinite(pending) or pending <= 0):  # fmt: skip
        raise ValueError(
            f"state_dict['regmuon']['decay_pending'] must be a finite float > 0, got {pending!r}"
        )
    return list(saved_groups)


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
        if p.dtype == torch.float16:
            raise TypeError(
                f"RegMuon does not support float16 parameters ({name or tuple(p.shape)}): the "
                "sum-form momentum overflows float16 within tens of steps of ordinary gradients "
                "and AdamW's ϵ underflows it. Keep float32 parameters and train under "
                "torch.autocast(dtype=torch.float16) with a GradScaler, or use bfloat16 "
                "parameters."
            )
        if not (p.is_leaf or p.retains_grad):
            raise ValueError("can't optimize a non-leaf Tensor")
        if id(p) in existing:
            raise ValueError("some parameters appear in more than one parameter group: "
                             f"{name or tuple(p.shape)} is already in another group")
        if id(p) in seen:  # updated once, as torch.optim does (with its warning)
            warnings.warn("optimizer contains a parameter group with duplicate parameters; "
                          f"{name or tuple(p.shape)} is listed twice and updated once",
                          UserWarning, stacklevel=5)  # fmt: skip
        else:
            seen.add(id(p))
            items.append((name, p))
    named = {n is not None for n, _ in items}
    if len(named) > 1:
        raise ValueError("all optimizer params should be with/without names. Some param names "
                         "are missing (all parameters of a group must have names, or none)")
    if named and any(("param_names" in g) != (True in named) for g in param_groups):
        raise ValueError("all optimizer param groups should be with/without names. cannot add "
                         "param group with names to the optimizer (all parameter groups must "
                         "have names, or none)")
    return items


def split_group(
    param_group: Any,
    *,
    base: RegMuonOptions,
    rule: Callable[[str | None, Tensor], bool],
    explicit: bool,
    specs: Specs,
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
    adamw_lr = group.pop("adamw_lr", base.adamw_lr)
    adamw_wd = group.pop("adamw_weight_decay", base.adamw_decay)
    algorithm = group.pop("algorithm", None)
    view = group.get("matrix_view", base.matrix_view)
    layout = group.get("layout", base.layout)
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
        new = {**base.group(algo), **group, "algorithm": algo}
        if algo == "adamw" and algorithm is None:  # the AdamW half of a split group
            new.update(lr=adamw_lr, weight_decay=adamw_wd)
        opts = group_options(new, base)
        new["betas"] = opts.adamw_betas
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

    Raises, before anything is modified, for sparse/complex/mis-shaped gradients, malformed or
    non-finite state (momentum, AdamW moments) and (``on_nonfinite="raise"``) non-finite
    gradients; ``None`` for a non-finite gradient under ``"skip"``. Parameters without
    gradient or elements are left out.
    """
    work: list[list[tuple[Tensor, Tensor]]] = []
    grads: list[Tensor] = []
    where: list[tuple[int, int]] = []
    held: list[Tensor] = []
    held_where: list[tuple[int, int, str]] = []
    for gi, group in enumerate(param_groups):
        items = []
        for j, p in enumerate(group["params"]):
            g = p.grad
            if g is None or p.numel() == 0:
                continue
            label = param_label(group, gi, j)
            if p.device.type == "meta" or g.device.type == "meta":
                raise ValueError(
                    f"parameter {label} (or its gradient) is on the meta device: materialize the "
                    "model (model.to_empty(device=...) and initialize it) before stepping"
                )
            if g.is_sparse or g.layout != torch.strided:
                raise RuntimeError(f"RegMuon does not support sparse gradients: parameter "
                                   f"{label} has a {g.layout} gradient")  # fmt: skip
            if g.is_complex() or p.is_complex():
                raise TypeError(f"RegMuon does not support complex tensors: parameter {label} "
                                f"({p.dtype}, gradient {g.dtype})")  # fmt: skip
            if g.shape != p.shape:
                raise ValueError(f"gradient of {label} has shape {tuple(g.shape)}, expected "
                                 f"{tuple(p.shape)}")  # fmt: skip
            st = state.get(p)
            if st:
                check_param_state(st, p, group["algorithm"], label)
                for key in STATE_KEYS[group["algorithm"]]:
                    if key != "step":
                        held.append(st[key])
                        held_where.append((gi, j, key))
            items.append((p, g))
            grads.append(g)
            where.append((gi, j))
        work.append(items)
    bad = first_nonfinite(grads + held) if grads else None
    if bad is None:
        return work
    if bad >= len(grads):
        gi, j, key = held_where[bad - len(grads)]
        what = "momentum buffer" if key == "momentum_buffer" else f"state[{key!r}]"
        raise ValueError(
            f"the {what} of {param_label(param_groups[gi], gi, j)} has NaN or Inf entries: the "
            "optimizer state is corrupt (edited, or loaded from a bad source); no parameter or "
            "optimizer state was changed"
        )
    if on_nonfinite == "skip":
        return None
    gi, j = where[bad]
    raise ValueError(
        f"non-finite gradient (NaN or Inf) in parameter {param_label(param_groups[gi], gi, j)} "
        f"of shape {tuple(grads[bad].shape)}; no parameter or optimizer state was changed "
        "(pass on_nonfinite='skip' to skip such steps)"
    )
