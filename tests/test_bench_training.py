"""The training benchmark (``benchmarks/bench_training.py``): the suite and its committed split,
the arms, the sweeps, the results file, a smoke run of every stage; and the prototype levers of
``benchmarks/regmuon_levers.py``."""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import importlib.util
import inspect
import json
import math
import statistics
import sys
from pathlib import Path

import pytest
import torch
from conftest import SmallViT
from torch import nn

from muonflow.models import MLP, CharRNN, SmallCNN, SortTransformer
from muonflow.optim import DEFAULTS, NORMALIZED_INPUT_ADAMW_LR, NORMALIZED_INPUT_LR, RegMuon
from muonflow.training import MatrixMuon

BENCH = Path(__file__).parents[1] / "benchmarks" / "bench_training.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_training", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_training"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def levers(bench):
    return sys.modules["regmuon_levers"]  # imported by the benchmark


# -- the suite and its split ----------------------------------------------------------------------
def test_suite_covers_the_kinds_schedules_and_a_long_run(bench):
    suite = bench.SUITE
    assert len(suite) >= 12
    builders = {t.builder for t in suite.values()}
    assert builders >= {"gpt2", "llama", "sort", "rnn", "moe", "cnn", "vit", "digits", "friedman"}
    for arch in ("gpt2", "llama"):  # two widths and two depths each
        opts = [t.options for t in suite.values() if t.builder == arch]
        assert len({o.get("d_model") for o in opts}) >= 2
        assert len({o.get("n_layers", 2) for o in opts}) >= 2
    long = suite["gpt2_d32_l2_long"]
    assert long.options == suite["gpt2_d32_l2"].options
    assert long.steps >= 3 * suite["gpt2_d32_l2"].steps
    split = bench.committed_split()
    for half in split.values():  # both schedule regimes on both sides of the split
        assert {suite[t].schedule for t in half} == {"linear", "constant"}
    assert suite["gpt2_d64_l2"].warmup == 10 and suite["sort"].warmup == 0


def test_committed_split_follows_its_stated_rule(bench, monkeypatch):
    """The committed file is what the rule gives (so it was not picked by hand after results),
    stratified: every kind with two or more tasks has tasks on both sides; halves differ by at
    most one. Mutant caught: a suite changed after the split was committed."""
    split = bench.committed_split()
    assert split == bench.split_suite(bench.SUITE, bench.SPLIT_SEED)
    assert abs(len(split["tuning"]) - len(split["held_out"])) <= 1
    for kind in {t.kind for t in bench.SUITE.values()}:
        names = {n for n, t in bench.SUITE.items() if t.kind == kind}
        if len(names) >= 2:
            assert names & set(split["tuning"]) and names & set(split["held_out"]), kind
    data = json.loads(bench.SPLIT_FILE.read_text())
    assert (data["tune_seeds"], data["eval_seeds"]) == ([100, 101], [0, 1, 2, 3, 4])
    assert not set(data["tune_seeds"]) & set(data["eval_seeds"])  # fresh evaluation seeds
    renamed = {("cnn2" if n == "cnn" else n): t for n, t in bench.SUITE.items()}
    monkeypatch.setattr(bench, "SUITE", renamed)
    with pytest.raises(ValueError, match="does not match"):
        bench.committed_split()


def test_split_rule_gives_odd_kinds_extra_task_to_the_smaller_half(bench):
    t = bench.SuiteTask
    suite = {f"{k}{i}": t("digits", k, 1, "constant") for k in "ab" for i in range(3)}
    split = bench.split_suite(suite, 0)
    # kind a (a tie so far): its extra task is held out; kind b: its extra goes to tuning
    assert len(split["tuning"]) == len(split["held_out"]) == 3
    assert sum(n.startswith("a") for n in split["tuning"]) == 1


# -- the arms ------------------------------------------------------------------------------------
def _opts(bench, opt, model):
    return bench.build_optimizers(opt)(model)


def test_muon_documented_defaults_arm_is_torch_muon_constructed_bare(bench):
    """``muon_doc`` is ``torch.optim.Muon(matrices)`` with nothing passed (its signature's
    defaults: lr 1e-3 and decay 0.1 in torch 2.13, not the docstring example's lr 0.02) and a
    bare ``torch.optim.AdamW(rest)``; ``muon_doc_example`` is the docstring's example."""
    model = MLP(6, 8, 3)
    muon, adamw = _opts(bench, {"arm": "muon_doc"}, model)
    assert isinstance(muon, MatrixMuon) and isinstance(adamw, torch.optim.AdamW)
    sig = inspect.signature(torch.optim.Muon).parameters
    for key in ("lr", "weight_decay", "momentum", "nesterov", "ns_steps", "adjust_lr_fn"):
        assert muon.defaults[key] == sig[key].default, key
    assert (muon.defaults["lr"], muon.defaults["weight_decay"]) == (1e-3, 0.1)
    aw = inspect.signature(torch.optim.AdamW).parameters
    for key in ("lr", "betas", "weight_decay"):
        assert adamw.defaults[key] == aw[key].default, key
    muon, adamw = _opts(bench, {"arm": "muon_doc_example"}, model)
    assert (muon.defaults["lr"], muon.defaults["momentum"], muon.defaults["weight_decay"]) == (
        0.02, 0.95, 0.1)  # fmt: skip
    assert (adamw.defaults["lr"], adamw.defaults["weight_decay"]) == (3e-4, 0.01)


def test_default_control_tuned_and_study_arms(bench):
    """``default`` is ``RegMuon(model)`` at :data:`DEFAULTS`; ``control`` the same with the matrix
    lr 0; the tuned Muon its lr, decay and AdamW part; a study arm its options and levers."""
    model = SmallCNN((4, 8), 16)
    (opt,) = _opts(bench, {"arm": "default", "core": "x"}, model)
    groups = {g["algorithm"]: g for g in opt.param_groups}
    for key in ("lr", "momentum", "nesterov", "eps", "eps_mode", "tol", "adjust_lr"):
        assert groups["regmuon"][key] == getattr(DEFAULTS, key), key
    assert groups["adamw"]["lr"] == DEFAULTS.adamw_lr
    (ctrl,) = _opts(bench, {"arm": "control"}, model)
    assert {g["algorithm"]: g["lr"] for g in ctrl.param_groups} == {
        "regmuon": 0.0, "adamw": DEFAULTS.adamw_lr}  # fmt: skip
    muon, part = _opts(bench, bench.muon_opt(0.03, 0.004, 0.1), model)
    assert (muon.defaults["lr"], muon.defaults["weight_decay"]) == (0.03, 0.1)
    assert (part.defaults["lr"], part.defaults["betas"], part.defaults["weight_decay"]) == (
        0.004, (0.9, 0.95), 0.0)  # fmt: skip
    (aw,) = _opts(bench, {"arm": "adamw", "lr": 0.003}, model)
    assert aw.defaults["lr"] == 0.003 and len(aw.param_groups[0]["params"]) == 8
    (study,) = _opts(bench, bench.study_opt("inputs_adamw", 0.05), model)
    assert study.routing.by_name()["conv1.weight"].reason == "adamw rule"
    assert study.routing.by_name()["conv2.weight"].algorithm == "regmuon"
    groups = {g["algorithm"]: g for g in study.param_groups}
    assert groups["regmuon"]["lr"] == 0.05 and groups["adamw"]["lr"] == 0.02
    with pytest.raises(ValueError, match="unknown arm"):
        bench.build_optimizers({"arm": "sgd"})


def test_the_defaults_configuration_of_the_study_is_regmuon_out_of_the_box(bench):
    """The study configuration the sensitivity stage sweeps as "RegMuon's defaults" sets every
    knob the study varies to DEFAULTS (and the default arm passes nothing). Mutant caught: a
    change of DEFAULTS without the study's record (the held-out sweep would show another
    optimizer than the one evaluated)."""
    opt = bench.study_opt(bench.DEFAULTS_CONFIG, DEFAULTS.lr)
    chosen = bench.study_opt(bench.CHOSEN_CONFIG, DEFAULTS.lr)["options"]
    assert {k: v for k, v in opt["options"].items() if chosen[k] != v} == {"tol": DEFAULTS.tol}
    assert bench.DEFAULTS_CONFIG not in bench.PROFILES["full"].study  # not a study result
    for key, value in opt["options"].items():
        default = getattr(DEFAULTS, key)
        assert (list(default) if isinstance(default, tuple) else default) == value, key
    assert opt["levers"] == {}


def test_core_fingerprint_follows_the_optimizer_source(bench, monkeypatch):
    a = bench.core_fingerprint()
    assert a == bench.core_fingerprint() and len(a) == 12
    root = Path(sys.modules["muonflow"].__file__).parent
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda p: real(p) + (
        b"#" if p == root / "optim" / "options.py" else b""))  # fmt: skip
    assert bench.core_fingerprint() != a


# -- sweeps and sensitivity -----------------------------------------------------------------------
def test_sweep_extends_until_the_optimum_is_bracketed(bench, tmp_path):
    prof = bench.PROFILES["smoke"]
    store = bench.Store(tmp_path / "results.json", "smoke")
    opt = lambda lr: {"arm": "adamw", "lr": lr}  # noqa: E731
    # A fake val loss with its minimum at lr = 0.01·2^-3, left of the initial grid {-1, 0, 1}.
    sw = bench.Sweep("gpt2_tiny", opt, [-1, 0, 1], (100,))
    for _ in range(10):
        need = sw.step(store, prof)
        if not need:
            break
        for spec in need:
            k = round(math.log2(spec["opt"]["lr"] / 0.01))
            store.runs[bench.run_key(spec)] = {"spec": spec, "val_loss": (k + 3) ** 2 + 1.0}
    # max_extend = 1 in smoke: two points may be added; the optimum -3 needs exactly two.
    assert sw.ks == [-3, -2, -1, 0, 1]
    assert sw.best(store, prof) == -3 and not sw.curve(store, prof)["bracketed"]
    store = bench.Store(tmp_path / "other.json", "smoke")
    sw2 = bench.Sweep("gpt2_tiny", opt, [-1, 0, 1], (100,))
    for k, v in ((-1, 1.0), (0, 2.0), (1, None)):  # a diverged run (None) counts as +inf
        for spec in sw2.specs(prof, k):
            store.runs[bench.run_key(spec)] = {"spec": spec, "val_loss": v}
    assert sw2.step(store, prof) == sw2.specs(prof, -2)  # optimum at the left edge: extend
    assert bench.score(store, sw2.specs(prof, 1)) == math.inf


def test_width_within_interpolates_the_crossings(bench):
    """Best 1.0 at 0.02; 3% above is 1.03, crossed 0.15 of the way to 0.01 (1.2) and 1/48 of
    the way from 0.04 (1.02) to 0.08 (1.5): width 1 + 0.15 + 1/48 factors of 2."""
    w, open_ = bench.width_within([0.01, 0.02, 0.04, 0.08], [1.2, 1.0, 1.02, 1.5])
    assert w == pytest.approx(1 + 0.15 + 1 / 48) and not open_
    w, open_ = bench.width_within([0.01, 0.02, 0.04], [1.01, 1.0, None])  # diverged: +inf
    assert w == pytest.approx(1.0) and open_  # reaches the left edge: a lower bound


# -- the results file -----------------------------------------------------------------------------
def _valid_run(bench):
    spec = {"task": "gpt2_tiny", "seed": 0, "opt": {"arm": "adamw", "lr": 0.01}}
    return bench.run_key(spec), {"spec": spec, "val_loss": 1.0, "curve": [[0, 2.0], [6, 1.0]]}


def test_each_run_records_its_machine_and_a_mixed_store_says_so(bench):
    """Runs part at the rounding level across CPU types: each run records the machine
    (:func:`machine_id`: the CPU's model and the extensions that change rounding, and torch), and
    a report over runs of several machines says so with counts (runs from before the record:
    "not recorded"); over one machine it says nothing. Mutant caught: the note printed always
    (a one-machine report warned)."""
    mid = bench.machine_id()
    assert f"torch {torch.__version__}" in mid and mid.count("[") == 1
    spec = bench.make_spec(bench.PROFILES["smoke"], "friedman_tiny", 0, {"arm": "control"})
    assert bench.execute(spec)["machine"] == mid
    assert bench.machines_note([{"machine": mid}] * 3) == []
    note = bench.machines_note([{"machine": mid}, {"machine": mid}, {}])
    assert f"{mid}: 2; not recorded: 1" in note[0] and "more than one machine" in note[0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "the top level is malformed"),
        ('{"profile": "smoke", "runs": []}', "'runs' is malformed"),
        ('{"runs": {}}', "'profile' is malformed"),
        ("RUN spec", "run K is malformed"),
        ("RUN key", "its key is not the hash of its spec"),
        ("RUN val_loss", "run K val_loss is malformed"),
        ("RUN curve", "run K curve is malformed"),
        ("RUN machine", "run K machine is malformed"),
        ('{"profile": "smoke", "runs": {}, "grids": {"g": [1, "2"]}}', "grid g is malformed"),
        ('{"profile": "full", "runs": {}}', "holds profile 'full', not 'smoke'"),
    ],
)
def test_a_corrupted_results_file_gives_a_clear_error(bench, tmp_path, content, message):
    """Never a raw JSONDecodeError/KeyError/TypeError later on: the file is checked when it is
    opened, the error names the part, and the file is left as it was. Mutant caught: loading
    without the check (the malformed run fails deep in the analysis with a TypeError)."""
    key, run = _valid_run(bench)
    if content.startswith("RUN"):
        what = content.split()[1]
        if what == "spec":
            run["spec"] = "x"
        elif what == "key":
            key = "0" * 16
        elif what == "val_loss":
            run["val_loss"] = "1.0"
        elif what == "machine":
            run["machine"] = 3
        else:
            run["curve"] = [[0, "a"]]
        content = json.dumps({"profile": "smoke", "runs": {key: run}})
        message = message.replace("K", key)
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text(content)
    with pytest.raises(SystemExit, match=message.replace("(", r"\(")):
        bench.main(["--profile", "smoke", "--out", str(out), "--resume"])
    assert (out / "results.json").read_text() == content


# -- every stage, on tiny tasks ------------------------------------------------------------------
def test_smoke_runs_every_stage_resumes_and_reports(bench, tmp_path, monkeypatch):
    # a variant added by --variant (none in the suite now); the flag adds it for the run
    monkeypatch.setattr(bench, "VARIANTS", {})
    monkeypatch.setattr(bench, "OPTIONAL_VARIANTS", {"tol0.01": {"tol": 0.01}})
    out = tmp_path / "bench"
    assert bench.main(["--profile", "smoke", "--out", str(out), "--variant", "tol0.01"]) == 0
    data = json.loads((out / "results.json").read_text())
    n = len(data["runs"])
    baselines = json.loads((out / "baselines.json").read_text())
    assert set(baselines["tasks"]) == set(bench.SMOKE_SUITE)
    summary = (out / "summary.md").read_text()
    for needle in ("## Held-out tasks: `default`", "## Tuning tasks: `default`", "## Study",
                   "## `RegMuon(model)` with one default changed", "Δ `tol0.01`",
                   "## Tuned baselines", "| inputs_adamw |", "width"):  # fmt: skip
        assert needle in summary, needle
    for fig in ("bench_training_final.png", "bench_training_curves.png",
                "bench_training_sensitivity.png"):  # fmt: skip
        assert (out / fig).stat().st_size > 0
    with pytest.raises(SystemExit, match="pass --resume"):
        bench.main(["--profile", "smoke", "--out", str(out)])  # never overwrite silently
    calls = []
    real = bench.execute
    monkeypatch.setattr(bench, "execute", lambda spec: calls.append(spec) or real(spec))
    assert bench.main(["--profile", "smoke", "--out", str(out), "--resume"]) == 0
    assert calls == [] and len(json.loads((out / "results.json").read_text())["runs"]) == n
    # the final stage again after a change of the core: exactly the arms that use its code
    monkeypatch.setattr(bench, "core_fingerprint", lambda: "changed")
    bench.main(["--profile", "smoke", "--out", str(out), "--resume", "--stage", "final"])
    arms = {c["opt"]["arm"] for c in calls}
    assert arms == {"default", "default_but", "muon", "muon_doc", "control"}
    assert len(calls) == 4 * 2 * 5  # tasks x seeds x arms (not adamw_tuned)
    a = json.loads((out / "analysis.json").read_text())
    res = a["final"]["llama_tiny"]
    # paired differences are differences of the per-seed values; the ratio is of the means
    d = [x - y for x, y in zip(res["arms"]["default"]["test"],
                               res["arms"][res["best"]]["test"], strict=True)]  # fmt: skip
    assert res["default"]["diff"][0] == pytest.approx(sum(d) / 2)
    assert set(res["variants"]) == {"tol0.01"}
    for v in bench.VARIANTS:  # each variant against RegMuon(model), seed by seed
        dv = [x - y for x, y in zip(res["arms"][v]["test"], res["arms"]["default"]["test"],
                                    strict=True)]  # fmt: skip
        assert res["variants"][v][0] == pytest.approx(sum(dv) / 2)
    assert res["default"]["ratio"] == pytest.approx(
        res["arms"]["default"]["mean"] / res["arms"][res["best"]]["mean"])  # fmt: skip
    # the curve in the analysis is the seeds' mean, step by step (mutant: the first seed's)
    runs = [r for r in json.loads((out / "results.json").read_text())["runs"].values()
            if r["spec"]["task"] == "llama_tiny"
            and r["spec"]["opt"] == {"arm": "default", "core": "changed"}]  # fmt: skip
    assert len(runs) == 2 and runs[0]["curve"] != runs[1]["curve"]
    mean = [[a[0], (a[1] + b[1]) / 2] for a, b in zip(runs[0]["curve"], runs[1]["curve"],
                                                        strict=True)]  # fmt: skip
    got = res["arms"]["default"]["curve"]
    assert [s for s, _ in got] == [s for s, _ in mean]
    assert [v for _, v in got] == pytest.approx([v for _, v in mean])
    assert res["half"] == ("held_out" if "llama_tiny" in bench.split_suite(bench.SMOKE_SUITE)[
        "held_out"] else "tuning")  # fmt: skip


def test_variants_table_marks_worse_only_for_a_positive_difference(bench, monkeypatch):
    """A variant whose runs are RegMuon(model)'s (every paired difference 0) is "=", not
    "worse" (0 ≥ 2·0); a difference within its SE is ✓; a better one beyond 2 SE is unmarked.
    Mutant caught: Δ ≥ 2 SE alone (identical runs marked worse)."""
    monkeypatch.setattr(bench, "VARIANTS", {"v": {"lr": 0.01}})
    final = {t: {"half": "held_out", "variants": {"v": d}} for t, d in
             {"same": (0.0, 0.0), "worse": (0.3, 0.1), "noise": (0.05, 0.1),
              "better": (-0.3, 0.1)}.items()}  # fmt: skip
    rows = {ln.split("|")[1].strip(): ln.split("|")[3].strip()
            for ln in bench._variants_table(bench.PROFILES["smoke"], final) if ln.count("|") > 3}
    assert rows["same"] == "="
    assert rows["worse"] == "+0.3000 ± 0.1000 **worse**"
    assert rows["noise"] == "+0.0500 ± 0.1000 ✓"
    assert rows["better"] == "-0.3000 ± 0.1000"


def test_mean_curve_is_the_seeds_mean_or_none_when_it_cannot_be(bench):
    """The final stage's curve per arm. Mutants caught: the first seed's curve (wrong mean),
    averaging curves evaluated at different steps, keeping a diverged seed's inf."""
    assert bench._mean_curve([[[0, 2.0], [5, 1.0]], [[0, 4.0], [5, 0.5]]]) == [[0, 3.0], [5, 0.75]]
    assert bench._mean_curve([[[0, 2.0], [5, 1.0]], [[0, 2.0], [4, 1.0]]]) is None
    assert bench._mean_curve([[[0, 2.0], [5, 1.0]], [[0, 2.0]]]) is None
    assert bench._mean_curve([[[0, 2.0], [5, math.inf]], [[0, 2.0], [5, 1.0]]]) is None
    assert bench._mean_curve([]) is None


# -- the prototype levers -------------------------------------------------------------------------
def test_input_layers_are_the_first_matrix_layers_unless_an_embedding_reads_the_input(levers):
    """Mutant caught: taking the first matrix layer even after an embedding (the sorter's and
    the LSTM's first matrices read embeddings, not raw features)."""
    assert levers.input_layers(MLP(6, 8, 3)) == ["layers.0"]
    assert levers.input_layers(SmallCNN((4, 8), 16)) == ["conv1"]
    assert levers.input_layers(SortTransformer(16, 8, d_model=16, d_ff=32)) == []
    assert levers.input_layers(CharRNN(32, 8)) == []
    assert levers.input_layers(nn.Sequential(nn.ReLU())) == []


def _step(opt, model, grads):
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g.clone()
    opt.step()


def test_adaptive_eps_is_relative_eps_while_the_scale_holds_and_shrinks_as_it_fades(levers):
    """At step 1 (bias-corrected average = the current scale) the adaptive ε is exactly the
    relative ε ``c``; when the gradients then fall 1000x for 20 steps (momentum 0.5 forgets
    them in a few), relative ε keeps Muon-size steps while the adaptive one, against the
    1000-step average (``β_v`` 0.999: ``√v̂`` ≈ 0.22 of the first scale), sees ``X/ε`` ≈ 0.03
    and shrinks the step to a few percent (heavy ball). Mutant caught: ε from the current
    scale (no long horizon), or an average without the bias correction (step 1 differs)."""
    torch.manual_seed(0)
    base = MLP(6, 8, 3)
    grads = [torch.randn_like(p) for p in base.parameters()]
    runs = {}
    for name in ("relative", "adaptive"):
        model = MLP(6, 8, 3)
        model.load_state_dict(base.state_dict())
        kw = {"lr": 0.05, "momentum": 0.5, "eps": 0.3, "eps_mode": "relative", "tol": None,
              "weight_decay": 0.0}
        levers_ = {"eps_adapt": {"scale": 0.3, "beta": 0.999}} if name == "adaptive" else {}
        opt = levers.build_lever_regmuon(model, kw, levers_)
        _step(opt, model, grads)
        first = model.layers[1].weight.detach().clone()
        for _ in range(20):
            last = model.layers[1].weight.detach().clone()
            _step(opt, model, [g * 1e-3 for g in grads])
        runs[name] = (first, model.layers[1].weight.detach() - last)
    start = base.layers[1].weight.detach()
    torch.testing.assert_close(runs["adaptive"][0], runs["relative"][0], rtol=0, atol=1e-6)
    assert (runs["relative"][0] - start).norm() > 0.05  # a real first step
    rel, ada = runs["relative"][1].norm(), runs["adaptive"][1].norm()
    assert rel > 0.05 and ada < 0.1 * rel


def _peak_check(cls) -> None:
    """``cls(model, eps_adapt={"scale": 0.3, "peak": True})``'s map calls against the
    ε-regularized map at ε = 0.3 x the largest RMS singular value so far (float32, as the lever
    computes it), over a fall to 1e-3 of the peak and a rise past it."""
    torch.manual_seed(5)
    opt = cls(MLP(6, 8, 3), eps_adapt={"scale": 0.3, "peak": True})
    X = torch.randn(2, 8, 6, dtype=torch.float64)

    def eps(s):  # c times the RMS singular value of s X, in the lever's float32 arithmetic
        return 0.3 * ((X * s).float().square().sum((-2, -1)) / 6).sqrt()

    def mapped(scale, peak):
        return DEFAULTS.kinetic.at(eps(peak)).grad(X * scale, method=DEFAULTS.method,
                                                   tol=DEFAULTS.tol)  # fmt: skip

    for scale, peak in ((1.0, 1.0), (1e-3, 1.0), (1e-3, 1.0), (2.0, 2.0), (0.5, 2.0)):
        opt._calls = 0
        torch.testing.assert_close(opt._adaptive_map(X * scale, DEFAULTS), mapped(scale, peak),
                                   rtol=1e-10, atol=1e-12)  # fmt: skip
    # the step's second map call keeps its own peak
    torch.testing.assert_close(opt._adaptive_map(X * 1e-3, DEFAULTS), mapped(1e-3, 1e-3),
                               rtol=1e-10, atol=1e-12)  # fmt: skip


def test_peak_eps_is_c_times_the_largest_scale_so_far(levers):
    """``eps_adapt`` with ``peak``: each map call's ε is ``c`` times the largest RMS singular
    value its matrix's input has had, so a map input that falls 1000x below its peak is mapped
    with the peak's ε (heavy ball: ``≈ X/ε``) and one that rises past it sets a new peak."""
    _peak_check(levers.LeverRegMuon)
    with pytest.raises(ValueError, match="peak=True"):
        levers.build_lever_regmuon(MLP(6, 8, 3), {}, {"eps_adapt": {"scale": 0.3, "peak": 1}})


def test_peak_eps_check_catches_its_mutants(levers):
    """Mutants kept as code, each failing :func:`_peak_check`: ε from the current scale (no
    memory: Muon-size steps after the fall), a running average in place of the maximum (ε
    drifts down after the peak)."""

    class Forgets(levers.LeverRegMuon):
        def _adaptive_map(self, X, o):
            self._scale.clear()
            return super()._adaptive_map(X, o)

    class Averages(levers.LeverRegMuon):
        def _adaptive_map(self, X, o):
            self.eps_adapt = {"scale": self.eps_adapt["scale"], "beta": 0.9}
            return super()._adaptive_map(X, o)

    for mutant in (Forgets, Averages):
        with pytest.raises(AssertionError):
            _peak_check(mutant)


def _warmup_lr_check(cls) -> None:
    """``cls(model, warmup_lr=2)`` against ``RegMuon(model)`` under ``LambdaLR``: with a
    warm-up, equal bit for bit to ``RegMuon(model)`` whose schedule is twice the warm-up's
    (the factor is a power of two, so the products round alike), and its groups' ``lr`` left as
    the scheduler set them; with a constant lr, equal to ``RegMuon(model)`` itself."""

    def run(factory, lam):
        torch.manual_seed(0)
        model = MLP(6, 16, 3, depth=2)
        opt = factory(model)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
        gen = torch.Generator().manual_seed(1)
        lrs = []
        for _ in range(5):
            x, y = torch.randn(32, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            lrs.append([g["lr"] for g in opt.param_groups])  # as the step left them
            sched.step()
        return [p.detach() for p in model.parameters()], lrs

    def warm(k):
        return min((k + 1) / 3, 1.0)

    lever, lever_lrs = run(lambda m: cls(m, warmup_lr=2.0), warm)
    twice, _ = run(RegMuon, lambda k: 2 * warm(k))
    plain, plain_lrs = run(RegMuon, warm)
    assert all(torch.equal(a, b) for a, b in zip(lever, twice, strict=True))
    assert lever_lrs == plain_lrs  # the groups' lr is the scheduler's
    constant, _ = run(lambda m: cls(m, warmup_lr=2.0), lambda k: 1.0)
    plain, _ = run(RegMuon, lambda k: 1.0)
    assert all(torch.equal(a, b) for a, b in zip(constant, plain, strict=True))


def test_warmup_lr_scales_the_step_under_a_warm_up_only(levers):
    """``warmup_lr``: a group whose lr at the first step is below its built lr (a warm-up)
    steps with the factor times its scheduled lr; under a constant lr nothing changes. It
    replaces ``RegMuon(model)``'s own lr by schedule: at 1 a model with an embedding steps as
    ``RegMuon(model)`` did before round 12 (its lrs under the warm-up, as with explicit lrs)."""
    _warmup_lr_check(levers.LeverRegMuon)
    runs = []
    for make in (lambda m: levers.build_lever_regmuon(m, {}, {"warmup_lr": 1.0}),
                 lambda m: RegMuon(m, lr=DEFAULTS.lr)):  # fmt: skip
        torch.manual_seed(0)
        model = nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        opt = make(model)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / 3))
        x = torch.arange(32) % 10
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), x % 3).backward()
            opt.step()
            sched.step()
        runs.append([p.detach() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="warmup_lr"):
            levers.build_lever_regmuon(MLP(6, 8, 3), {}, {"warmup_lr": bad})


def test_warmup_lr_check_catches_its_mutants(levers):
    """Mutants kept as code, each failing :func:`_warmup_lr_check`: the factor on every
    schedule (a constant lr scaled too), the factor never applied (the decision frozen at "no
    warm-up"), the factor left on the groups' lr (the scheduler's values changed)."""

    class Always(levers.LeverRegMuon):
        def _warmup_factors(self):
            return [self.warmup_lr] * len(self.param_groups)

    class Never(levers.LeverRegMuon):
        def _warmup_factors(self):
            self._warmed = [False] * len(self.param_groups)
            return super()._warmup_factors()

    class Leaves(levers.LeverRegMuon):
        def step(self, closure=None):
            for g, f in zip(self.param_groups, self._warmup_factors(), strict=True):
                g["lr"] = g["lr"] * f
            return levers.RegMuon.step(self)

    for mutant in (Always, Never, Leaves):
        with pytest.raises(AssertionError):
            _warmup_lr_check(mutant)


def _regression_decay_check(cls):
    """One first step of ``cls(model, regression_decay=0.5)`` against ``RegMuon(model)``'s from
    the same weights and batch: under a regression head every matrix's step differs by the
    decoupled decay's ``−ηλW₀`` and nothing else (the input layer still at ρ = 1), the group's
    decay is 0.5 from then on; under a softmax head the two steps are equal (decay 2)."""
    torch.manual_seed(4)
    x, labels, target = torch.randn(32, 4), torch.randint(0, 3, (32,)), torch.randn(32)
    for outputs in (1, 3):
        base = MLP(4, 16, outputs, depth=2)
        after, groups = {}, {}
        for arm in ("plain", "lever"):
            model = MLP(4, 16, outputs, depth=2)
            model.load_state_dict(base.state_dict())
            opt = RegMuon(model) if arm == "plain" else cls(model, regression_decay=0.5)
            z = model(x)
            loss = (nn.functional.cross_entropy(z, labels) if outputs > 1
                    else nn.functional.mse_loss(z.squeeze(-1), target))  # fmt: skip
            loss.backward()
            opt.step()
            after[arm] = dict(model.named_parameters())
            groups[arm] = opt.param_groups[0]["weight_decay"]
        assert groups == {"plain": 0.0 if outputs == 1 else 2.0,
                          "lever": 0.5 if outputs == 1 else 2.0}, outputs  # fmt: skip
        for name, w0 in base.named_parameters():
            decayed = outputs == 1 and name.startswith("layers.") and w0.dim() == 2
            want = after["plain"][name] - (DEFAULTS.lr * 0.5 * w0 if decayed else 0)
            torch.testing.assert_close(after["lever"][name], want, msg=f"{outputs} {name}")


def test_regression_decay_decays_a_regressors_matrices_only(levers):
    """``regression_decay``: a regressor's matrices get decay λ at the first step's decision,
    its input layer keeps ρ = 1, a classifier is ``RegMuon(model)``; bad values are refused."""
    matrices = [n for n, p in MLP(4, 16, 1, depth=2).named_parameters() if p.dim() == 2]
    assert matrices[0] == "layers.0.weight"  # the input layer the check's ρ = 1 reads
    _regression_decay_check(levers.LeverRegMuon)
    for bad in (-0.1, math.inf, math.nan):
        with pytest.raises(ValueError, match="regression_decay"):
            levers.build_lever_regmuon(MLP(6, 8, 1), {}, {"regression_decay": bad})


def test_regression_decay_check_catches_its_mutants(levers):
    """Mutants kept as code, each failing :func:`_regression_decay_check`: the decay under
    every head (the classifier's 2 replaced), the input layer's ρ = 1 dropped with it, the
    decay never applied."""

    class EveryHead(levers.LeverRegMuon):
        def _decide_decay(self):
            d = levers.RegMuon._decide_decay(self)
            return d if d is None else (self.regression_decay, d[1], d[2])

    class DropsRho(levers.LeverRegMuon):
        def _decide_decay(self):
            d = super()._decide_decay()
            return d if d is None else (d[0], d[1], False)

    class Never(levers.LeverRegMuon):
        def _decide_decay(self):
            return levers.RegMuon._decide_decay(self)

    for mutant in (EveryHead, DropsRho, Never):
        with pytest.raises(AssertionError):
            _regression_decay_check(mutant)


def _regression_cautious_check(cls):
    """Two steps of ``cls(model, regression_cautious=0.5)`` against ``RegMuon(model)``'s from the
    same weights, state and gradients: under a regression head each matrix's step differs by
    ``−ηλ W ⊙ 1[u ⊙ W ≥ 0]`` (``−ηu`` the plain step) and nothing else, at the deciding first
    step and after it, the group's decay stays 0; under a softmax head the steps are equal."""
    torch.manual_seed(5)
    x, labels, target = torch.randn(32, 4), torch.randint(0, 3, (32,)), torch.randn(32)
    for outputs in (1, 3):
        model = MLP(4, 16, outputs, depth=2)
        lever = cls(model, regression_cautious=0.5)
        for step in range(2):
            z = model(x)
            loss = (nn.functional.cross_entropy(z, labels) if outputs > 1
                    else nn.functional.mse_loss(z.squeeze(-1), target))  # fmt: skip
            model.zero_grad()
            loss.backward()
            twin = MLP(4, 16, outputs, depth=2)
            twin.load_state_dict(model.state_dict())
            plain = RegMuon(twin)
            if step:
                plain.load_state_dict(copy.deepcopy(lever.state_dict()))  # not its live state
            for p, q in zip(twin.parameters(), model.parameters(), strict=True):
                p.grad = q.grad.clone()
            w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
            plain.step()
            lever.step()
            assert lever.param_groups[0]["weight_decay"] == (0.0 if outputs == 1 else 2.0)
            for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
                want = q.detach()
                if outputs == 1 and name.startswith("layers.") and p.dim() == 2:
                    mask = (want - w0[name]) * w0[name] <= 0
                    assert 0 < int(mask.sum()) < mask.numel(), name
                    want = want - DEFAULTS.lr * 0.5 * w0[name] * mask
                torch.testing.assert_close(p.detach(), want, msg=f"{outputs} {step} {name}")


def test_regression_cautious_decays_a_regressors_matrices_cautiously(levers):
    """``regression_cautious``: a regressor's matrices get cautious decay λ from the first
    step's decision on, a classifier is ``RegMuon(model)``; bad values, and both decays at
    once, are refused."""
    _regression_cautious_check(levers.LeverRegMuon)
    for bad in (-0.1, math.inf, math.nan):
        with pytest.raises(ValueError, match="regression_cautious"):
            levers.build_lever_regmuon(MLP(6, 8, 1), {}, {"regression_cautious": bad})
    with pytest.raises(ValueError, match="pass one of them"):
        levers.build_lever_regmuon(MLP(6, 8, 1), {}, {"regression_cautious": 0.5,
                                                      "regression_decay": 0.5})  # fmt: skip


def test_the_cautious_lever_replaces_the_librarys_own(levers):
    """Since round 19 ``RegMuon(model)`` itself decays a regressor's matrices cautiously under a
    warm-up (``REGRESSION_CAUTIOUS_DECAY``): the prototype at that λ replaces the library's rule
    (one step of each equal to rounding: the library masks with ``D ⊙ W``, the prototype with the
    step it took), and the plain decay's prototype turns it off, so rounds 15-19's columns
    mean what they meant. Mutant caught: the library's rule left on under the prototype (the
    decay applied twice)."""
    from muonflow.optim import REGRESSION_CAUTIOUS_DECAY

    def first_step(make):
        torch.manual_seed(6)
        model, x, y = MLP(4, 16, 1, depth=2), torch.randn(32, 4), torch.randn(32)
        opt = make(model)
        torch.optim.lr_scheduler.LambdaLR(opt, lambda t: (t + 1) / 4)  # a warm-up
        nn.functional.mse_loss(model(x).squeeze(-1), y).backward()
        opt.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()]), opt

    lib, opt = first_step(RegMuon)
    assert opt._cautious == REGRESSION_CAUTIOUS_DECAY
    lever, lopt = first_step(lambda m: levers.LeverRegMuon(
        m, regression_cautious=REGRESSION_CAUTIOUS_DECAY))  # fmt: skip
    assert lopt._cautious == 0.0
    torch.testing.assert_close(lever, lib)
    _, popt = first_step(lambda m: levers.LeverRegMuon(m, regression_decay=0.5))
    assert popt._cautious == 0.0 and popt.param_groups[0]["weight_decay"] == 0.5

    class Twice(levers.LeverRegMuon):
        def __init__(self, model, **kw):
            super().__init__(model, **kw)
            self._cautious_pending = float(DEFAULTS.lr)

    twice, _ = first_step(lambda m: Twice(m, regression_cautious=REGRESSION_CAUTIOUS_DECAY))
    with pytest.raises(AssertionError):
        torch.testing.assert_close(twice, lib)


def test_regression_cautious_check_catches_its_mutants(levers):
    """Mutants kept as code, each failing :func:`_regression_cautious_check`: the mask inverted
    (decay where the step grows the weight), the decay under every head, the decay only at the
    deciding step, the AdamW part (the output layer, the biases) decayed too."""

    class Inverted(levers.LeverRegMuon):
        @torch.no_grad()
        def step(self, closure=None):
            before = {p: p.detach().clone() for g in self.param_groups for p in g["params"]}
            cautious, self.regression_cautious = self.regression_cautious, 0.0
            levers.LeverRegMuon.step(self)
            self.regression_cautious = cautious
            if self._regressor:
                for p in self._matrices():
                    old = before[p]
                    grows = (p - old) * old > 0
                    p.sub_(old * grows, alpha=self.param_groups[0]["lr"] * cautious)

    class EveryHead(levers.LeverRegMuon):
        @torch.no_grad()
        def step(self, closure=None):
            levers.LeverRegMuon.step(self)
            self._regressor = True

    class OnlyAtTheDecision(levers.LeverRegMuon):
        @torch.no_grad()
        def step(self, closure=None):
            levers.LeverRegMuon.step(self)
            self._regressor = False

    class AdamWPartToo(levers.LeverRegMuon):
        @torch.no_grad()
        def step(self, closure=None):
            before = {p: p.detach().clone() for g in self.param_groups for p in g["params"]}
            levers.LeverRegMuon.step(self)
            if self._regressor:
                for g in self.param_groups[1:]:
                    for p in g["params"]:
                        old = before[p]
                        shrinks = (p - old) * old <= 0
                        p.sub_(old * shrinks, alpha=g["lr"] * self.regression_cautious)

    for mutant in (Inverted, EveryHead, OnlyAtTheDecision, AdamWPartToo):
        with pytest.raises(AssertionError):
            _regression_cautious_check(mutant)


def test_signal_share_reads_the_gradients_noise(levers):
    """φ_t of ``regression_noise``: 1 at the first step and for a constant gradient, about 0
    (within its sampling spread) for pure noise at every t, about ``|G|²/(|G|² + tr Σ)`` for a
    mixture. Mutants caught: κ without the bias correction (pure noise reads as half signal at
    t = 2), ``m`` not bias-corrected (a constant gradient reads below 1)."""
    torch.manual_seed(3)
    n, b = 4096, levers.NOISE_BETA

    def shares(make, steps, share=levers.LeverRegMuon.signal_share):
        m, v, out = torch.zeros(n), torch.zeros(()), []
        for t in range(1, steps + 1):
            g = make()
            m, v = b * m + (1 - b) * g, b * v + (1 - b) * g.square().sum()
            out.append(share(m, v, t))
        return out

    G = torch.randn(n)
    assert shares(lambda: G, 5) == pytest.approx([1.0] * 5)
    # pure noise: ‖m̂‖² - κ v̂ is a difference of chi-square sums over n entries, its spread
    # about sqrt(2/n) of κ v̂ relative: far below 0.05 after the clip
    noise = shares(lambda: torch.randn(n), 30)
    assert noise[0] == 1.0 and max(noise[1:]) < 0.05
    mixed = shares(lambda: 0.5 * G + torch.randn(n), 60)  # |G|²/(|G|² + trΣ) = 0.25/1.25
    assert statistics.fmean(mixed[20:]) == pytest.approx(0.2, abs=0.05)

    def no_bias_kappa(m, v, t):
        kappa = (1 - b) / (1 + b)
        vhat, mhat2 = float(v) / (1 - b**t), float(m.square().sum()) / (1 - b**t) ** 2
        return 1.0 if t == 1 else min(1.0, max(0.0, (mhat2 - kappa * vhat) / ((1 - kappa) * vhat)))

    def no_bias_m(m, v, t):
        kappa = (1 - b) * (1 + b**t) / ((1 + b) * (1 - b**t))
        vhat, mhat2 = float(v) / (1 - b**t), float(m.square().sum()) / (1 - b**t)
        return 1.0 if t == 1 else min(1.0, max(0.0, (mhat2 - kappa * vhat) / ((1 - kappa) * vhat)))

    assert max(shares(lambda: torch.randn(n), 3, no_bias_kappa)[1:]) > 0.3
    assert min(shares(lambda: G, 3, no_bias_m)) < 0.99


def _noise_lever_check(levers, cls, lever: str, cases) -> None:
    """Three steps of ``cls(model, **{lever: 1})`` against ``LeverRegMuon(model)``'s from the same
    weights, state and gradients, for each ``(norm, outputs, classify, scaled)`` of ``cases``
    (an MLP with or without LayerNorm, cross-entropy or MSE): where ``scaled``, every parameter's
    step (both parts) is the plain one times φ_t of its own gradients (1 at the first, deciding,
    step), and some step is scaled; elsewhere the steps are equal."""
    torch.manual_seed(7)
    x, labels = torch.randn(32, 4), torch.randint(0, 3, (32,))
    for norm, outputs, classify, scaled in cases:
        model = MLP(4, 16, outputs, depth=2, norm=norm)
        opt = cls(model, **{lever: 1.0})
        grads: dict[str, list] = {}
        for step in range(3):
            idx = torch.randint(0, 32, (8,))
            z = model(x[idx])
            loss = (nn.functional.cross_entropy(z, labels[idx]) if classify else
                    nn.functional.mse_loss(z, x[idx, :outputs] + torch.randn(8, outputs)))
            model.zero_grad()
            loss.backward()
            twin = MLP(4, 16, outputs, depth=2, norm=norm)
            twin.load_state_dict(model.state_dict())
            plain = levers.LeverRegMuon(twin)
            if step:
                plain.load_state_dict(copy.deepcopy(opt.state_dict()))
            for p, q in zip(twin.parameters(), model.parameters(), strict=True):
                p.grad = q.grad.clone()
            w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
            for n, p in model.named_parameters():
                grads.setdefault(n, []).append(p.grad.detach().clone())
            plain.step()
            opt.step()
            for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
                share = 1.0
                if scaled and step:
                    b, m, v = levers.NOISE_BETA, torch.zeros_like(p), torch.zeros(())
                    for g in grads[name]:
                        m, v = b * m + (1 - b) * g, b * v + (1 - b) * g.square().sum()
                    share = levers.LeverRegMuon.signal_share(m, v, step + 1)
                want = w0[name] + share * (q.detach() - w0[name])
                torch.testing.assert_close(p.detach(), want,
                                           msg=f"{norm} {outputs} {classify} {step} {name}")
        if scaled:
            assert any(levers.LeverRegMuon.signal_share(*opt._noise[p]) < 0.9
                       for p in model.parameters())  # the check scales some step  # fmt: skip


def _regression_noise_check(levers, cls):
    """``regression_noise`` (:func:`_noise_lever_check`): a regressor without normalization
    scaled, a classifier not."""
    _noise_lever_check(levers, cls, "regression_noise",
                       [(False, 1, False, True), (False, 3, True, False)])


def test_regression_noise_scales_a_regressors_steps_only(levers):
    """``regression_noise``: a regressor's every step scaled by φ^a from the decision on, a
    classifier's unchanged; bad exponents refused."""
    _regression_noise_check(levers, levers.LeverRegMuon)
    for bad in (-0.5, math.inf, math.nan):
        with pytest.raises(ValueError, match="regression_noise"):
            levers.build_lever_regmuon(MLP(6, 8, 1), {}, {"regression_noise": bad})


def test_regression_noise_check_catches_its_mutants(levers):
    """Mutants kept as code, each failing :func:`_regression_noise_check`: the scale inverted
    (1 − φ), the matrices only (the AdamW part unscaled), every head scaled, the exponent
    ignored by a square."""

    class Inverted(levers.LeverRegMuon):
        @staticmethod
        def signal_share(m, v, t):
            return 1.0 - levers.LeverRegMuon.signal_share(m, v, t)

    class MatricesOnly(levers.LeverRegMuon):
        def _observe_noise(self):
            super()._observe_noise()
            for g in self.param_groups:
                if g["algorithm"] != "regmuon":
                    for p in g["params"]:
                        self._noise.pop(p, None)

    class EveryHead(levers.LeverRegMuon):
        @torch.no_grad()
        def step(self, closure=None):
            levers.LeverRegMuon.step(self)
            self._regressor = True

    class Squared(levers.LeverRegMuon):
        @staticmethod
        def signal_share(m, v, t):
            return levers.LeverRegMuon.signal_share(m, v, t) ** 2

    for mutant in (Inverted, MatricesOnly, EveryHead, Squared):
        with pytest.raises(AssertionError):
            _regression_noise_check(levers, mutant)


def _softmax_noise_check(levers, cls):
    """``softmax_noise`` (:func:`_noise_lever_check`): a LayerNorm MLP classifier reading raw
    inputs (round 10's class under a softmax head) scaled; the same network under a regression
    loss, and a classifier without normalization, not."""
    _noise_lever_check(levers, cls, "softmax_noise",
                       [(True, 3, True, True), (True, 3, False, False), (False, 3, True, False)])


def test_softmax_noise_scales_a_normalized_classifiers_steps_only(levers):
    """``softmax_noise``: a normalized classifier's every step scaled by φ^a from the decision
    on; a regressor and a classifier without normalization unchanged; bad exponents refused."""
    _softmax_noise_check(levers, levers.LeverRegMuon)
    for bad in (-0.5, math.inf, math.nan):
        with pytest.raises(ValueError, match="softmax_noise"):
            levers.build_lever_regmuon(MLP(6, 8, 3), {}, {"softmax_noise": bad})


def test_softmax_noise_check_catches_its_mutants(levers):
    """Mutants kept as code, each failing :func:`_softmax_noise_check`: every model scaled (the
    class ignored), the regression lever's class read instead, the scale inverted."""

    class EveryModel(levers.LeverRegMuon):
        @torch.no_grad()
        def step(self, closure=None):
            levers.LeverRegMuon.step(self)
            self._lr_scale = self._lr_scale or {0: 1.0}

    class RegressorsInstead(levers.LeverRegMuon):
        def __init__(self, model, softmax_noise=0.0, **kw):
            super().__init__(model, regression_noise=softmax_noise, **kw)

    class Inverted(levers.LeverRegMuon):
        @staticmethod
        def signal_share(m, v, t):
            return 1.0 - levers.LeverRegMuon.signal_share(m, v, t)

    for mutant in (EveryModel, RegressorsInstead, Inverted):
        with pytest.raises(AssertionError):
            _softmax_noise_check(levers, mutant)


def _attention_lr_check(cls):
    """One step of ``cls(model, attention_lr=2)``: under a softmax head the factors on the groups'
    lrs (round 10's) are twice those of ``cls(model, attention_lr=1)`` (round 10's as they were
    before round 22) where the model has an attention layer, the same without one; under a
    regression loss there are none."""
    torch.manual_seed(9)
    x, labels = torch.randn(8, 5, 4), torch.randint(0, 3, (8,))
    for attention, classify in ((True, True), (False, True), (True, False)):
        got = []
        for make in (lambda m: cls(m, attention_lr=1.0), lambda m: cls(m, attention_lr=2.0)):
            torch.manual_seed(10)
            model = SmallViT(attention)
            opt = make(model)
            z = model(x)
            loss = nn.functional.cross_entropy(z, labels) if classify else z.square().mean()
            loss.backward()
            opt.step()
            got.append(opt._lr_scale)
        plain, lever = got
        assert bool(plain) == classify, (attention, classify)
        want = {gi: f * 2.0 for gi, f in plain.items()} if attention else plain
        assert lever == pytest.approx(want), (attention, classify)


def test_attention_lr_scales_a_vits_round_10_lrs_only(levers):
    """``attention_lr``: a ViT's round-10 factors times ``f``; a normalized classifier without
    attention, and a regressor, as ``RegMuon(model)``; bad factors refused."""
    _attention_lr_check(levers.LeverRegMuon)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="attention_lr"):
            levers.build_lever_regmuon(MLP(6, 8, 3), {}, {"attention_lr": bad})


def test_attention_lr_check_catches_its_mutants(levers):
    """Mutants kept as code, each failing :func:`_attention_lr_check`: every model of the class
    scaled (attention ignored), the factor applied to the matrices only, the factor squared."""

    class EveryModel(levers.LeverRegMuon):
        def __init__(self, model, **kw):
            super().__init__(model, **kw)
            self._attention = True

    class MatricesOnly(levers.LeverRegMuon):
        def _decide_scale(self):
            d = super()._decide_scale()
            if d and d[0] and 1 in d[0]:
                d[0][1] /= self.attention_lr
            return d

    class Squared(levers.LeverRegMuon):
        def _decide_scale(self):
            d = super()._decide_scale()
            if d and d[0] and self._attention:
                return {gi: f * self.attention_lr for gi, f in d[0].items()}, d[1]
            return d

    for mutant in (EveryModel, MatricesOnly, Squared):
        with pytest.raises(AssertionError):
            _attention_lr_check(mutant)


def _attention_split_check(cls):
    """One step of ``cls(model, attention_split=[2, 8])``: under a softmax head the matrices'
    factor (round 10's) is twice and the AdamW part's eight times that of
    ``cls(model, attention_split=[1, 1])`` (round 10's as before round 22) where the model has an
    attention layer, the same without one; under a regression loss there are none."""
    torch.manual_seed(9)
    x, labels = torch.randn(8, 5, 4), torch.randint(0, 3, (8,))
    for attention, classify in ((True, True), (False, True), (True, False)):
        _pair_check(cls, functools.partial(SmallViT, attention), x, labels if classify else None,
                    "attention_split", [2.0, 8.0], scaled=attention)  # fmt: skip


def _pair_check(cls, make, x, labels, lever: str, pair: list[float], scaled: bool) -> None:
    """One step of ``cls(make(), **{lever: [1, 1]})`` and of the same with ``pair`` (cross-entropy
    on ``labels``, a regression loss where ``labels`` is ``None``): with a softmax head round
    10's factors are decided, and the pair's are the matrices' times ``pair[0]`` and the AdamW
    part's times ``pair[1]`` where ``scaled``, the same otherwise; with a regression loss there
    are none."""
    got = []
    for split in ([1.0, 1.0], pair):
        torch.manual_seed(10)
        model = make()
        opt = cls(model, **{lever: split})
        z = model(x)
        (z.square().mean() if labels is None else nn.functional.cross_entropy(z, labels)).backward()
        opt.step()
        got.append(opt._lr_scale)
    (plain, paired), algorithms = got, [g["algorithm"] for g in opt.param_groups]
    assert bool(plain) == (labels is not None) and set(algorithms) == {"regmuon", "adamw"}
    want = ({gi: f * pair[0 if algorithms[gi] == "regmuon" else 1] for gi, f in plain.items()}
            if scaled else plain)  # fmt: skip
    assert paired == pytest.approx(want), (lever, scaled)


def test_attention_split_scales_a_vits_two_lrs_apart(levers):
    """``attention_split``: a ViT's round-10 matrix factor times ``a``, its AdamW part's times
    ``b``; ``[1, 1]`` is round 10's step (round 22's factor replaced) and ``[3, 3]`` under a warm-up
    RegMuon(model) today for a ViT with more than ``FEW_TOKENS`` tokens; bad pairs, and the pair
    with ``attention_lr``, refused."""
    _attention_split_check(levers.LeverRegMuon)
    torch.manual_seed(9)
    x, labels = torch.randn(8, 12, 4), torch.randint(0, 3, (8,))
    scales = []
    for make in (lambda m, o: RegMuon(m, **o),
                 lambda m, o: levers.LeverRegMuon(m, attention_split=[3, 3], **o)):
        torch.manual_seed(10)
        model = SmallViT(True)
        opt = make(model, {})
        for g in opt.param_groups:  # a warm-up's first step: below the built lrs
            g["lr"] *= 0.1
        nn.functional.cross_entropy(model(x), labels).backward()
        opt.step()
        scales.append(opt._lr_scale)
    assert scales[0] == pytest.approx(scales[1])
    for bad in ([0.0, 1.0], [1.0, -1.0], [math.inf, 1.0], [1.0, math.nan], [2.0], [1.0, 2.0, 3.0]):
        with pytest.raises(ValueError, match="attention_split"):
            levers.build_lever_regmuon(MLP(6, 8, 3), {}, {"attention_split": bad})
    with pytest.raises(ValueError, match="pass one of them"):
        levers.build_lever_regmuon(MLP(6, 8, 3), {}, {"attention_split": [2, 8],
                                                      "attention_lr": 2.0})


def test_attention_split_check_catches_its_mutants(levers):
    """Mutants kept as code, each failing :func:`_attention_split_check`: the two factors swapped,
    the matrices' factor on both parts, every model of the class scaled (attention ignored)."""

    class Swapped(levers.LeverRegMuon):
        def __init__(self, model, attention_split, **kw):
            super().__init__(model, attention_split=attention_split[::-1], **kw)

    class OneFactor(levers.LeverRegMuon):
        def __init__(self, model, attention_split, **kw):
            super().__init__(model, attention_split=[attention_split[0]] * 2, **kw)

    class EveryModel(levers.LeverRegMuon):
        def __init__(self, model, **kw):
            super().__init__(model, **kw)
            self._attention = True

    for mutant in (Swapped, OneFactor, EveryModel):
        with pytest.raises(AssertionError):
            _attention_split_check(mutant)


def _few_tokens_check(cls):
    """One step of ``cls(model, few_tokens=2)`` on a small ViT reading 5 tokens (at most
    ``FEW_TOKENS``) or 12, under a constant lr and under a warm-up (the lrs at the first step a
    tenth of the built ones): with 5 tokens the factors on the groups' lrs are round 10's times 2
    under both (the library's factor replaced), with 12 those of ``RegMuon(model)`` (round 10's,
    times 3 under a warm-up)."""
    torch.manual_seed(9)
    labels = torch.randint(0, 3, (8,))

    def scale(make, tokens, warm):
        torch.manual_seed(10)
        model = SmallViT(True)
        opt = make(model)
        if warm:
            for g in opt.param_groups:
                g["lr"] *= 0.1
        x = torch.randn(8, tokens, 4, generator=torch.Generator().manual_seed(tokens))
        nn.functional.cross_entropy(model(x), labels).backward()
        opt.step()
        return opt._lr_scale

    base = {0: NORMALIZED_INPUT_LR / float(DEFAULTS.lr),
            1: NORMALIZED_INPUT_ADAMW_LR / float(DEFAULTS.adamw_lr)}  # round 10's factors
    for tokens, warm in ((5, False), (5, True), (12, False), (12, True)):
        got = scale(lambda m: cls(m, few_tokens=2.0), tokens, warm)
        f = 2.0 if tokens <= 8 else (3.0 if warm else 1.0)
        assert got == pytest.approx({gi: v * f for gi, v in base.items()}), (tokens, warm)


def test_few_tokens_scales_a_vit_with_few_tokens_only(levers):
    """``few_tokens``: a ViT whose attention reads at most ``FEW_TOKENS`` tokens takes round 10's
    factors times ``g`` (round 22's replaced), any other as ``RegMuon(model)``; bad factors, and
    the lever with another on the same lrs, refused."""
    assert levers.FEW_TOKENS == 8
    _few_tokens_check(levers.LeverRegMuon)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="few_tokens"):
            levers.build_lever_regmuon(MLP(6, 8, 3), {}, {"few_tokens": bad})
    with pytest.raises(ValueError, match="pass one of them"):
        levers.build_lever_regmuon(MLP(6, 8, 3), {}, {"few_tokens": 2.0, "attention_lr": 2.0})


def test_few_tokens_check_catches_its_mutants(levers):
    """Mutants kept as code, each failing :func:`_few_tokens_check`: the tokens ignored (every ViT
    given ``g``), round 22's factor kept under ``g`` (``g x 3`` under a warm-up), the bound
    inverted (the ViTs with many tokens given ``g``)."""

    class EveryViT(levers.LeverRegMuon):
        def _decide_scale(self):
            self._attention_tokens = 1
            return super()._decide_scale()

    class KeepsRound22(levers.LeverRegMuon):
        def _decide_scale(self):
            pending = self._attention_pending
            d = super()._decide_scale()
            if d and d[0] and pending is not None and self._attention_tokens <= levers.FEW_TOKENS \
                    and self.param_groups[0]["lr"] < pending[0]:
                return {gi: f * 3.0 for gi, f in d[0].items()}, d[1]
            return d

    class Inverted(levers.LeverRegMuon):
        def _decide_scale(self):
            if not getattr(self, "_inverted", False):
                self._inverted = True
                few = self._attention_tokens <= levers.FEW_TOKENS
                self._attention_tokens = 20 if few else 1
            return super()._decide_scale()

    for mutant in (EveryViT, KeepsRound22, Inverted):
        with pytest.raises(AssertionError):
            _few_tokens_check(mutant)


def _few_rows_check(cls):
    """``cls(model, few_rows=0.25)`` against ``RegMuon(model)`` on the same minibatches (a
    constant lr, so a step is ``lr`` times its direction), after a no-grad forward of 1500
    distinct rows (an evaluation, not counted): an MLP regressor drawing minibatches of 8 from 40
    rows equals ``RegMuon(model)`` bit for bit until the table is decided small (by its 10th step:
    80 rows read, at most 40 distinct), and each step after moves every parameter by 0.25 times
    ``RegMuon(model)``'s from the same state; on 1200 rows (more than ``FEW_ROWS``), or with a
    softmax head on 40, it equals ``RegMuon(model)`` bit for bit throughout."""
    gen = torch.Generator().manual_seed(3)
    evaluation = torch.randn(1500, 6, generator=gen)

    def pair(rows, outputs):
        X = torch.randn(rows, 6, generator=gen)
        y = torch.randint(0, 3, (rows,), generator=gen) if outputs == 3 else torch.randn(rows)
        models = []
        for _ in range(2):
            torch.manual_seed(4)
            models.append(MLP(6, 16, outputs, depth=2))
        opts = [RegMuon(models[0]), cls(models[1], few_rows=0.25)]
        for m in models:
            with torch.no_grad():
                m(evaluation)
        return X, y, models, opts

    def step(X, y, models, opts, idx):
        """One step of both on the same minibatch from the same state: each one's moves."""
        before = [[p.detach().clone() for p in m.parameters()] for m in models]
        for p0, q0 in zip(*before, strict=True):
            assert torch.equal(p0, q0)
        for m, o in zip(models, opts, strict=True):
            z = m(X[idx])
            loss = (nn.functional.cross_entropy(z, y[idx]) if z.shape[-1] == 3
                    else nn.functional.mse_loss(z.squeeze(-1), y[idx]))  # fmt: skip
            o.zero_grad()
            loss.backward()
            o.step()
        return [[p.detach() - p0 for p, p0 in zip(m.parameters(), b, strict=True)]
                for m, b in zip(models, before, strict=True)]  # fmt: skip

    small = pair(40, 1)
    draws = torch.Generator().manual_seed(5)
    for t in range(10):  # decided in the forward of the step that reads the 2x-th row
        moves = step(*small, torch.randint(0, 40, (8,), generator=draws))
        if small[3][1]._few_rows_factor() == 1.0:
            assert all(torch.equal(a, b) for a, b in zip(*moves, strict=True)), t
            continue
        for a, b in zip(*moves, strict=True):
            torch.testing.assert_close(b, 0.25 * a, rtol=1e-4, atol=1e-7)
        break
    else:
        raise AssertionError("a 40-row table not found small in 10 steps")
    for rows, outputs in ((1200, 1), (40, 3)):
        X, y, models, opts = pair(rows, outputs)
        for _ in range(30):
            step(X, y, models, opts, torch.randint(0, rows, (8,), generator=draws))
        for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
            assert torch.equal(p, q), (rows, outputs)


def test_few_rows_scales_a_regressor_on_a_small_table_only(levers):
    """``few_rows``: a regressor whose input layer reads at most ``FEW_ROWS`` distinct rows steps
    with its lrs times ``f`` once that is decided; a larger table or a softmax head as
    ``RegMuon(model)``; a model with an embedding never counts; bad factors refused."""
    assert levers.FEW_ROWS == 1000
    _few_rows_check(levers.LeverRegMuon)
    assert levers.LeverRegMuon(SortTransformer(vocab_size=8, d_model=16), few_rows=0.5)._rows \
        is None
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="few_rows"):
            levers.build_lever_regmuon(MLP(6, 8, 1), {}, {"few_rows": bad})


def test_few_rows_check_catches_its_mutants(levers):
    """Mutants kept as code, each failing :func:`_few_rows_check`: the table's size ignored
    (every regressor scaled from the first step), the head ignored (a classifier scaled), the
    evaluation's forward counted (the small table then reads as large), the factor never applied
    (a frozen lever)."""

    class EveryTable(levers.LeverRegMuon):
        def _few_rows_factor(self):
            return 0.25 if self._softmax_head() is False else 1.0

    class AnyHead(levers.LeverRegMuon):
        def _few_rows_factor(self):
            return 0.25 if self._rows.small else 1.0

    class CountsEvaluations(levers.LeverRegMuon):
        def __init__(self, model, **kw):
            super().__init__(model, **kw)
            rows = self._rows
            rows._handle.remove()

            def count(module, args):
                with torch.enable_grad():
                    rows._count(module, args)

            layer = model.get_submodule(levers.input_layer(model))
            rows._handle = layer.register_forward_pre_hook(count)

    class Frozen(levers.LeverRegMuon):
        def _few_rows_factor(self):
            return 1.0

    for mutant in (EveryTable, AnyHead, CountsEvaluations, Frozen):
        with pytest.raises(AssertionError):
            _few_rows_check(mutant)


def _class_split_check(cls, lever: str, scaled: str) -> None:
    """One step of ``cls(model, **{lever: [8, 4]})`` against ``cls(model, **{lever: [1, 1]})``
    (round 10's step) under a softmax head, on a LayerNorm MLP, a batch-norm CNN and a ViT: on the
    ``scaled`` kind the matrices' factor is 8 times and the AdamW part's 4 times round 10's, on
    the others the same as round 10's; under a regression loss there are none."""
    torch.manual_seed(9)
    labels = torch.randint(0, 3, (8,))
    models = {"mlp": (lambda: MLP(6, 16, 3, depth=2, norm=True), torch.randn(8, 6)),
              "cnn": (lambda: SmallCNN(channels=(4, 8), hidden=16, n_classes=3, norm=True),
                      torch.randn(8, 64)),
              "vit": (lambda: SmallViT(True), torch.randn(8, 12, 4))}  # fmt: skip
    for kind, classify in (("mlp", True), ("cnn", True), ("vit", True), (scaled, False)):
        make, x = models[kind]
        _pair_check(cls, make, x, labels if classify else None, lever, [8.0, 4.0],
                    scaled=kind == scaled)  # fmt: skip


def _mlp_split_check(cls):
    """``mlp_split`` (:func:`_class_split_check`): a LayerNorm MLP's two factors scaled."""
    _class_split_check(cls, "mlp_split", "mlp")


def test_mlp_split_scales_a_normalized_mlps_two_lrs(levers):
    """``mlp_split``: a LayerNorm MLP classifier's round-10 matrix factor times ``a``, its AdamW
    part's times ``b``; CNNs and ViTs as ``RegMuon(model)``; bad pairs refused."""
    _mlp_split_check(levers.LeverRegMuon)
    for bad in ([0.0, 1.0], [1.0, -1.0], [math.inf, 1.0], [2.0], [1.0, 2.0, 3.0]):
        with pytest.raises(ValueError, match="mlp_split"):
            levers.build_lever_regmuon(MLP(6, 8, 3), {}, {"mlp_split": bad})


def test_mlp_split_check_catches_its_mutants(levers):
    """Mutants kept as code, each failing :func:`_mlp_split_check`: the factors swapped, a CNN
    taken for an MLP (convolutions not read), the lever frozen."""

    class Swapped(levers.LeverRegMuon):
        def __init__(self, model, mlp_split=None, **kw):
            super().__init__(model, mlp_split=mlp_split[::-1], **kw)

    class ConvBlind(levers.LeverRegMuon):
        def __init__(self, model, **kw):
            super().__init__(model, **kw)
            self._mlp = not self._attention

    class Frozen(levers.LeverRegMuon):
        def __init__(self, model, mlp_split=None, **kw):
            super().__init__(model, **kw)

    for mutant in (Swapped, ConvBlind, Frozen):
        with pytest.raises(AssertionError):
            _mlp_split_check(mutant)


def _cnn_split_check(cls):
    """``cnn_split`` (:func:`_class_split_check`): a batch-norm CNN's two factors scaled."""
    _class_split_check(cls, "cnn_split", "cnn")


def test_cnn_split_scales_a_batch_norm_cnns_two_lrs(levers):
    """``cnn_split``: a batch-norm CNN classifier's round-10 matrix factor times ``a``, its AdamW
    part's times ``b``; LayerNorm MLPs and ViTs as ``RegMuon(model)``; bad pairs refused."""
    _cnn_split_check(levers.LeverRegMuon)
    for bad in ([0.0, 1.0], [1.0, -1.0], [math.nan, 1.0], [2.0], [1.0, 2.0, 3.0]):
        with pytest.raises(ValueError, match="cnn_split"):
            levers.build_lever_regmuon(MLP(6, 8, 3), {}, {"cnn_split": bad})


def test_cnn_split_check_catches_its_mutants(levers):
    """Mutants kept as code, each failing :func:`_cnn_split_check`: the factors swapped, an MLP
    taken for a CNN (the convolution not read), the lever frozen."""

    class Swapped(levers.LeverRegMuon):
        def __init__(self, model, cnn_split=None, **kw):
            super().__init__(model, cnn_split=cnn_split[::-1], **kw)

    class ConvBlind(levers.LeverRegMuon):
        def __init__(self, model, **kw):
            super().__init__(model, **kw)
            self._cnn = not self._attention

    class Frozen(levers.LeverRegMuon):
        def __init__(self, model, cnn_split=None, **kw):
            super().__init__(model, **kw)

    for mutant in (Swapped, ConvBlind, Frozen):
        with pytest.raises(AssertionError):
            _cnn_split_check(mutant)


def _mlp_beta2_check(build):
    """``build(model, {"mlp_beta2": 0.999})``'s AdamW part's β2: 0.999 on a LayerNorm MLP (round
    10's class by structure, neither attention nor convolution), today's on a batch-norm CNN, a ViT
    and an MLP without normalization; two steps of the LayerNorm MLP at β2 0.999 end elsewhere than
    at 0.95 (the lever reaches the step; a first step is the same for any β2)."""
    models = {"mlp": lambda: MLP(6, 16, 3, depth=2, norm=True),
              "cnn": lambda: SmallCNN(channels=(4, 8), hidden=16, n_classes=3, norm=True),
              "vit": lambda: SmallViT(True), "plain": lambda: MLP(6, 16, 3, depth=2)}
    for kind, make in models.items():
        opt = build(make(), {"mlp_beta2": 0.999})
        want = 0.999 if kind == "mlp" else DEFAULTS.adamw_betas[1]
        parts = [g for g in opt.param_groups if g["algorithm"] == "adamw"]
        assert parts and all(g["betas"] == (DEFAULTS.adamw_betas[0], want) for g in parts), kind
    torch.manual_seed(9)
    x, labels = torch.randn(8, 6), torch.randint(0, 3, (8,))
    losses = []
    for b2 in (0.95, 0.999):
        torch.manual_seed(10)
        model = models["mlp"]()
        opt = build(model, {"mlp_beta2": b2})
        for _ in range(2):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), labels).backward()
            opt.step()
        with torch.no_grad():
            losses.append(float(nn.functional.cross_entropy(model(x), labels)))
    assert losses[0] != losses[1]


def test_mlp_beta2_sets_a_normalized_mlps_part_beta2(levers):
    """``mlp_beta2``: a LayerNorm MLP's AdamW part at β2 ``b``; other models as ``RegMuon(model)``;
    bad β2 refused."""
    _mlp_beta2_check(lambda m, lv: levers.build_lever_regmuon(m, {}, lv))
    for bad in (1.0, -0.1, math.nan, "0.9"):
        with pytest.raises(ValueError, match="mlp_beta2"):
            levers.build_lever_regmuon(MLP(6, 8, 3, norm=True), {}, {"mlp_beta2": bad})


def test_mlp_beta2_check_catches_its_mutants(levers):
    """Mutants kept as code, each failing :func:`_mlp_beta2_check`: every model's part changed
    (the class not read), β1 changed in place of β2, the lever frozen."""

    def every_model(m, lv):
        return levers.RegMuon(m, adamw_betas=(0.9, lv["mlp_beta2"]))

    def beta1(m, lv):
        opt = levers.build_lever_regmuon(m, {}, lv)
        for g in opt.param_groups:
            if g["algorithm"] == "adamw" and g["betas"][1] != DEFAULTS.adamw_betas[1]:
                g["betas"] = (g["betas"][1], DEFAULTS.adamw_betas[1])
        return opt

    def frozen(m, lv):
        return levers.build_lever_regmuon(m, {}, {})

    for mutant in (every_model, beta1, frozen):
        with pytest.raises(AssertionError):
            _mlp_beta2_check(mutant)


def _part_decay_cases():
    """The labels and the models the two part-decay checks step, each ``(kind, make, input,
    classify, in the class)``: a LayerNorm MLP and a batch-norm CNN classifier (round 10's class
    without attention), a ViT, a classifier without normalization, the MLP under a regression
    loss."""
    torch.manual_seed(9)
    labels = torch.randint(0, 3, (8,))
    models = {"mlp": (lambda: MLP(6, 16, 3, depth=2, norm=True), torch.randn(8, 6)),
              "cnn": (lambda: SmallCNN(channels=(4, 8), hidden=16, n_classes=3, norm=True),
                      torch.randn(8, 64)),
              "vit": (lambda: SmallViT(True), torch.randn(8, 12, 4)),
              "plain": (lambda: MLP(6, 16, 3, depth=2), torch.randn(8, 6))}  # fmt: skip
    return labels, [(kind, *models[kind], classify, kind in ("mlp", "cnn") and classify)
                    for kind, classify in (("mlp", True), ("cnn", True), ("vit", True),
                                           ("plain", True), ("mlp", False))]  # fmt: skip


def _two_step_runs(cls, lever, make, x, labels, classify):
    """Two steps of ``cls(model, **{lever: d})`` for ``d`` = 0 and 0.5 on fresh copies of one
    model (cross-entropy, or a regression loss): ``[(model, optimizer, parameters after the
    first step)]`` per ``d``."""
    runs = []
    for d in (0.0, 0.5):
        torch.manual_seed(10)
        model = make()
        opt = cls(model, **{lever: d})
        first = None
        for _ in range(2):
            z = model(x)
            opt.zero_grad()
            (nn.functional.cross_entropy(z, labels) if classify
             else z.square().mean()).backward()  # fmt: skip
            opt.step()
            if first is None:
                first = [p.detach().clone() for p in model.parameters()]
        runs.append((model, opt, first))
    return runs


def _decayed_by_half(opt, plain, decayed, first, target):
    """Each parameter of ``decayed`` in ``target`` (``id -> (group, group index)``) differs from
    ``plain``'s by exactly ``-η 0.5 p`` (``η`` the group's decided lr, ``p`` the weights after the
    first step); every other parameter is the same, bit for bit."""
    for p0, p1, w in zip(plain.parameters(), decayed.parameters(), first, strict=True):
        if id(p1) in target:
            g, gi = target[id(p1)]
            lr = g["lr"] * opt._lr_scale.get(gi, 1.0)
            torch.testing.assert_close(p1 - p0, -lr * 0.5 * w, atol=1e-6, rtol=1e-4)
        else:
            torch.testing.assert_close(p1, p0, atol=0, rtol=0)


def _two_step_decay_check(cls, lever, algorithm, decays_for):
    """Two steps of ``cls(model, **{lever: 0.5})`` against two of ``cls(model, **{lever: 0})`` on
    each model of :func:`_part_decay_cases` (:func:`_two_step_runs`): where
    ``decays_for(kind, classify, in_class)``, the ``algorithm`` groups get decay 0.5 at the first
    step, and at the second each of their parameters differs from the undecayed run's by exactly
    ``-η 0.5 p`` while every other parameter is the same (:func:`_decayed_by_half`); elsewhere
    nothing differs."""
    labels, cases = _part_decay_cases()
    for kind, make, x, classify, in_class in cases:
        decays = decays_for(kind, classify, in_class)
        (plain, opt0, first), (decayed, opt, _) = _two_step_runs(cls, lever, make, x, labels,
                                                                 classify)  # fmt: skip
        wds = [[g["weight_decay"] for g in o.param_groups if g["algorithm"] == algorithm]
               for o in (opt0, opt)]  # fmt: skip
        assert wds[1] == ([0.5] * len(wds[0]) if decays else wds[0]), (kind, classify)
        target = {id(p): (g, gi) for gi, g in enumerate(opt.param_groups)
                  if decays and g["algorithm"] == algorithm for p in g["params"]}  # fmt: skip
        _decayed_by_half(opt, plain, decayed, first, target)


def _norm_part_decay_check(cls):
    """``norm_part_decay``: on a LayerNorm MLP and a batch-norm CNN classifier the AdamW part
    decays (:func:`_two_step_decay_check`); on a ViT, under a regression loss and on a classifier
    without normalization nothing differs."""
    _two_step_decay_check(cls, "norm_part_decay", "adamw", lambda k, c, in_class: in_class)


def test_norm_part_decay_decays_a_normalized_classifiers_adamw_part(levers):
    """``norm_part_decay``: decay on the AdamW part of a LayerNorm MLP or batch-norm CNN
    classifier (round 10's class with no attention layer); ViTs, regressors and networks without
    normalization as ``RegMuon(model)``; bad decays refused."""
    _norm_part_decay_check(levers.LeverRegMuon)
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="norm_part_decay"):
            levers.build_lever_regmuon(MLP(6, 8, 3), {}, {"norm_part_decay": bad})


def test_norm_part_decay_check_catches_its_mutants(levers):
    """Mutants kept as code, each failing :func:`_norm_part_decay_check`: attention not read (a
    ViT decayed), the head not read (a regressor decayed), the matrices decayed instead of the
    AdamW part, the lever frozen."""

    def setting(decay_matrices=False, attention=None, head=True):
        class Mutant(levers.LeverRegMuon):
            def __init__(self, model, **kw):
                super().__init__(model, **kw)
                if attention is not None:
                    self._attention = attention

            def step(self, closure=None):
                pending = self._scale_pending is not None
                out = super().step(closure)
                if (pending and self._scale_pending is None and not self._attention
                        and (self._lr_scale or not head) and decay_matrices):  # fmt: skip
                    for g in self.param_groups:
                        g["weight_decay"] = (self.norm_part_decay if g["algorithm"] == "regmuon"
                                             else 0.0)  # fmt: skip
                return out

        return Mutant

    class HeadBlind(levers.LeverRegMuon):
        def step(self, closure=None):
            pending = self._scale_pending is not None
            out = super().step(closure)
            if pending and self._scale_pending is None and self.norm_part_decay:
                for g in self.param_groups:
                    if g["algorithm"] == "adamw":
                        g["weight_decay"] = self.norm_part_decay
            return out

    class Frozen(levers.LeverRegMuon):
        def __init__(self, model, norm_part_decay=0.0, **kw):
            super().__init__(model, **kw)

    for mutant in (setting(attention=False), HeadBlind, setting(decay_matrices=True), Frozen):
        with pytest.raises(AssertionError):
            _norm_part_decay_check(mutant)


def _fit_part_decay_check(cls):
    """``cls(model, fit_part_decay=[0.5, c])``. With ``c = 1`` (switched on at the first
    observation): the AdamW part's decay 0.5 after one step on a LayerNorm MLP and a batch-norm
    CNN classifier, none on a ViT, a network without normalization or under a regression loss.
    With ``c = 0.2`` on a LayerNorm MLP fitting one batch (its lrs 20x, so it fits in tens of
    steps): the decay is 0 after every step before the first at which the head's weight gradient,
    its squared norm averaged here (β = 0.9, bias-corrected), is at most 0.2 of its peak, and 0.5
    from that step on; the switch comes after the first ten steps and before the 100th."""
    labels, cases = _part_decay_cases()
    for kind, make, x, classify, decays in cases:
        torch.manual_seed(10)
        model = make()
        opt = cls(model, fit_part_decay=[0.5, 1.0])
        z = model(x)
        (nn.functional.cross_entropy(z, labels) if classify else z.square().mean()).backward()
        opt.step()
        part = [g["weight_decay"] for g in opt.param_groups if g["algorithm"] == "adamw"]
        assert part == [0.5 if decays else 0.0] * len(part), (kind, classify)
    torch.manual_seed(10)
    model, x = MLP(6, 16, 3, depth=2, norm=True), cases[0][2]
    opt = cls(model, fit_part_decay=[0.5, 0.2])
    for g in opt.param_groups:
        g["lr"] *= 20
    head = model.head.weight
    v = peak = 0.0
    switched = None
    for k in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), labels).backward()
        v = 0.9 * v + 0.1 * float(head.grad.square().sum())
        peak = max(peak, v / (1 - 0.9 ** (k + 1)))
        if switched is None and math.sqrt(v / (1 - 0.9 ** (k + 1)) / peak) <= 0.2:
            switched = k
        opt.step()
        part = {g["weight_decay"] for g in opt.param_groups if g["algorithm"] == "adamw"}
        assert part == {0.0 if switched is None else 0.5}, k
    assert switched is not None and switched >= 10


def test_fit_part_decay_switches_the_decay_on_once_the_head_is_fitted(levers):
    """``fit_part_decay``: the AdamW part's decay switched on when the head's gradient has fallen
    to ``c`` of its peak, for round 10's class without attention only; bad settings refused."""
    _fit_part_decay_check(levers.LeverRegMuon)
    for bad in ([1.0], [-1.0, 0.1], [1.0, 0.0], [1.0, 1.5], [math.inf, 0.1], [1.0, math.nan]):
        with pytest.raises(ValueError, match="fit_part_decay"):
            levers.build_lever_regmuon(MLP(6, 8, 3), {}, {"fit_part_decay": bad})
    with pytest.raises(ValueError, match="pass one of them"):
        levers.build_lever_regmuon(MLP(6, 8, 3), {}, {"fit_part_decay": [1.0, 0.1],
                                                     "norm_part_decay": 1.0})


def test_fit_part_decay_check_catches_its_mutants(levers):
    """Mutants kept as code, each failing :func:`_fit_part_decay_check`: no bias correction, the
    threshold on the squared ratio, attention not read (a ViT decayed), the lever frozen."""

    class Uncorrected(levers.LeverRegMuon):
        def _observe_head_fall(self):
            super()._observe_head_fall()
            v = self._fit[0]
            peak = max(getattr(self, "_raw_peak", 0.0), v)
            self._raw_peak = peak
            return math.sqrt(v / peak) <= self.fit_part_decay[1]

    class Squared(levers.LeverRegMuon):
        def _observe_head_fall(self):
            super()._observe_head_fall()
            v, peak, t = self._fit
            return v / (1 - levers.FIT_BETA**t) / peak <= self.fit_part_decay[1]

    class AttentionBlind(levers.LeverRegMuon):
        def __init__(self, model, **kw):
            super().__init__(model, **kw)
            self._attention = False

    class Frozen(levers.LeverRegMuon):
        def __init__(self, model, fit_part_decay=None, **kw):
            super().__init__(model, **kw)

    for mutant in (Uncorrected, Squared, AttentionBlind, Frozen):
        with pytest.raises(AssertionError):
            _fit_part_decay_check(mutant)


def test_cautious_decay_only_where_the_step_shrinks_the_weight(levers):
    """W ← W − η(u + λ 1[u ⊙ W ≥ 0] W): the difference from the undecayed step is ``ηλW`` on the
    entries whose step points toward 0, and nothing elsewhere. Mutant caught: the mask inverted."""
    torch.manual_seed(1)
    base = MLP(6, 8, 3)
    grads = [torch.randn_like(p) for p in base.parameters()]
    after = {}
    for wd in (0.0, 0.5):
        model = MLP(6, 8, 3)
        model.load_state_dict(base.state_dict())
        opt = levers.build_lever_regmuon(model, {"lr": 0.05, "tol": None},
                                         {"cautious_wd": wd} if wd else {})  # fmt: skip
        _step(opt, model, grads)
        after[wd] = model.layers[1].weight.detach().clone()
    w0 = base.layers[1].weight.detach()
    u = -(after[0.0] - w0)  # the undecayed step is -η u
    mask = u * w0 >= 0
    assert 0 < int(mask.sum()) < mask.numel()
    torch.testing.assert_close(after[0.5], after[0.0] - 0.05 * 0.5 * w0 * mask)
    with pytest.raises(ValueError, match="replaces weight_decay"):
        levers.LeverRegMuon(base, cautious_wd=0.1, weight_decay=0.1)


def test_input_rho_changes_only_the_input_layers_step(levers):
    """The input layer ``Linear(4, 64)`` gets ρ = √(64/4) = 4 under ``original``: ``"one"``
    divides its first step by 4, ``"sqrt"`` by 2, and every other parameter's step (a hidden
    ``Linear(64, 256)``'s too, ρ = 2) is unchanged; ``"one_regression"`` is RegMuon's step
    exactly under a softmax head and ``"one"``'s under a regression head. Mutants caught: ρ
    left as it was, every matrix's ρ changed, ``"one_regression"`` blind to the head."""
    torch.manual_seed(3)
    x, labels, target = torch.randn(32, 4), torch.randint(0, 3, (32,)), torch.randn(32)
    def net(outputs):
        return nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 256), nn.ReLU(),
                             nn.Linear(256, outputs))  # fmt: skip

    bases = {3: net(3), 1: net(1)}

    def first_step(outputs, lever):
        model = net(outputs)
        model.load_state_dict(bases[outputs].state_dict())
        opt = levers.build_lever_regmuon(model, {"tol": None, "weight_decay": 0.0},
                                         {"input_rho": lever} if lever else {})  # fmt: skip
        z = model(x)
        loss = (nn.functional.cross_entropy(z, labels) if outputs > 1
                else nn.functional.mse_loss(z.squeeze(-1), target))  # fmt: skip
        loss.backward()
        opt.step()
        pairs = zip(model.named_parameters(), bases[outputs].parameters(), strict=True)
        return {n: (p - q).detach() for (n, p), q in pairs}

    for outputs in (3, 1):
        plain = first_step(outputs, None)
        expect = {"one": 4.0, "sqrt": 2.0,
                  "one_regression": 4.0 if outputs == 1 else 1.0}  # fmt: skip
        for lever, factor in expect.items():
            got = first_step(outputs, lever)
            for name, d in plain.items():
                want = d / factor if name == "0.weight" else d
                torch.testing.assert_close(got[name], want, msg=f"{lever} {outputs} {name}")
    with pytest.raises(ValueError, match="input_rho must be one of"):
        levers.LeverRegMuon(bases[3], input_rho="half")


def test_guard_resets_momentum_after_an_uphill_step(levers):
    """Gradient g, then −g: the first step went uphill for the second gradient
    (⟨−g, −η∇K(g)⟩ > 0), so the guarded momentum restarts from −g (sum form) while the plain one
    is βg − g. A downhill second step (g again) keeps the momentum. Mutant caught: the sign of
    the test flipped."""
    torch.manual_seed(2)
    base = MLP(6, 8, 3)
    grads = [torch.randn_like(p) for p in base.parameters()]
    for second, reset in ((-1.0, True), (1.0, False)):
        model = MLP(6, 8, 3)
        model.load_state_dict(base.state_dict())
        opt = levers.build_lever_regmuon(model, {"lr": 0.05, "momentum": 0.9}, {"guard": True})
        _step(opt, model, grads)
        _step(opt, model, [second * g for g in grads])
        buf = opt.state[model.layers[1].weight]["momentum_buffer"]
        g = grads[2]  # layers.1.weight
        expected = second * g if reset else 0.9 * g + second * g
        torch.testing.assert_close(buf, expected)
    assert isinstance(opt, RegMuon)
    # graded (guard=κ): the momentum is damped by 1 − κc, c the cosine of −g and the step
    model = MLP(6, 8, 3)
    model.load_state_dict(base.state_dict())
    opt = levers.build_lever_regmuon(model, {"lr": 0.05, "momentum": 0.9}, {"guard": 0.5})
    w0 = model.layers[1].weight.detach().clone()
    _step(opt, model, grads)
    d = model.layers[1].weight.detach() - w0
    c = float((-grads[2] * d).sum() / (grads[2].norm() * d.norm()))
    assert 0 < 0.5 * c < 1  # a partial damping
    _step(opt, model, [-g for g in grads])
    buf = opt.state[model.layers[1].weight]["momentum_buffer"]
    torch.testing.assert_close(buf, 0.9 * (1 - 0.5 * c) * grads[2] - grads[2])
    with pytest.raises(ValueError, match="unknown levers"):
        levers.build_lever_regmuon(base, {}, {"magic": True})


#: Every set of the benchmark in the order it was committed (each later one new to all before it;
#: round 40's is four models of ROUND34's, and rounds 42 and 43 tested on earlier sets).
SETS = ("SUITE", "TRANSFER", *(f"ROUND{i}" for i in range(3, 45) if i not in (40, 42, 43)))


@pytest.mark.parametrize("profile, name, earlier",
                         [(n.lower(), n, SETS[:i]) for i, n in enumerate(SETS) if i])
def test_each_held_out_set_is_new_models_all_held_out(bench, profile, name, earlier):
    """Every task of a later held-out set is held out, none is a task of an earlier set (a new
    configuration of one of their builders), and each builds. Mutant caught: an earlier task
    reused in a later set."""
    from muonflow.training import make_task

    tasks = getattr(bench, name)
    assert bench.PROFILES[profile].split() == {"tuning": [], "held_out": sorted(tasks)}

    def key(t):
        return t.builder, json.dumps(t.options, sort_keys=True), t.steps, t.schedule

    seen = {key(t) for e in earlier for t in getattr(bench, e).values()}
    names = {n for e in earlier for n in getattr(bench, e)}
    for task, t in tasks.items():
        assert task not in names and key(t) not in seen, task
        assert make_task(t.builder, **t.options).make_model() is not None


def test_lr_stage_runs_each_candidate_at_the_head_decay(bench, tmp_path):
    """Each candidate of LR_CANDIDATES runs on LR_SEEDS at the decay RegMuon(model) would give
    the model (2 for the classifier's softmax head, 0 for the regressor), and the table has a
    ratio per candidate, a worst row and a mean-log row. Mutants caught: the decay by head
    skipped (the regressor decayed), one lr for every candidate (every column equal)."""
    out = tmp_path / "lr"
    args = ["--profile", "smoke", "--out", str(out), "--jobs", "1"]
    assert bench.main([*args, "--stage", "baselines"]) == 0
    assert bench.main([*args, "--resume", "--stage", "lr", "--tasks",
                       "digits_tiny,friedman_tiny"]) == 0  # fmt: skip
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.strip("|").split("|")[1:]]
            for ln in (out / "lr.md").read_text().splitlines()[2:]}  # fmt: skip
    assert rows["digits_tiny"][0] == "2" and rows["friedman_tiny"][0] == "0"
    assert len(rows["digits_tiny"]) == 1 + len(bench.LR_CANDIDATES)
    assert len(set(rows["digits_tiny"][1:])) > 1 and "worst" in rows and "mean log ratio" in rows
    runs = json.loads((out / "results.json").read_text())["runs"].values()
    lr_runs = [r["spec"] for r in runs if r["spec"]["seed"] in bench.LR_SEEDS
               and r["spec"]["opt"].get("arm") == "regmuon"
               and r["spec"]["opt"]["options"].get("adamw_weight_decay") == 0.0]  # fmt: skip
    assert len(lr_runs) == 2 * len(bench.LR_CANDIDATES) * len(bench.LR_SEEDS)


def test_input_stage_runs_each_candidate_and_only_the_regression_one_follows_the_head(
    bench, tmp_path
):
    """Each candidate of INPUT_CANDIDATES runs on LR_SEEDS; under the classifier's softmax head
    "ρ 1 under a regression head" is RegMuon(model) exactly (same ratio; its input layer
    ``Linear(64, 16)`` has ρ = 1 anyway), under the regressor's (``Linear(10, 16)``, ρ = 1.26)
    it is "ρ 1" exactly, and that differs from today's. Mutants caught: the lever's head test
    inverted (the regressor's column is today's), the lever ignored (every column equal)."""
    out = tmp_path / "input"
    args = ["--profile", "smoke", "--out", str(out), "--jobs", "1"]
    assert bench.main([*args, "--stage", "baselines"]) == 0
    assert bench.main([*args, "--resume", "--stage", "input", "--tasks",
                       "digits_tiny,friedman_tiny"]) == 0  # fmt: skip
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.strip("|").split("|")[1:]]
            for ln in (out / "input.md").read_text().splitlines()[2:]}  # fmt: skip
    today, one, _, one_reg = rows["digits_tiny"][1:]
    assert one_reg == today == one
    today, one, _, one_reg = rows["friedman_tiny"][1:]
    assert one_reg == one != today
    assert "worst" in rows and "mean log ratio" in rows
    runs = json.loads((out / "results.json").read_text())["runs"].values()
    lever_runs = [r for r in runs if r["spec"]["opt"]["arm"] == "default_lever"]
    assert len(lever_runs) == 2 * 3 * len(bench.LR_SEEDS)


def test_final_stage_on_some_tasks_runs_and_reports_only_those(bench, tmp_path):
    """``--stage final --tasks``: every final arm on the evaluation seeds of those tasks and no
    other, and the analysis covers just them. Mutant caught: ``--tasks`` ignored (every task's
    arms run)."""
    out = tmp_path / "final"
    args = ["--profile", "smoke", "--out", str(out), "--jobs", "1"]
    assert bench.main([*args, "--stage", "baselines"]) == 0
    assert bench.main([*args, "--resume", "--stage", "final", "--tasks", "friedman_tiny"]) == 0
    runs = json.loads((out / "results.json").read_text())["runs"].values()
    final = {r["spec"]["task"] for r in runs if r["spec"]["seed"] in bench.PROFILES["smoke"]
             .eval_seeds}  # fmt: skip
    assert final == {"friedman_tiny"}
    assert set(json.loads((out / "analysis.json").read_text())["final"]) == {"friedman_tiny"}


def test_decay_stage_runs_its_grid_and_tabulates_it(bench, tmp_path):
    """Every λ of the grid runs on the tuning seeds with the other defaults, and the table has
    one value per λ. Mutant caught: the decay not passed to the runs (every λ's value equal)."""
    out = tmp_path / "decay"
    assert bench.main(["--profile", "smoke", "--out", str(out), "--stage", "decay",
                       "--tasks", "digits_tiny"]) == 0  # fmt: skip
    row = [ln for ln in (out / "decay.md").read_text().splitlines() if ln.startswith("| digits")]
    values = [c.strip() for c in row[0].strip("|").split("|")[1:]]
    assert len(values) == len(bench.DECAYS) and "—" not in values
    assert len(set(values)) > 1


def test_grid_index_round_trips_every_stored_lr(bench):
    """``k_of(lr_of(k)) == k`` down to the small lrs a bracketed sweep can reach (a regressor's
    tuned Muon went to 0.01·2⁻⁹, stored as 1.95313e-05), and an lr off the grid is refused.
    Mutant caught: the exact-float tolerance (1e-9) that refused 1.95313e-05."""
    for k in range(-30, 11):
        assert bench.k_of(bench.lr_of(k)) == k
    with pytest.raises(ValueError, match="not on the grid"):
        bench.k_of(0.015)


def test_softmax_head_variant_applies_under_a_softmax_head_only(bench):
    """``{"softmax_head": {...}}`` (round 10's candidate) is ``RegMuon(model, **options)`` on a
    classifier and the default arm's own run on a regressor, the head read from the output
    layer's first gradient. Mutants caught: the head test always true (the regressor gets the
    options), always false (the classifiers keep the default)."""
    pytest.importorskip("transformers")
    but = bench.OPTIONAL_VARIANTS["norm_step_softmax"]
    heads = {("round10", t): True for t in bench.ROUND10}
    heads.update({("round9", "friedman_ln"): False, ("round8", "diabetes_ln"): False,
                  ("round9", "cancer_ln"): True})  # fmt: skip
    for (profile, task), softmax in heads.items():
        prof = bench.PROFILES[profile]
        assert bench.softmax_headed(prof, task) is softmax, task
        opt = bench._variant_opt(but, "core", prof, task)
        expected = ({"arm": "default_but", "but": but["softmax_head"], "core": "core"} if softmax
                    else {"arm": "default", "core": "core"})  # fmt: skip
        assert opt == expected, task


def _run_stage(bench, tmp_path, stage: str, task: str) -> list[dict]:
    """Run the smoke profile's baselines and the candidate ``stage`` on ``task``; check its
    table (one column per candidate, one row for the task, the worst and the mean log ratio)
    and return the stored runs on LR_SEEDS."""
    out = tmp_path / stage
    args = ["--profile", "smoke", "--out", str(out), "--jobs", "1"]
    assert bench.main([*args, "--stage", "baselines"]) == 0
    assert bench.main([*args, "--resume", "--stage", stage, "--tasks", task]) == 0
    rows = (out / f"{stage}.md").read_text().splitlines()
    assert rows[0].count("|") == len(bench.CANDIDATE_STAGES[stage]) + 3 and len(rows) == 5
    return [r for r in json.loads((out / "results.json").read_text())["runs"].values()
            if r["spec"]["seed"] in bench.LR_SEEDS]  # fmt: skip


def test_fade_stage_runs_todays_defaults_and_the_peak_eps(bench, tmp_path):
    """FADE_CANDIDATES on LR_SEEDS: ``RegMuon(model)`` as the final stage runs it (the same
    spec, core included) and ``RegMuon(model)`` with the peak ε at each scale, each changing the
    result. Mutants caught: the lever dropped (every candidate equal to the defaults), the
    defaults run without the core's fingerprint (a change of the core would not rerun them)."""
    runs = [r for r in _run_stage(bench, tmp_path, "fade", "digits_tiny")
            if r["spec"]["opt"]["arm"] in ("default", "default_lever")]  # fmt: skip
    out = tmp_path / "fade"
    stored = [r["spec"] for r in runs]
    default = bench.final_opts(bench.load_baselines(bench.PROFILES["smoke"], out),
                               "digits_tiny")["default"]  # fmt: skip
    assert sum(s["opt"] == default for s in stored) == len(bench.LR_SEEDS)
    scales = sorted(s["opt"]["levers"]["eps_adapt"]["scale"] for s in stored
                    if s["opt"]["arm"] == "default_lever"
                    and s["opt"]["levers"]["eps_adapt"]["peak"] is True)  # fmt: skip
    assert scales == sorted([0.1, 0.3, 1.0] * len(bench.LR_SEEDS))
    per: dict[str, list[float]] = {}
    for r in runs:
        per.setdefault(json.dumps(r["spec"]["opt"], sort_keys=True), []).append(r["val_loss"])
    means = {sum(v) / len(v) for v in per.values()}
    assert len(per) == len(means) == len(bench.FADE_CANDIDATES)


def test_normdecay_stage_runs_each_decay_on_round_10s_step(bench, tmp_path):
    """Each candidate of NORM_DECAY_CANDIDATES runs on LR_SEEDS at round 10's step (matrix lr
    0.005, AdamW part 0.0025) with its decays, and each decay changes the result — but on the
    smoke suite's MLP (no normalization, a softmax head) the candidate without decays is decay
    2 exactly: the decay by structure. Mutants caught: the decays dropped (every candidate
    equal), the step not passed (the runs use the library's lrs)."""
    out = tmp_path / "normdecay"
    args = ["--profile", "smoke", "--out", str(out), "--jobs", "1"]
    assert bench.main([*args, "--stage", "baselines"]) == 0
    assert bench.main([*args, "--resume", "--stage", "normdecay", "--tasks", "digits_tiny"]) == 0
    rows = (out / "normdecay.md").read_text().splitlines()
    assert rows[2].startswith("| digits_tiny | 2 |") and len(rows) == 5
    store = bench.Store(out / "results.json", "smoke")
    prof = bench.PROFILES["smoke"]
    vals = {c: bench.score(store, [bench.make_spec(prof, "digits_tiny", s, o)
                                   for s in bench.LR_SEEDS])
            for c, o in bench.NORM_DECAY_CANDIDATES.items()}  # fmt: skip
    assert vals["round 10's step"] == vals["decay 2"]
    others = [v for c, v in vals.items() if c != "decay 2"]
    assert None not in others and len(set(others)) == len(others)
    stored = json.loads((out / "results.json").read_text())["runs"].values()
    runs = [r["spec"]["opt"] for r in stored if r["spec"]["seed"] in bench.LR_SEEDS
            and r["spec"]["opt"].get("arm") == "default_but"]  # fmt: skip
    assert len(runs) == len(bench.NORM_DECAY_CANDIDATES) * len(bench.LR_SEEDS)
    assert all(o["but"]["lr"] == 0.005 and o["but"]["adamw_lr"] == 0.0025 for o in runs)


def test_part_decay_variant_skips_models_with_attention(bench):
    """Round 11's candidate (``norm_part_decay``) is its options on a classifier without an
    attention layer and the default arm's run on a ViT or a regressor. Mutants caught: the
    attention test ignored (the ViTs get the decay), always true (nothing does)."""
    pytest.importorskip("transformers")
    but = bench.OPTIONAL_VARIANTS["norm_part_decay"]
    prof = bench.PROFILES["round11"]
    for task in bench.ROUND11:
        vit = task.startswith("vit")
        assert bench.has_attention(prof, task) is vit, task
        opt = bench._variant_opt(but, "core", prof, task)
        assert opt == ({"arm": "default", "core": "core"} if vit else
                       {"arm": "default_but", "but": but["softmax_head"], "core": "core"}), task
    regressor = bench._variant_opt(but, "core", bench.PROFILES["round9"], "friedman_ln")
    assert regressor == {"arm": "default", "core": "core"}


def test_warmup_stage_and_round_12s_variant(bench, tmp_path):
    """WARMUP_CANDIDATES on LR_SEEDS: the ``warmup_lr`` lever at 1 (``RegMuon(model)`` before
    round 12) and at each factor; round 12's variant is that lever at 2 for a model with an
    embedding or recurrent layer and ``RegMuon(model)`` (the default arm's run) for the others.
    Mutants caught: the lever dropped from a candidate, the variant's condition inverted or
    dropped (a classifier MLP given the lever)."""
    stored = [r["spec"]["opt"] for r in _run_stage(bench, tmp_path, "warmup", "llama_tiny")]
    factors = sorted(o["levers"]["warmup_lr"] for o in stored if o["arm"] == "default_lever")
    assert factors == sorted([1.0, 1.5, 2.0, 3.0] * len(bench.LR_SEEDS))
    prof, but = bench.PROFILES["round12"], bench.OPTIONAL_VARIANTS["warmup_lr2_sequence"]
    for task in bench.ROUND12:
        opt = bench._variant_opt(but, "core", prof, task)
        sequence = prof.suite[task].builder in ("gpt2", "llama", "rnn", "sort", "moe")
        assert (opt["arm"], opt.get("levers")) == (
            ("default_lever", {"warmup_lr": 2.0}) if sequence else ("default", None)), task
    assert {t.schedule for t in bench.ROUND12.values()} == {"linear", "cosine"}
    assert all(t.warmup > 0 for t in bench.ROUND12.values())


def test_regpart_stage_runs_todays_defaults_and_each_lr_pair(bench, tmp_path):
    """REGRESSION_PART_CANDIDATES on LR_SEEDS: ``RegMuon(model)`` as the final stage runs it and
    ``RegMuon(model, lr=..., adamw_lr=...)`` at each pair of the grid, each changing the result on
    a regressor. Mutants caught: the AdamW part's lr dropped from the candidates (the pairs of
    one matrix lr equal), the grid holding today's pair twice (two equal columns)."""
    runs = [r for r in _run_stage(bench, tmp_path, "regpart", "friedman_tiny")
            if r["spec"]["opt"]["arm"] in ("default", "default_but")]  # fmt: skip
    pairs = sorted((o["but"]["lr"], o["but"]["adamw_lr"]) for o in
                   (r["spec"]["opt"] for r in runs) if o["arm"] == "default_but")  # fmt: skip
    grid = [(lr, p) for lr in (0.02, 0.01, 0.005) for p in (0.04, 0.08, 0.16, 0.32, 0.64)
            if (lr, p) != (0.02, 0.04)]  # fmt: skip
    assert pairs == sorted(grid * len(bench.LR_SEEDS))
    per: dict[str, list[float]] = {}
    for r in runs:
        per.setdefault(json.dumps(r["spec"]["opt"], sort_keys=True), []).append(r["val_loss"])
    means = {sum(v) / len(v) for v in per.values()}
    assert len(per) == len(means) == len(bench.REGRESSION_PART_CANDIDATES)


#: A ViT small enough for a stage's check on the smoke profile.
TINY_VIT = {"d_model": 16, "n_layers": 1, "n_heads": 2, "batch": 16}


def _held_out_in_smoke(bench, monkeypatch, name: str, task) -> None:
    """The smoke profile with ``task`` added as a held-out task ``name`` (for a stage's check on a
    kind of model the smoke profile lacks)."""
    smoke = bench.PROFILES["smoke"]
    split = smoke.split()
    monkeypatch.setitem(bench.PROFILES, "smoke", dataclasses.replace(
        smoke, suite={**smoke.suite, name: task},
        split=lambda: {**split, "held_out": [*split["held_out"], name]}))


def _decay_stage_check(bench, tmp_path, stage: str, lever: str, grid: list[float],
                       task: str = "friedman_tiny") -> None:  # fmt: skip
    """A one-lever stage's candidates on LR_SEEDS: ``RegMuon(model)`` as the final stage runs it
    and the prototype ``lever`` at each setting of ``grid``, each changing the result on ``task``
    (a regressor unless given)."""
    runs = _run_stage(bench, tmp_path, stage, task)
    decays = sorted(r["spec"]["opt"]["levers"][lever] for r in runs
                    if r["spec"]["opt"]["arm"] == "default_lever")  # fmt: skip
    assert decays == sorted(grid * len(bench.LR_SEEDS))
    per: dict[str, list[float]] = {}
    for r in runs:
        if r["spec"]["opt"]["arm"] in ("default", "default_lever"):
            per.setdefault(json.dumps(r["spec"]["opt"], sort_keys=True), []).append(r["val_loss"])
    means = {sum(v) / len(v) for v in per.values()}
    assert len(per) == len(means) == len(bench.CANDIDATE_STAGES[stage])


def test_regdecay_stage_runs_todays_defaults_and_each_decay(bench, tmp_path):
    """REGRESSION_DECAY_CANDIDATES: the ``regression_decay`` lever at 0.125-2. Mutants caught:
    the lever frozen (every decay's column equal to today's), a decay of 0 in the grid (the
    stored decays differ)."""
    _decay_stage_check(bench, tmp_path, "regdecay", "regression_decay",
                       [0.125, 0.25, 0.5, 1.0, 2.0])


def test_regcautious_stage_runs_todays_defaults_and_each_decay(bench, tmp_path):
    """REGRESSION_CAUTIOUS_CANDIDATES: the ``regression_cautious`` lever at 0.25-4. Mutants
    caught: the lever frozen (every column equal to today's), the plain decay's lever in its
    place (the stored levers differ)."""
    _decay_stage_check(bench, tmp_path, "regcautious", "regression_cautious",
                       [0.25, 0.5, 1.0, 2.0, 4.0])


def test_regnoise_stage_runs_todays_defaults_and_each_exponent(bench, tmp_path):
    """REGRESSION_NOISE_CANDIDATES: the ``regression_noise`` lever at 0.125-2. Mutants caught:
    the lever frozen (every column equal to today's), another lever in its place (the stored
    levers differ)."""
    _decay_stage_check(bench, tmp_path, "regnoise", "regression_noise",
                       [0.125, 0.25, 0.5, 1.0, 2.0])


def test_normnoise_stage_runs_todays_defaults_and_each_exponent(bench, tmp_path, monkeypatch):
    """NORM_NOISE_CANDIDATES: the ``softmax_noise`` lever at 0.125-2, each changing a normalized
    classifier's result (the smoke profile with a tiny LayerNorm digits MLP held out). Mutants
    caught: the lever frozen (every column equal to today's), another lever in its place (the
    stored levers differ)."""
    tiny = bench.SuiteTask("digits", "tabular", 6, "linear",
                           {"hidden": 16, "batch": 16, "norm": True})  # fmt: skip
    _held_out_in_smoke(bench, monkeypatch, "digits_ln_tiny", tiny)
    _decay_stage_check(bench, tmp_path, "normnoise", "softmax_noise",
                       [0.125, 0.25, 0.5, 1.0, 2.0], task="digits_ln_tiny")


def test_round21_is_the_class_the_softmax_noise_lever_reads(bench):
    """Every model of ROUND21 has normalization, no embedding or recurrent layer, a first
    matrix layer reading raw inputs, and a softmax head: the class of round 10's lrs by structure
    (the one ``softmax_noise`` changes). Mutant caught: a set with a regressor in it."""
    from muonflow.optim import lr_by_structure
    from muonflow.training import make_task

    prof = bench.PROFILES["round21"]
    for task, t in bench.ROUND21.items():
        assert lr_by_structure(make_task(t.builder, **t.options).make_model())[0], task
        assert bench.softmax_headed(prof, task), task
    assert {t.warmup > 0 for t in bench.ROUND21.values()} == {True, False}


def test_vitlr_stage_runs_todays_defaults_and_each_factor(bench, tmp_path, monkeypatch):
    """VIT_LR_CANDIDATES: the ``attention_lr`` lever at 1.5-4, each changing a ViT's result (the
    smoke profile with a tiny ViT held out). Mutants caught: the lever frozen (every column equal
    to today's), another lever in its place (the stored levers differ)."""
    _held_out_in_smoke(bench, monkeypatch, "vit_tiny",
                       bench.SuiteTask("vit", "vision", 6, "linear", TINY_VIT))
    _decay_stage_check(bench, tmp_path, "vitlr", "attention_lr", [1.5, 2.0, 3.0, 4.0],
                       task="vit_tiny")


def test_vitsplit_stage_runs_todays_defaults_and_each_pair(bench, tmp_path, monkeypatch):
    """VIT_SPLIT_CANDIDATES: the ``attention_split`` lever at five pairs, each changing a ViT's
    result (the smoke profile with a tiny ViT held out). Mutants caught: the lever frozen (every
    column equal to today's), another lever in its place (the stored levers differ)."""
    _held_out_in_smoke(bench, monkeypatch, "vit_tiny",
                       bench.SuiteTask("vit", "vision", 6, "linear", TINY_VIT))
    _decay_stage_check(bench, tmp_path, "vitsplit", "attention_split",
                       [[1.0, 3.0], [2.0, 3.0], [1.0, 8.0], [2.0, 8.0], [3.0, 8.0]],
                       task="vit_tiny")


def test_round23_is_vits_of_both_schedules_and_patch_sizes(bench):
    """Every model of ROUND23 is a ViT of round 10's class (normalization, a first matrix layer
    reading raw inputs, a softmax head) with an attention layer, under both schedule regimes,
    with 4x4 and 2x2 patches under a warm-up. Mutant caught: a set without a 4x4-patch ViT under
    a warm-up."""
    from muonflow.optim import lr_by_structure
    from muonflow.optim.routing import attention_layer
    from muonflow.training import make_task

    prof = bench.PROFILES["round23"]
    for task, t in bench.ROUND23.items():
        model = make_task(t.builder, **t.options).make_model()
        assert lr_by_structure(model)[0] and attention_layer(model) is not None, task
        assert bench.softmax_headed(prof, task), task
    warm = {t.options.get("patch", 2) for t in bench.ROUND23.values() if t.warmup}
    assert warm == {2, 4}
    assert {t.warmup > 0 for t in bench.ROUND23.values()} == {True, False}


def test_vittokens_stage_runs_todays_defaults_and_each_factor(bench, tmp_path, monkeypatch):
    """VIT_TOKENS_CANDIDATES: the ``few_tokens`` lever at 0.5-2 on a tiny 4x4-patch ViT under a
    warm-up (five tokens: the lever applies in place of the library's factor), each changing its
    result but ``g = 2``, the library's own factor there since round 25 (its runs equal today's).
    Mutants caught: the lever frozen (every column equal to today's), another lever in its place
    (the stored levers differ), the library's few-tokens rule lost (``g = 2`` differs)."""
    _held_out_in_smoke(bench, monkeypatch, "vit_p4_tiny",
                       bench.SuiteTask("vit", "vision", 40, "linear", {**TINY_VIT, "patch": 4}))
    runs = _run_stage(bench, tmp_path, "vittokens", "vit_p4_tiny")
    per: dict[str, list[float]] = {}
    for r in runs:
        opt = r["spec"]["opt"]
        if opt["arm"] in ("default", "default_lever"):
            key = "today" if opt["arm"] == "default" else f"{opt['levers']['few_tokens']:g}"
            per.setdefault(key, []).append(r["val_loss"])
    assert sorted(per) == ["0.5", "1", "2", "today"]
    assert all(len(v) == len(bench.LR_SEEDS) for v in per.values())
    assert per["2"] == per["today"]
    assert len({tuple(per[k]) for k in ("0.5", "1", "today")}) == 3


@pytest.mark.parametrize("profile", ["round24", "round25"])
def test_round24_is_4x4_patch_vits_of_both_schedules(bench, profile):
    """Every model of ROUND24 (and of ROUND25, its candidate's replication) is a ViT of round 10's
    class whose attention reads five tokens (at most ``FEW_TOKENS``: the models the
    ``few_tokens`` lever changes), under both schedule regimes. Mutant caught: a 2x2-patch ViT in
    the set (17 tokens)."""
    from muonflow.optim import lr_by_structure
    from muonflow.optim.routing import FirstTokens, attention_layer
    from muonflow.training import make_task

    levers = sys.modules["regmuon_levers"]
    prof = bench.PROFILES[profile]
    tasks = getattr(bench, profile.upper())
    for task, t in tasks.items():
        built = make_task(t.builder, **t.options)
        model = built.make_model()
        assert lr_by_structure(model)[0] and bench.softmax_headed(prof, task), task
        seen: list[int] = []
        FirstTokens(model.get_submodule(attention_layer(model)), seen.append)
        model(pixel_values=torch.zeros(2, 1, 8, 8))
        assert seen[0] == 5 <= levers.FEW_TOKENS, task
    assert sorted(t.warmup > 0 for t in tasks.values()) == [False] * 3 + [True] * 3


def test_fewrows_stage_runs_todays_defaults_and_each_factor(bench, tmp_path, monkeypatch):
    """FEW_ROWS_CANDIDATES: the ``few_rows`` lever at 1/2-1/64 on a tiny diabetes MLP (265 rows,
    found small within its 40 steps), each changing its result; on the smoke profile's Friedman
    MLP (2000 rows) every factor's runs equal today's. Mutants caught: the lever frozen (every
    column equal to today's), another lever in its place (the stored levers differ), the table's
    size ignored (the Friedman MLP's columns differ)."""
    _held_out_in_smoke(bench, monkeypatch, "diabetes_tiny", bench.SuiteTask(
        "tabular", "tabular", 40, "linear", {"dataset": "diabetes", "hidden": 16, "batch": 16}))
    grid = ["0.015625", "0.03125", "0.0625", "0.125", "0.25", "0.5"]
    for task, changes in (("diabetes_tiny", True), ("friedman_tiny", False)):
        per = _lever_columns(bench, tmp_path / task, "fewrows", task, "few_rows")
        assert sorted(per) == [*grid, "today"]
        assert all(len(v) == len(bench.LR_SEEDS) for v in per.values())
        distinct = len({tuple(v) for v in per.values()})
        assert distinct == (len(grid) + 1 if changes else 1), task


def test_round26_is_regressors_reading_small_tables(bench):
    """Every model of ROUND26 is a regressor (no softmax head) without an embedding or recurrent
    layer whose input layer reads a small table (``few_rows`` finds at most ``FEW_ROWS`` rows:
    the models the lever changes), diabetes and Friedman ones, under both schedule regimes.
    Mutant caught: a Friedman MLP on its full 2000 rows in the set."""
    from muonflow.optim import input_layer
    from muonflow.training import make_task

    levers = sys.modules["regmuon_levers"]
    prof = bench.PROFILES["round26"]
    for task, t in bench.ROUND26.items():
        built = make_task(t.builder, **t.options)
        model = built.make_model()
        assert not bench.softmax_headed(prof, task), task
        rows = levers.RowCount(model.get_submodule(input_layer(model)))
        gen = torch.Generator().manual_seed(0)
        while rows.small is None:
            built.train_loss(model, gen)
        assert rows.small and rows.table <= levers.FEW_ROWS, task
    assert {t.builder for t in bench.ROUND26.values()} == {"tabular", "friedman"}
    assert {t.warmup > 0 for t in bench.ROUND26.values()} == {True, False}


def test_normmlp_stage_runs_todays_defaults_and_each_pair(bench, tmp_path, monkeypatch):
    """NORM_MLP_CANDIDATES: the ``mlp_split`` lever at eight pairs on a tiny LayerNorm digits MLP
    under a constant lr (the smoke profile with it held out), each changing its result but
    ``[0.5, 0.5]``, the library's own factor there since round 28 (its runs equal today's).
    Mutants caught: the lever frozen (every column equal to today's), another lever in its place
    (the stored levers differ), the library's rule lost (``[0.5, 0.5]`` differs)."""
    tiny = bench.SuiteTask("digits", "tabular", 6, "constant",
                           {"hidden": 16, "batch": 16, "norm": True})  # fmt: skip
    _held_out_in_smoke(bench, monkeypatch, "digits_ln_tiny", tiny)
    per: dict[str, list[float]] = {}
    for r in _run_stage(bench, tmp_path, "normmlp", "digits_ln_tiny"):
        opt = r["spec"]["opt"]
        if opt["arm"] in ("default", "default_lever"):
            key = "today" if opt["arm"] == "default" else "x".join(
                f"{v:g}" for v in opt["levers"]["mlp_split"])
            per.setdefault(key, []).append(r["val_loss"])
    assert sorted(per) == sorted(["today", "0.5x0.5", "1x4", "2x1", "2x2", "4x1", "4x4", "8x1",
                                  "8x4"])  # fmt: skip
    assert all(len(v) == len(bench.LR_SEEDS) for v in per.values())
    assert per["0.5x0.5"] == per["today"]
    assert len({tuple(v) for k, v in per.items() if k != "0.5x0.5"}) == 8


def test_mlpsmall_stage_runs_todays_defaults_and_each_pair(bench, tmp_path, monkeypatch):
    """MLP_SMALL_CANDIDATES: the ``mlp_split`` lever at four pairs below round 28's ``[0.5, 0.5]``
    on a tiny LayerNorm digits MLP under a constant lr (the smoke profile with it held out), each
    changing its result and differing from the others; on the smoke profile's Friedman MLP (a
    regressor) every column equals today's. Mutants caught: the lever frozen (every column
    today's), round 28's own pair among the candidates (a column equal to today's)."""
    tiny = bench.SuiteTask("digits", "tabular", 6, "constant",
                           {"hidden": 16, "batch": 16, "norm": True})  # fmt: skip
    _held_out_in_smoke(bench, monkeypatch, "digits_ln_tiny", tiny)
    for task, same in (("digits_ln_tiny", False), ("friedman_tiny", True)):
        per = _lever_columns(bench, tmp_path / task, "mlpsmall", task, "mlp_split")
        assert sorted(per) == ["0.125x0.125", "0.25x0.25", "0.25x0.5", "0.5x0.25", "today"]
        assert all(len(v) == len(bench.LR_SEEDS) for v in per.values())
        assert len({tuple(v) for v in per.values()}) == (1 if same else 5), task


def test_vitdecay_stage_runs_todays_defaults_and_each_decay(bench, tmp_path, monkeypatch):
    """VIT_DECAY_CANDIDATES: the ``vit_decay`` lever at 0.25, 0.5 and 1 on a tiny ViT under a
    constant lr (the smoke profile with it held out), each changing its result and differing from
    the others; on the smoke profile's Friedman MLP (a regressor) every column equals today's.
    Mutants caught: the lever frozen (every column today's), another lever in its place (the stored
    settings differ)."""
    _held_out_in_smoke(bench, monkeypatch, "vit_tiny", bench.SuiteTask(
        "vit", "vision", 6, "constant", {"d_model": 16, "n_layers": 1, "n_heads": 2, "batch": 16}))
    for task, same in (("vit_tiny", False), ("friedman_tiny", True)):
        per = _lever_columns(bench, tmp_path / task, "vitdecay", task, "vit_decay")
        assert sorted(per) == ["0.25", "0.5", "1", "today"]
        assert all(len(v) == len(bench.LR_SEEDS) for v in per.values())
        assert len({tuple(v) for v in per.values()}) == (1 if same else 4), task


def test_mlpbeta_stage_runs_todays_defaults_and_each_beta2(bench, tmp_path, monkeypatch):
    """MLP_BETA_CANDIDATES: the ``mlp_beta2`` lever at 0.99 and 0.999 on a tiny LayerNorm digits
    MLP under a constant lr (the smoke profile with it held out), each changing its result and
    differing from the other; on the smoke profile's Friedman MLP (no normalization) every column
    equals today's. Mutants caught: the lever frozen (every column today's), another lever in its
    place (the stored settings differ)."""
    tiny = bench.SuiteTask("digits", "tabular", 6, "constant",
                           {"hidden": 16, "batch": 16, "norm": True})  # fmt: skip
    _held_out_in_smoke(bench, monkeypatch, "digits_ln_tiny", tiny)
    for task, same in (("digits_ln_tiny", False), ("friedman_tiny", True)):
        per = _lever_columns(bench, tmp_path / task, "mlpbeta", task, "mlp_beta2")
        assert sorted(per) == ["0.99", "0.999", "today"]
        assert all(len(v) == len(bench.LR_SEEDS) for v in per.values())
        assert len({tuple(v) for v in per.values()}) == (1 if same else 3), task


def test_normwd_stage_runs_todays_defaults_and_each_decay(bench, tmp_path, monkeypatch):
    """NORM_PART_DECAY_CANDIDATES: the ``norm_part_decay`` lever at 0.25-4 on a tiny LayerNorm
    digits MLP under a constant lr (the smoke profile with it held out), each changing its
    result; on the smoke profile's Friedman MLP (a regressor) every decay's runs equal today's.
    Mutants caught: the lever frozen (every column equal to today's), another lever in its place
    (the stored levers differ), the head ignored (the Friedman MLP's columns differ)."""
    _held_out_in_smoke(bench, monkeypatch, "digits_ln_tiny", bench.SuiteTask(
        "digits", "tabular", 6, "constant", {"hidden": 16, "batch": 16, "norm": True}))
    grid = ["0.25", "0.5", "1", "2", "4"]
    for task, changes in (("digits_ln_tiny", True), ("friedman_tiny", False)):
        per: dict[str, list[float]] = {}
        for r in _run_stage(bench, tmp_path / task, "normwd", task):
            opt = r["spec"]["opt"]
            if opt["arm"] in ("default", "default_lever"):
                key = ("today" if opt["arm"] == "default"
                       else f"{opt['levers']['norm_part_decay']:g}")  # fmt: skip
                per.setdefault(key, []).append(r["val_loss"])
        assert sorted(per) == [*grid, "today"]
        assert all(len(v) == len(bench.LR_SEEDS) for v in per.values())
        distinct = len({tuple(v) for v in per.values()})
        assert distinct == (len(grid) + 1 if changes else 1), task


def test_fitwd_stage_runs_todays_defaults_and_each_pair(bench, tmp_path, monkeypatch):
    """FIT_PART_DECAY_CANDIDATES: the ``fit_part_decay`` lever at six pairs, each run with its
    pair, on a tiny LayerNorm digits MLP under a constant lr (the smoke profile with it held
    out) and on the smoke profile's Friedman MLP (a regressor). Neither is fitted within its six
    steps (the switch is checked by ``_fit_part_decay_check``), so every pair's runs equal
    today's: the decay waits for the fit. Mutants caught: the decay on from the first step (the
    MLP's columns differ), another lever in its place (the stored pairs differ)."""
    _held_out_in_smoke(bench, monkeypatch, "digits_ln_tiny", bench.SuiteTask(
        "digits", "tabular", 6, "constant", {"hidden": 16, "batch": 16, "norm": True}))
    grid = sorted(f"{d:g}x{c:g}" for d in (1, 2) for c in (0.05, 0.1, 0.2))
    for task in ("digits_ln_tiny", "friedman_tiny"):
        per: dict[str, list[float]] = {}
        for r in _run_stage(bench, tmp_path / task, "fitwd", task):
            opt = r["spec"]["opt"]
            if opt["arm"] in ("default", "default_lever"):
                key = ("today" if opt["arm"] == "default"
                       else "x".join(f"{v:g}" for v in opt["levers"]["fit_part_decay"]))
                per.setdefault(key, []).append(r["val_loss"])
        assert sorted(per) == [*grid, "today"]
        assert all(len(v) == len(bench.LR_SEEDS) for v in per.values())
        assert len({tuple(v) for v in per.values()}) == 1, task


def test_round29_is_normalized_classifiers_without_attention(bench):
    """Every model of ROUND29 is of round 10's class (normalization, a first matrix layer reading
    raw inputs, a softmax head) without an attention layer (the models ``norm_part_decay``
    changes): five batch-norm CNNs and five LayerNorm MLPs, six under a constant lr and four
    under warm-up and decay. Mutants caught: a ViT in the set, a regressor in it."""
    from muonflow.optim import lr_by_structure
    from muonflow.optim.routing import attention_layer, convolution_layer
    from muonflow.training import make_task

    prof = bench.PROFILES["round29"]
    convolutions = []
    for task, t in bench.ROUND29.items():
        model = make_task(t.builder, **t.options).make_model()
        assert lr_by_structure(model)[0] and bench.softmax_headed(prof, task), task
        assert attention_layer(model) is None, task
        convolutions.append(convolution_layer(model) is not None)
    assert sorted(convolutions) == [False] * 5 + [True] * 5
    assert sorted(t.warmup > 0 for t in bench.ROUND29.values()) == [False] * 6 + [True] * 4


def _batch_norm_cnn_set(bench, profile, variant, decay):
    """Every model of ``profile``'s set is of round 10's class with a convolution and no attention
    layer (a batch-norm CNN under a softmax head), four under a constant lr and four under warm-up
    and decay, and ``variant`` gives each the lever ``fit_part_decay = [decay, 0.1]``."""
    from muonflow.optim import lr_by_structure
    from muonflow.optim.routing import attention_layer, convolution_layer
    from muonflow.training import make_task

    prof = bench.PROFILES[profile]
    suite = prof.suite
    for task, t in suite.items():
        model = make_task(t.builder, **t.options).make_model()
        assert lr_by_structure(model)[0] and bench.softmax_headed(prof, task), task
        assert attention_layer(model) is None and convolution_layer(model) is not None, task
        opt = bench._variant_opt(bench.OPTIONAL_VARIANTS[variant], "core", prof, task)
        assert (opt["arm"], opt["levers"]) == ("default_lever", {"fit_part_decay": [decay, 0.1]})
    assert sorted(t.warmup > 0 for t in suite.values()) == [False] * 4 + [True] * 4


def test_round30_is_batch_norm_cnns(bench):
    """Every model of ROUND30 is a batch-norm CNN (the models ``fit_part_decay_cnn`` changes, each
    given the lever), four under each schedule. Mutants caught: a LayerNorm MLP in the set, a ViT
    in it."""
    _batch_norm_cnn_set(bench, "round30", "fit_part_decay_cnn", 2.0)


def test_round31_is_batch_norm_cnns_on_other_images(bench, levers):
    """Every model of ROUND31 is a batch-norm CNN that round 30's rule watched, reading generated
    strokes, teacher-labelled noise or photograph patches (each source twice or more), four under
    each schedule; its comparison arm ``fit_rule_off`` is the lever with decay 0. Switched on at
    the first step (threshold 1), that lever's run equals ``RegMuon(model)`` parameter for
    parameter (the rule withdrawn after round 31, a regression check), where the same lever with
    round 30's decay 2 differs. Mutants caught: a
    LayerNorm MLP or a CNN without batch norm in the set, the comparison arm at decay 2."""
    from muonflow.training import make_task

    _batch_norm_cnn_set(bench, "round31", "fit_rule_off", 0.0)
    off = bench.OPTIONAL_VARIANTS["fit_rule_off"]
    sources = collections.Counter(t.options["images"] for t in bench.ROUND31.values())
    assert set(sources) == {"shapes", "teacher", "photos"} and min(sources.values()) >= 2
    task = make_task("cnn", images="shapes", channels=(4, 8), hidden=16, norm=True, batch=16)
    runs = {}
    for arm, decay in (("today", None), ("off", off["levers"]["fit_part_decay"][0]), ("on", 2.0)):
        torch.manual_seed(31)
        model = task.make_model()
        opt = (RegMuon(model) if decay is None
               else levers.build_lever_regmuon(model, {}, {"fit_part_decay": [decay, 1.0]}))
        gen = torch.Generator().manual_seed(5)
        for _ in range(3):
            opt.zero_grad()
            task.train_loss(model, gen).backward()
            opt.step()
        runs[arm] = ({g["weight_decay"] for g in opt.param_groups if g["algorithm"] == "adamw"},
                     [p.detach().clone() for p in model.parameters()])
    assert runs["today"][0] == runs["off"][0] == {0.0} and runs["on"][0] == {2.0}
    for a, b in zip(runs["today"][1], runs["off"][1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert any(not torch.equal(a, b) for a, b in zip(runs["today"][1], runs["on"][1],
                                                     strict=True))


def test_round32_is_batch_norm_cnns_on_the_digits_and_other_images(bench):
    """Every model of ROUND32 is a batch-norm CNN (the models ``cnn_decay`` changes), four on the
    digits and four on generated or photographed images, four under each schedule. Mutants
    caught: a LayerNorm MLP or a ViT in the set, every model on the digits."""
    from muonflow.optim import lr_by_structure
    from muonflow.optim.routing import attention_layer, convolution_layer
    from muonflow.training import make_task

    prof = bench.PROFILES["round32"]
    for task, t in bench.ROUND32.items():
        model = make_task(t.builder, **t.options).make_model()
        assert lr_by_structure(model)[0] and bench.softmax_headed(prof, task), task
        assert attention_layer(model) is None and convolution_layer(model) is not None, task
    assert sorted(t.warmup > 0 for t in bench.ROUND32.values()) == [False] * 4 + [True] * 4
    assert sorted("images" in t.options for t in bench.ROUND32.values()) == [False] * 4 + [True] * 4


def test_round37_is_batch_norm_cnns_under_a_warm_up(bench):
    """Every model of ROUND37 is a batch-norm CNN under warm-up and decay (the class ``cnnkernel``'s
    candidates change), four on the digits and four on other images, three with batch 32.
    Mutants caught: a constant-lr CNN in the set, a LayerNorm MLP."""
    from muonflow.optim import lr_by_structure
    from muonflow.optim.routing import attention_layer, convolution_layer
    from muonflow.training import make_task

    prof = bench.PROFILES["round37"]
    for task, t in bench.ROUND37.items():
        model = make_task(t.builder, **t.options).make_model()
        assert lr_by_structure(model)[0] and bench.softmax_headed(prof, task), task
        assert attention_layer(model) is None and convolution_layer(model) is not None, task
    assert all(t.warmup > 0 for t in bench.ROUND37.values())
    assert sorted("images" in t.options for t in bench.ROUND37.values()) == [False] * 4 + [True] * 4
    assert sum(t.options.get("batch") == 32 for t in bench.ROUND37.values()) == 3


def test_round41_is_batch_norm_cnns_under_a_warm_up(bench):
    """Every model of ROUND41 is a batch-norm CNN under warm-up and decay (the class ``cnnstep``'s
    warm-up pick changes; ROUND36 is its constant-lr half), four on the digits and four on other
    images, two with batch 32. Mutants caught: a constant-lr CNN in the set, a LayerNorm MLP."""
    from muonflow.optim import lr_by_structure
    from muonflow.optim.routing import attention_layer, convolution_layer
    from muonflow.training import make_task

    prof = bench.PROFILES["round41"]
    for task, t in bench.ROUND41.items():
        model = make_task(t.builder, **t.options).make_model()
        assert lr_by_structure(model)[0] and bench.softmax_headed(prof, task), task
        assert attention_layer(model) is None and convolution_layer(model) is not None, task
    assert all(t.warmup > 0 for t in bench.ROUND41.values())
    assert sorted("images" in t.options for t in bench.ROUND41.values()) == [False] * 4 + [True] * 4
    assert sum(t.options.get("batch") == 32 for t in bench.ROUND41.values()) == 2


def test_round36_is_batch_norm_cnns_under_a_constant_lr(bench):
    """Every model of ROUND36 is a batch-norm CNN under a constant lr (the class ``cnnlinear``'s
    candidates change), four on the digits and four on other images. Mutants caught: a warm-up CNN
    in the set, a LayerNorm MLP."""
    from muonflow.optim import lr_by_structure
    from muonflow.optim.routing import attention_layer, convolution_layer
    from muonflow.training import make_task

    prof = bench.PROFILES["round36"]
    for task, t in bench.ROUND36.items():
        model = make_task(t.builder, **t.options).make_model()
        assert lr_by_structure(model)[0] and bench.softmax_headed(prof, task), task
        assert attention_layer(model) is None and convolution_layer(model) is not None, task
    assert all(t.warmup == 0 for t in bench.ROUND36.values())
    assert sorted("images" in t.options for t in bench.ROUND36.values()) == [False] * 4 + [True] * 4


def test_round33_is_batch_norm_cnns_under_a_constant_lr(bench):
    """Every model of ROUND33 is a batch-norm CNN under a constant lr (each given
    ``cnn_decay_constant``'s decay 1), four on the digits and four on other images. Mutants
    caught: a warm-up CNN in the set (no lever: the test would not test it), a LayerNorm MLP."""
    from muonflow.optim.routing import attention_layer, convolution_layer
    from muonflow.training import make_task

    prof = bench.PROFILES["round33"]
    variant = bench.OPTIONAL_VARIANTS["cnn_decay_constant"]
    for task, t in bench.ROUND33.items():
        model = make_task(t.builder, **t.options).make_model()
        assert bench.softmax_headed(prof, task), task
        assert attention_layer(model) is None and convolution_layer(model) is not None, task
        opt = bench._variant_opt(variant, "core", prof, task)
        assert (opt["arm"], opt["levers"]) == ("default_lever", {"cnn_decay": 1.0}), task
    assert all(t.warmup == 0 for t in bench.ROUND33.values())
    assert sorted("images" in t.options for t in bench.ROUND33.values()) == [False] * 4 + [True] * 4


def _cnn_decay_check(cls):
    """``cnn_decay``: on a batch-norm CNN classifier the matrices decay
    (:func:`_two_step_decay_check`); on a LayerNorm MLP, a ViT, under a regression loss and on a
    classifier without normalization nothing differs."""
    _two_step_decay_check(cls, "cnn_decay", "regmuon", lambda k, c, _: k == "cnn" and c)


def test_cnn_decay_decays_a_batch_norm_cnns_matrices(levers):
    """``cnn_decay``: decay on the matrices of a batch-norm CNN classifier (round 10's class with
    a convolution, no attention layer); every other model as ``RegMuon(model)``; bad decays
    refused."""
    _cnn_decay_check(levers.LeverRegMuon)
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="cnn_decay"):
            levers.build_lever_regmuon(MLP(6, 8, 3), {}, {"cnn_decay": bad})


def test_cnn_decay_check_catches_its_mutants(levers):
    """Mutants kept as code, each failing :func:`_cnn_decay_check`: the convolution not read (a
    LayerNorm MLP decayed), the decay on the AdamW part, the lever frozen."""

    class ConvBlind(levers.LeverRegMuon):
        def __init__(self, model, **kw):
            super().__init__(model, **kw)
            self._cnn = not self._attention

    class OnThePart(levers.LeverRegMuon):
        def __init__(self, model, cnn_decay=0.0, **kw):
            super().__init__(model, **kw)
            self._cnn_part, self._cnn_model = cnn_decay, convolution_layer_of(model)

        def step(self, closure=None):
            out = super().step(closure)
            if self._class and self._cnn_part and self._cnn_model:
                self._part_decay(self._cnn_part)
            return out

    class Frozen(levers.LeverRegMuon):
        def __init__(self, model, cnn_decay=0.0, **kw):
            super().__init__(model, **kw)

    for mutant in (ConvBlind, OnThePart, Frozen):
        with pytest.raises(AssertionError):
            _cnn_decay_check(mutant)


def _vit_decay_check(cls):
    """``vit_decay``: on a ViT classifier the matrices decay (:func:`_two_step_decay_check`); on a
    LayerNorm MLP, a batch-norm CNN, under a regression loss and on a classifier without
    normalization nothing differs."""
    _two_step_decay_check(cls, "vit_decay", "regmuon", lambda k, c, _: k == "vit" and c)


def test_vit_decay_decays_a_vits_matrices(levers):
    """``vit_decay``: decay on the matrices of a ViT classifier (round 10's class with an attention
    layer); every other model as ``RegMuon(model)``; bad decays refused."""
    _vit_decay_check(levers.LeverRegMuon)
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="vit_decay"):
            levers.build_lever_regmuon(MLP(6, 8, 3), {}, {"vit_decay": bad})


def test_vit_decay_check_catches_its_mutants(levers):
    """Mutants kept as code, each failing :func:`_vit_decay_check`: attention not read (every model
    of round 10's class decayed), the decay on the AdamW part, the lever frozen."""

    class AttentionBlind(levers.LeverRegMuon):
        def step(self, closure=None):
            pending = self._scale_pending is not None
            out = super().step(closure)
            if pending and self._scale_pending is None and self._lr_scale and self.vit_decay:
                for g in self.param_groups:
                    if g["algorithm"] == "regmuon":
                        g["weight_decay"] = self.vit_decay
            return out

    class OnThePart(levers.LeverRegMuon):
        def __init__(self, model, vit_decay=0.0, **kw):
            super().__init__(model, **kw)
            self._vit_part = vit_decay

        def step(self, closure=None):
            pending = self._scale_pending is not None
            out = super().step(closure)
            if pending and self._scale_pending is None and self._attention and self._vit_part:
                self._part_decay(self._vit_part)
            return out

    class Frozen(levers.LeverRegMuon):
        def __init__(self, model, vit_decay=0.0, **kw):
            super().__init__(model, **kw)

    for mutant in (AttentionBlind, OnThePart, Frozen):
        with pytest.raises(AssertionError):
            _vit_decay_check(mutant)


def test_round42s_candidate_scales_the_constant_lr_cnns_matrices_only(bench):
    """``cnn_mid_paired`` gives each model of ROUND36 (all under a constant lr) the ``cnnmid``
    screen's pick, the matrices' step times 1.5, and a warm-up CNN of ROUND41 the default arm.
    Mutant caught: the pair under every schedule."""
    variant = bench.OPTIONAL_VARIANTS["cnn_mid_paired"]
    for profile in ("round36", "round41"):
        for task, t in getattr(bench, profile.upper()).items():
            opt = bench._variant_opt(variant, "core", bench.PROFILES[profile], task)
            want = ("default", None) if t.warmup else ("default_lever", {"cnn_split": [1.5, 1.0]})
            assert (opt["arm"], opt.get("levers")) == want, task


def test_round43s_pick_sets_the_warm_up_mlps_beta2_only(bench):
    """``mlp_beta_warmup`` gives each model of ROUND44 (all under a warm-up) the ``mlpbeta``
    screen's warm-up pick, β2 0.999, and a constant-lr MLP of ROUND38 the default arm. Mutant
    caught: the pick under every schedule."""
    variant = bench.OPTIONAL_VARIANTS["mlp_beta_warmup"]
    for profile in ("round38", "round44"):
        for task, t in getattr(bench, profile.upper()).items():
            opt = bench._variant_opt(variant, "core", bench.PROFILES[profile], task)
            want = ("default_lever", {"mlp_beta2": 0.999}) if t.warmup else ("default", None)
            assert (opt["arm"], opt.get("levers")) == want, task


def test_round39s_candidate_decays_the_warm_up_vits_only(bench):
    """``vit_decay_paired`` gives each warm-up ViT of ROUND39 the ``vitdecay`` screen's pick, decay
    1, and each constant-lr one the default arm. Mutant caught: the decay under every schedule."""
    variant = bench.OPTIONAL_VARIANTS["vit_decay_paired"]
    for task, t in bench.ROUND39.items():
        opt = bench._variant_opt(variant, "core", bench.PROFILES["round39"], task)
        want = ("default_lever", {"vit_decay": 1.0}) if t.warmup else ("default", None)
        assert (opt["arm"], opt.get("levers")) == want, task


def test_round39_is_vits_under_both_schedules(bench):
    """Every model of ROUND39 is a ViT of round 10's class (the models ``vit_decay`` changes), four
    under each schedule, three with 4x4 patches. Mutants caught: a batch-norm CNN in the set,
    every ViT under a constant lr."""
    from muonflow.optim import lr_by_structure
    from muonflow.optim.routing import attention_layer
    from muonflow.training import make_task

    prof = bench.PROFILES["round39"]
    for task, t in bench.ROUND39.items():
        model = make_task(t.builder, **t.options).make_model()
        assert lr_by_structure(model)[0] and bench.softmax_headed(prof, task), task
        assert attention_layer(model) is not None, task
    assert sorted(t.warmup > 0 for t in bench.ROUND39.values()) == [False] * 4 + [True] * 4
    assert sum(t.options.get("patch") == 4 for t in bench.ROUND39.values()) == 3


def convolution_layer_of(model):
    from muonflow.optim.routing import convolution_layer

    return convolution_layer(model) is not None


@pytest.mark.parametrize("profile", ["round34", "round35"])
def test_rounds_34_and_35_are_batch_norm_cnns_under_both_schedules(bench, profile):
    """Every model of ROUND34 (and of ROUND35) is a batch-norm CNN (the models ``conv_decay`` and
    ``cnn_decays`` change), four on the digits and four on other images, four under each schedule.
    Mutants caught: a LayerNorm MLP or a ViT in the set, every model under a constant lr."""
    from muonflow.optim import lr_by_structure
    from muonflow.optim.routing import attention_layer, convolution_layer
    from muonflow.training import make_task

    prof, tasks = bench.PROFILES[profile], getattr(bench, profile.upper())
    for task, t in tasks.items():
        model = make_task(t.builder, **t.options).make_model()
        assert lr_by_structure(model)[0] and bench.softmax_headed(prof, task), task
        assert attention_layer(model) is None and convolution_layer(model) is not None, task
    assert sorted(t.warmup > 0 for t in tasks.values()) == [False] * 4 + [True] * 4
    assert sorted("images" in t.options for t in tasks.values()) == [False] * 4 + [True] * 4


def _conv_decay_check(cls, lever="conv_decay", kernels_only=True):
    """``conv_decay`` (or ``lever``): two steps at 0.5 against two at 0 (:func:`_two_step_runs`, a
    constant lr): on a batch-norm CNN classifier each conv kernel (each matrix, unless
    ``kernels_only``) at the second step differs by exactly ``-η 0.5 W`` and every other parameter
    (the hidden linear layer, the AdamW part) is the same bit for bit; no CNN group decays and
    no matrix has the library's own decay in either run (the library's rule by schedule, which
    decays this constant-lr CNN's matrices, is replaced); on a LayerNorm MLP, a ViT, under a
    regression loss and on a classifier without normalization nothing differs."""
    labels, cases = _part_decay_cases()
    for kind, make, x, classify, _ in cases:
        (plain, opt0, first), (decayed, opt, _) = _two_step_runs(cls, lever, make, x, labels,
                                                                 classify)  # fmt: skip
        wds = [[g["weight_decay"] for g in o.param_groups] for o in (opt0, opt)]
        assert wds[0] == wds[1] and (kind != "cnn" or set(wds[0]) == {0.0}), kind
        assert not opt0._matrix_decay and not opt._matrix_decay, kind  # the library's, off
        kernels = {id(m.weight) for m in decayed.modules() if isinstance(m, nn.Conv2d)}
        target = {id(p): (g, gi) for gi, g in enumerate(opt.param_groups)
                  if kind == "cnn" and classify and g["algorithm"] == "regmuon"
                  for p in g["params"] if id(p) in kernels or not kernels_only}  # fmt: skip
        assert bool(target) == (kind == "cnn" and classify), kind
        _decayed_by_half(opt, plain, decayed, first, target)


def test_round35s_candidate_gives_each_cnn_its_schedules_pair(bench):
    """``cnn_decays_paired`` gives each model of ROUND35 the ``cnnsplit`` screen's pick for its
    schedule: kernels 0 and linear layers 4 under a constant lr, 4 and 1 under a warm-up. Mutant
    caught: the pairs swapped between the schedules."""
    prof = bench.PROFILES["round35"]
    variant = bench.OPTIONAL_VARIANTS["cnn_decays_paired"]
    for task, t in bench.ROUND35.items():
        opt = bench._variant_opt(variant, "core", prof, task)
        want = [4.0, 1.0] if t.warmup else [0.0, 4.0]
        assert (opt["arm"], opt["levers"]) == ("default_lever", {"cnn_decays": want}), task


def test_round37s_candidate_gives_each_warm_up_cnn_kernels_8(bench):
    """``cnn_kernel_paired`` gives each model of ROUND37 (all under a warm-up) the ``cnnkernel``
    screen's pick, kernels 8 and linear layers 1, and a constant-lr CNN (round 35's) the default
    arm. Mutant caught: the constant-lr CNNs given the warm-up pair."""
    variant = bench.OPTIONAL_VARIANTS["cnn_kernel_paired"]
    for profile, tasks in (("round37", bench.ROUND37), ("round35", bench.ROUND35)):
        for task, t in tasks.items():
            opt = bench._variant_opt(variant, "core", bench.PROFILES[profile], task)
            got = (opt["arm"], opt.get("levers"))
            want = ("default_lever", {"cnn_decays": [8.0, 1.0]}) if t.warmup else ("default", None)
            assert got == want, task


def test_round40s_arm_turns_round37s_rule_off_on_round34s_warm_up_cnns(bench):
    """``cnn_kernel_off`` gives each warm-up CNN of ROUND40_TASKS (ROUND34's four, all under a
    warm-up) round 35's pair 4 x 1 through the lever, and ROUND34's constant-lr CNNs the default
    arm. Mutants caught: round 37's pair in the arm, a constant-lr CNN in the set."""
    variant = bench.OPTIONAL_VARIANTS["cnn_kernel_off"]
    prof = bench.PROFILES["round34"]
    assert set(bench.ROUND40_TASKS) == {t for t, x in bench.ROUND34.items() if x.warmup}
    assert bench.PROFILES["round40"].split()["held_out"] == sorted(bench.ROUND40_TASKS)
    for task, t in bench.ROUND34.items():
        opt = bench._variant_opt(variant, "core", prof, task)
        want = ("default_lever", {"cnn_decays": [4.0, 1.0]}) if t.warmup else ("default", None)
        assert (opt["arm"], opt.get("levers")) == want, task


def _cnn_decays_check(cls):
    """``cnn_decays = [c, l]``: at ``[0.5, 0]`` the kernels alone decay, at ``[0, 0.5]`` the hidden
    linear layer alone, at ``[0.5, 0.5]`` every matrix (:func:`_conv_decay_check`, each against
    ``[0, 0]``)."""

    def at(pair):
        return lambda model, cnn_decays: cls(model, cnn_decays=[x * cnn_decays / 0.5 for x in pair])

    _conv_decay_check(at((0.5, 0.0)), "cnn_decays")
    _conv_decay_check(at((0.5, 0.5)), "cnn_decays", kernels_only=False)
    with pytest.raises(AssertionError):  # the linear layer alone: neither of those patterns
        _conv_decay_check(at((0.0, 0.5)), "cnn_decays")
    linear_only = at((0.0, 0.5))
    labels, cases = _part_decay_cases()
    for kind, make, x, classify, _ in cases:
        (plain, _, first), (decayed, opt, _) = _two_step_runs(linear_only, "cnn_decays", make, x,
                                                              labels, classify)  # fmt: skip
        kernels = {id(m.weight) for m in decayed.modules() if isinstance(m, nn.Conv2d)}
        target = {id(p): (g, gi) for gi, g in enumerate(opt.param_groups)
                  if kind == "cnn" and classify and g["algorithm"] == "regmuon"
                  for p in g["params"] if id(p) not in kernels}  # fmt: skip
        assert bool(target) == (kind == "cnn" and classify), kind
        _decayed_by_half(opt, plain, decayed, first, target)


def test_cnn_decays_decays_a_batch_norm_cnns_kernels_and_linear_layers_apart(levers):
    """``cnn_decays``: the kernels' and the other matrices' decays, each where it belongs; bad
    pairs refused."""
    _cnn_decays_check(levers.LeverRegMuon)
    for bad in ([-1.0, 1.0], [1.0, math.nan], [1.0], [1.0, 2.0, 3.0]):
        with pytest.raises(ValueError, match="cnn_decays"):
            levers.build_lever_regmuon(MLP(6, 8, 3), {}, {"cnn_decays": bad})


def test_cnn_decays_check_catches_its_mutants(levers):
    """Mutants kept as code, each failing :func:`_cnn_decays_check`: the pair swapped, one decay
    on every matrix."""

    class Swapped(levers.LeverRegMuon):
        def __init__(self, model, cnn_decays=None, **kw):
            super().__init__(model, cnn_decays=cnn_decays[::-1], **kw)

    class OneDecay(levers.LeverRegMuon):
        def __init__(self, model, cnn_decays=None, **kw):
            super().__init__(model, cnn_decays=[max(cnn_decays)] * 2, **kw)

    for mutant in (Swapped, OneDecay):
        with pytest.raises(AssertionError):
            _cnn_decays_check(mutant)


def test_conv_decay_decays_a_batch_norm_cnns_kernels_only(levers):
    """``conv_decay``: decay on the conv kernels of a batch-norm CNN classifier only; every other
    parameter and model as ``RegMuon(model)`` without the library's rule; bad decays and both CNN
    decays together refused."""
    _conv_decay_check(levers.LeverRegMuon)
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="conv_decay"):
            levers.build_lever_regmuon(MLP(6, 8, 3), {}, {"conv_decay": bad})
    with pytest.raises(ValueError, match="pass one of them"):
        levers.build_lever_regmuon(MLP(6, 8, 3), {}, {"conv_decay": 1.0, "cnn_decay": 1.0})


def test_conv_decay_check_catches_its_mutants(levers):
    """Mutants kept as code, each failing :func:`_conv_decay_check`: every matrix decayed (the
    hidden linear layer too), the decay from the deciding step, the library's rule left on, the
    lever frozen."""

    class EveryMatrix(levers.LeverRegMuon):
        def __init__(self, model, **kw):
            super().__init__(model, **kw)
            self._kernels = [p for g in self.param_groups if g["algorithm"] == "regmuon"
                             for p in g["params"]]  # fmt: skip

    class FromTheDecidingStep(levers.LeverRegMuon):
        def __init__(self, model, **kw):
            super().__init__(model, **kw)
            self._conv_on = bool(self.conv_decay) and self._cnn

    class RuleLeftOn(levers.LeverRegMuon):
        def __init__(self, model, **kw):
            super().__init__(model)
            self.conv_decay = kw["conv_decay"]

    class Frozen(levers.LeverRegMuon):
        def __init__(self, model, conv_decay=0.0, **kw):
            super().__init__(model, conv_decay=0.0, **kw)

    for mutant in (EveryMatrix, FromTheDecidingStep, RuleLeftOn, Frozen):
        with pytest.raises(AssertionError):
            _conv_decay_check(mutant)


def _lever_columns(bench, root, stage, task, lever):
    """The validation losses of a one-lever stage's runs on ``task``, by column: ``"today"`` or
    the lever's setting (``f"{value:g}"``)."""
    per: dict[str, list[float]] = {}
    for r in _run_stage(bench, root, stage, task):
        opt = r["spec"]["opt"]
        if opt["arm"] in ("default", "default_lever"):
            v = opt["levers"].get(lever) if opt["arm"] != "default" else None
            key = ("today" if opt["arm"] == "default" else
                   "x".join(f"{x:g}" for x in v) if isinstance(v, list) else f"{v:g}")
            per.setdefault(key, []).append(r["val_loss"])
    return per


@pytest.mark.parametrize(("stage", "lever", "schedule", "columns", "todays"), [
    ("cnndecay", "cnn_decay", "constant", ["0.25", "0.5", "1", "2", "4"], None),
    ("convdecay", "conv_decay", "linear", ["0.5", "1", "2", "4", "8"], None),
    ("cnnsplit", "cnn_decays", "constant", ["0x1", "0x2", "0x4", "1x2", "1x4", "4x1"], "0x4"),
    ("cnnsplit", "cnn_decays", "linear", ["0x1", "0x2", "0x4", "1x2", "1x4", "4x1"], None),
    ("cnnlinear", "cnn_decays", "constant", ["0x16", "0x6", "0x8"], None),
    ("cnnkernel", "cnn_decays", "linear", ["16x1", "32x1", "8x1"], "8x1"),
    ("cnnstep", "cnn_split", "constant", ["0.5x0.5", "1x2", "2x1", "2x2"], None),
    ("cnnstep", "cnn_split", "linear", ["0.5x0.5", "1x2", "2x1", "2x2"], None),
    ("cnnmid", "cnn_split", "constant", ["1.25x1", "1.5x0.5", "1.5x1", "2x0.5"], None),
    ("cnnmid", "cnn_split", "linear", ["1.25x1", "1.5x0.5", "1.5x1", "2x0.5"], None),
])  # fmt: skip
def test_the_cnn_decay_stages_run_todays_defaults_and_each_setting(
        bench, tmp_path, monkeypatch, stage, lever, schedule, columns, todays):  # fmt: skip
    """The batch-norm CNN stages (CNN_DECAY_CANDIDATES, CONV_DECAY_CANDIDATES, CNN_SPLIT_CANDIDATES,
    CNN_LINEAR_CANDIDATES, CNN_KERNEL_CANDIDATES, CNN_STEP_CANDIDATES, CNN_MID_CANDIDATES): each
    setting of the stage's lever run with its setting on a tiny batch-norm CNN on the strokes (the
    smoke profile with it held out, under the schedule given: 6 steps at a constant lr, or 40 with a
    two-step warm-up): every column's runs differ from each other's and from today's, except the
    column ``todays`` that is the library's rule for that schedule (round 35's under a constant lr,
    round 37's under a warm-up), which equals today's bit for bit (a regression check of library
    against lever); on the smoke profile's Friedman MLP (a regressor) every column equals today's.
    Mutants caught: the lever not passed (every CNN column today's), another lever in its place (the
    stored settings differ), the library's pair not the lever's (its column apart from today's)."""
    steps = 6 if schedule == "constant" else 40  # a warm-up of two steps (SuiteTask.warmup)
    task_spec = bench.SuiteTask("cnn", "vision", steps, schedule, {
        "images": "shapes", "channels": [4, 8], "hidden": 16, "batch": 16, "norm": True})
    assert (task_spec.warmup >= 2) == (schedule != "constant")
    _held_out_in_smoke(bench, monkeypatch, "cnn_shapes_tiny", task_spec)
    for task, same in (("cnn_shapes_tiny", False), ("friedman_tiny", True)):
        per = _lever_columns(bench, tmp_path / task, stage, task, lever)
        assert sorted(per) == sorted([*columns, "today"])
        assert all(len(v) == len(bench.LR_SEEDS) for v in per.values())
        distinct = 1 if same else len(per) - (todays is not None)
        assert len({tuple(v) for v in per.values()}) == distinct, task
        assert same or todays is None or per[todays] == per["today"], task


@pytest.mark.parametrize(("profile", "warm"), [("round27", 4), ("round28", 0), ("round38", 0),
                                               ("round44", 8)])
def test_rounds_27_28_38_and_44_are_normalized_mlp_classifiers(bench, profile, warm):
    """Every model of ROUND27 (ROUND28, ROUND38, ROUND44: all under a warm-up) is of round 10's
    class (normalization, a first matrix layer reading raw inputs, a softmax head) with neither an
    attention layer nor a convolution (the models ``mlp_split`` changes); ROUND27 under both
    schedule regimes, ROUND28 and ROUND38 under a constant lr only (the one their candidates
    change). Mutants caught: a batch-norm CNN in the set, a warm-up model in round 28's or 38's."""
    from muonflow.optim import lr_by_structure
    from muonflow.optim.routing import attention_layer, convolution_layer
    from muonflow.training import make_task

    prof = bench.PROFILES[profile]
    tasks = getattr(bench, profile.upper())
    for task, t in tasks.items():
        model = make_task(t.builder, **t.options).make_model()
        assert lr_by_structure(model)[0] and bench.softmax_headed(prof, task), task
        assert attention_layer(model) is None, task
        assert convolution_layer(model) is None, task
    assert sorted(t.warmup > 0 for t in tasks.values()) == [False] * (8 - warm) + [True] * warm


def test_regression_decay_variants_follow_the_head_and_the_schedule(bench):
    """Rounds 15-19's candidates: ``regression_decay`` is the lever at 0.125 on every regressor
    of ROUND15 and ROUND16; ``regression_decay_warmup`` (``_paired``) the lever at 0.5 (0.25) on
    a regressor trained with a warm-up and the default arm's run under a constant lr
    (``regression_cautious_paired``: the cautious lever at 0.25, on ROUND19); each the default
    arm's run on a classifier or a language model. Mutants caught: the schedule ignored
    (a constant-lr regressor decayed), the head ignored (a classifier given the lever)."""
    every = bench.OPTIONAL_VARIANTS["regression_decay"]
    warm = bench.OPTIONAL_VARIANTS["regression_decay_warmup"]
    for profile, tasks in (("round15", bench.ROUND15), ("round16", bench.ROUND16)):
        prof = bench.PROFILES[profile]
        for task, t in tasks.items():
            opt = bench._variant_opt(every, "core", prof, task)
            assert (opt["arm"], opt["levers"]) == ("default_lever", {"regression_decay": 0.125})
            opt = bench._variant_opt(warm, "core", prof, task)
            assert ((opt["arm"], opt.get("levers")) ==
                    (("default_lever", {"regression_decay": 0.5}) if t.warmup
                     else ("default", None))), task  # fmt: skip
    paired = bench.OPTIONAL_VARIANTS["regression_decay_paired"]
    for task, t in {**bench.ROUND15, **bench.ROUND18}.items():
        prof = bench.PROFILES["round15" if task in bench.ROUND15 else "round18"]
        opt = bench._variant_opt(paired, "core", prof, task)
        assert ((opt["arm"], opt.get("levers")) ==
                (("default_lever", {"regression_decay": 0.25}) if t.warmup
                 else ("default", None))), task  # fmt: skip
    cautious = bench.OPTIONAL_VARIANTS["regression_cautious_paired"]
    for task, t in bench.ROUND19.items():
        opt = bench._variant_opt(cautious, "core", bench.PROFILES["round19"], task)
        assert ((opt["arm"], opt.get("levers")) ==
                (("default_lever", {"regression_cautious": 0.25}) if t.warmup
                 else ("default", None))), task  # fmt: skip
    assert {t.warmup > 0 for t in bench.ROUND19.values()} == {True, False}
    vit = bench.OPTIONAL_VARIANTS["attention_lr_paired"]  # round 22's: by the schedule only
    for task, t in bench.ROUND22.items():
        opt = bench._variant_opt(vit, "core", bench.PROFILES["round22"], task)
        assert ((opt["arm"], opt.get("levers")) ==
                (("default_lever", {"attention_lr": 3.0}) if t.warmup
                 else ("default", None))), task  # fmt: skip
    assert {t.warmup > 0 for t in bench.ROUND22.values()} == {True, False}
    split = bench.OPTIONAL_VARIANTS["attention_split_paired"]  # round 23's: a constant lr only
    for task, t in bench.ROUND23.items():
        opt = bench._variant_opt(split, "core", bench.PROFILES["round23"], task)
        assert ((opt["arm"], opt.get("levers")) ==
                (("default", None) if t.warmup
                 else ("default_lever", {"attention_split": [1.0, 3.0]}))), task  # fmt: skip
    tokens = bench.OPTIONAL_VARIANTS["few_tokens_paired"]  # round 24's: by the schedule only
    for task, t in {**bench.ROUND24, **bench.ROUND25}.items():
        prof = bench.PROFILES["round24" if task in bench.ROUND24 else "round25"]
        opt = bench._variant_opt(tokens, "core", prof, task)
        assert (opt["arm"], opt["levers"]) == (
            "default_lever", {"few_tokens": 2.0 if t.warmup else 0.5}), task
    mlp = bench.OPTIONAL_VARIANTS["mlp_split_paired"]  # round 27's: both schedules alike
    for task in bench.ROUND27:
        opt = bench._variant_opt(mlp, "core", bench.PROFILES["round27"], task)
        assert (opt["arm"], opt["levers"]) == ("default_lever", {"mlp_split": [0.5, 0.5]}), task
    constant = bench.OPTIONAL_VARIANTS["mlp_split_constant"]  # round 28's: a constant lr only
    for task, t in {**bench.ROUND27, **bench.ROUND28}.items():
        prof = bench.PROFILES["round27" if task in bench.ROUND27 else "round28"]
        opt = bench._variant_opt(constant, "core", prof, task)
        assert ((opt["arm"], opt.get("levers")) ==
                (("default", None) if t.warmup
                 else ("default_lever", {"mlp_split": [0.5, 0.5]}))), task  # fmt: skip
    fit = bench.OPTIONAL_VARIANTS["fit_part_decay_paired"]  # round 29's: both schedules alike
    for task in bench.ROUND29:
        opt = bench._variant_opt(fit, "core", bench.PROFILES["round29"], task)
        assert (opt["arm"], opt["levers"]) == ("default_lever", {"fit_part_decay": [2.0, 0.1]})
    rows = bench.OPTIONAL_VARIANTS["few_rows_paired"]  # round 26's: by the schedule only
    for task, t in bench.ROUND26.items():
        opt = bench._variant_opt(rows, "core", bench.PROFILES["round26"], task)
        assert (opt["arm"], opt["levers"]) == (
            "default_lever", {"few_rows": 0.0625 if t.warmup else 0.03125}), task
    assert {t.warmup > 0 for t in bench.ROUND15.values()} == {True, False}
    assert all(t.warmup > 0 for t in bench.ROUND16.values())
    for profile, task in (("round12", "digits_h64_cos"), ("full", "gpt2_d64_l2")):
        for but in (every, warm, paired, cautious):
            opt = bench._variant_opt(but, "core", bench.PROFILES[profile], task)
            assert opt == {"arm": "default", "core": "core"}, task


def test_regression_step_variant_follows_the_head_and_the_schedule(bench):
    """Round 13's candidate (``regression_step``) is lr 0.01 and AdamW part 0.32 on a regressor
    trained with a warm-up, lr 0.01 alone on one under a constant lr, and the default arm's run
    on a classifier or a language model. Mutants caught: the schedule ignored (a constant-lr
    regressor given the part's 0.32), the head ignored (a classifier given the step)."""
    but = bench.OPTIONAL_VARIANTS["regression_step"]
    prof = bench.PROFILES["round13"]
    for task, t in bench.ROUND13.items():
        opt = bench._variant_opt(but, "core", prof, task)
        step = {"lr": 0.01, "adamw_lr": 0.32} if t.warmup else {"lr": 0.01}
        assert opt == {"arm": "default_but", "but": step, "core": "core"}, task
    assert {t.warmup > 0 for t in bench.ROUND13.values()} == {True, False}
    for profile, task in (("round12", "digits_h64_cos"), ("full", "gpt2_d64_l2")):
        opt = bench._variant_opt(but, "core", bench.PROFILES[profile], task)
        assert opt == {"arm": "default", "core": "core"}, task
    robust = bench.OPTIONAL_VARIANTS["regression_step_robust"]
    for task, t in bench.ROUND14.items():
        step = {"lr": 0.01, "adamw_lr": 0.16} if t.warmup else {"lr": 0.01}
        opt = bench._variant_opt(robust, "core", bench.PROFILES["round14"], task)
        assert opt == {"arm": "default_but", "but": step, "core": "core"}, task
