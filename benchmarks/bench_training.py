"""Training benchmark: RegMuon at its defaults vs tuned torch Muon(+AdamW), fp32-NS Muon, AdamW.

Tasks (``muonflow.training``; data offline, deterministic by seed; one torch thread)
    ``gpt2``  Hugging Face GPT2LMHeadModel from a config (tied embeddings), char-level LM on
              Python standard-library sources.
    ``sort``  an ``nn.TransformerEncoder`` sorting transformer with a raw positional parameter.
    ``cnn``   a small CNN on scikit-learn's bundled 8x8 digits.
    ``moe``   a transformer whose feed-forwards are softmax-gated mixtures of stacked experts
              ``[E, m, n]``, char-level LM on the same text.

Arms
    ``regmuon_default``  ``RegMuon(model)``: the library's defaults (:data:`PROPOSED_DEFAULTS`
                         mirrors them), routed by structure; nothing tuned, the same everywhere.
    ``regmuon_tuned``    RegMuon at :data:`STUDY_CENTRE` with its lr swept.
    ``muon``             torch.optim.Muon (torch's defaults: EMA momentum 0.95, Nesterov,
                         bf16 NS5, ``adjust_lr_fn="original"``) on the hidden matrices — each
                         expert of a stack and each conv kernel as its own 2-D matrix
                         (``MatrixMuon``) — plus torch.optim.AdamW on the rest at a fixed lr:
                         the AdamW arm's tuned lr of the task (favours the baseline).
    ``muon_f32``         the same with Newton–Schulz in float32.
    ``adamw``            torch.optim.AdamW on everything (betas (0.9, 0.999), ϵ 1e-8).
    ``control``          ``RegMuon(model, lr=0)``: the AdamW part alone.
    No weight decay anywhere; every lr decays linearly to 0; same seed = same initial weights
    and the same minibatches in every arm.

Protocol
    1. lr sweeps on the tuning seeds (``val`` split): a x2 grid ``0.01·2^k`` per arm, extended
       until its optimum is not at an edge (mean of the tuning seeds; a diverged run is +inf).
    2. The defaults study, on the tuning seeds: one-at-a-time alternatives to each knob of
       :data:`STUDY_CENTRE` (momentum, Nesterov, ε, ``tol``, the AdamW part's lr and betas),
       the knobs that change the step's size at the best of three lrs (lr/2, lr, 2lr), and the
       lr scaling rule (``adjust_lr``) by an lr sweep at three widths of GPT-2.
    3. Fresh evaluation seeds at the chosen settings for every arm; final ``test`` and
       ``trainset`` losses, mean ± SE, and paired differences (RegMuon-defaults − arm) ± SE.
    4. Step time of every arm, interleaved in one process (median ms per step).
    Results are written to ``OUT/results.json`` after every run (``--resume`` skips finished
    runs); ``OUT/summary.md`` and ``OUT/*.png`` are generated from it.

Usage: ``python benchmarks/bench_training.py --profile {smoke,quick,full} --out DIR [--resume]
[--jobs N] [--report-only]``. ``smoke`` is a seconds-long sanity run on tiny models.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing as mp
import os
import platform
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from muonflow.optim import DEFAULTS, RegMuon
from muonflow.training import MatrixMuon, Task, make_task, routed, train


# -- the suite: tasks, schedules, the leave-tasks-out split -----------------------------------
@dataclass(frozen=True)
class SuiteTask:
    """One task of the suite: a :data:`muonflow.training.TASKS` builder and its ``options``,
    the kind (the split's stratum), ``steps`` and the schedule: ``"linear"`` (linear warm-up
    over the first 5% of the steps, then linear decay to 0) or ``"constant"`` (no scheduler)."""

    builder: str
    kind: str
    steps: int
    schedule: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def warmup(self) -> int:
        return self.steps // 20 if self.schedule == "linear" else 0


_LM = {"batch": 16, "block": 64, "eval_batches": 8}
#: The suite: every task runs in seconds on one CPU thread. Language models: byte-level, on
#: Python standard-library sources; vision and the MLP classifier: scikit-learn's bundled digits.
SUITE: dict[str, SuiteTask] = {
    "gpt2_d32_l2": SuiteTask("gpt2", "gpt2", 200, "constant", {**_LM, "d_model": 32}),
    "gpt2_d64_l2": SuiteTask("gpt2", "gpt2", 200, "linear", {**_LM, "d_model": 64}),
    "gpt2_d32_l4": SuiteTask("gpt2", "gpt2", 200, "linear", {**_LM, "d_model": 32, "n_layers": 4}),
    # the long run: three times the steps of its twin gpt2_d32_l2
    "gpt2_d32_l2_long": SuiteTask("gpt2", "gpt2", 600, "linear", {**_LM, "d_model": 32}),
    "llama_d32_l2": SuiteTask("llama", "llama", 200, "linear", {"d_model": 32}),
    "llama_d64_l2": SuiteTask("llama", "llama", 200, "constant", {"d_model": 64}),
    "llama_d32_l4": SuiteTask("llama", "llama", 200, "constant", {"d_model": 32, "n_layers": 4}),
    "sort": SuiteTask("sort", "sequence", 150, "constant"),  # the encoder
    "lstm": SuiteTask("rnn", "sequence", 200, "linear", {"n_layers": 2}),
    "moe": SuiteTask("moe", "sequence", 200, "linear", {**_LM, "d_model": 64}),
    "cnn": SuiteTask("cnn", "vision", 200, "linear"),
    "vit": SuiteTask("vit", "vision", 200, "constant"),
    "mlp_digits": SuiteTask("digits", "tabular", 200, "constant"),
    "friedman": SuiteTask("friedman", "tabular", 300, "linear"),
}
#: The split's seed (the issue's number) and the seeds of the protocol: tuning seeds choose
#: learning rates and defaults; evaluation seeds are fresh, used for the reported numbers only.
SPLIT_SEED = 21
TUNE_SEEDS = (100, 101)
EVAL_SEEDS = (0, 1, 2, 3, 4)
SPLIT_FILE = Path(__file__).with_name("training_split.json")


def split_suite(suite: dict[str, SuiteTask], seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """The leave-tasks-out split, stratified by kind.

    Kinds in alphabetical order; each kind's task names, sorted, are shuffled by one
    ``random.Random(seed)``; the first half go to tuning, the rest are held out. A kind with
    an odd count gives its extra task to the half that is smaller so far (held out on a tie).
    """
    import random

    rng = random.Random(seed)
    tuning: list[str] = []
    held: list[str] = []
    for kind in sorted({t.kind for t in suite.values()}):
        names = sorted(n for n, t in suite.items() if t.kind == kind)
        rng.shuffle(names)
        k = len(names) // 2 + (len(names) % 2 if len(tuning) < len(held) else 0)
        tuning += names[:k]
        held += names[k:]
    return {"tuning": sorted(tuning), "held_out": sorted(held)}


#: The knobs the study varies, and RegMuon's defaults of them (``muonflow.optim.DEFAULTS``,
#: chosen from this benchmark; the evidence is in docs/benchmark-training.md).
KNOBS = ("lr", "momentum", "nesterov", "eps", "eps_mode", "tol", "adjust_lr", "adamw_lr",
         "adamw_betas")  # fmt: skip
PROPOSED_DEFAULTS: dict[str, Any] = {k: getattr(DEFAULTS, k) for k in KNOBS}
#: The settings the lr sweeps and the defaults study vary one knob at a time around (and the
#: width study uses); fixed before the study. Where the study moved a default (``lr`` 0.02 ->
#: 0.04, ``tol`` 1e-3 -> 1e-2), the two differ; the ``regmuon_default`` arm is
#: ``RegMuon(model)`` itself, at the library's defaults.
STUDY_CENTRE: dict[str, Any] = {
    "lr": 0.02,
    "momentum": 0.95,
    "nesterov": True,
    "eps": 0.03,
    "eps_mode": "relative",
    "tol": 1e-3,
    "adjust_lr": "original",
    "adamw_lr": 0.02,
    "adamw_betas": (0.9, 0.95),
}


def regmuon_study(model: nn.Module, **overrides: Any) -> list[torch.optim.Optimizer]:
    """``RegMuon(model)`` at :data:`STUDY_CENTRE` (``overrides`` replace some)."""
    kw = {**STUDY_CENTRE, **overrides}
    kw["adamw_betas"] = tuple(kw["adamw_betas"])
    return [RegMuon(model, weight_decay=0.0, **kw)]


def regmuon_default(model: nn.Module, **overrides: Any) -> list[torch.optim.Optimizer]:
    """``RegMuon(model)``: what a user gets out of the box (``overrides``: the control's lr 0)."""
    return [RegMuon(model, **overrides)]


def build_optimizers(spec: dict[str, Any]) -> Callable[[nn.Module], list[torch.optim.Optimizer]]:
    """The optimizer factory of a run's ``opt`` spec."""
    arm = spec["arm"]
    if arm == "adamw":
        return lambda m: [torch.optim.AdamW(m.parameters(), lr=spec["lr"], weight_decay=0.0)]
    if arm in ("muon", "muon_f32"):
        ns_dtype = torch.float32 if arm == "muon_f32" else None

        def muon(model: nn.Module) -> list[torch.optim.Optimizer]:
            matrices, rest = routed(model)  # RegMuon's routing: the same matrices
            return [
                MatrixMuon(matrices, ns_dtype=ns_dtype, lr=spec["lr"], weight_decay=0.0),
                torch.optim.AdamW(rest, lr=spec["adamw_lr"],
                                  betas=tuple(spec.get("adamw_betas", (0.9, 0.999))),
                                  weight_decay=0.0),
            ]  # fmt: skip

        return muon
    if arm == "regmuon":
        knobs = {k: v for k, v in spec.items() if k != "arm"}
        return lambda m: regmuon_study(m, **knobs)
    if arm == "regmuon_default":
        over = {k: v for k, v in spec.items() if k not in ("arm", "at")}
        return lambda m: regmuon_default(m, **over)
    raise ValueError(f"unknown arm {arm!r}")


# -- profiles ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    tasks: dict[str, dict[str, Any]]  # name -> {"options": {...}, "steps": int}
    tune_seeds: tuple[int, ...]
    eval_seeds: tuple[int, ...]
    start: dict[str, dict[str, int]]  # task -> arm -> initial grid exponents k (lr = 0.01·2^k)
    grid_halfwidth: int = 2
    max_extend: int = 4
    ablations: dict[str, list[Any]] = field(default_factory=dict)
    sized_knobs: tuple[str, ...] = ()  # knobs compared at the best of lr/2, lr, 2lr
    task_rules: tuple[str, ...] = ()  # lr scaling rules swept on every task (study centre)
    widths: tuple[int, ...] = ()
    width_rules: tuple[str, ...] = ()
    width_seeds: tuple[int, ...] = ()
    timing_steps: int = 20


FULL_TASKS = {  # warmup: 5% of the steps
    "gpt2": {"options": {"d_model": 64}, "steps": 300, "warmup": 15},
    "sort": {"options": {}, "steps": 400, "warmup": 20},
    "cnn": {"options": {}, "steps": 200, "warmup": 10},
    "moe": {"options": {}, "steps": 300, "warmup": 15},
}
ABLATIONS = {
    "momentum": [0.9, 0.98],
    "nesterov": [False],
    "eps": [0.003, 0.01, 0.1, 0.3],
    "tol": [1e-2, 3e-2],
    "adamw_lr": [0.005, 0.01, 0.04],
    "adamw_betas": [(0.9, 0.999)],
}
START = {"adamw": -2, "muon": 1, "muon_f32": 1, "regmuon": 1}

PROFILES = {
    "smoke": Profile(
        tasks={
            "gpt2": {
                "options": {
                    "d_model": 16,
                    "n_layers": 1,
                    "batch": 4,
                    "block": 16,
                    "eval_batches": 1,
                },
                "steps": 6,
                "warmup": 1,
            },
            "sort": {
                "options": {
                    "d_model": 16,
                    "length": 8,
                    "vocab_size": 16,
                    "batch": 8,
                    "eval_size": 16,
                },
                "steps": 6,
            },
        },
        tune_seeds=(100,),
        eval_seeds=(0, 1),
        start={},
        grid_halfwidth=1,
        max_extend=1,
        ablations={"tol": [3e-2]},
        task_rules=("spectral",),
        widths=(8, 16),
        width_rules=("original", "match_rms_adamw"),
        width_seeds=(100,),
        timing_steps=2,
    ),
    "quick": Profile(
        tasks={k: {**v, "steps": v["steps"] // 3} for k, v in FULL_TASKS.items()},
        tune_seeds=(100,),
        eval_seeds=(0, 1, 2),
        start={},
        ablations={"tol": [3e-2], "nesterov": [False]},
        widths=(32, 64),
        width_rules=("original", "match_rms_adamw"),
        width_seeds=(100,),
    ),
    "full": Profile(
        tasks=FULL_TASKS,
        tune_seeds=(100, 101),
        eval_seeds=(0, 1, 2, 3, 4),
        start={},
        ablations=ABLATIONS,
        task_rules=("original", "match_rms_adamw", "spectral"),
        widths=(32, 64, 128),
        width_rules=("original", "match_rms_adamw"),
        width_seeds=(100,),
    ),
}

WIDTH_TASK = "gpt2"
TIMING_TOLS = (1e-2, 3e-2)
ARMS = (
    "regmuon_default",
    "regmuon_tuned",
    "muon",
    "muon_f32",
    "muon_awlr",
    "muon_f32_awlr",
    "adamw",
    "control",
)
#: The Muon arms: arm -> (optimizer, AdamW part). ``"regmuon"``: RegMuon's default AdamW part
#: (lr and betas; equal AdamW parts isolate the matrix update); ``"adamw_arm"``: torch's AdamW
#: betas at the AdamW arm's tuned lr.
MUON_ARMS = {
    "muon": ("muon", "regmuon"),
    "muon_f32": ("muon_f32", "regmuon"),
    "muon_awlr": ("muon", "adamw_arm"),
    "muon_f32_awlr": ("muon_f32", "adamw_arm"),
}
SWEPT = ("adamw", *MUON_ARMS, "regmuon")


def lr_of(k: int) -> float:
    return float(f"{0.01 * 2.0**k:.6g}")


# -- runs -------------------------------------------------------------------------------------
def run_key(spec: dict[str, Any]) -> str:
    text = json.dumps(spec, sort_keys=True, default=list)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def resolved(opt: dict[str, Any]) -> dict[str, Any]:
    """An ``opt`` spec with RegMuon's settings filled in (so a cached run is the same run).

    ``regmuon``: the study centre's knobs; ``regmuon_default``: the library's defaults are
    recorded under ``"at"`` (a change of a default is a new run, not a cached one).
    """
    if opt["arm"] == "regmuon_default":
        at = {**PROPOSED_DEFAULTS, "adamw_betas": list(PROPOSED_DEFAULTS["adamw_betas"])}
        return {**{k: v for k, v in opt.items() if k != "at"}, "at": at}
    if opt["arm"] != "regmuon":
        return opt
    full = {**STUDY_CENTRE, **{k: v for k, v in opt.items() if k != "arm"}}
    full["adamw_betas"] = list(full["adamw_betas"])
    return {"arm": "regmuon", **full}


def make_spec(task: str, prof: Profile, seed: int, opt: dict[str, Any], **task_over: Any) -> dict:
    t = prof.tasks[task]
    return {
        "task": task,
        "options": {**t["options"], **task_over},
        "steps": t["steps"],
        "warmup": t.get("warmup", 0),
        "seed": seed,
        "opt": resolved(opt),
    }


_TASKS: dict[str, Task] = {}


def _init_worker() -> None:
    torch.set_num_threads(1)


def execute(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one training run (in a worker) and summarize it."""
    tkey = json.dumps([spec["task"], spec["options"]], sort_keys=True)
    if tkey not in _TASKS:
        _TASKS[tkey] = make_task(spec["task"], **spec["options"])
    t0, c0 = time.perf_counter(), time.process_time()
    r = train(
        _TASKS[tkey],
        build_optimizers(spec["opt"]),
        lr=spec["opt"].get("lr"),
        steps=spec["steps"],
        warmup=spec["warmup"],
        seed=spec["seed"],
        evals=10,
        diagnostics=False,
    )
    losses = r["train_loss"]
    n = max(1, len(losses) // 50)  # ~50 window means of the minibatch loss
    smooth = [
        [i + n, statistics.fmean(losses[i : i + n])] for i in range(0, len(losses) - n + 1, n)
    ]
    keep = ("val_loss", "test_loss", "trainset_loss", "val_acc", "test_acc", "trainset_acc")
    return {
        "spec": spec,
        "diverged": r["diverged"],
        "wall_s": r["wall_s"],
        "run_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
        "curve": r["curve"],
        "curve_wall": r["curve_wall"],
        "train_smooth": smooth,
        "chance_loss": r["chance_loss"],
        **{k: _finite(r[k]) for k in keep if k in r},
    }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


class Store:
    """``results.json``: every finished run by key, plus derived records; atomic writes."""

    def __init__(self, path: Path, profile: str) -> None:
        self.path = path
        if path.exists():
            data = json.loads(path.read_text())
            if data.get("profile") != profile:
                raise ValueError(f"{path} holds profile {data.get('profile')!r}, not {profile!r}")
        else:
            data = {"profile": profile, "runs": {}, "timing": {}}
        self.data = data

    @property
    def runs(self) -> dict[str, Any]:
        return self.data["runs"]

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=None, separators=(",", ":")))
        os.replace(tmp, self.path)

    def get(self, spec: dict[str, Any]) -> dict[str, Any] | None:
        return self.runs.get(run_key(spec))


def run_all(store: Store, specs: list[dict[str, Any]], jobs: int, label: str) -> None:
    """Run the specs not in ``store`` (``jobs`` processes), saving after each one."""
    todo, seen = [], set()
    for s in specs:
        k = run_key(s)
        if k not in store.runs and k not in seen:
            todo.append(s)
            seen.add(k)
    if not todo:
        return
    print(f"[{label}] {len(todo)} runs", flush=True)
    t0 = time.perf_counter()

    def done(i: int, res: dict[str, Any]) -> None:
        store.runs[run_key(res["spec"])] = res
        store.save()
        s = res["spec"]
        opt = {k: v for k, v in s["opt"].items() if k != "arm" and _differs(k, v)}
        val = res.get("val_loss")
        print(
            f"  {i}/{len(todo)} {s['task']:5s} {s['opt']['arm']:8s} seed={s['seed']:<3d} "
            f"{_fmt_opt(opt):40s} val={'diverged' if val is None else f'{val:.4f}'} "
            f"({res['run_s']:.1f} s; {time.perf_counter() - t0:.0f} s so far)",
            flush=True,
        )

    if jobs <= 1:
        _init_worker()
        for i, s in enumerate(todo, 1):
            done(i, execute(s))
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(jobs, initializer=_init_worker) as pool:
        for i, res in enumerate(pool.imap_unordered(execute, todo), 1):
            done(i, res)


def _differs(k: str, v: Any) -> bool:
    d = STUDY_CENTRE.get(k, object())
    return k == "lr" or (list(d) if isinstance(d, tuple) else d) != v


def _fmt_opt(opt: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in opt.items() if k != "at"
    )


# -- the protocol -----------------------------------------------------------------------------
def score(store: Store, specs: Iterable[dict[str, Any]], metric: str = "val_loss") -> float | None:
    """Mean ``metric`` over the specs' runs; ``inf`` if one diverged; ``None`` if one is missing."""
    vals = []
    for s in specs:
        r = store.get(s)
        if r is None:
            return None
        v = r.get(metric)
        vals.append(math.inf if v is None else v)
    return statistics.fmean(vals)


@dataclass
class Sweep:
    """An lr sweep on the tuning seeds: ``opt(lr)`` -> spec opt; grid exponents ``ks``."""

    task: str
    label: str
    opt: Callable[[float], dict[str, Any]]
    ks: list[int]
    seeds: tuple[int, ...]
    task_over: dict[str, Any] = field(default_factory=dict)

    def specs(self, prof: Profile, k: int) -> list[dict[str, Any]]:
        return [
            make_spec(self.task, prof, s, self.opt(lr_of(k)), **self.task_over) for s in self.seeds
        ]

    def scores(self, store: Store, prof: Profile) -> dict[int, float | None]:
        return {k: score(store, self.specs(prof, k)) for k in self.ks}

    def step(self, store: Store, prof: Profile) -> list[dict[str, Any]]:
        """Specs still needed: the grid's missing runs, or one point past an edge optimum."""
        sc = self.scores(store, prof)
        missing = [s for k, v in sc.items() if v is None for s in self.specs(prof, k)]
        if missing:
            return missing
        best = self.best(store, prof)
        lo, hi = min(self.ks), max(self.ks)
        ext = len(self.ks) - (2 * prof.grid_halfwidth + 1)
        if ext >= 2 * prof.max_extend:
            return []
        if best == lo or all(v == math.inf for v in sc.values()):
            self.ks.insert(0, lo - 1)
        elif best == hi:
            self.ks.append(hi + 1)
        else:
            return []
        return self.step(store, prof)

    def best(self, store: Store, prof: Profile) -> int:
        sc = self.scores(store, prof)
        return min(sc, key=lambda k: (math.inf if sc[k] is None else sc[k], k))

    def bracketed(self, store: Store, prof: Profile) -> bool:
        b = self.best(store, prof)
        return min(self.ks) < b < max(self.ks)


def initial_ks(prof: Profile, task: str, arm: str, centre: int | None = None) -> list[int]:
    c = centre if centre is not None else prof.start.get(task, {}).get(arm, START[arm])
    h = prof.grid_halfwidth
    return list(range(c - h, c + h + 1))


def default_k(settings: dict[str, Any] | None = None) -> int:
    """The grid exponent of the lr of ``settings`` (default :data:`PROPOSED_DEFAULTS`)."""
    lr = (settings or PROPOSED_DEFAULTS)["lr"]
    k = math.log2(lr / 0.01)
    if abs(k - round(k)) > 1e-9:
        raise ValueError(f"the default lr {lr} is not on the grid 0.01·2^k")
    return round(k)


def build_sweeps(store: Store, prof: Profile) -> dict[tuple[str, str], Sweep]:
    """Every lr sweep of the protocol whose dependencies are met (grids restored from results)."""
    sweeps: dict[tuple[str, str], Sweep] = {}
    state = store.data.setdefault("grids", {})

    def add(
        task: str,
        label: str,
        opt: Callable[[float], dict[str, Any]],
        arm: str,
        seeds: tuple[int, ...],
        centre: int | None = None,
        **task_over: Any,
    ) -> Sweep:
        # The grid belongs to this exact sweep (the defaults, the AdamW part's lr, the width).
        key = f"{task}/{label}/" + run_key({"opt": resolved(opt(0.0)), "over": task_over})
        ks = state.setdefault(key, initial_ks(prof, task, arm, centre))
        sw = Sweep(task, label, opt, ks, seeds, task_over)
        sweeps[(task, label)] = sw
        return sw

    for task in prof.tasks:
        aw = add(task, "adamw", lambda lr: {"arm": "adamw", "lr": lr}, "adamw", prof.tune_seeds)
        add(
            task,
            "regmuon",
            lambda lr: {"arm": "regmuon", "lr": lr},
            "regmuon",
            prof.tune_seeds,
            centre=default_k(STUDY_CENTRE),
        )
        for label, (arm, part) in MUON_ARMS.items():
            if part == "regmuon":
                aw_part = {
                    "adamw_lr": PROPOSED_DEFAULTS["adamw_lr"],
                    "adamw_betas": list(PROPOSED_DEFAULTS["adamw_betas"]),
                }
            elif aw.step(store, prof) == []:  # done: bracketed, or its grid exhausted
                aw_part = {"adamw_lr": lr_of(aw.best(store, prof))}
            else:
                continue
            add(
                task,
                label,
                lambda lr, arm=arm, aw_part=aw_part: {"arm": arm, "lr": lr, **aw_part},
                arm,
                prof.tune_seeds,
            )
        for rule in prof.task_rules:
            add(
                task,
                f"rule/{rule}",  # at the study centre
                lambda lr, rule=rule: _centre(lr=lr, adjust_lr=rule),
                "regmuon",
                prof.tune_seeds,
                centre=default_k(STUDY_CENTRE),
            )
    for d in prof.widths:
        for rule in prof.width_rules:
            add(
                WIDTH_TASK,
                f"width{d}/{rule}",  # at the study centre
                lambda lr, rule=rule: _centre(lr=lr, adjust_lr=rule),
                "regmuon",
                prof.width_seeds,
                centre=default_k(STUDY_CENTRE),
                d_model=d,
            )
    return sweeps


def _centre(**over: Any) -> dict[str, Any]:
    return {"arm": "regmuon", **STUDY_CENTRE, **over}


def ablation_specs(prof: Profile) -> list[dict[str, Any]]:
    """One-at-a-time alternatives to each knob of :data:`STUDY_CENTRE` on the tuning seeds.

    Knobs in ``prof.sized_knobs`` at lr/2, lr and 2lr (each value at its best of the three).
    """
    specs = []
    lr = STUDY_CENTRE["lr"]
    for task in prof.tasks:
        for knob, values in prof.ablations.items():
            lrs = [lr / 2, lr, 2 * lr] if knob in prof.sized_knobs else [lr]
            for v in [STUDY_CENTRE[knob], *values]:
                for x in lrs:
                    for s in prof.tune_seeds:
                        specs.append(make_spec(task, prof, s, _centre(lr=x, **{knob: v})))
    return specs


def chosen(
    store: Store,
    prof: Profile,
    sweeps: dict[tuple[str, str], Sweep],
    task: str,
    partial: bool = False,
) -> dict[str, dict[str, Any]] | None:
    """The eval arms' opt specs of ``task``, by :data:`ARMS`.

    ``None`` until every sweep is done (bracketed, or its grid exhausted); with ``partial``
    the arms whose sweeps are done.
    """
    lr = {
        a: lr_of(sweeps[(task, a)].best(store, prof))
        for a in SWEPT
        if (task, a) in sweeps and not sweeps[(task, a)].step(store, prof)
    }
    arms: dict[str, dict[str, Any]] = {"regmuon_default": {"arm": "regmuon_default"}}
    if "regmuon" in lr:
        arms["regmuon_tuned"] = {"arm": "regmuon", "lr": lr["regmuon"]}
    for a in MUON_ARMS:
        if a in lr:
            arms[a] = sweeps[(task, a)].opt(lr[a])
    if "adamw" in lr:
        arms["adamw"] = {"arm": "adamw", "lr": lr["adamw"]}
    arms["control"] = {"arm": "regmuon_default", "lr": 0.0}
    if len(arms) < len(ARMS) and not partial:
        return None
    return {a: arms[a] for a in ARMS if a in arms}


#: What ``--only`` runs: (swept labels, evaluated arms, the defaults study?). A sweep's label is
#: its arm, or ``width`` for the width study.
PHASES: dict[str, tuple[tuple[str, ...], tuple[str, ...], bool]] = {
    "all": ((*SWEPT, "rule", "width"), ARMS, True),
    "baselines": (("adamw", *MUON_ARMS), ("adamw", *MUON_ARMS), False),
    "regmuon": (("regmuon",), (), False),
    "rules": (("rule",), (), False),
    "study": ((), (), True),
    "width": (("width",), (), False),
}


def _phase_of(label: str) -> str:
    """A sweep label's phase key: its arm, ``rule`` or ``width``."""
    head = label.split("/")[0]
    return "width" if head.startswith("width") else head


def protocol(store: Store, prof: Profile, jobs: int, only: str = "all") -> None:
    """Run the protocol to completion (the fixpoint of sweeps -> evaluation), resuming.

    ``only``: ``"baselines"``: the AdamW / Muon / fp32-NS Muon sweeps and evaluation runs (they
    do not depend on RegMuon's defaults); ``"regmuon"``: RegMuon's lr sweeps; ``"study"``: the
    defaults study; ``"width"``: the width study; ``"all"``: everything, then the step times.
    """
    swept, evaluated, study = PHASES[only]
    while True:
        sweeps = build_sweeps(store, prof)
        todo = [
            s
            for (_, label), sw in sweeps.items()
            if _phase_of(label) in swept
            for s in sw.step(store, prof)
        ]
        store.save()  # grids may have grown
        if todo:  # sweeps first: they unlock the Muon sweeps and the evaluation
            run_all(store, todo, jobs, "sweeps")
            continue
        rest = []
        for task in prof.tasks:
            arms = chosen(store, prof, sweeps, task, partial=True) or {}
            rest += [
                make_spec(task, prof, s, opt)
                for a, opt in arms.items()
                if a in evaluated
                for s in prof.eval_seeds
            ]
        if study:
            rest += ablation_specs(prof)
        rest = [s for s in rest if store.get(s) is None]
        if not rest:
            break
        run_all(store, rest, jobs, "evaluation" + (" + defaults study" if study else ""))
    if only != "all":
        return
    for task in prof.tasks:
        if task not in store.data["timing"]:
            store.data["timing"][task] = timing(task, prof, chosen(store, prof, sweeps, task))
            store.save()


def timing(task: str, prof: Profile, arms: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """Median ms per training step (forward, backward, step) of each arm, interleaved."""
    assert arms is not None
    torch.set_num_threads(1)
    t = make_task(task, **prof.tasks[task]["options"])
    specs = {a: arms[a] for a in ("adamw", "muon", "muon_f32", "regmuon_default")}
    for tol in TIMING_TOLS:  # the map's accuracy: does a coarser tol buy speed?
        specs[f"regmuon_tol{tol:g}"] = {"arm": "regmuon", "tol": tol}
    names = list(specs)
    state = {}
    for a in names:
        torch.manual_seed(0)
        model = t.make_model()
        state[a] = (
            model,
            build_optimizers(resolved(specs[a]))(model),
            torch.Generator().manual_seed(0),
        )
    times: dict[str, list[float]] = {a: [] for a in names}
    for i in range(3 + prof.timing_steps):
        for a in names:
            model, opts, gen = state[a]
            t0 = time.perf_counter()
            loss = t.train_loss(model, gen)
            for o in opts:
                o.zero_grad()
            loss.backward()
            for o in opts:
                o.step()
            if i >= 3:
                times[a].append(time.perf_counter() - t0)
    med = {a: 1e3 * statistics.median(v) for a, v in times.items()}
    print(f"[timing] {task}: " + ", ".join(f"{a} {v:.1f} ms" for a, v in med.items()), flush=True)
    return {"median_ms": med, "steps": prof.timing_steps}


# -- analysis ---------------------------------------------------------------------------------
def se(xs: list[float]) -> float:
    return statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else math.nan


def analyze(store: Store, prof: Profile) -> dict[str, Any]:
    """Everything the report shows, from the stored runs."""
    sweeps = build_sweeps(store, prof)
    out: dict[str, Any] = {"tasks": {}, "sweeps": {}, "ablations": {}, "width": {}}
    for (task, label), sw in sweeps.items():
        sc = sw.scores(store, prof)
        out["sweeps"][f"{task}/{label}"] = {
            "lrs": [lr_of(k) for k in sw.ks],
            "val": [sc[k] for k in sw.ks],
            "best_lr": lr_of(sw.best(store, prof)) if None not in sc.values() else None,
            "bracketed": None not in sc.values() and sw.bracketed(store, prof),
        }
    for task in prof.tasks:
        arms = chosen(store, prof, sweeps, task)
        if arms is None:
            continue
        res: dict[str, Any] = {"arms": {}, "paired": {}}
        per = {}
        for arm, opt in arms.items():
            runs = [store.get(make_spec(task, prof, s, opt)) for s in prof.eval_seeds]
            if any(r is None for r in runs):
                break  # this task's evaluation is not finished: not reported yet
            per[arm] = runs
            entry: dict[str, Any] = {"opt": resolved(opt)}
            for m in ("test_loss", "trainset_loss", "val_loss", "test_acc"):
                if not any(m in r for r in runs):
                    continue  # e.g. no accuracy for language models
                vals = [r.get(m) for r in runs]
                finite = [v for v in vals if v is not None]
                entry[m] = (
                    (statistics.fmean(finite), se(finite))
                    if len(finite) == len(vals)
                    else (math.inf, math.nan)
                )
            entry["wall_s"] = statistics.median(r["wall_s"] for r in runs)
            res["arms"][arm] = entry
        else:
            for arm in ARMS:
                if arm == "regmuon_default":
                    continue
                for m in ("test_loss", "trainset_loss"):
                    d = [
                        _num(a.get(m)) - _num(b.get(m))
                        for a, b in zip(per["regmuon_default"], per[arm], strict=True)
                    ]
                    res["paired"].setdefault(arm, {})[m] = (statistics.fmean(d), se(d))
            res["timing"] = store.data["timing"].get(task)
            out["tasks"][task] = res
    out["ablations"] = analyze_ablations(store, prof)
    noise = out["ablations"]["se_two_seed_mean"]
    out["rules"] = {
        rule: one_lr(out["sweeps"], prof, f"rule/{rule}", noise) for rule in prof.task_rules
    }
    out["rules"]["defaults"] = one_lr(out["sweeps"], prof, "regmuon", noise)
    return out


def one_lr(
    sweeps: dict[str, Any], prof: Profile, label: str, noise: dict[str, float] | None = None
) -> dict[str, Any] | None:
    """One lr for every task: per grid lr the regret of each task against its best lr.

    The regret is measured in units of the task's seed noise, ``(val − best) / SE`` (``noise``:
    the SE of a tuning-seed mean per task), or, without ``noise``, relatively,
    ``val / best − 1``. Returns the per-task best lrs, both regrets per lr, and the lr whose
    worst regret is smallest.
    """
    per = [sweeps.get(f"{task}/{label}") for task in prof.tasks]
    if any(sw is None or None in sw["val"] for sw in per):
        return None
    curves = {
        task: dict(zip(sw["lrs"], sw["val"], strict=True))
        for task, sw in zip(prof.tasks, per, strict=True)
    }
    common = sorted(set.intersection(*(set(c) for c in curves.values())))
    regret = {lr: {t: c[lr] / min(c.values()) - 1 for t, c in curves.items()} for lr in common}
    z = None
    if noise and all(t in noise for t in curves):
        z = {
            lr: {t: (c[lr] - min(c.values())) / noise[t] for t, c in curves.items()}
            for lr in common
        }
    crit = z if z is not None else regret
    best = min(common, key=lambda lr: max(crit[lr].values()))
    return {
        "best_lr": {t: min(c, key=lambda lr: c[lr]) for t, c in curves.items()},
        "regret": {f"{lr:g}": r for lr, r in regret.items()},
        "z": None if z is None else {f"{lr:g}": r for lr, r in z.items()},
        "criterion": "z" if z is not None else "relative",
        "single_lr": best,
        "worst_regret": max(regret[best].values()),
        "worst_z": None if z is None else max(z[best].values()),
    }


def _num(v: float | None) -> float:
    return math.inf if v is None else v


def analyze_ablations(store: Store, prof: Profile) -> dict[str, Any]:
    """Per knob value and task: mean val loss on the tuning seeds (best of the lrs if sized)."""
    lr = STUDY_CENTRE["lr"]
    table: dict[str, Any] = {}
    for knob, values in prof.ablations.items():
        sized = knob in prof.sized_knobs
        lrs = [lr / 2, lr, 2 * lr] if sized else [lr]
        rows = {}
        for v in [STUDY_CENTRE[knob], *values]:
            row = {}
            for task in prof.tasks:
                cand = {
                    x: score(
                        store,
                        [
                            make_spec(task, prof, s, _centre(lr=x, **{knob: v}))
                            for s in prof.tune_seeds
                        ],
                    )
                    for x in lrs
                }
                if None in cand.values():
                    break
                best = min(cand, key=lambda x: cand[x])
                row[task] = {"val": cand[best], "lr": best}
            else:
                rows[json.dumps(v)] = row
        table[knob] = {"sized": sized, "centre": json.dumps(STUDY_CENTRE[knob]), "rows": rows}
    # Seed noise: σ² = E[(v_a − v_b)²] / 2 over every study configuration run on two seeds;
    # the SE of a two-seed mean is σ/√2.
    noise = {}
    if len(prof.tune_seeds) == 2:
        for task in prof.tasks:
            d2 = []
            for spec in ablation_specs(prof):
                if spec["task"] != task or spec["seed"] != prof.tune_seeds[0]:
                    continue
                a = store.get(spec)
                b = store.get({**spec, "seed": prof.tune_seeds[1]})
                if a and b and a.get("val_loss") is not None and b.get("val_loss") is not None:
                    d2.append((a["val_loss"] - b["val_loss"]) ** 2)
            if d2:
                noise[task] = math.sqrt(statistics.fmean(d2) / 2) / math.sqrt(2)
    return {"knobs": table, "se_two_seed_mean": noise}


# -- report -----------------------------------------------------------------------------------
def _pm(x: tuple[float, float] | None, digits: int = 3) -> str:
    if x is None:
        return "—"
    m, s = x
    if not math.isfinite(m):
        return "diverged"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def report(store: Store, prof: Profile, out: Path) -> str:
    a = analyze(store, prof)
    lines = [f"# Training benchmark ({store.data['profile']} profile)", ""]
    meta = store.data.get("meta", {})
    if meta:
        lines += [
            f"torch {meta.get('torch')}, transformers {meta.get('transformers')}, "
            f"Python {meta.get('python')}, 1 thread per run, {meta.get('jobs')} runs at "
            f"once; wall of the whole benchmark {meta.get('total_s', 0) / 60:.1f} min "
            f"(runs: {sum(r.get('cpu_s', r['run_s']) for r in store.runs.values()) / 3600:.2f} "
            "CPU-hours).",
            "",
        ]
    lines += [
        "## RegMuon's defaults (`muonflow.optim.DEFAULTS`) and the study centre",
        "",
        "| knob | default | study centre |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v} | {STUDY_CENTRE[k]} |" for k, v in PROPOSED_DEFAULTS.items()]
    lines += [
        "",
        "## Tuned learning rates (tuning seeds "
        f"{', '.join(map(str, prof.tune_seeds))}; mean val loss; * = chosen)",
        "",
    ]
    for key, sw in a["sweeps"].items():
        if key.split("/")[1].startswith("width"):
            continue
        cells = []
        for lr, v in zip(sw["lrs"], sw["val"], strict=True):
            mark = "*" if lr == sw["best_lr"] else ""
            val = "—" if v is None else ("div." if v == math.inf else f"{v:.4f}")
            cells.append(f"{lr:g}: {val}{mark}")
        flag = "" if sw["bracketed"] else " **(not bracketed)**"
        lines.append(f"- `{key}`{flag}: " + ", ".join(cells))
    rules = {k: v for k, v in a["rules"].items() if v is not None}
    if rules:
        tasks = list(prof.tasks)
        lines += [
            "",
            "## One lr for every task (tuning seeds)",
            "",
            "Regret of a task at an lr: its val loss minus the task's best over the grid, in "
            "units of the task's seed noise (SE of a two-seed mean; the chosen single lr "
            "minimizes the worst of these) and relative (val / best − 1).",
            "",
            "| rule | "
            + " | ".join(f"best lr {t}" for t in tasks)
            + " | best single lr | its regret per task (SE units; relative) | worst |",
            "|---|" + "---:|" * (len(tasks) + 3),
        ]
        for rule, r in rules.items():
            name = f"{rule} (proposed defaults)" if rule == "defaults" else rule
            key = f"{r['single_lr']:g}"
            per, zs = r["regret"][key], (r["z"] or {}).get(key, {})
            worst = f"{100 * r['worst_regret']:.1f}%"
            if r["worst_z"] is not None:
                worst = f"{r['worst_z']:.1f} SE; " + worst
            lines.append(
                f"| {name} | "
                + " | ".join(f"{r['best_lr'][t]:g}" for t in tasks)
                + f" | {r['single_lr']:g} | "
                + ", ".join(
                    f"{t} " + (f"{zs[t]:.1f} SE, " if t in zs else "") + f"{100 * per[t]:.1f}%"
                    for t in tasks
                )
                + f" | {worst} |"
            )
    lines += [
        "",
        f"## Final losses, evaluation seeds {', '.join(map(str, prof.eval_seeds))} (mean ± SE)",
        "",
    ]
    for task, res in a["tasks"].items():
        steps = prof.tasks[task]["steps"]
        lines += [
            f"### {task} ({steps} steps)",
            "",
            "| arm | lr (matrix / AdamW part) | test loss | train-set loss | "
            "Δ test vs default (paired) | Δ train-set vs default | ms/step |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        tim = (res.get("timing") or {}).get("median_ms", {})
        for arm, e in res["arms"].items():
            o = e["opt"]
            lr = f"{o.get('lr', 0):g}"
            if o["arm"] == "regmuon":
                lr += f" / {o['adamw_lr']:g}"
            elif "adamw_lr" in o:
                lr += f" / {o['adamw_lr']:g}"
            p = res["paired"].get(arm, {})
            ms = tim.get(arm)
            lines.append(
                f"| {arm} | {lr} | {_pm(e.get('test_loss'))} | {_pm(e.get('trainset_loss'))} | "
                f"{_pm(p.get('test_loss'))} | {_pm(p.get('trainset_loss'))} | "
                f"{'' if ms is None else f'{ms:.1f}'} |"
            )
        lines.append("")
        verdict = []
        for arm in (*MUON_ARMS, "adamw", "regmuon_tuned"):
            p = res["paired"].get(arm, {}).get("test_loss")
            if p is None:
                continue
            d, s = p
            ok = d <= s
            verdict.append(
                f"{arm}: default − arm = {d:+.4f} ± {s:.4f} "
                f"({'within one SE or better' if ok else 'WORSE by more than one SE'})"
            )
        lines += [
            "Paired test-loss differences (RegMuon-defaults − arm; negative = defaults "
            "better): " + "; ".join(verdict) + ".",
            "",
        ]
    if a["tasks"]:
        lines += [
            "## The goal: RegMuon at defaults vs the best-tuned baselines (test loss, paired)",
            "",
            "| task | best Muon variant | default − best Muon | default − AdamW | "
            "default − control | within one SE or better? |",
            "|---|---|---:|---:|---:|---|",
        ]
        for task, res in a["tasks"].items():
            muons = [m for m in MUON_ARMS if m in res["arms"]]
            best_m = min(muons, key=lambda m: res["arms"][m]["test_loss"][0])
            dm = res["paired"][best_m]["test_loss"]
            da = res["paired"]["adamw"]["test_loss"]
            dc = res["paired"]["control"]["test_loss"]
            ok = dm[0] <= dm[1] and da[0] <= da[1]
            lines.append(
                f"| {task} | {best_m} | {_pm(dm, 4)} | {_pm(da, 4)} | {_pm(dc, 4)} | "
                f"{'yes' if ok else '**no**'} |"
            )
        lines.append("")
    lines += [
        "## Defaults study (tuning seeds; mean val loss; sized knobs at the best of "
        "lr/2, lr, 2lr — the lr in brackets)",
        "",
    ]
    noise = a["ablations"]["se_two_seed_mean"]
    if noise:
        lines += [
            "Seed noise (SE of a two-seed mean, from every study configuration): "
            + ", ".join(f"{t} {v:.4f}" for t, v in noise.items())
            + ". Regret: the value's loss minus the best value's, in nats and relative.",
            "",
        ]
    for knob, t in a["ablations"]["knobs"].items():
        tasks = list(prof.tasks)
        lines += [
            f"### {knob} (study centre {t['centre']})",
            "",
            "| value | "
            + " | ".join(tasks)
            + " | worst regret (nats) | worst regret (SE units) | worst relative regret |",
            "|---|" + "---:|" * (len(tasks) + 3),
        ]
        best = {
            task: min(r[task]["val"] for r in t["rows"].values() if task in r)
            for task in tasks
            if any(task in r for r in t["rows"].values())
        }
        for v, row in t["rows"].items():
            cells = []
            for task in tasks:
                c = row[task]
                cells.append(f"{c['val']:.4f}" + (f" ({c['lr']:g})" if t["sized"] else ""))
            regret = max(row[task]["val"] - best[task] for task in tasks)
            rel = max(row[task]["val"] / best[task] - 1 for task in tasks)
            zs = [(row[t]["val"] - best[t]) / noise[t] for t in tasks if t in noise]
            zcell = f"{max(zs):.1f}" if len(zs) == len(tasks) else "—"
            lines.append(
                f"| {v} | " + " | ".join(cells) + f" | {regret:.4f} | {zcell} | {100 * rel:.1f}% |"
            )
        lines.append("")
    width = {k: v for k, v in a["sweeps"].items() if "/width" in k}
    if width:
        lines += [
            f"## lr transfer across widths ({WIDTH_TASK}, seeds "
            f"{', '.join(map(str, prof.width_seeds))}; best lr per width and rule)",
            "",
            "| rule | " + " | ".join(f"d={d}" for d in prof.widths) + " |",
            "|---|" + "---:|" * len(prof.widths),
        ]
        for rule in prof.width_rules:
            cells = []
            for d in prof.widths:
                sw = width.get(f"{WIDTH_TASK}/width{d}/{rule}")
                if sw is None or sw["best_lr"] is None:
                    cells.append("—")
                    continue
                i = sw["lrs"].index(sw["best_lr"])
                cells.append(
                    f"{sw['best_lr']:g} ({sw['val'][i]:.3f})" + ("" if sw["bracketed"] else " edge")
                )
            lines.append(f"| {rule} | " + " | ".join(cells) + " |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    (out / "analysis.json").write_text(json.dumps(a, indent=1, default=str))
    figures(store, prof, a, out)
    return text


COLORS = {
    "muon_awlr": "C4",
    "muon_f32_awlr": "C5",
    "regmuon_default": "C3",
    "regmuon_tuned": "C1",
    "muon": "C0",
    "muon_f32": "C9",
    "adamw": "C2",
    "control": "0.5",
}


def _points(sweep: dict[str, Any] | None) -> list[tuple[float, float]]:
    """The ``(lr, val)`` points of a sweep summary whose runs finished (finite val)."""
    if sweep is None:
        return []
    return [
        (lr, v)
        for lr, v in zip(sweep["lrs"], sweep["val"], strict=True)
        if v is not None and math.isfinite(v)
    ]


#: Arms whose step costs what another timed arm's step costs (same optimizer, other lrs).
TIMED_AS = {
    "regmuon_tuned": "regmuon_default",
    "control": "regmuon_default",
    "muon_awlr": "muon",
    "muon_f32_awlr": "muon_f32",
}


def figures(store: Store, prof: Profile, a: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in prof.tasks if t in a["tasks"]]
    if tasks:
        fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 2.8 * len(tasks)), squeeze=False)
        for i, task in enumerate(tasks):
            res = a["tasks"][task]
            ms = (store.data["timing"].get(task) or {}).get("median_ms", {})
            for arm, e in res["arms"].items():
                runs = [store.get(make_spec(task, prof, s, e["opt"])) for s in prof.eval_seeds]
                if any(r is None or r["diverged"] for r in runs):
                    continue
                steps = [p[0] for p in runs[0]["curve"]]
                val = [statistics.fmean(r["curve"][j][1] for r in runs) for j in range(len(steps))]
                kw = {"color": COLORS[arm], "label": arm, "lw": 1.2}
                axes[i][0].plot(steps, val, **kw)
                # time axis: steps x the arm's median step time, measured interleaved with the
                # other arms in one process (each run's own clock saw whatever else ran then)
                per_ms = ms.get(TIMED_AS.get(arm, arm))
                if per_ms is not None:
                    axes[i][1].plot([k * per_ms / 1e3 for k in steps], val, **kw)
            axes[i][0].set(
                title=f"{task}: val loss vs step (mean of seeds)", xlabel="step", ylabel="val loss"
            )
            axes[i][1].set(
                title=f"{task}: val loss vs training time",
                xlabel="seconds (steps × interleaved median step time)",
            )
            for ax in axes[i]:
                lo = min(_num(e.get("val_loss", (math.inf,))[0]) for e in res["arms"].values())
                hi = res["arms"]["control"].get("val_loss", (lo + 1,))[0]
                if math.isfinite(lo) and math.isfinite(hi):
                    ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.3 * (hi - lo))
            axes[i][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "bench_training_curves.png", dpi=80)
        plt.close(fig)
    sweeps = {k: v for k, v in a["sweeps"].items() if "/width" not in k}
    if sweeps:
        fig, axes = plt.subplots(
            1, len(prof.tasks), figsize=(4 * len(prof.tasks), 3.2), squeeze=False
        )
        for j, task in enumerate(prof.tasks):
            ax = axes[0][j]
            task_vals: list[float] = []
            for arm in SWEPT:
                pts = _points(sweeps.get(f"{task}/{arm}"))
                if pts:
                    ax.plot(
                        *zip(*pts, strict=True), "o-", ms=3, label=arm, color=COLORS.get(arm, "C1")
                    )
                    task_vals += [v for _, v in pts]
            ax.axvline(PROPOSED_DEFAULTS["lr"], color="C3", ls=":", lw=1)
            ax.set(
                xscale="log",
                title=f"{task}: lr sweeps",
                xlabel="lr",
                ylabel="val loss (tuning seeds)",
            )
            if task_vals:
                ax.set_ylim(min(task_vals) - 0.05, min(task_vals) + 1.0)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "bench_training_sweeps.png", dpi=80)
        plt.close(fig)
    width = {k: v for k, v in a["sweeps"].items() if "/width" in k}
    if width:
        rules = prof.width_rules
        fig, axes = plt.subplots(1, len(rules), figsize=(4 * len(rules), 3.2), squeeze=False)
        for j, rule in enumerate(rules):
            ax = axes[0][j]
            for i, d in enumerate(prof.widths):
                pts = _points(width.get(f"{WIDTH_TASK}/width{d}/{rule}"))
                if pts:
                    ax.plot(*zip(*pts, strict=True), "o-", ms=3, label=f"d={d}", color=f"C{i}")
            ax.set(xscale="log", title=f"adjust_lr={rule}", xlabel="lr", ylabel="val loss")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "bench_training_width.png", dpi=80)
        plt.close(fig)


# -- main -------------------------------------------------------------------------------------
def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # so that the worker pool is terminated with the main process


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--profile", choices=list(PROFILES), default="smoke")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--resume", action="store_true", help="continue the runs in OUT")
    ap.add_argument("--jobs", type=int, default=1, help="training processes at once")
    ap.add_argument("--report-only", action="store_true", help="only regenerate the report")
    ap.add_argument(
        "--only",
        choices=PHASES,
        default="all",
        help="run only the baselines' sweeps, or only RegMuon's sweeps and study",
    )
    args = ap.parse_args(argv)
    if args.jobs < 1:
        raise SystemExit("--jobs must be >= 1")
    prof = PROFILES[args.profile]
    path = args.out / "results.json"
    if path.exists() and not (args.resume or args.report_only):
        raise SystemExit(f"{path} exists: pass --resume to continue it (or choose another --out)")
    args.out.mkdir(parents=True, exist_ok=True)
    store = Store(path, args.profile)
    default_k(PROPOSED_DEFAULTS)  # validates the lrs before any run
    default_k(STUDY_CENTRE)
    torch.set_num_threads(1)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm)
    if not args.report_only:
        t0 = time.perf_counter()
        protocol(store, prof, args.jobs, args.only)
        meta = store.data.setdefault("meta", {})
        meta["total_s"] = meta.get("total_s", 0.0) + time.perf_counter() - t0
        try:
            import transformers

            meta["transformers"] = transformers.__version__
        except ImportError:  # pragma: no cover
            meta["transformers"] = None
        meta.update(torch=torch.__version__, python=platform.python_version(), jobs=args.jobs)
        store.save()
    print(report(store, prof, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
