"""RegMuon with the rest of the ecosystem: schedulers, torch.compile, gradient accumulation,
bf16 autocast and the Hugging Face Trainer (the recipes of docs/optimizer.md)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import unit_roundoff
from torch import nn

from muonflow.optim import RegMuon

F64 = torch.float64
U32 = unit_roundoff(torch.float32)
U64 = unit_roundoff(F64)


def mlp(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)
    ).to(dtype)


def batch(dtype=torch.float32, n=32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 8, generator=g, dtype=dtype), torch.randn(n, 4, generator=g, dtype=dtype)


# -- schedulers ------------------------------------------------------------------------------------
def test_lambda_lr_with_one_schedule_per_part():
    """``RegMuon(model)`` has two groups, [RegMuon, AdamW]: LambdaLR takes a list of two."""
    model = mlp()
    opt = RegMuon(model, lr=0.02, adamw_lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [lambda t: 1 / (1 + t), lambda t: 0.5**t])
    x, y = batch()
    for _ in range(3):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.02 / 4, 3e-3 / 8], rel=1e-12)


def test_one_cycle_scales_each_part_and_cycles_only_adamw_beta1():
    """OneCycleLR with ``max_lr=[η_RegMuon, η_AdamW]``: each group follows its own peak; with
    ``cycle_momentum`` it cycles ``betas[0]`` (RegMuon's defaults have ``betas``), which only
    the AdamW part uses: RegMuon's ``momentum`` is left alone."""
    model = mlp()
    opt = RegMuon(model)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.02, 3e-3], total_steps=10)
    x, y = batch()
    ratios, beta1 = [], []
    for _ in range(6):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        sched.step()
        ratios.append(opt.param_groups[0]["lr"] / opt.param_groups[1]["lr"])
        beta1.append(opt.param_groups[1]["betas"][0])
        assert opt.param_groups[0]["momentum"] == opt.defaults["momentum"]
    assert ratios == pytest.approx([0.02 / 3e-3] * 6, rel=1e-9)
    assert max(beta1) - min(beta1) > 0.02  # cycled between 0.85 and 0.95


# -- torch.compile ---------------------------------------------------------------------------------
# Dynamo reads ``.grad`` of the non-leaf loss while building the resume frame after the graph
# break at ``opt.step()``; torch's warning about that is not about this code.
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_compiled_model_and_step_match_eager():
    """``RegMuon(torch.compile(model))`` routes like the model; a compiled training step with
    ``opt.step()`` inside (a graph break: the step runs eagerly) matches eager training.

    aot_eager keeps it fast (inductor compiles C++ for ~40 s here). The compiled forward and
    backward may order float32 sums differently: 5 steps · 64 u · κ(≈10) relative to max|W|.
    """
    results = []
    for compiled in (False, True):
        model = mlp()
        target = torch.compile(model, backend="aot_eager") if compiled else model
        opt = RegMuon(target, lr=0.02)
        x, y = batch()

        def train_step(x, y, target=target, opt=opt):
            loss = ((target(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            return loss

        fn = torch.compile(train_step, backend="aot_eager") if compiled else train_step
        for _ in range(5):
            opt.zero_grad()
            fn(x, y)
        results.append(([p.detach().clone() for p in model.parameters()], opt.routing))
    torch._dynamo.reset()
    (eager, r_eager), (comp, r_comp) = results
    strip = lambda r: [(x.name.removeprefix("_orig_mod."), x.algorithm, x.reason) for x in r.routes]  # noqa: E731
    assert strip(r_comp) == strip(r_eager)
    for a, b in zip(eager, comp, strict=True):
        assert float((a - b).abs().max()) <= 5 * 64 * 10 * U32 * max(1.0, float(a.abs().max()))
    assert any(float((a - mlp().state_dict()[k]).abs().max()) > 1e-3
               for a, k in zip(eager, mlp().state_dict(), strict=True))  # fmt: skip


# -- gradient accumulation -------------------------------------------------------------------------
def test_gradient_accumulation_equals_the_big_batch():
    """k micro-batches with loss/k, accumulated in ``.grad``, then one step == one step on the
    whole batch (float64, 3 steps, exact map).

    An integration check (the step consumes ``.grad`` as accumulated, whichever part): the two
    runs differ only in the order of the batch sums, a few u relative in each gradient, which
    the map amplifies by at most κ = √r/ε ≈ 13 (relative ε = 0.3): 3 · 64 u · 16 · max|W|.
    """
    x, y = batch(F64, n=32)
    runs = []
    for k in (1, 4):
        model = mlp(F64)
        opt = RegMuon(model, lr=0.05, eps=0.3, tol=None, nesterov=True)
        for _ in range(3):
            opt.zero_grad()
            for xb, yb in zip(x.chunk(k), y.chunk(k), strict=True):
                (((model(xb) - yb) ** 2).mean() / k).backward()
            opt.step()
        runs.append([p.detach() for p in model.parameters()])
    for a, b in zip(*runs, strict=True):
        assert float((a - b).abs().max()) <= 3 * 64 * 16 * U64 * max(1.0, float(a.abs().max()))
    init = [w.detach() for w in mlp(F64).parameters()]
    moved = [float((a - w).abs().max()) for a, w in zip(runs[0], init, strict=True)]
    assert min(moved) > 1e-3  # every parameter was updated: not two frozen runs that agree


# -- bf16 autocast ---------------------------------------------------------------------------------
def test_bf16_autocast_updates_float32_master_weights():
    """Under ``torch.autocast(bfloat16)`` the forward runs in bf16, the parameters, gradients and
    state stay float32, and the update is applied in float32: a step far below bf16's
    resolution (η = 1e-5, |W| ~ 0.3, bf16 spacing there ~ 2e-3) is kept exactly as the float32
    reference ``W − ηρ∇K(G)`` (SVD, float64) says, to float32 round-off of W."""
    model = mlp()
    opt = RegMuon(model, lr=1e-5, tol=None, weight_decay=0.0)  # (no decay by structure)
    x, y = batch()
    losses = []
    for step in range(25):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        assert out.dtype == torch.bfloat16
        loss = ((out.float() - y) ** 2).mean()
        loss.backward()
        W = model[2].weight
        W0, G = W.detach().clone(), W.grad.detach().clone()
        assert G.dtype == torch.float32
        opt.step()
        losses.append(loss.item())
        if step == 0:
            U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
            e = opt.defaults["eps"] * float(S.square().sum().sqrt()) / 4
            D = (U * (S / (S**2 + e**2).sqrt())) @ Vh
            expect = W0.double() - 1e-5 * D  # ρ = 1: square
            W1 = W.detach()
            assert float((W1.double() - expect).abs().max()) <= 4 * U32 * float(W0.abs().max())
            assert bool((W1 != W0).float().mean() > 0.9)  # float32 moved...
            assert bool((W1.bfloat16() != W0.bfloat16()).float().mean() < 0.1)  # ...bf16 barely
            opt.param_groups[0]["lr"], opt.param_groups[1]["lr"] = 0.02, 3e-3  # now train
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(t.dtype == torch.float32 for st in opt.state.values() for t in st.values()
               if isinstance(t, torch.Tensor))  # fmt: skip
    assert losses[-1] < 0.8 * losses[1]


# -- Hugging Face Trainer ------------------------------------------------------------------------
@pytest.mark.slow
def test_hf_trainer_recipe(tmp_path):
    """The docs' recipe: ``Trainer(model=..., optimizers=(RegMuon(model), scheduler))`` on a tiny
    GPT-2 and 64 offline synthetic sequences (runs of consecutive tokens); 20 steps, the loss
    falls by a third (ln 32 = 3.47 at the start; a frozen step stays there)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=32, n_layer=2,
                                  n_head=2, bos_token_id=0, eos_token_id=0)  # fmt: skip
    model = transformers.GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, 32, (64,), generator=g)
    data = [{"input_ids": (s + torch.arange(16)) % 32, "labels": (s + torch.arange(16)) % 32}
            for s in starts.tolist()]  # fmt: skip
    opt = RegMuon(model, lr=0.02, adamw_lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [lambda s: 1.0, lambda s: 1.0])
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=20, logging_steps=1,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                   optimizers=(opt, sched))  # fmt: skip
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 20
    assert abs(losses[0] - math.log(32)) < 0.3
    assert losses[-1] < 0.67 * losses[0], losses
    assert opt.state  # our optimizer did the steps
