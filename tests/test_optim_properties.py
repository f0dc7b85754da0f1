"""Property-based tests of RegMuon's public surface (hypothesis).

Random sequences of ``step`` / ``add_param_group`` / ``state_dict`` + ``load_state_dict`` /
``deepcopy`` on models of random shapes and dtypes, with exceptions injected at random points
(the map, the closure, a NaN gradient, a bad option, a corrupt checkpoint). The invariants:

- after any call that raises, the parameters and the whole state are bit-identical to before;
- the calls that succeeded, replayed on a fresh model and optimizer, give the same parameters
  and state bit for bit (so a failed call left no trace that changes later steps either).

Mutants caught (each tried once): committing each group before the next bucket's map, installing
the momentum stacks before the maps, an add_param_group that appends before checking its options.
(Validation of checkpoints before any change is held by ``test_optim_state.py``.)
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from muonflow.optim import RegMuon, kernel

OPS = ("step", "step_map_fails", "step_closure_fails", "step_nan", "add_group", "add_bad_group",
       "round_trip", "load_corrupt", "deepcopy", "no_grad_step")  # fmt: skip


class Boom(RuntimeError):
    pass


def build(shapes: list[tuple[int, ...]], dtype: torch.dtype, seed: int) -> nn.ParameterList:
    g = torch.Generator().manual_seed(seed)
    return nn.ParameterList([nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in shapes])


def set_grads(params: nn.ParameterList, k: int, *, nan: bool = False, skip: int = -1) -> None:
    g = torch.Generator().manual_seed(1000 + k)
    for i, p in enumerate(params):
        p.grad = None if i == skip else torch.randn(p.shape, generator=g).to(p.dtype)
    if nan:
        params[0].grad.view(-1)[0] = math.nan


def snapshot(params, opt):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def same(a, b) -> bool:
    """Bitwise equality of nested state (tensors compared with torch.equal)."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def apply(op: str, k: int, params: nn.ParameterList, opt: RegMuon, monkeypatch) -> RegMuon:
    """Run operation ``op`` (number ``k``); return the optimizer to continue with."""
    if op == "step":
        set_grads(params, k)
        opt.step()
    elif op == "no_grad_step":
        set_grads(params, k, skip=k % len(params))
        opt.step()
    elif op == "step_map_fails":
        set_grads(params, k)
        calls = [0]
        real = kernel.mirror_map

        def fails_later(X, *args, **kw):
            calls[0] += 1
            if calls[0] == 1 + k % 2:
                raise Boom("map failed")
            return real(X, *args, **kw)

        with monkeypatch.context() as m:  # one bucket: no second call, and the step succeeds
            m.setattr(kernel, "mirror_map", fails_later)
            opt.step()
    elif op == "step_closure_fails":
        set_grads(params, k)

        def closure():
            raise Boom("closure failed")

        opt.step(closure)
    elif op == "step_nan":
        set_grads(params, k, nan=True)
        opt.step()  # on_nonfinite: raise (or skip: counted)
    elif op == "add_group":
        extra = build([(3, 2)], params[0].dtype, 500 + k)
        params.extend(extra)
        opt.add_param_group({"params": list(extra)})
    elif op == "add_bad_group":
        opt.add_param_group({"params": [nn.Parameter(torch.ones(2, 2))], "momentum": 2.0})
    elif op == "round_trip":
        opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    elif op == "load_corrupt":
        sd = copy.deepcopy(opt.state_dict())
        sd["param_groups"][0]["lr"] = -1.0
        opt.load_state_dict(sd)
    elif op == "deepcopy":  # go on with the copies (the replay does not copy)
        both = copy.deepcopy({"p": list(params), "o": opt})
        for i, q in enumerate(both["p"]):
            params[i] = q
        return both["o"]
    return opt


def make(shapes, dtype, on_nonfinite):
    params = build(shapes, dtype, 0)
    return params, RegMuon(list(params), lr=0.05, adamw=(), on_nonfinite=on_nonfinite,
                           max_batch_bytes=None)  # fmt: skip


SHAPES = st.lists(
    st.one_of(
        st.tuples(st.integers(1, 5), st.integers(1, 5)),
        st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),
        st.tuples(st.integers(1, 6)),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    shapes=SHAPES,
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    ops=st.lists(st.sampled_from(OPS), min_size=1, max_size=8),
    on_nonfinite=st.sampled_from(["raise", "skip"]),
)
def test_failed_calls_change_nothing_and_successes_replay(shapes, dtype, ops, on_nonfinite,
                                                          monkeypatch):  # fmt: skip
    params, opt = make(shapes, dtype, on_nonfinite)
    done = []
    for k, op in enumerate(ops):
        before = snapshot(params, opt)
        n_before = len(params)
        try:
            opt = apply(op, k, params, opt, monkeypatch)
        except (Boom, ValueError, TypeError):
            while len(params) > n_before:  # an add that failed: its parameters were never in
                del params[-1]
            p0, sd0 = before
            assert all(torch.equal(p, q) for p, q in zip(params, p0, strict=True)), op
            assert same(opt.state_dict(), sd0), op
            continue
        done.append((k, op))
    replay_params, replay = make(shapes, dtype, on_nonfinite)
    for k, op in done:
        replay = apply(op, k, replay_params, replay, monkeypatch)
    assert all(torch.equal(p, q) for p, q in zip(params, replay_params, strict=True))
    assert same(opt.state_dict(), replay.state_dict())


@pytest.mark.parametrize("op", OPS)
def test_every_operation_runs(op, monkeypatch):
    """Not vacuous: each operation is reachable, and the failing ones do raise."""
    params, opt = make([(4, 3), (4, 3), (2, 5), (5,)], torch.float32, "raise")  # two buckets
    set_grads(params, 0)
    opt.step()
    fails = op in ("step_map_fails", "step_closure_fails", "step_nan", "add_bad_group",
                   "load_corrupt")  # fmt: skip
    if fails:
        with pytest.raises((Boom, ValueError)):
            apply(op, 1, params, opt, monkeypatch)
    else:
        apply(op, 1, params, opt, monkeypatch)
