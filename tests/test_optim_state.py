"""RegMuon's state under bad input: a clear error with nothing changed, or correct behaviour.

Each test is a defect a user found (issue 14, item 6); each fails on the optimizer before it was
hardened. "Nothing changed" is checked bitwise: parameters, the full state dict (tensors
``torch.equal``, the rest ``==``) and the parameter groups.
"""

from __future__ import annotations

import copy
import io
import math
import pickle

import pytest
import torch
from torch import nn

from muonflow.optim import RegMuon


def snapshot(params, opt) -> tuple[list[torch.Tensor], dict]:
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def assert_unchanged(params, opt, snap) -> None:
    params0, sd0 = snap
    for p, p0 in zip(params, params0, strict=True):
        assert torch.equal(p, p0)
    sd = opt.state_dict()
    assert sd["param_groups"] == sd0["param_groups"]
    assert sd.get("regmuon") == sd0.get("regmuon")
    assert sd["state"].keys() == sd0["state"].keys()
    for k, st in sd["state"].items():
        assert st.keys() == sd0["state"][k].keys()
        for key, v in st.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, sd0["state"][k][key]), (k, key)
            else:
                assert v == sd0["state"][k][key], (k, key)


class Net(nn.Module):
    """Two hidden matrices (one same-shape pair), a vector and a head: both optimizer parts."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = nn.Parameter(torch.randn(6, 4, generator=g))
        self.b = nn.Parameter(torch.randn(6, 4, generator=g))
        self.gain = nn.Parameter(torch.ones(6))
        self.head = nn.Parameter(torch.randn(3, 6, generator=g))  # AdamW by the name rule

    def forward(self, x):
        h = torch.tanh(x @ self.a.T) * self.gain + torch.tanh(x @ self.b.T)
        return h @ self.head.T


def make(**kw) -> tuple[Net, RegMuon]:
    torch.manual_seed(0)
    net = Net()
    return net, RegMuon(net.named_parameters(), lr=0.05, adamw_lr=0.01, **kw)


def train_step(net, opt, k: int) -> None:
    g = torch.Generator().manual_seed(k)
    x = torch.randn(8, 4, generator=g)
    opt.zero_grad()
    net(x).square().mean().backward()
    opt.step()


def grads(net, k: int) -> None:
    g = torch.Generator().manual_seed(k)
    net.zero_grad()
    net(torch.randn(8, 4, generator=g)).square().mean().backward()


# -- add_param_group -------------------------------------------------------------------------------
def test_add_param_group_with_a_bad_option_adds_nothing():
    """momentum=2 raises, and the optimizer (groups, later steps) is as if never asked."""
    net, opt = make()
    ref_net, ref = make()
    extra = nn.Parameter(torch.ones(5, 5))
    groups0 = copy.deepcopy(opt.state_dict()["param_groups"])
    with pytest.raises(ValueError, match=r"momentum must be .* got 2"):
        opt.add_param_group({"params": [("extra", extra)], "momentum": 2})
    assert opt.state_dict()["param_groups"] == groups0
    with pytest.raises(ValueError, match=r"betas\[0\] must be"):  # the AdamW half is bad
        opt.add_param_group({"params": [("v", nn.Parameter(torch.ones(5)))], "betas": (1.5, 0.9)})
    assert opt.state_dict()["param_groups"] == groups0
    for k in range(30):
        extra.grad = torch.ones(5, 5)
        train_step(net, opt, k)
        train_step(ref_net, ref, k)
    assert torch.equal(extra, torch.ones(5, 5))  # never optimized
    for a, b in zip(net.parameters(), ref_net.parameters(), strict=True):
        assert torch.equal(a, b)


# -- load_state_dict -------------------------------------------------------------------------------
def _trained():
    net, opt = make(nesterov=True)
    for k in range(3):
        train_step(net, opt, k)
    return net, opt


@pytest.mark.parametrize(
    ("edit", "msg"),
    [
        (lambda sd: sd["param_groups"][0].update(lr=-5), r"lr must be .* got -5"),
        (lambda sd: sd["param_groups"][0].update(momentum=3), r"momentum must be .* got 3"),
        (lambda sd: sd["param_groups"][1].update(betas=(0.9, 2.0)), r"betas\[1\] must be"),
        (lambda sd: sd["param_groups"][0].update(potential="cosh"), "unknown potential 'cosh'"),
        (lambda sd: sd["param_groups"][0].update(algorithm="adamw"), "the routing differs"),
        (lambda sd: sd["param_groups"].pop(), "has 1 parameter groups"),
        (lambda sd: sd["state"][0].update(momentum_buffer=torch.zeros(5, 4)),
         r"momentum_buffer.* of 'a' has shape \(5, 4\), expected \(6, 4\)"),
        (lambda sd: sd["state"][0].update(momentum_buffer=torch.full((6, 4), math.nan)),
         "momentum_buffer.* of 'a' has NaN or Inf"),
        (lambda sd: sd["state"][2].update(exp_avg=torch.zeros(7)),
         r"exp_avg.* of 'gain' has shape"),
        (lambda sd: sd["state"][2].update(step=-1), r"step.* of 'gain' must be an int >= 0"),
        (lambda sd: sd["state"][2].pop("exp_avg_sq"), r"'gain' \(adamw\) has keys"),
        (lambda sd: sd["state"][0].update(exp_avg=torch.zeros(6, 4)), r"'a' \(regmuon\) has keys"),
        (lambda sd: sd["state"].update({99: {}}), "unknown parameter id 99"),
        (lambda sd: sd.update(regmuon={"skipped_steps": -2}), "skipped_steps"),
    ],
)  # fmt: skip
def test_load_state_dict_validates_everything_before_changing_anything(edit, msg):
    net, opt = _trained()
    sd = copy.deepcopy(opt.state_dict())
    edit(sd)
    snap = snapshot(list(net.parameters()), opt)
    with pytest.raises((ValueError, TypeError), match=msg):
        opt.load_state_dict(sd)
    assert_unchanged(list(net.parameters()), opt, snap)
    train_step(net, opt, 10)  # and it still steps


def test_load_state_dict_round_trip_still_works_and_casts():
    """A valid checkpoint loads (through torch.save), float64 state cast to the parameters'."""
    net, opt = _trained()
    blob = io.BytesIO()
    torch.save(opt.state_dict(), blob)
    blob.seek(0)
    sd = torch.load(blob, weights_only=True)
    sd["state"][0]["momentum_buffer"] = sd["state"][0]["momentum_buffer"].double()
    net2, opt2 = make(nesterov=True)
    net2.load_state_dict(net.state_dict())
    opt2.load_state_dict(sd)
    assert opt2.state[net2.a]["momentum_buffer"].dtype == torch.float32
    train_step(net, opt, 5)
    train_step(net2, opt2, 5)
    for a, b in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(a, b)


# -- deepcopy and pickle ---------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_keep_every_option(how):
    torch.manual_seed(0)
    net = Net()
    opt = RegMuon(net.named_parameters(), lr=0.05, adamw_lr=3e-3, adamw_weight_decay=0.2,
                  on_nonfinite="skip", max_batch_bytes=1024, adamw=[r"^b$"])  # fmt: skip
    train_step(net, opt, 0)
    if how == "deepcopy":
        both = copy.deepcopy({"net": net, "opt": opt})
    else:
        both = pickle.loads(pickle.dumps({"net": net, "opt": opt}))
    net2, opt2 = both["net"], both["opt"]
    assert opt2.on_nonfinite == "skip" and opt2.max_batch_bytes == 1024
    # the defaults of groups added later: AdamW lr and decay, the name rule
    for o in (opt, opt2):
        o.add_param_group({"params": [("c", nn.Parameter(torch.ones(2, 2))),
                                      ("d", nn.Parameter(torch.ones(3)))]})  # fmt: skip
    assert opt2.param_groups[-1]["lr"] == 3e-3 and opt2.param_groups[-1]["weight_decay"] == 0.2
    assert opt2.param_groups[-1]["param_names"] == opt.param_groups[-1]["param_names"] == ["d"]
    assert str(opt2.routing) == str(opt.routing)
    # the copy steps exactly as the original
    for k in range(1, 4):
        train_step(net, opt, k)
        train_step(net2, opt2, k)
    for a, b in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(a, b)


# -- the step --------------------------------------------------------------------------------------
def test_nan_in_a_momentum_buffer_names_the_parameter_and_changes_nothing():
    net, opt = _trained()
    opt.state[net.b]["momentum_buffer"][1, 2] = math.nan
    grads(net, 7)
    snap = snapshot(list(net.parameters()), opt)
    with pytest.raises(ValueError, match="momentum buffer of 'b' has NaN or Inf"):
        opt.step()
    params0, sd0 = snap
    for p, p0 in zip(net.parameters(), params0, strict=True):
        assert torch.equal(p, p0)
    for k, st in opt.state_dict()["state"].items():  # NaN != NaN: compare with equal_nan
        for key, v in st.items():
            if isinstance(v, torch.Tensor):
                assert torch.allclose(v, sd0["state"][k][key], rtol=0, atol=0, equal_nan=True)
            else:
                assert v == sd0["state"][k][key]


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda st: st.update(exp_avg=torch.zeros(4)),
        lambda st: st.pop("exp_avg_sq"),
        lambda st: st.update(step="three"),
        lambda st: st.update(exp_avg=torch.zeros(6, dtype=torch.float64)),
    ],
)
def test_malformed_adamw_state_raises_before_any_update(corrupt):
    net, opt = _trained()
    corrupt(opt.state[net.gain])
    grads(net, 8)
    params0 = [p.detach().clone() for p in net.parameters()]
    head_state = {k: v.clone() if isinstance(v, torch.Tensor) else v
                  for k, v in opt.state[net.head].items()}  # fmt: skip
    with pytest.raises((ValueError, TypeError), match="'gain'"):
        opt.step()
    for p, p0 in zip(net.parameters(), params0, strict=True):
        assert torch.equal(p, p0)
    assert opt.state[net.head]["step"] == head_state["step"]
    assert torch.equal(opt.state[net.head]["exp_avg"], head_state["exp_avg"])


def test_bad_adamw_pattern_is_a_clear_error():
    p = nn.Parameter(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"adamw: '\(bad' is not a valid regular expression"):
        RegMuon([("w", p)], adamw=["(bad"])
    with pytest.raises(TypeError, match="adamw patterns must be strings"):
        RegMuon([("w", p)], adamw=[3])


def test_zero_size_parameters_are_skipped():
    """A parameter with no elements (e.g. Linear(0, k)) is left alone; the rest steps as if it
    were absent (bitwise)."""
    net, opt = make()
    empty_m = nn.Parameter(torch.zeros(0, 4))
    empty_v = nn.Parameter(torch.zeros(0))
    opt.add_param_group({"params": [("empty_m", empty_m), ("empty_v", empty_v)]})
    ref_net, ref = make()
    for k in range(3):
        grads(net, k)
        empty_m.grad, empty_v.grad = torch.zeros(0, 4), torch.zeros(0)  # what autograd gives
        opt.step()
        train_step(ref_net, ref, k)
    for a, b in zip(net.parameters(), ref_net.parameters(), strict=True):
        assert torch.equal(a, b)
    assert empty_m.shape == (0, 4) and empty_v.shape == (0,)
    assert float(opt.kinetic_energy()) == float(ref.kinetic_energy())
