r"""Experiment — blockwise Muon probability flow for softmax-gated mixtures of experts.

An expert :math:`\theta = (r, W_1, W_2)` is a particle; the MoE output is the ratio of two
integrals against :math:`\rho`, :math:`J(\rho) = R(\int F\,d\rho)` with
:math:`F(\theta)(x) = (e^{\langle r,x\rangle}W_2\sigma(W_1x),\ e^{\langle r,x\rangle})` and
:math:`R(a, b) = \ell(a/b, y)` (:mod:`muonflow.meanfield.moe`). Parts:

1. **Ledger.** The blockwise flow (one relativistic potential per block, each with its own
   ε) on a mean-field MoE regression, integrated by the adaptive reference: the dissipation
   identity :math:`H(t) - H(0) + \gamma\int \frac1N\sum_i\langle P_i, \nabla K(P_i)\rangle = 0`.
2. **Blockwise vs global orthogonalization.** The same particle system under the ``muon``
   scheme, with each expert's block mapped separately vs one map of all experts' blocks
   concatenated (``[N·m, n]``), same ``h, γ, ε`` and steps.
3. **Blockwise vs global orthogonalization, and optimizers × number of experts.** The MoE
   transformer (:mod:`muonflow.models.moe`) on the standard-library character corpus, ``E``
   experts at fixed total width ``E·m`` (the mean-field regime as ``E`` grows), ``seeds``
   seeds per arm, the recipe of :func:`muonflow.training.make_optimizers` (Nesterov, linear lr
   decay, the chars task's tuned learning rates). Arms (:data:`ARMS`): RegMuon on the
   *stacked* experts (``[E, m, n]``: every expert's block orthogonalized separately) vs RegMuon
   on the *dense* layout (router ``[E, d]``, ``W1 [E·m, d]``, ``W2 [d, E·m]``: one global
   orthogonalization of all experts together), ``torch.optim.Muon`` (2-D parameters only, so
   it reaches the experts through the dense layout: global) and AdamW. Both layouts start from
   the same weights. Reported: training loss (fixed training windows) and validation loss after
   ``train_steps`` steps, mean ± std over seeds.
4. **Does the dissipation identity survive practical approximations?** The experts of the
   MoE transformer as particles (:class:`~muonflow.models.moe.ExpertParticles`, mean-field
   forces) under the ``muon`` scheme at matched step sizes ``h``: the fraction of steps at which
   ``H = J + (1/E)ΣK_ε(P)`` increases when the velocity is the exact map ``∇K_ε``, the
   fast matmul-only map (``tol = 1e-3``), or the classic Newton–Schulz quintic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data import stdlib_corpus
from ..dynamics import HamiltonianFlow, integrate
from ..meanfield.moe import moe_objective, softmax_moe_output
from ..models.moe import ExpertParticles, moe_transformer
from ..models.transformer import TransformerConfig
from ..polar import newton_schulz
from ..spectral import Relativistic
from ..training import make_optimizers
from . import _plot
from ._dynamics_problems import single_thread
from .base import Context, Result, at_most, experiment

#: Transformer arms: label -> (optimizer of :func:`muonflow.training.make_optimizers`, expert
#: layout of :func:`~muonflow.models.moe.moe_transformer`, the :class:`Config` field of its lr).
ARMS: dict[str, tuple[str, str, str]] = {
    "RegMuon blockwise": ("regmuon", "stacked", "lr_blockwise"),
    "RegMuon global": ("regmuon", "dense", "lr_global"),
    "Muon global": ("muon", "dense", "lr_muon"),
    "AdamW": ("adamw", "stacked", "lr_adamw"),
}


@dataclass(frozen=True)
class Config:
    # mean-field MoE regression (parts 1-2)
    d: int = 3  # input dimension
    hidden: int = 4  # hidden width of an expert
    points: int = 32  # data points B
    teacher: int = 4  # experts of the teacher that makes the targets
    particles: int = 16  # student experts N
    eps: float = 0.5  # ε of the W1, W2 blocks (singular-value units of P)
    eps_router: float = 0.3  # ε of the 1×d router block
    gamma: float = 1.0  # damping
    t_ref: float = 2.0  # horizon of the reference integration
    h: float = 0.05  # step of the muon scheme (part 2)
    steps: int = 200  # muon steps (part 2)
    # MoE transformer (parts 3-4)
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 1
    d_mlp: int = 256  # total expert width E·m
    block: int = 32
    batch: int = 16
    experts: tuple[int, ...] = (4, 16, 64)
    arms: tuple[str, ...] = tuple(ARMS)  # keys of ARMS; the first is the paired baseline
    seeds: int = 3  # runs per arm and E: seeds seed, seed + 1, ...
    train_steps: int = 40
    # Learning rates of the arms (matrices; AdamW: everything): the best of a x2 grid per arm
    # at this (quick) size, E = 16, 3 seeds (docs/moe.md). Blockwise is flat over
    # 0.0125-0.1; its 0.05 is also the chars task's tuned value (muonflow.training). The full
    # profile has its own grid's values.
    lr_blockwise: float = 0.05
    lr_global: float = 0.2
    lr_muon: float = 0.2
    lr_adamw: float = 0.01
    lr_scales: tuple[float, ...] = (1.0,)  # each arm runs at lr·scale; the best by val loss
    adamw_lr: float = 0.003  # the AdamW part of Muon / RegMuon (embeddings, head, norms)
    eval_batches: int = 4  # fixed train / val windows for the final losses
    unigram_check: bool = True  # check that every arm beats the unigram entropy (not in smoke)
    flow_experts: int = 16  # E of part 4
    flow_hs: tuple[float, ...] = (0.005, 0.02, 0.08)  # steps of part 4 (dynamics units)
    flow_gamma: float = 5.0
    flow_eps: float = 1e-3
    flow_steps: int = 30
    seed: int = 0


class _MapPotential:
    """The energy of ``Relativistic(eps)`` with an approximate velocity map ``grad``."""

    def __init__(self, eps: float, kind: str) -> None:
        self.base, self.kind = Relativistic(eps), kind

    def energy(self, P: Tensor) -> Tensor:
        return self.base.energy(P)

    def grad(self, P: Tensor) -> Tensor:
        if self.kind == "exact":
            return self.base.grad(P)
        if self.kind == "fast":
            return self.base.grad(P, method="auto", tol=1e-3)
        return newton_schulz(P)  # Muon's quintic, 5 steps

    def __repr__(self) -> str:
        return f"{self.kind}-map({self.base!r})"


class _GlobalView:
    """The particle objective seen as one matrix per block: ``[N, m, n] <-> [1, N·m, n]``."""

    def __init__(self, objective: Any, shapes: tuple[torch.Size, ...]) -> None:
        self.objective, self.shapes = objective, shapes

    def _local(self, W: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return tuple(w.reshape(s) for w, s in zip(W, self.shapes, strict=True))

    def value(self, W: tuple[Tensor, ...]) -> Tensor:
        return self.objective.value(self._local(W))

    def value_and_force(self, W: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        J, F = self.objective.value_and_force(self._local(W))
        return J, tuple(f.reshape(w.shape) for f, w in zip(F, W, strict=True))

    def kinetic_weight(self, W: tuple[Tensor, ...]) -> float:
        return 1.0 / self.shapes[0][0]


def _meanfield_problem(cfg: Config, gen: torch.Generator) -> tuple[Any, tuple[Tensor, ...]]:
    X = torch.randn(cfg.d, cfg.points, generator=gen, dtype=torch.float64)

    def cloud(n: int, scale: float) -> tuple[Tensor, ...]:
        return (
            scale * torch.randn(n, 1, cfg.d, generator=gen, dtype=torch.float64),
            torch.randn(n, cfg.hidden, cfg.d, generator=gen, dtype=torch.float64) / cfg.d**0.5,
            torch.randn(n, 1, cfg.hidden, generator=gen, dtype=torch.float64),
        )

    y = softmax_moe_output(cloud(cfg.teacher, 1.0), X)  # teacher MoE targets: [1, B]
    return moe_objective(X, y, hidden=cfg.hidden), cloud(cfg.particles, 0.3)


def _transformer_config(cfg: Config, vocab: int) -> TransformerConfig:
    return TransformerConfig(
        vocab_size=vocab, block_size=cfg.block, d_model=cfg.d_model, n_heads=cfg.n_heads,
        n_layers=cfg.n_layers, d_mlp=cfg.d_mlp,
    )  # fmt: skip


def _train(
    cfg: Config,
    n_experts: int,
    arm: str,
    seed: int,
    corpus: Any,
    windows: dict[str, Any],
    lr_scale: float = 1.0,
) -> dict[str, float]:
    """One run of ``arm`` (:data:`ARMS`): mean losses on the fixed train / val ``windows``.

    Returns ``{"train", "val"}`` after ``train_steps`` steps (``inf`` if the loss became
    non-finite) and ``"initial_val"``, the untrained network's validation loss.
    """
    opt_name, layout, lr_field = ARMS[arm]
    torch.manual_seed(seed)  # same initial network in both layouts
    model = moe_transformer(_transformer_config(cfg, corpus.vocab_size), n_experts, layout=layout)
    lr = lr_scale * getattr(cfg, lr_field)
    opts = make_optimizers(opt_name, model, lr=lr, adamw_lr=cfg.adamw_lr)
    steps = cfg.train_steps
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda k: 1 - k / steps) for o in opts]
    gen = torch.Generator().manual_seed(10_000 + seed)  # the same minibatches for every arm

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        return {
            split: float(np.mean([model.loss(x, y).item() for x, y in ws]))
            for split, ws in windows.items()
        }

    initial = evaluate()["val"]
    for _ in range(steps):
        loss = model.loss(*corpus.batch("train", cfg.batch, cfg.block, gen))
        if not bool(torch.isfinite(loss)):
            return {"train": math.inf, "val": math.inf, "initial_val": initial}
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()
        for sch in scheds:
            sch.step()
    return {**evaluate(), "initial_val": initial}


def _mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


@experiment(
    "moe_flow",
    title="Blockwise Muon probability flow for softmax-gated mixtures of experts",
    claim=(
        "With experts θ = (r, W1, W2) as particles and the Hilbert-valued feature "
        "F(θ)(x) = (e^{⟨r,x⟩}W2σ(W1x), e^{⟨r,x⟩}), the softmax-gated MoE is J(ρ) = R(∫F dρ) "
        "and inertial Muon on its experts is a blockwise Hamiltonian probability flow that "
        "satisfies the dissipation identity; on an MoE transformer, blockwise (per-expert) "
        "RegMuon, global RegMuon, torch.optim.Muon and AdamW all learn."
    ),
    config=Config,
    profiles={
        "smoke": {
            "particles": 4,
            "steps": 20,
            "t_ref": 0.5,
            "experts": (4, 16),
            "seeds": 1,
            "train_steps": 3,
            "unigram_check": False,
            "eval_batches": 1,
            "flow_steps": 4,
            "flow_hs": (0.005, 0.08),
            "d_model": 32,
            "d_mlp": 64,
            "batch": 4,
            "block": 16,
            "flow_experts": 4,
        },
        "full": {
            "particles": 64,
            "steps": 1000,
            "t_ref": 5.0,
            "seeds": 3,
            "train_steps": 300,
            "d_model": 128,
            "n_layers": 2,
            "d_mlp": 512,
            "block": 64,
            "batch": 32,
            "eval_batches": 16,
            "flow_steps": 200,
            # the best of a x2 grid per arm at this size (E = 16, seed 0; every optimum has
            # worse neighbours on both sides; docs/moe.md): the quick size's rates are 2-8x
            # too large here
            "lr_blockwise": 0.025,
            "lr_global": 0.025,
            "lr_muon": 0.025,
            "lr_adamw": 0.002,
        },
    },
    version=2,
)
def run(cfg: Config, ctx: Context) -> Result:
    unknown = [a for a in cfg.arms if a not in ARMS]
    if unknown or not cfg.arms:
        raise ValueError(f"moe_flow: arms must be keys of {list(ARMS)}, got {list(cfg.arms)}")
    if not cfg.lr_scales or min(cfg.lr_scales) <= 0:
        raise ValueError(f"moe_flow: lr_scales must be positive, got {cfg.lr_scales}")
    # Small problems: one intra-op thread is faster than two and immune to oversubscription.
    with single_thread():
        return _run(cfg, ctx)


def _run(cfg: Config, ctx: Context) -> Result:
    gen = torch.Generator().manual_seed(cfg.seed)
    res = Result()
    obj, theta0 = _meanfield_problem(cfg, gen)
    P0 = tuple(torch.zeros_like(t) for t in theta0)
    kinetic = (Relativistic(cfg.eps_router), Relativistic(cfg.eps), Relativistic(cfg.eps))

    # (1) the blockwise dissipation identity, adaptive reference integrator
    ctx.progress(0.02, "reference ledger")
    P_kick = tuple(torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in theta0)
    flow = HamiltonianFlow(obj, kinetic, cfg.gamma)
    ref = integrate(flow, theta0, P_kick, cfg.t_ref, h=cfg.t_ref / 20, method="reference")
    scale = float(ref.H.abs().max())
    res.checks["blockwise_ledger_residual_reference"] = at_most(
        float(ref.residual().abs().max()) / scale, 1e-9,
        "DOP853 at rtol 1e-12 integrates (θ, P, dissipated) to ~1e-11 relative over a few "
        "units of time; the identity H(t) − H(0) + dissipated(t) = 0 is exact for the flow.",
    )  # fmt: skip
    res.series["reference"] = {"t": ref.t.tolist(), "H": ref.H.tolist(),
                               "dissipated": ref.dissipated.tolist()}  # fmt: skip

    # (2) blockwise (per-expert) vs one global map of all experts concatenated
    ctx.progress(0.1, "mean-field blockwise vs global")
    shapes = tuple(t.shape for t in theta0)
    flat = tuple(t.reshape(1, -1, t.shape[-1]) for t in theta0)
    runs = {
        "blockwise": (HamiltonianFlow(obj, kinetic, cfg.gamma), theta0, P0),
        "global": (HamiltonianFlow(_GlobalView(obj, shapes), kinetic, cfg.gamma), flat,
                   tuple(torch.zeros_like(t) for t in flat)),
    }  # fmt: skip
    t_end = cfg.h * cfg.steps
    bw = {}
    for name, (fl, W0, Q0) in runs.items():
        tr = integrate(fl, W0, Q0, t_end, h=cfg.h, method="muon")
        bw[name] = {"t": tr.t.tolist(), "J": tr.J.tolist(), "H": tr.H.tolist()}
    res.series["blockwise_vs_global"] = bw
    res.notes.append(
        "mean-field MoE regression, final J: blockwise {:.4g}, global {:.4g} (J0 = {:.4g})".format(
            bw["blockwise"]["J"][-1], bw["global"]["J"][-1], bw["blockwise"]["J"][0]
        )
    )

    # (3) the MoE transformer: blockwise vs global orthogonalization, optimizers × E
    corpus = stdlib_corpus()
    wgen = torch.Generator().manual_seed(12345)  # fixed evaluation windows, whatever the seed
    windows = {
        split: [corpus.batch(split, cfg.batch, cfg.block, wgen) for _ in range(cfg.eval_batches)]
        for split in ("train", "val")
    }
    seeds = [cfg.seed + k for k in range(cfg.seeds)]
    # every[E][arm][scale] = per-seed results; raw[E][arm] = those at the arm's selected scale
    every: dict[str, dict[str, dict[str, list[dict[str, float]]]]] = {}
    raw: dict[str, dict[str, list[dict[str, float]]]] = {}
    chosen: dict[str, dict[str, float]] = {}
    total = len(cfg.experts) * len(cfg.arms) * len(cfg.lr_scales) * len(seeds)
    done = 0
    for E in cfg.experts:
        key = str(E)
        every[key], raw[key], chosen[key] = {}, {}, {}
        for arm in cfg.arms:
            every[key][arm] = {}
            for sc in cfg.lr_scales:
                ctx.progress(0.2 + 0.55 * done / total, f"train E={E} {arm} lr×{sc:g}")
                every[key][arm][f"{sc:g}"] = [
                    _train(cfg, E, arm, s, corpus, windows, lr_scale=sc) for s in seeds
                ]
                done += len(seeds)
            # the scale with the lowest mean validation loss (the only one when not sweeping)
            mean_val = {sc: np.mean([r["val"] for r in every[key][arm][f"{sc:g}"]])
                        for sc in cfg.lr_scales}  # fmt: skip
            best = min(mean_val, key=mean_val.__getitem__)
            chosen[key][arm] = best * getattr(cfg, ARMS[arm][2])
            raw[key][arm] = every[key][arm][f"{best:g}"]
    table = {
        key: {
            arm: {
                split: dict(zip(("mean", "std"), _mean_std([r[split] for r in rs]), strict=True))
                for split in ("train", "val")
            }
            for arm, rs in row.items()
        }
        for key, row in raw.items()
    }
    chance = _unigram_entropy(corpus)
    res.series["transformer"] = {"seeds": seeds, "steps": cfg.train_steps, "runs": every,
                                 "lr": chosen, "summary": table, "chance_loss": chance}  # fmt: skip
    for key, row in table.items():
        res.notes.append(
            f"MoE transformer, E={key}, {cfg.train_steps} steps, {len(seeds)} seeds, train / val "
            "loss (mean ± std): "
            + "; ".join(
                f"{arm} (lr {chosen[key][arm]:g}) {v['train']['mean']:.3f} ± "
                f"{v['train']['std']:.3f} / {v['val']['mean']:.3f} ± {v['val']['std']:.3f}"
                for arm, v in row.items()
            )
        )
    # Paired over seeds (same initial network and minibatches in every arm): the seed-to-seed
    # spread of the loss cancels in the differences, which are what the comparison is about.
    base = cfg.arms[0]
    paired: dict[str, dict[str, dict[str, float]]] = {}
    for key, runs_e in raw.items():
        paired[key] = {}
        for arm in cfg.arms[1:]:
            d = [a["train"] - b["train"] for a, b in zip(runs_e[base], runs_e[arm], strict=True)]
            paired[key][arm] = dict(zip(("mean", "std"), _mean_std(d), strict=True))
        if paired[key]:
            res.notes.append(
                f"MoE transformer, E={key}, paired train-loss difference {base} − other arm "
                "(mean ± std over seeds): "
                + "; ".join(
                    f"{a} {v['mean']:+.3f} ± {v['std']:.3f}" for a, v in paired[key].items()
                )
            )
    res.series["transformer"]["paired_train_diff"] = {"base": base, "diff": paired}
    for arm in cfg.arms:
        runs_arm = [r for row in raw.values() for r in row[arm]]
        key = arm.lower().replace(" ", "_")
        res.checks[f"{key}_learns"] = at_most(
            max(r["val"] / r["initial_val"] for r in runs_arm), 1.0,
            "worst over E and seeds of final / initial validation loss (the same untrained "
            "network in every arm): an optimizer that does not move the weights, or diverges, "
            "cannot go below 1.",
        )  # fmt: skip
        if cfg.unigram_check:
            res.checks[f"{key}_beats_unigram"] = at_most(
                max(r["val"] for r in runs_arm) / chance, 1.0,
                "worst validation loss over E and seeds / the unigram entropy of the training "
                "text (the loss of the best input-free predictor): a model that has learned "
                "nothing of the context cannot beat it.",
            )  # fmt: skip

    # (4) H increases under the exact map vs the fast map vs Newton–Schulz
    ctx.progress(0.75, "dissipation under approximations")
    torch.manual_seed(cfg.seed)
    model = moe_transformer(_transformer_config(cfg, corpus.vocab_size), cfg.flow_experts)
    idx, tgt = corpus.batch("train", cfg.batch, cfg.block, torch.Generator().manual_seed(7))
    particles = ExpertParticles(model, idx, tgt)
    W0 = particles.state()
    fractions: dict[str, dict[str, float]] = {}
    curves: dict[str, list[float]] = {}
    for kind in ("exact", "fast", "newton_schulz"):
        fractions[kind] = {}
        for h in cfg.flow_hs:
            fl = HamiltonianFlow(particles, _MapPotential(cfg.flow_eps, kind), cfg.flow_gamma)
            tr = integrate(fl, W0, tuple(torch.zeros_like(w) for w in W0),
                           h * cfg.flow_steps, h=h, method="muon")  # fmt: skip
            dH = tr.H[1:] - tr.H[:-1]
            # float32 loss: increments below 1e-6·|H| (~16 u₃₂) are round-off, not increases
            fractions[kind][str(h)] = float((dH > 1e-6 * tr.H.abs().max()).double().mean())
            if h == cfg.flow_hs[-1]:
                curves[kind] = tr.H.tolist()
    res.series["h_increase_fraction"] = fractions
    res.series["h_curves"] = curves
    for kind, frac in fractions.items():
        res.notes.append(
            f"fraction of muon steps with H increasing, {kind} map: "
            + ", ".join(f"h={h} {v:.2f}" for h, v in frac.items())
        )

    _figure(cfg, res, bw, table, curves, ctx)
    ctx.progress(1.0, "done")
    return res


def _unigram_entropy(corpus: Any) -> float:
    """Entropy (nats/char) of the training text's character frequencies."""
    p = torch.bincount(corpus.train.long().flatten(), minlength=corpus.vocab_size).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def _figure(
    cfg: Config,
    res: Result,
    bw: dict[str, Any],
    table: dict[str, dict[str, Any]],
    curves: dict[str, list[float]],
    ctx: Context,
) -> None:
    fig, (a0, a1, a2) = _plot.figure(3)
    for name, s in bw.items():
        a0.plot(s["t"], s["J"], label=f"J, {name}")
    a0.set(xlabel="t", ylabel="J", title="Mean-field MoE: blockwise vs global", yscale="log")
    a0.legend(fontsize=8)
    Es = [int(e) for e in table]
    for k, arm in enumerate(cfg.arms):
        x = [e * (1 + 0.04 * (k - 1.5)) for e in Es]  # small offsets keep the bars apart
        a1.errorbar(x, [table[str(e)][arm]["train"]["mean"] for e in Es],
                    yerr=[table[str(e)][arm]["train"]["std"] for e in Es],
                    fmt="o-", capsize=3, label=arm)  # fmt: skip
    a1.set(xscale="log", xlabel="experts E (fixed E·m)", ylabel="train loss (mean ± std)",
           title=f"MoE transformer, {cfg.train_steps} steps")  # fmt: skip
    a1.set_xticks(Es, [str(e) for e in Es])
    a1.minorticks_off()
    a1.legend(fontsize=8)
    for kind, H in curves.items():
        a2.plot(np.arange(len(H)) * cfg.flow_hs[-1], H, label=kind)
    a2.set(xlabel="t", ylabel="H", title=f"H along the particle flow, h={cfg.flow_hs[-1]}")
    a2.legend(fontsize=8)
    res.figures.append(_plot.save(fig, ctx.figure_path("moe_flow.png")))
