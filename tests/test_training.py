"""muonflow.training, the practical_training experiment and the ``muonflow train`` command."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from muonflow import training
from muonflow.cli import main
from muonflow.models import SortTransformer


@pytest.fixture(scope="module")
def digits_task() -> training.Task:
    return training.make_task("digits")


@pytest.mark.parametrize(("opt", "lr"), [("adamw", 3e-3), ("muon", 0.01), ("regmuon", 0.01)])
def test_training_decreases_loss_and_is_deterministic(digits_task, opt, lr):
    a = training.train(digits_task, opt, lr=lr, steps=20, seed=3, evals=2)
    b = training.train(digits_task, opt, lr=lr, steps=20, seed=3, evals=2)
    assert not a["diverged"]
    assert len(a["train_loss"]) == 20
    # the untrained MLP sits near the label entropy log 10; 20 steps (lr decaying to 0) take
    # the slowest optimizer (Muon at this lr) 0.28 nats below it: 0.15 leaves margin
    assert a["chance_loss"] == pytest.approx(math.log(10), abs=0.01)
    assert a["test_loss"] < a["initial"]["test_loss"] - 0.15
    assert a["curve"][-1][1] < a["curve"][0][1]
    assert a["curve"][-1][0] == 20
    for key in ("train_loss", "curve", "test_loss", "val_loss", "test_acc", "hamiltonian"):
        assert a[key] == b[key], key
    c = training.train(digits_task, opt, lr=lr, steps=20, seed=4, evals=2)
    assert c["train_loss"] != a["train_loss"]  # the seed matters
    if opt == "regmuon":
        assert a["hamiltonian"] and all(math.isfinite(h) for _, h in a["hamiltonian"])
    else:
        assert a["hamiltonian"] == []


def test_optimizer_routing():
    model = training.make_task("digits").make_model()
    (reg,) = training.make_optimizers("regmuon", model, lr=0.01, eps=0.1)
    algos = {g["algorithm"]: len(g["params"]) for g in reg.param_groups}
    assert algos == {"regmuon": 2, "adamw": 4}  # 2 hidden matrices; head + 3 biases
    muon, adamw = training.make_optimizers("muon", model, lr=0.01)
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert len(muon.param_groups[0]["params"]) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"optimizer": "sgd"}, "unknown optimizer 'sgd'; valid: adamw, muon, muon_f32, regmuon"),
        ({"lr": -1.0}, "lr must be a positive finite number"),
        ({"eps": math.nan}, "eps must be a positive finite number"),
        ({"steps": 0}, "steps must be a positive int"),
        (
            {"task": "mnist"},
            "unknown task 'mnist'; valid: digits, cnn, chars, gpt2, moe, sort, llama, rnn, vit, "
            "friedman, tabular",
        ),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    args = {"task": "digits", "optimizer": "adamw", "lr": 1e-3, "steps": 1, **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        training.train(args.pop("task"), args.pop("optimizer"), **args)


def test_train_cli(tmp_path):
    out = tmp_path / "run.json"
    args = [
        "train",
        "--task",
        "digits",
        "--optimizer",
        "regmuon",
        "--steps",
        "5",
        "--lr",
        "0.01",
        "--eps",
        "0.1",
        "--seed",
        "2",
        "--out",
        str(out),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "muonflow.cli", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert (r["task"], r["optimizer"], r["steps"], r["seed"], r["eps"]) == (
        "digits",
        "regmuon",
        5,
        2,
        0.1,
    )
    assert len(r["train_loss"]) == 5 and math.isfinite(r["test_loss"])


def test_train_cli_rejects_bad_lr(capsys):
    code = main(
        ["train", "--task", "digits", "--optimizer", "regmuon", "--steps", "5", "--lr", "-1"]
    )
    assert code == 2
    assert "lr must be a positive finite number, got -1.0" in capsys.readouterr().err


# -- the benchmark tasks, routing by structure and the Muon baselines ------------------------
TINY_TASKS = {
    "cnn": {"batch": 16, "channels": (4, 8), "hidden": 16},
    "sort": {"vocab_size": 16, "length": 8, "d_model": 16, "batch": 16, "eval_size": 64},
    "moe": {"n_experts": 2, "d_model": 16, "batch": 4, "block": 16, "eval_batches": 1},
    "gpt2": {"d_model": 16, "n_layers": 1, "batch": 4, "block": 16, "eval_batches": 1},
    "llama": {"d_model": 16, "n_layers": 1, "batch": 4, "block": 16, "eval_batches": 1},
    "rnn": {"d_model": 16, "batch": 4, "block": 16, "eval_batches": 1},
    "vit": {"d_model": 16, "n_layers": 1, "batch": 16},
    "friedman": {"hidden": 16, "batch": 16},
}
HF_TASKS = ("gpt2", "llama", "vit")


def _task(name: str) -> training.Task:
    if name in HF_TASKS:
        pytest.importorskip("transformers")
    return training.make_task(name, **TINY_TASKS[name])


@pytest.mark.parametrize("name", list(TINY_TASKS))
def test_new_tasks_are_deterministic_by_seed_and_learn(name):
    task = _task(name)
    assert set(task.splits) == {"val", "test", "trainset"}
    torch.manual_seed(5)
    a = task.make_model()
    torch.manual_seed(5)
    b = task.make_model()
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb and torch.equal(pa, pb), na  # same seed, same initial weights
    ev = task.evaluate(a)
    assert set(ev) >= {"val_loss", "test_loss", "trainset_loss"}
    assert task.evaluate(a, ["val"]).keys() == {k for k in ev if k.startswith("val_")}
    with pytest.raises(ValueError, match="unknown splits"):
        task.evaluate(a, ["train"])
    # the same generator state gives the same minibatch loss on the same weights
    la = task.train_loss(a, torch.Generator().manual_seed(3))
    lb = task.train_loss(b, torch.Generator().manual_seed(3))
    assert float(la.detach()) == float(lb.detach())
    # HF's ViT (init std 0.02, a class token) sits on a plateau for ~100 AdamW steps at this
    # size; RegMuon leaves it within 100 steps
    opt, lr, steps = ("regmuon", 0.04, 100) if name == "vit" else ("adamw", 1e-2, 30)
    r1 = training.train(task, opt, lr=lr, steps=steps, seed=1, evals=2)
    r2 = training.train(task, opt, lr=lr, steps=steps, seed=1, evals=2)
    assert r1["train_loss"] == r2["train_loss"] and r1["test_loss"] == r2["test_loss"]
    assert (
        r1["train_loss"]
        != training.train(task, opt, lr=lr, steps=steps, seed=2, evals=2)["train_loss"]
    )
    # the steps move the held-out and training-sample losses down (margin: 5% of the initial
    # loss; every tiny task drops by more than 10% — a frozen model would fail this)
    for split in ("test", "trainset"):
        before, after = r1["initial"][f"{split}_loss"], r1[f"{split}_loss"]
        assert after < 0.95 * before, (split, before, after)
    assert len(r1["curve"]) == len(r1["curve_wall"]) == 3
    assert r1["curve_wall"] == sorted(r1["curve_wall"])


def test_suite_models_are_routed_by_structure():
    """The suite's Hugging Face and recurrent models reach RegMuon's router as users build them:
    Llama's grouped-query k/v projections ([kv·head, d]) and SwiGLU matrices are hidden
    matrices and its untied ``lm_head`` the output layer; ViT's patch embedding (a conv reading
    raw pixels) is a matrix, its class token and positions direct parameters, its classifier
    the output layer; an LSTM's stacked gates are four matrices each.

    Mutants caught: a tied Llama head (its lm_head would be "tied to embedding"), GQA off (k_proj
    [d, d]), a ViT without a class token, a GRU instead of an LSTM (three gates).
    """
    pytest.importorskip("transformers")
    from muonflow.optim import route_module

    routes = route_module(_task("llama").make_model())[0].by_name()
    assert routes["model.layers.0.self_attn.k_proj.weight"].shape == (8, 16)  # 2 of 4 heads
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert routes[f"model.layers.0.self_attn.{name}.weight"].reason == "hidden matrix"
    for name in ("gate_proj", "up_proj", "down_proj"):
        assert routes[f"model.layers.0.mlp.{name}.weight"].algorithm == "regmuon"
    assert routes["lm_head.weight"].reason == "output layer"
    assert routes["model.embed_tokens.weight"].reason == "embedding"
    assert routes["model.norm.weight"].reason == "vector"
    routes = route_module(_task("vit").make_model())[0].by_name()
    patch = routes["vit.embeddings.patch_embeddings.projection.weight"]
    assert (patch.algorithm, patch.matrices) == ("regmuon", (1, 16, 4))  # 2x2 patches, 1 channel
    assert routes["vit.embeddings.cls_token"].reason == "direct parameter"
    assert routes["vit.embeddings.position_embeddings"].reason == "direct parameter"
    assert routes["classifier.weight"].reason == "output layer"
    routes = route_module(_task("rnn").make_model())[0].by_name()
    assert routes["rnn.weight_ih_l0"].matrices == routes["rnn.weight_hh_l0"].matrices == (4, 16, 16)
    assert routes["head.weight"].reason == "output layer"
    with pytest.raises(ValueError, match="unknown cell 'rnn'; valid: lstm, gru"):
        training.make_task("rnn", cell="rnn")


def test_friedman_task_is_standardized_regression():
    """Friedman #1: standardized targets (predicting the fitting mean scores ~1 on every split),
    MSE losses; a fitted model goes well below chance. Mutant caught: targets left in their
    units (variance ~24) or the loss computed on the un-squeezed ``[N, 1]`` output (broadcast
    to ``[N, N]``: every split near 2)."""
    task = _task("friedman")
    assert task.chance_loss == 1.0
    zero = nn.Linear(10, 1)
    nn.init.zeros_(zero.weight)
    nn.init.zeros_(zero.bias)
    ev = task.evaluate(zero)
    for split in ("val", "test"):  # the mean of 1000 fresh samples' targets: variance ~1
        assert 0.85 < ev[f"{split}_loss"] < 1.15, ev
    r = training.train(task, "adamw", lr=3e-3, steps=200, seed=0, evals=2)
    assert r["test_loss"] < 0.5 and r["val_loss"] < 0.5


@pytest.mark.parametrize(("function", "features", "noise"), [(2, 4, 30.0), (3, 4, 0.05),
                                                            (1, 20, 1.0)])  # fmt: skip
def test_friedman_functions_and_noise_inputs(function, features, noise):
    """Friedman #2 and #3 (four inputs) and #1 with extra noise inputs: the model reads the
    problem's inputs, the targets are standardized (the zero model scores ~1 on held-out
    splits), and AdamW goes well below chance. Mutants caught: ``function`` or ``features``
    ignored (#1 on ten inputs always)."""
    task = training.make_task("friedman", function=function, features=features, noise=noise,
                              hidden=32)  # fmt: skip
    model = task.make_model()
    assert model.layers[0].in_features == features
    zero = nn.Linear(features, 1)
    nn.init.zeros_(zero.weight)
    nn.init.zeros_(zero.bias)
    ev = task.evaluate(zero)
    # A split's mean square of 1000 standardized targets: relative SE ((κ − 1)/1000)^½ with
    # kurtosis κ ≤ 7 (#3's heavy tail: 6.2; #1, #2: ~3), so 4 SE is 0.31. Unstandardized
    # targets score ~1e5 (#2) or 1.8 (#3: its mean, 1.3, squared).
    assert all(0.69 < ev[f"{s}_loss"] < 1.31 for s in ("val", "test")), ev
    r = training.train(task, "adamw", lr=3e-3, steps=200, seed=0, evals=2)
    assert r["test_loss"] < 0.5, r["test_loss"]


def test_friedman_small_table_fits_its_first_rows_only():
    """``rows``: the minibatches draw only the first ``rows`` samples, and the held-out splits
    still score ~1 with the zero model (their targets standardized by the smaller fitting set).
    Mutant caught: ``rows`` ignored (20 minibatches of 64 draw about 1000 distinct rows of 2000)."""
    small = training.make_task("friedman", hidden=8, batch=64, rows=100)
    seen: list[torch.Tensor] = []
    model = small.make_model()
    model.layers[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        small.train_loss(model, gen)
    assert len(torch.unique(torch.cat(seen), dim=0)) <= 100
    zero = nn.Linear(10, 1)
    nn.init.zeros_(zero.weight)
    nn.init.zeros_(zero.bias)
    ev = small.evaluate(zero)  # 100 fitting rows: their mean and scale off by ~10% at most
    assert all(0.7 < ev[f"{s}_loss"] < 1.4 for s in ("val", "test")), ev
    with pytest.raises(ValueError, match="rows must be in"):
        training.make_task("friedman", rows=3000)


def test_a_cnn_reads_generated_images():
    """``cnn`` with ``images=``: the network reads that source's channels, side and classes, the
    minibatches draw its fitting images only (the last fifth of the training split tunes), the
    held-out loss of a network that ignores its input is the log of the classes near balance,
    and the digits refuse the generated images' noise options."""
    from muonflow.data import images

    task = training.make_task("cnn", images="photos", norm=True, batch=32)
    data = images("photos")
    model = task.make_model()
    assert task.name == "cnn_photos"
    assert model.conv1.in_channels == 3 and model.head.out_features == 4
    seen: list[torch.Tensor] = []
    model.conv1.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().flatten(1)))
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        task.train_loss(model, gen)
    fit = data.X_train[:960]
    assert all(bool((x[:, None] == fit[None]).all(-1).any(-1).all()) for x in seen)
    assert not any(bool((x[:, None] == data.X_train[960:][None]).all(-1).any()) for x in seen)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    ev = task.evaluate(model, ["test"])
    assert ev["test_loss"] == pytest.approx(math.log(4), rel=1e-6)
    with pytest.raises(ValueError, match="options of the generated images"):
        training.make_task("cnn", noise=0.5)


def test_friedman_rejects_bad_options():
    with pytest.raises(ValueError, match="unknown Friedman function 4; valid: 1, 2, 3"):
        training.make_task("friedman", function=4)
    with pytest.raises(ValueError, match="features must be >= 5"):
        training.make_task("friedman", features=4)
    with pytest.raises(ValueError, match="Friedman #2 has 4 inputs"):
        training.make_task("friedman", function=2, features=10)


@pytest.mark.parametrize(("dataset", "outputs"), [("breast_cancer", 2), ("wine", 3),
                                                  ("iris", 3), ("diabetes", 1)])  # fmt: skip
def test_tabular_tasks_split_standardize_and_learn(dataset, outputs):
    """Bundled tables: 60/20/20 splits that cover every row once, standardized features (and
    regression target: predicting 0 scores about 1), a chance loss an input-blind model cannot
    beat on ``trainset``, and AdamW well below chance. Mutant caught: a regression target left
    in its units (the zero model scores thousands)."""
    task = training.make_task("tabular", dataset=dataset, hidden=32)
    model = task.make_model()
    assert model.head.out_features == outputs
    blind = nn.Linear(model.layers[0].in_features, outputs)
    nn.init.zeros_(blind.weight)
    nn.init.zeros_(blind.bias)
    ev = task.evaluate(blind)
    if outputs == 1:
        assert task.chance_loss == 1.0 and abs(ev["trainset_loss"] - 1.0) < 1e-5
        assert all(0.6 < ev[f"{s}_loss"] < 1.6 for s in ("val", "test")), ev
    else:  # uniform logits: log K on every split, at least the fitting labels' entropy
        assert ev["trainset_loss"] == pytest.approx(math.log(outputs), rel=1e-6)
        assert task.chance_loss <= math.log(outputs) + 1e-9
    r = training.train(task, "adamw", lr=3e-3, steps=200, seed=0, evals=2)
    assert r["test_loss"] < 0.6 * task.chance_loss, r["test_loss"]
    with pytest.raises(ValueError, match="unknown dataset 'boston'; valid: breast_cancer"):
        training.make_task("tabular", dataset="boston")


def test_sort_task_targets_and_chance():
    task = _task("sort")
    # An input-blind model can at best predict each position's order-statistic law: chance
    # is below log V (positions 0 and L-1 are concentrated near 0 and V-1) but well above 0.
    assert 0.5 * math.log(16) < task.chance_loss < math.log(16)
    model = SortTransformer(16, 8, d_model=16, d_ff=32)
    x = torch.randint(0, 16, (3, 8))
    assert model(x).shape == (3, 8, 16)
    with pytest.raises(ValueError, match=r"shape \[B, 8\]"):
        model(torch.zeros(3, 9, dtype=torch.long))


@pytest.mark.parametrize("name", ["digits", "cnn", "gpt2", "moe", "sort", "llama", "rnn", "vit"])
def test_every_arm_routes_as_regmuon_model_does(name):
    """One router: the Muon arms see exactly the matrices RegMuon(model) maps (one 2-D view per
    matrix of its view: experts, packed q/k/v, conv kernels), and share its AdamW part.

    Mutant caught: a second router in the training module (in_proj_weight as one matrix, RNN
    weights to AdamW, the output layer found differently) makes the counts differ.
    """
    if name in HF_TASKS:
        pytest.importorskip("transformers")
    model = training.make_task(name, **TINY_TASKS.get(name, {})).make_model()
    (reg,) = training.make_optimizers("regmuon", model, lr=0.01)
    expected = sum(r.matrices[0] for r in reg.routing.routes if r.algorithm == "regmuon")
    muon, adamw = training.make_optimizers("muon", model, lr=0.01)
    assert len(muon.param_groups[0]["params"]) == expected > 0
    adamw_part = next(g for g in reg.param_groups if g["algorithm"] == "adamw")["params"]
    assert [id(p) for p in adamw.param_groups[0]["params"]] == [id(p) for p in adamw_part]
    assert adamw.param_groups[0]["betas"] == reg.defaults["betas"]


def test_train_regmuon_is_regmuon_model_out_of_the_box(digits_task):
    """``muonflow train --optimizer regmuon`` at the default lr is ``RegMuon(model)``, bit for bit.

    Mutant caught: a training arm with its own options (AdamW betas (0.9, 0.999), AdamW lr
    3e-3, its own routing) changes the losses.
    """
    from muonflow.optim import DEFAULTS, RegMuon

    a = training.train(digits_task, "regmuon", lr=DEFAULTS.lr, steps=6, seed=0, evals=2)
    b = training.train(digits_task, lambda m: [RegMuon(m)], steps=6, seed=0, evals=2)
    assert a["train_loss"] == b["train_loss"] and a["test_loss"] == b["test_loss"]


def _ns_reference(G, steps=5):
    """torch's Newton–Schulz iteration in float64 (the same coefficients and normalization)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.double()
    tall = G.shape[0] > G.shape[1]
    X = X.T if tall else X
    X = X / X.norm().clamp(min=1e-7)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return (X.T if tall else X).float()


@pytest.mark.parametrize("shape", [(12, 20), (20, 12)])
def test_float32_muon_arm_is_torchs_muon_with_float32_newton_schulz(gen, shape, monkeypatch):
    """The ``muon_f32`` arm is torch.optim.Muon's arithmetic with Newton–Schulz in float32.

    Against torch's own step with its bf16 Newton–Schulz swapped (in this test only) for the
    float32 one: bit-identical. The float32 iteration is within float32 round-off of torch's
    iteration in float64 and the bf16 one is not (so the arm really changes precision).
    """
    import torch.optim._muon as muon_module
    from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, _zeropower_via_newtonschulz

    from muonflow.optim import Route
    from muonflow.polar import newton_schulz

    G = torch.randn(shape, generator=gen)
    coeffs = (DEFAULT_A, DEFAULT_B, DEFAULT_C)
    X = newton_schulz(G, 5, coeffs, eps=1e-7, dtype=torch.float32)
    ref = _ns_reference(G)
    # 5 steps of degree-5 polynomials with |p'| <= ~4: float32 round-off amplified by at
    # most ~4^5 · u32 per entry; 1e-3 leaves room, and bf16 (u = 2^-9) exceeds it.
    assert float((X - ref).abs().max()) < 1e-3
    bf16 = _zeropower_via_newtonschulz(G, coeffs, 5, 1e-7).float()
    assert float((bf16 - ref).abs().max()) > 1e-3
    W0 = torch.randn(shape, generator=gen)
    grads = [torch.randn(shape, generator=gen) for _ in range(2)]
    ours = nn.Parameter(W0.clone())
    route = Route("w", shape, "regmuon", "hidden matrix", "", "batch", "out_in")
    opt = training.MatrixMuon([(route, ours)], ns_dtype=torch.float32, lr=0.1, weight_decay=0.1)
    theirs = nn.Parameter(W0.clone())
    ref_opt = torch.optim.Muon([theirs], lr=0.1, weight_decay=0.1)
    monkeypatch.setattr(muon_module, "_zeropower_via_newtonschulz",
                        lambda g, c, s, e: newton_schulz(g, s, c, eps=e, dtype=torch.float32))
    for g in grads:
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
    assert torch.equal(ours.detach(), theirs.detach())


def test_matrix_muon_equals_torch_muon_on_separate_matrices(gen):
    """Views of a stack / conv kernel / Conv1D weight / packed q,k,v get exactly torch's
    per-matrix update (regression against torch's own optimizer)."""
    from muonflow.optim import Route

    def muon_step(params, grads):
        opt = torch.optim.Muon(params, lr=0.1, weight_decay=0.0)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()
        opt.step()  # twice: the momentum buffers are used

    stack = nn.Parameter(torch.randn(3, 5, 7, generator=gen))
    conv = nn.Parameter(torch.randn(6, 2, 3, 3, generator=gen))
    lin = nn.Parameter(torch.randn(4, 9, generator=gen))  # an HF Conv1D weight [in, out]
    qkv = nn.Parameter(torch.randn(6, 2, generator=gen))  # in_proj_weight [3d, d]
    routed = [
        (Route("stack", (3, 5, 7), "regmuon", "hidden matrix", "", "batch", "out_in"), stack),
        (Route("conv", (6, 2, 3, 3), "regmuon", "hidden matrix", "", "conv", "out_in"), conv),
        (Route("c1d", (4, 9), "regmuon", "hidden matrix", "", "batch", "in_out"), lin),
        (Route("qkv", (6, 2), "regmuon", "hidden matrix", "", "split:3", "out_in"), qkv),
    ]
    grads = {p: torch.randn(p.shape, generator=gen) for p in (stack, conv, lin, qkv)}
    sep = [nn.Parameter(stack.detach()[e].clone()) for e in range(3)]
    sep += [
        nn.Parameter(conv.detach().reshape(6, -1).clone()),
        nn.Parameter(lin.detach().T.clone()),
    ]
    sep += [nn.Parameter(qkv.detach()[2 * i : 2 * i + 2].clone()) for i in range(3)]
    sep_grads = [grads[stack][e] for e in range(3)] + [grads[conv].reshape(6, -1), grads[lin].T]
    sep_grads += [grads[qkv][2 * i : 2 * i + 2] for i in range(3)]
    muon_step(sep, sep_grads)
    opt = training.MatrixMuon(routed, lr=0.1, weight_decay=0.0)
    for _ in range(2):
        for p in (stack, conv, lin, qkv):
            p.grad = grads[p]
        opt.step()
    for e in range(3):
        assert torch.equal(stack.detach()[e], sep[e].detach())
    assert torch.equal(conv.detach().reshape(6, -1), sep[3].detach())
    assert torch.equal(lin.detach().T, sep[4].detach())
    for i in range(3):
        assert torch.equal(qkv.detach()[2 * i : 2 * i + 2], sep[5 + i].detach())
    with pytest.raises(ValueError, match="no matrix parameters"):
        training.MatrixMuon([])


def test_train_accepts_an_optimizer_factory(digits_task):
    def factory(model):
        return [torch.optim.SGD(model.parameters(), lr=0.1)]

    r = training.train(digits_task, factory, steps=10, seed=0, evals=2)
    assert r["optimizer"] == "factory" and r["lr"] is None and not r["diverged"]
    assert r["test_loss"] < r["initial"]["test_loss"]
    with pytest.raises(ValueError, match="lr is required"):
        training.train(digits_task, "adamw", steps=1)


def test_matrix_muon_training_equals_torch_muon_and_clears_gradients(digits_task):
    """On plain Linear layers MatrixMuon is torch.optim.Muon: the same training, bit for bit.

    Regression against torch's own optimizer; it fails if the viewed parameters' gradients are
    not cleared by ``zero_grad`` (they would accumulate over steps).
    """

    from muonflow.optim import DEFAULTS

    def plain(model):
        matrices, rest = training.routed(model)
        return [
            torch.optim.Muon([p for _, p in matrices], lr=0.02, weight_decay=0.0),
            torch.optim.AdamW(rest, lr=3e-3, betas=DEFAULTS.adamw_betas, weight_decay=0.0),
        ]

    a = training.train(digits_task, "muon", lr=0.02, adamw_lr=3e-3, steps=8, seed=0, evals=2)
    b = training.train(digits_task, plain, steps=8, seed=0, evals=2)
    assert a["train_loss"] == b["train_loss"] and a["test_loss"] == b["test_loss"]
    model = nn.Linear(4, 4)
    hidden = nn.Sequential(nn.Linear(4, 4), model)
    opt = training.MatrixMuon(training.routed(hidden)[0], lr=0.1)
    hidden(torch.ones(2, 4)).sum().backward()
    opt.zero_grad()
    assert hidden[0].weight.grad is None


@pytest.mark.parametrize("warmup", [0, 5])
def test_lr_factor_schedules(warmup):
    """The three schedules over 100 steps: the warm-up rises linearly to 1 at step
    ``warmup - 1``; then ``linear`` falls by the same amount each step and ``cosine`` as half a
    cosine — 1/2 halfway through the decay, symmetric about it (``f(a) + f(b) = 1`` where the
    decay's fractions add to 1), steepest in the middle — both ending above 0; ``constant``
    stays at 1. Mutants that fail: a cosine with no warm-up, a full period (``cos 2πt``), no
    ``/2`` (values above 1), the decay's fraction off by one step (no symmetry)."""
    steps = 100
    for schedule in ("linear", "cosine", "constant"):
        f = [training.lr_factor(k, steps, warmup, schedule) for k in range(steps)]
        assert f[:warmup] == pytest.approx([(k + 1) / warmup for k in range(warmup)])
        assert max(f) == pytest.approx(1.0) and min(f) > 0
        tail = f[max(warmup - 1, 0):]
        if schedule == "constant":
            assert tail == [1.0] * len(tail)
            continue
        drops = [a - b for a, b in itertools.pairwise(tail)]
        assert all(d > 0 for d in drops)
        if schedule == "linear":
            assert drops == pytest.approx([drops[0]] * len(drops))
            continue
        n = steps - warmup + 1 if warmup else steps  # the decay's fraction: (k - warmup + 1)/n
        k_of = (lambda j: j + warmup - 1) if warmup else (lambda j: j)
        for j in range(1, n // 2):
            assert f[k_of(j)] + f[k_of(n - j)] == pytest.approx(1.0, abs=1e-12)
        assert f[k_of(n // 2)] == pytest.approx(0.5, abs=0.02)
        assert max(drops) == pytest.approx(drops[len(drops) // 2], rel=0.01)
    with pytest.raises(ValueError, match="schedule"):
        training.train("digits", "adamw", lr=0.01, steps=2, schedule="cosine_restarts")
