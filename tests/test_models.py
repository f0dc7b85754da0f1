"""Small models: shapes, causality, parameter names the optimizer routes by, trainability."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import unit_roundoff
from torch import nn

from muonflow.models import MLP, SmallCNN, SortTransformer, Transformer, TransformerConfig
from muonflow.optim import RegMuon

TINY = TransformerConfig(vocab_size=32, block_size=16, d_model=32, n_heads=4, n_layers=2, d_mlp=64)


def test_mlp_shapes_and_routing():
    model = MLP(64, 32, 10, depth=3)
    assert model(torch.randn(5, 64)).shape == (5, 10)
    opt = RegMuon(model.named_parameters())
    assert opt.param_groups[0]["param_names"] == [f"layers.{i}.weight" for i in range(3)]
    assert "head.weight" in opt.param_groups[1]["param_names"]
    with pytest.raises(ValueError, match="depth must be >= 1"):
        MLP(4, 4, 2, depth=0)


def test_transformer_shapes_routing_and_initial_loss():
    torch.manual_seed(0)
    model = Transformer(TINY)
    idx = torch.randint(0, 32, (3, 16))
    assert model(idx).shape == (3, 16, 32)
    # Logits are O(0.02·√d)-small at init, so the loss is ln(vocab) to within ~0.05.
    assert abs(float(model.loss(idx[:, :-1], idx[:, 1:]).detach()) - math.log(32)) < 0.05
    opt = RegMuon(model.named_parameters())
    regmuon, adamw = opt.param_groups
    assert regmuon["param_names"] == [
        f"blocks.{i}.{name}.weight"
        for i in range(2)
        for name in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    ]
    assert {"embed.weight", "pos_embed.weight", "head.weight"} <= set(adamw["param_names"])
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="not divisible"):
        TransformerConfig(d_model=30, n_heads=4)


def test_transformer_is_causal():
    """Changing token t leaves the logits of positions < t unchanged.

    Rows before t see the same inputs; masked attention weights are exactly 0, so only the
    summation order inside BLAS could differ: 64 u32 · max|logits|.
    """
    torch.manual_seed(1)
    model = Transformer(TINY)
    idx = torch.randint(0, 32, (2, 16))
    alt = idx.clone()
    alt[:, 9] = (alt[:, 9] + 1) % 32
    with torch.no_grad():
        a, b = model(idx), model(alt)
    tol = 64 * unit_roundoff(torch.float32) * float(a.abs().max())
    assert float((a[:, :9] - b[:, :9]).abs().max()) <= tol
    assert float((a[:, 9:] - b[:, 9:]).abs().max()) > 1e-4


def test_regmuon_trains_the_transformer():
    """One RegMuon object (matrices + AdamW part) fits a fixed batch: loss falls by half."""
    torch.manual_seed(2)
    model = Transformer(TINY)
    idx = torch.randint(0, 32, (4, 17))
    opt = RegMuon(model.named_parameters(), lr=0.02, adamw_lr=3e-3)
    first = None
    for _ in range(40):
        loss = model.loss(idx[:, :-1], idx[:, 1:])
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(model.loss(idx[:, :-1], idx[:, 1:]).detach()) < 0.5 * first
    assert all(isinstance(m, nn.Module) for m in model.blocks)


def test_sort_transformer_shapes_parameters_and_loss_targets():
    torch.manual_seed(0)
    model = SortTransformer(16, 8, d_model=16, n_heads=2, n_layers=2, d_ff=32)
    x = torch.randint(0, 16, (5, 8))
    logits = model(x)
    assert logits.shape == (5, 8, 16)
    # the positional table is a raw parameter held by the model, not an embedding module
    assert isinstance(model.pos, nn.Parameter) and model.pos.shape == (8, 16)
    assert isinstance(model.encoder, nn.TransformerEncoder) and len(model.encoder.layers) == 2
    # the loss is the per-position cross-entropy against sort(x), not against x itself
    want = nn.functional.cross_entropy(logits.flatten(0, 1), x.sort(1).values.flatten())
    assert float(model.loss(x).detach()) == pytest.approx(float(want.detach()), rel=1e-6)
    assert not torch.equal(x, x.sort(1).values)  # the check above can tell the two apart
    # the model is not permutation-invariant in position: the table enters the output
    with torch.no_grad():
        model.pos.zero_()
    assert not torch.allclose(model(x), logits)
    with pytest.raises(ValueError, match="not divisible"):
        SortTransformer(16, 8, d_model=15, n_heads=2)
    with pytest.raises(ValueError, match="length must be an int >= 1"):
        SortTransformer(16, 0)


def test_small_cnn_shapes_and_layout():
    torch.manual_seed(0)
    model = SmallCNN((4, 8), 16)
    x = torch.randn(3, 64)
    out = model(x)
    assert out.shape == (3, 10)
    assert torch.equal(model(x.view(3, 1, 8, 8)), out)  # flat and image inputs agree
    assert model.conv2.weight.shape == (8, 4, 3, 3) and model.fc.weight.shape == (16, 8 * 16)
    with pytest.raises(ValueError, match="hidden must be an int >= 1"):
        SmallCNN((4, 8), 0)


def test_small_cnn_reads_other_images():
    """``in_channels`` and ``size`` set the input (``[B, C·S·S]`` or ``[B, C, S, S]``) and the
    hidden layer's fan-in ``c2 (S/2)²``; the defaults are the digits' network parameter for
    parameter (the benchmark's earlier CNNs rely on it). Mutant caught: the fan-in left at the
    digits' 16 cells."""
    torch.manual_seed(0)
    model = SmallCNN((4, 8), 16, 5, in_channels=3, size=12)
    x = torch.randn(2, 3 * 144)
    assert model(x).shape == (2, 5) and torch.equal(model(x.view(2, 3, 12, 12)), model(x))
    assert model.conv1.weight.shape == (4, 3, 3, 3) and model.fc.weight.shape == (16, 8 * 36)
    torch.manual_seed(0)
    digits_net = SmallCNN((4, 8), 16, in_channels=1, size=8)
    torch.manual_seed(0)
    for a, b in zip(SmallCNN((4, 8), 16).parameters(), digits_net.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="size must be even"):
        SmallCNN((4, 8), 16, size=9)
    with pytest.raises(ValueError, match="in_channels must be an int >= 1"):
        SmallCNN((4, 8), 16, in_channels=0)


def test_norm_options_add_normalization_and_change_nothing_without_it():
    """``norm=True`` puts a LayerNorm (MLP) or BatchNorm2d (CNN) after each hidden map; without
    it the model is the plain one, weight for weight (the benchmark's earlier tasks rely on it).
    The image tasks evaluate in eval mode: batch norm's running statistics, not the evaluated
    set's own. Mutants caught: the norm skipped in forward; evaluation left in train mode."""
    from muonflow.training import make_task

    x = torch.randn(6, 64)
    for make in (lambda n: MLP(64, 16, 10, depth=2, norm=n),
                 lambda n: SmallCNN((4, 8), 16, norm=n)):  # fmt: skip
        torch.manual_seed(0)
        plain = make(False)
        torch.manual_seed(0)
        normed = make(True)
        named = dict(normed.named_parameters())
        for name, p in plain.named_parameters():
            assert torch.equal(p, named.pop(name)), name
        assert named and all(p.ndim == 1 for p in named.values())  # the norms' own vectors
        with torch.no_grad():
            for p in named.values():
                p.mul_(3.0)  # a norm that is used changes the output
        assert not torch.allclose(normed(x), plain(x))
    task = make_task("cnn", channels=(4, 8), hidden=16, norm=True)
    model = task.make_model()
    before = task.evaluate(model, ["val"])["val_loss"]
    assert model.training  # restored
    model.bn1.running_mean += 1.0  # used in eval mode only
    assert task.evaluate(model, ["val"])["val_loss"] != before
