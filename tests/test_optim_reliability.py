"""RegMuon under faults: every failed call changes nothing, checkpoints are matched by name.

Each test names the defect it catches; each failed on the optimizer before the reliability work
(the step advanced the momentum before its map ran, load_state_dict ignored names, a NaN in an
AdamW moment was stepped into the weights, fp16 and meta parameters gave internal errors).
"Nothing changed" is bitwise: parameters and the full state dict.
"""

from __future__ import annotations

import copy
import math
import os
import signal

import pytest
import torch
from torch import nn

from muonflow.optim import RegMuon, kernel, plan
from muonflow.optim import optimizer as optimizer_module


class Net(nn.Module):
    """Two same-shape hidden layers (one bucket), a wide one (a second bucket), gains, a head."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 6)
        self.c = nn.Linear(6, 6)
        self.wide = nn.Linear(6, 12, bias=False)
        self.gain = nn.Parameter(torch.ones(12))
        self.head = nn.Linear(12, 3)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x):
        h = torch.tanh(self.a(x))
        h = torch.tanh(self.c(torch.tanh(self.b(h))))
        return self.head(torch.tanh(self.wide(h)) * self.gain)


def grads(net: nn.Module, k: int) -> None:
    g = torch.Generator().manual_seed(k)
    net.zero_grad()
    net(torch.randn(8, 4, generator=g)).square().mean().backward()


def snapshot(net: nn.Module, opt: RegMuon):
    return [p.detach().clone() for p in net.parameters()], copy.deepcopy(opt.state_dict())


def assert_same(net: nn.Module, opt: RegMuon, snap) -> None:
    params0, sd0 = snap
    for p, p0 in zip(net.parameters(), params0, strict=True):
        assert torch.equal(p, p0)
    sd = opt.state_dict()
    assert sd["param_groups"] == sd0["param_groups"] and sd["regmuon"] == sd0["regmuon"]
    assert sd["state"].keys() == sd0["state"].keys()
    for k, st in sd["state"].items():
        assert st.keys() == sd0["state"][k].keys(), k
        for key, v in st.items():
            v0 = sd0["state"][k][key]
            assert torch.equal(v, v0) if torch.is_tensor(v) else v == v0, (k, key)


def pair(steps: int):
    """Two identical models and optimizers after ``steps`` clean steps."""
    out = []
    for _ in range(2):
        net = Net()
        opt = RegMuon(net, lr=0.05)
        for k in range(steps):
            grads(net, k)
            opt.step()
        out.append((net, opt))
    return out


class Boom(RuntimeError):
    pass


def _fail_on_call(n: int):
    """A wrapper that raises :class:`Boom` on its ``n``-th call (1-based) and passes the rest."""
    calls = [0]

    def wrap(real):
        def f(*args, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                raise Boom(f"injected failure at call {n}")
            return real(*args, **kwargs)

        return f

    return wrap


# stage -> (module, attribute): where an exception is injected inside step()
STAGES = {
    "the stack of a bucket": (plan.MomentumStacks, "stack"),
    "the pre (momentum, Nesterov) of a bucket": (optimizer_module, "directions"),
    "the map of a bucket": (kernel, "mirror_map"),
    "the options of a group": (optimizer_module, "group_options"),
}


@pytest.mark.parametrize("warm", [0, 3], ids=["first step", "later step"])
@pytest.mark.parametrize("call", [1, 2])
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_an_exception_anywhere_in_a_step_changes_nothing_and_a_retry_is_one_step(
    stage, call, warm, monkeypatch
):
    """Defect caught: the momentum advanced before the map ran, so an exception in the map (OOM,
    a user map_fn, a failing collective) left it advanced and a retry applied it twice (up to
    1.9e-3 off one clean step). The first step matters too: its momentum stacks are created,
    and must be installed only at the commit."""
    (net, opt), (ref_net, ref) = pair(warm)
    grads(net, 10)
    grads(ref_net, 10)
    snap = snapshot(net, opt)
    where, name = STAGES[stage]
    real = getattr(where, name)
    monkeypatch.setattr(where, name, _fail_on_call(call)(real))
    with pytest.raises(Boom):
        opt.step()
    assert_same(net, opt, snap)
    monkeypatch.setattr(where, name, real)
    opt.step()  # the retry
    ref.step()  # one clean step
    for p, q in zip(net.parameters(), ref_net.parameters(), strict=True):
        assert torch.equal(p, q)


def test_an_exception_in_the_closure_changes_nothing():
    (net, opt), _ = pair(2)
    grads(net, 5)
    snap = snapshot(net, opt)

    def closure():
        raise Boom("the loss failed")

    with pytest.raises(Boom):
        opt.step(closure)
    assert_same(net, opt, snap)


def test_a_repack_that_fails_changes_nothing(monkeypatch):
    """A member without gradient makes the plan repack its bucket's stack; a failure after the
    repack was prepared (in the map) must leave the old buffers in place."""
    (net, opt), (ref_net, ref) = pair(2)
    for n in (net, ref_net):
        grads(n, 9)
        n.c.weight.grad = None  # b's bucket loses a member
    snap = snapshot(net, opt)
    real = kernel.mirror_map
    monkeypatch.setattr(kernel, "mirror_map", _fail_on_call(1)(real))
    with pytest.raises(Boom):
        opt.step()
    assert_same(net, opt, snap)
    monkeypatch.setattr(kernel, "mirror_map", real)
    opt.step()
    ref.step()
    for p, q in zip(net.parameters(), ref_net.parameters(), strict=True):
        assert torch.equal(p, q)


def test_ctrl_c_during_the_commit_is_held_until_the_step_is_whole(monkeypatch):
    """Defect caught: a KeyboardInterrupt between two in-place updates of the commit would leave
    some matrices stepped and others not. SIGINT is held during the commit and delivered after:
    the step is whole, then KeyboardInterrupt is raised."""
    (net, opt), (ref_net, ref) = pair(2)
    grads(net, 4)
    grads(ref_net, 4)
    real = optimizer_module.commit
    sent = []

    def commit(*args, **kwargs):
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of the commit
        return real(*args, **kwargs)

    monkeypatch.setattr(optimizer_module, "commit", commit)
    # Python's own SIGINT handler, as in a terminal (a test runner started in the background
    # by a non-interactive shell inherits SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            opt.step()
    finally:
        signal.signal(signal.SIGINT, previous)
    ref.step()
    for p, q in zip(net.parameters(), ref_net.parameters(), strict=True):
        assert torch.equal(p, q)


def test_nan_in_an_adamw_moment_is_refused_like_a_momentum_buffer():
    """Defect caught: a NaN planted in exp_avg_sq was stepped into the parameters."""
    (net, opt), _ = pair(2)
    opt.state[net.head.weight]["exp_avg_sq"][0, 0] = math.nan
    grads(net, 3)
    params0 = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(ValueError, match=r"state\['exp_avg_sq'\] of 'head.weight' has NaN or Inf"):
        opt.step()
    for p, p0 in zip(net.parameters(), params0, strict=True):
        assert torch.equal(p, p0)


def test_float16_parameters_are_refused_with_advice():
    """Defect caught: fp16 momentum overflowed after ~20 steps of |g| ≈ 5000 and the error named
    an internal variable; AdamW's ϵ underflowed and wrote NaN into biases."""
    net = Net().half()
    with pytest.raises(TypeError, match=r"float16 parameters .* GradScaler"):
        RegMuon(net)
    opt = RegMuon(Net())
    with pytest.raises(TypeError, match="float16"):
        opt.add_param_group({"params": [("x", nn.Parameter(torch.ones(3, 3).half()))]})


def test_meta_parameters_get_a_clear_error_at_the_step():
    """Defect caught: a raw ``.item()`` error from inside the step. Building the optimizer on
    meta parameters is allowed (deferred initialization); stepping them is not."""
    with torch.device("meta"):
        net = Net()
    opt = RegMuon(net)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    with pytest.raises(ValueError, match="meta device: materialize the model"):
        opt.step()


# -- checkpoints by name ---------------------------------------------------------------------------
def test_a_checkpoint_routed_differently_is_refused_by_name():
    """Defect caught: a checkpoint of an optimizer whose output layer was chosen differently
    (same shapes) loaded silently, putting the moments on the wrong layers."""
    torch.manual_seed(0)
    net = nn.Sequential(*(nn.Linear(i, o, bias=False) for i, o in ((4, 6), (6, 6), (6, 6), (6, 3))))
    a = RegMuon(net, output="1")  # layer 1 (6x6) to AdamW, layer 2 (6x6) to RegMuon
    b = RegMuon(net, output="2")  # the reverse: every group has the same sizes and shapes
    assert [[p.shape for p in g["params"]] for g in a.param_groups] == [
        [p.shape for p in g["params"]] for g in b.param_groups]  # fmt: skip
    net(torch.randn(5, 4)).square().mean().backward()
    a.step()
    sd = a.state_dict()
    snap = [p.detach().clone() for p in net.parameters()], copy.deepcopy(b.state_dict())
    msg = r"'1.weight' is in param_groups\[1\] .* the routing differs"
    with pytest.raises(ValueError, match=msg):
        b.load_state_dict(copy.deepcopy(sd))
    assert_same(net, b, snap)


def test_a_reordered_named_parameter_list_loads_by_name():
    """Defect caught: a checkpoint saved with one parameter order loaded positionally into an
    optimizer built with another, swapping same-shape moments."""
    torch.manual_seed(0)
    net = Net()
    named = list(net.named_parameters())
    opt = RegMuon(named, lr=0.05)
    for k in range(3):
        grads(net, k)
        opt.step()
    sd = copy.deepcopy(opt.state_dict())
    net2 = copy.deepcopy(net)
    opt2 = RegMuon(list(reversed(list(net2.named_parameters()))), lr=0.05)  # b, c swapped too
    opt2.load_state_dict(sd)
    for k in (5, 6):
        grads(net, k)
        grads(net2, k)
        opt.step()
        opt2.step()
    for p, q in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("lr", [0.02, torch.tensor(0.02)], ids=["float", "tensor"])
def test_a_group_lr_made_invalid_between_steps_is_refused_at_the_next_step(lr):
    """A scheduler (or a user) changes a group's lr between steps: a NaN or negative value is
    refused at the next step, nothing changed. Defect caught: validating a group's options
    once and reusing them (a Tensor lr changed in place kept its first, valid, validation and
    stepped NaN into the parameters)."""
    W = nn.Parameter(torch.randn(4, 3))
    opt = RegMuon([("w", W)], lr=lr, adamw=())
    W.grad = torch.randn(4, 3)
    opt.step()
    for bad in (math.nan, -1.0):
        if isinstance(lr, torch.Tensor):
            lr.fill_(bad)
        else:
            opt.param_groups[0]["lr"] = bad
        W.grad = torch.randn(4, 3)
        before = W.detach().clone()
        with pytest.raises(ValueError, match="lr must be a finite number"):
            opt.step()
        assert torch.equal(W, before)
