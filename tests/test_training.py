"""muonflow.training, the practical_training experiment and the ``muonflow train`` command."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from muonflow import training
from muonflow.cli import main


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
        ({"optimizer": "sgd"}, "unknown optimizer 'sgd'; valid: adamw, muon, regmuon"),
        ({"lr": -1.0}, "lr must be a positive finite number"),
        ({"eps": math.nan}, "eps must be a positive finite number"),
        ({"steps": 0}, "steps must be a positive int"),
        ({"task": "mnist"}, "unknown task 'mnist'; valid: digits, chars"),
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
