"""``benchmarks/regression_screen.py``: the regpart screen joined over sets, and its robust rule."""

from __future__ import annotations

import json

import pytest
from conftest import benchmark_module


@pytest.fixture(scope="module")
def screen():
    with benchmark_module("regression_screen") as module:
        yield module


NAMES = ["today's defaults", "0.02, part 0.08", "0.02, part 0.16", "0.01, part 0.04",
         "0.01, part 0.08", "0.01, part 0.16"]


def test_the_robust_rule_skips_a_pair_at_a_cliffs_edge(screen):
    """On two tasks, ``0.01, part 0.08`` has the smallest worst ratio (1.00) but twice its part
    blows up (9.0): the rule picks the best pair whose neighbour holds (``0.02, part 0.08``,
    worst robust 1.10), and the pairs at the grid's largest part (no neighbour) are never
    picked. Mutants caught: the neighbour ignored (picks the cliff's pair), the neighbour taken
    at half the part (picks a pair whose part 0.16 is at the edge)."""
    rows = [[1.30, 1.05, 1.10, 1.20, 1.00, 9.00],
            [1.20, 1.10, 1.08, 1.15, 0.99, 1.02]]
    chosen, stats = screen.pick(NAMES, rows)
    assert chosen == "0.02, part 0.08"
    by = {s[0]: s for s in stats}
    assert by["0.01, part 0.08"][1:3] == (1.00, 9.00)
    assert by["0.02, part 0.16"][2] == by["0.01, part 0.16"][2] == float("inf")
    assert by["today's defaults"][2] == 1.30  # its neighbour is "0.02, part 0.08"
    assert [s[4] for s in stats] == [0, 2, 2, 2, 2, 1]


DECAYS = ["today's defaults", "regression decay 0.125", "regression decay 0.25",
          "regression decay 0.5", "regression decay 1"]


def test_the_robust_rule_on_decays_judges_each_by_twice_its_decay(screen):
    """``regdecay``: decay 0.5 has the smallest worst ratio (1.00) but decay 1 loses 30% on the
    second task: the rule picks 0.25 (worst robust 1.08, its neighbour 0.5 within it); today's λ
    = 0 is judged by itself; the largest decay (no neighbour) is never picked. Mutants caught:
    the neighbour ignored (picks 0.5), the neighbour at half the decay (0.5 then judged by 0.25:
    picks 0.5)."""
    rows = [[1.20, 1.10, 1.05, 1.00, 0.95],
            [1.10, 1.06, 1.08, 0.99, 1.30]]
    assert screen.neighbours(DECAYS, "regdecay") == [0, 2, 3, 4, None]
    chosen, stats = screen.pick(DECAYS, rows, "regdecay")
    assert chosen == "regression decay 0.25"
    by = {s[0]: s for s in stats}
    assert by["today's defaults"][2] == 1.20 and by["regression decay 0.5"][1:3] == (1.00, 1.30)
    assert by["regression decay 1"][2] == float("inf")


def test_the_paired_rule_admits_no_decay_that_a_seen_task_rejects(screen):
    """Decay 0.5 has the smallest mean log ratio but is worse on the second task on every seed
    (+0.02 ± 0.001: 20 SE): not admissible. Decay 0.25 is worse there in the mean too, within its
    seeds' noise (+0.01 ± 0.012): admissible, and the pick. Today's column is always admissible.
    Mutants caught: the harm ignored (picks 0.5), the harm judged by the mean alone (0.25
    excluded: picks 0.125)."""
    names = DECAYS[:4]
    rows = [[1.20, 1.10, 1.05, 1.00], [1.10, 1.08, 1.09, 1.02]]
    zero = [0.0] * 4
    diffs = [[zero, [-0.02, -0.01, -0.03, -0.02], [-0.03, -0.02, -0.04, -0.03], [-0.05] * 4],
             [zero, [-0.01, 0.00, -0.02, -0.01], [0.03, -0.02, 0.04, -0.01],
              [0.019, 0.021, 0.020, 0.020]]]  # fmt: skip
    chosen, stats = screen.paired_pick(names, rows, diffs)
    assert chosen == "regression decay 0.25"
    assert [s[2] for s in stats] == [0, 0, 0, 1]
    harmful = [[zero, [0.05] * 4, [0.05] * 4, [0.05] * 4]] * 2
    assert screen.paired_pick(names, rows, harmful)[0] == "today's defaults"


def test_the_screen_joins_the_sets_by_schedule(screen, tmp_path):
    """Tables of two sets join into one per schedule class; a set whose columns differ is
    refused. Mutant caught: every task put in one class."""
    head = "| task | decay | " + " | ".join(NAMES) + " |\n|---|---:|" + "---:|" * 6 + "\n"
    for name, tasks in (("A", {"friedman": "1.2"}), ("B", {"friedman_h32": "1.1"})):
        (tmp_path / name).mkdir()
        body = "".join(f"| {t} | 0 | " + " | ".join([v] * 6) + " |\n" for t, v in tasks.items())
        (tmp_path / name / "regpart.md").write_text(head + body + "| worst | | x |\n")
    out = tmp_path / "S"
    assert screen.main(["--out", str(out), f"full={tmp_path / 'A'}",
                        f"round6={tmp_path / 'B'}"]) == 0  # fmt: skip
    text = (out / "regression_screen.md").read_text()
    assert "## constant: 1 regressors" in text and "## warm-up and decay: 1 regressors" in text
    assert (out / "regression_screen.png").stat().st_size > 0
    (tmp_path / "B" / "regpart.md").write_text(head.replace("0.01, part 0.16", "x") + "")
    with pytest.raises(SystemExit, match="columns differ"):
        screen.main(["--out", str(out), f"full={tmp_path / 'A'}", f"round6={tmp_path / 'B'}"])


CAUTIOUS = ["today's defaults", "regression cautious 0.5", "regression cautious 1",
            "regression cautious 2"]


def _cautious_set(root, rows, seed_loss):
    """A ``regcautious`` set of round 19's regressors: its table (``rows``: task -> ratios) and
    its ``results.json`` (``seed_loss(task, λ, seed)``: the validation loss of each run), with a
    plain decay's runs mixed in that the paired rule must not read."""
    import bench_training as bt

    root.mkdir()
    head = "| task | best | " + " | ".join(CAUTIOUS) + " |\n|---|---:|" + "---:|" * 4 + "\n"
    body = "".join(f"| {t} | 0.1 | " + " | ".join(f"{x:.3f}" for x in r) + " |\n"
                   for t, r in rows.items())  # fmt: skip
    (root / "regcautious.md").write_text(head + body)
    runs = {}
    for t in rows:
        for s in bt.LR_SEEDS:
            for lam in (0.0, 0.5, 1.0, 2.0):
                lever = {"arm": "default_lever", "levers": {"regression_cautious": lam}}
                opt = {"arm": "default"} if lam == 0 else lever
                runs[f"{t}{s}{lam}"] = {"spec": {"task": t, "seed": s, "opt": opt},
                                        "val_loss": seed_loss(t, lam, s)}  # fmt: skip
            runs[f"{t}{s}plain"] = {"spec": {"task": t, "seed": s, "opt": {
                "arm": "default_lever", "levers": {"regression_decay": 0.5}}}, "val_loss": 9.0}
    (root / "results.json").write_text(json.dumps({"runs": runs}))


def test_the_cautious_screen_is_a_decay_stage(screen, tmp_path):
    """``regcautious``: a column's λ and its neighbour at twice it, as ``regdecay``'s; the paired
    rule reads the cautious lever's runs only, by seed, per schedule class. Here cautious 1 has the
    smallest mean log ratio under a warm-up but is worse on ``friedman3_h256`` on every seed:
    the pick is 0.5; under a constant lr every λ is worse on one task: today's. Mutants caught:
    the plain decay's runs read as the cautious ones (every λ harmful: today's picked), the
    neighbour of λ not at 2λ."""
    assert [screen.decay_of(n) for n in CAUTIOUS] == [0.0, 0.5, 1.0, 2.0]
    assert screen.neighbours(CAUTIOUS, "regcautious") == [0, 2, 3, None]
    warm = {"friedman3_h256": [1.00, 0.99, 1.02, 1.10], "friedman_f20_d3": [1.30, 1.10, 1.00, 0.98]}
    const = {"friedman_f25_h96_const": [1.20, 1.30, 1.40, 1.50]}

    def loss(task, lam, seed):
        wobble = 0.001 * (seed % 3)  # the seeds disagree a little
        if task == "friedman3_h256":
            return 0.10 + {0.0: 0, 0.5: -0.001, 1.0: 0.002, 2.0: 0.01}[lam] + wobble
        if task == "friedman_f20_d3":
            return 0.30 - 0.02 * lam + wobble
        return 0.20 + 0.01 * lam + wobble

    _cautious_set(tmp_path / "R19", {**warm, **const}, loss)
    out = tmp_path / "S"
    assert screen.main(["--stage", "regcautious", "--paired", "--out", str(out),
                        f"round19={tmp_path / 'R19'}"]) == 0  # fmt: skip
    text = (out / "regcautious_paired.md").read_text()
    assert "## warm-up and decay: 2 regressors; the paired rule picks **regression cautious 0.5**" \
        in text
    assert "## constant: 1 regressors; the paired rule picks **today's defaults**" in text
    assert (out / "regcautious_paired.png").stat().st_size > 0
    diffs = screen.seed_diffs(tmp_path / "R19", "friedman3_h256", CAUTIOUS, "regcautious")
    assert [round(sum(d) / len(d), 6) for d in diffs] == [0.0, -0.001, 0.002, 0.01]


SPLIT = ["today's defaults", "attention split 1x3", "attention split 2x8"]


def _pair_screen(root, stage: str, names: list[str], rows: dict, shift: dict, lever: str,
                 pairs: list[list[float]]) -> None:
    """A pair stage's table (``OUT/STAGE.md``, ``names`` its columns, ``rows`` each task's
    ratios) and its runs on LR_SEEDS (``results.json``): today's validation loss 0.2 (plus a
    wobble by seed), each pair's shifted by ``shift[task][j]`` (``j`` its column)."""
    import bench_training as bt

    root.mkdir()
    head = "| task | best | " + " | ".join(names) + " |\n|---|---:|" + "---:|" * len(names) + "\n"
    (root / f"{stage}.md").write_text(head + "".join(
        f"| {t} | 0.1 | " + " | ".join(f"{x:.3f}" for x in r) + " |\n" for t, r in rows.items()))
    runs = {}
    for t in rows:
        for s in bt.LR_SEEDS:
            wobble = 0.001 * (s % 3)
            runs[f"{t}{s}"] = {"spec": {"task": t, "seed": s, "opt": {"arm": "default"}},
                               "val_loss": 0.2 + wobble}  # fmt: skip
            for j, pair in enumerate(pairs, start=1):
                runs[f"{t}{s}{j}"] = {"spec": {"task": t, "seed": s, "opt": {
                    "arm": "default_lever", "levers": {lever: pair}}},
                    "val_loss": 0.2 + wobble + shift[t][j]}
    (root / "results.json").write_text(json.dumps({"runs": runs}))


def test_the_vitsplit_screen_reads_pairs_by_seed(screen, tmp_path):
    """``vitsplit``: a column's pair ``a x b`` named from the lever's setting as the paired rule
    reads it from ``results.json``; under a warm-up ``2x8`` has the smaller mean log ratio and
    harms no ViT (the pick), under a constant lr it is worse on ``vit_p4_h8`` on every seed
    (``1x3`` picked); the figure is drawn; the robust rule refused. Mutants caught: a pair named
    with its factors swapped (its runs not found), the paired rule ignored (``2x8`` picked under
    a constant lr)."""

    assert screen.setting_name("attention split", [2.0, 8.0]) == "attention split 2x8"
    assert screen.setting_name("attention lr", 3.0) == "attention lr 3"
    assert [screen.split_of(n) for n in SPLIT] == [None, (1.0, 3.0), (2.0, 8.0)]
    rows = {"vit_d32_cos": [1.30, 1.20, 1.05], "vit_d48_h2_b32": [1.50, 1.40, 1.10],
            "vit_p4_h8": [1.20, 1.10, 1.00]}
    shift = {"vit_d32_cos": {1: -0.01, 2: -0.03}, "vit_d48_h2_b32": {1: -0.01, 2: -0.05},
             "vit_p4_h8": {1: -0.01, 2: +0.02}}
    root = tmp_path / "R22"
    _pair_screen(root, "vitsplit", SPLIT, rows, shift, "attention_split", [[1.0, 3.0], [2.0, 8.0]])
    out = tmp_path / "S"
    with pytest.raises(SystemExit, match="--paired"):
        screen.main(["--stage", "vitsplit", "--out", str(out), f"round22={root}"])
    assert screen.main(["--stage", "vitsplit", "--paired", "--out", str(out),
                        f"round22={root}"]) == 0  # fmt: skip
    text = (out / "vitsplit_paired.md").read_text()
    assert "## warm-up and decay: 2 ViTs; the paired rule picks **attention split 2x8**" in text
    assert "## constant: 1 ViTs; the paired rule picks **attention split 1x3**" in text
    assert (out / "vitsplit_paired.png").stat().st_size > 0
    diffs = screen.seed_diffs(root, "vit_p4_h8", SPLIT, "vitsplit")
    assert [round(sum(d) / len(d), 6) for d in diffs] == [0.0, -0.01, 0.02]


def test_the_fitwd_screen_reads_decay_and_threshold_pairs(screen, tmp_path):
    """``fitwd``: columns ``"fit part decay d x c"`` read as pairs, picked by the paired rule per
    schedule (under a constant lr ``2x0.1`` harms ``wine_ln_h128c`` on every seed: ``1x0.1``
    picked; under a warm-up ``2x0.1``), its figure drawn with one panel per decay and today's
    column left out. Mutants caught: the stage's columns not read as pairs (``split_of``), the
    paired rule ignored."""

    names = ["today's defaults", "fit part decay 1x0.1", "fit part decay 2x0.1"]
    assert [screen.split_of(n) for n in names] == [None, (1.0, 0.1), (2.0, 0.1)]
    rows = {"cancer_ln_h128c": [2.5, 2.2, 2.0], "wine_ln_h128c": [1.2, 1.1, 1.0],
            "iris_ln_h64_cos": [0.9, 0.85, 0.8]}
    shift = {"cancer_ln_h128c": {1: -0.01, 2: -0.03}, "wine_ln_h128c": {1: -0.01, 2: +0.02},
             "iris_ln_h64_cos": {1: -0.01, 2: -0.02}}
    root = tmp_path / "R29"
    _pair_screen(root, "fitwd", names, rows, shift, "fit_part_decay", [[1.0, 0.1], [2.0, 0.1]])
    out = tmp_path / "S"
    assert screen.main(["--stage", "fitwd", "--paired", "--out", str(out),
                        f"round29={root}"]) == 0  # fmt: skip
    text = (out / "fitwd_paired.md").read_text()
    assert "## constant: 2 classifiers; the paired rule picks **fit part decay 1x0.1**" in text
    assert ("## warm-up and decay: 1 classifiers; the paired rule picks **fit part decay 2x0.1**"
            in text)
    assert (out / "fitwd_paired.png").stat().st_size > 0


def test_the_cnnkernel_screen_draws_the_kernels_decay_along_the_axis(screen, tmp_path):
    """``cnnkernel``: columns ``"cnn decays c x 1"`` read as pairs, picked by the paired rule on the
    warm-up class only (``16x1`` harms ``cnn_bn_c40_cos`` on every seed: ``8x1`` picked; the
    constant-lr class has no CNN and says so), its figure drawn one panel per linear layers' decay
    with the kernels' decay along the axis (today's 4 x 1 on it). Mutants caught: the pair drawn as
    ``cnnsplit`` draws it (a panel per kernels' decay), the paired rule ignored (``16x1``)."""

    names = ["today's defaults", "cnn decays 8x1", "cnn decays 16x1"]
    assert [screen.split_of(n) for n in names] == [None, (8.0, 1.0), (16.0, 1.0)]
    assert [screen.drawn_pair(n, "cnnkernel") for n in names] == [None, (1.0, 8.0), (1.0, 16.0)]
    assert screen.drawn_pair(names[1], "cnnsplit") == (8.0, 1.0)
    rows = {"cnn_shapes_c8_b32": [4.3, 3.5, 3.0], "cnn_bn_c40_cos": [1.0, 0.99, 1.1],
            "cnn_bn_h32_b32": [1.5, 1.3, 1.2]}
    shift = {"cnn_shapes_c8_b32": {1: -0.05, 2: -0.08}, "cnn_bn_c40_cos": {1: -0.001, 2: +0.02},
             "cnn_bn_h32_b32": {1: -0.02, 2: -0.03}}
    sets = []
    for task, profile in (("cnn_shapes_c8_b32", "round31"), ("cnn_bn_c40_cos", "round32"),
                          ("cnn_bn_h32_b32", "round30")):  # each task read where it lives
        root = tmp_path / profile
        _pair_screen(root, "cnnkernel", names, {task: rows[task]}, shift, "cnn_decays",
                     [[8.0, 1.0], [16.0, 1.0]])
        sets.append(f"{profile}={root}")
    out = tmp_path / "S"
    assert screen.main(["--stage", "cnnkernel", "--paired", "--out", str(out), *sets]) == 0
    text = (out / "cnnkernel_paired.md").read_text()
    assert "## constant: no batch-norm CNNs screened" in text
    assert ("## warm-up and decay: 3 batch-norm CNNs; the paired rule picks **cnn decays 8x1**"
            in text)
    assert (out / "cnnkernel_paired.png").stat().st_size > 0


def test_the_mlpsmall_screen_reads_pairs_below_round_28s(screen, tmp_path):
    """``mlpsmall``: columns ``"mlp split a x b"`` below round 28's 0.5 x 0.5, picked by the paired
    rule on the constant-lr class (``0.125x0.125`` harms the still-fitting ``digits_ln_h32`` on
    every seed: ``0.25x0.25`` picked), the warm-up class empty and said so, the figure drawn with
    today's pair at 0.5 x 0.5. Mutants caught: the paired rule ignored (``0.125x0.125``)."""
    names = ["today's defaults", "mlp split 0.25x0.25", "mlp split 0.125x0.125"]
    rows = {"cancer_ln_wide": [1.5, 1.2, 1.0], "digits_ln_h32": [1.1, 1.09, 1.3]}
    shift = {"cancer_ln_wide": {1: -0.02, 2: -0.04}, "digits_ln_h32": {1: -0.001, 2: +0.03}}
    sets = []
    for task, profile in (("cancer_ln_wide", "round10"), ("digits_ln_h32", "round11")):
        root = tmp_path / profile
        _pair_screen(root, "mlpsmall", names, {task: rows[task]}, shift, "mlp_split",
                     [[0.25, 0.25], [0.125, 0.125]])
        sets.append(f"{profile}={root}")
    out = tmp_path / "S"
    assert screen.main(["--stage", "mlpsmall", "--paired", "--out", str(out), *sets]) == 0
    text = (out / "mlpsmall_paired.md").read_text()
    assert "## warm-up and decay: no LayerNorm MLPs screened" in text
    assert "## constant: 2 LayerNorm MLPs; the paired rule picks **mlp split 0.25x0.25**" in text
    assert (out / "mlpsmall_paired.png").stat().st_size > 0


@pytest.mark.parametrize("stage", ["cnnstep", "cnnmid"])
def test_the_cnnstep_screen_reads_a_cnns_two_lrs_as_pairs(screen, tmp_path, stage):
    """``cnnstep`` (and ``cnnmid``, its finer grid): columns ``"cnn split a x b"`` read as pairs,
    picked by the paired rule per schedule (under a warm-up ``2x2`` harms ``cnn_bn_c40_cos`` on
    every seed: ``1x2`` picked; under a constant lr ``2x2``), the figure drawn with today's pair at
    1 x 1. Mutants caught: the columns not read as pairs (``split_of``), the paired rule ignored
    (``2x2`` under a warm-up)."""
    names = ["today's defaults", "cnn split 1x2", "cnn split 2x2"]
    assert [screen.split_of(n) for n in names] == [None, (1.0, 2.0), (2.0, 2.0)]
    rows = {"cnn_shapes_c8_b32": [3.8, 3.0, 2.0], "cnn_bn_c40_cos": [1.06, 1.0, 1.2],
            "cnn_bn_h112c": [0.7, 0.68, 0.6]}
    shift = {"cnn_shapes_c8_b32": {1: -0.05, 2: -0.1}, "cnn_bn_c40_cos": {1: -0.002, 2: +0.02},
             "cnn_bn_h112c": {1: -0.001, 2: -0.01}}
    sets = []
    for task, profile in (("cnn_shapes_c8_b32", "round31"), ("cnn_bn_c40_cos", "round32"),
                          ("cnn_bn_h112c", "round33")):  # each task read where it lives
        root = tmp_path / profile
        _pair_screen(root, stage, names, {task: rows[task]}, shift, "cnn_split",
                     [[1.0, 2.0], [2.0, 2.0]])
        sets.append(f"{profile}={root}")
    out = tmp_path / "S"
    assert screen.main(["--stage", stage, "--paired", "--out", str(out), *sets]) == 0
    text = (out / f"{stage}_paired.md").read_text()
    assert ("## warm-up and decay: 2 batch-norm CNNs; the paired rule picks **cnn split 1x2**"
            in text)
    assert "## constant: 1 batch-norm CNNs; the paired rule picks **cnn split 2x2**" in text
    assert (out / f"{stage}_paired.png").stat().st_size > 0


def test_the_mlpbeta_screen_reads_a_beta2_per_column(screen, tmp_path):
    """``mlpbeta``: columns ``"mlp beta2 b"`` read as one-lever settings, picked by the paired rule
    per schedule (under a constant lr 0.999 harms the still-fitting ``digits_ln_h32`` on every
    seed: 0.99 picked; under a warm-up 0.999), the figure drawn. Mutant caught: the paired rule
    ignored (0.999 under a constant lr)."""
    names = ["today's defaults", "mlp beta2 0.99", "mlp beta2 0.999"]
    assert [screen.decay_of(n) for n in names] == [0.0, 0.99, 0.999]
    rows = {"cancer_ln_wide": [1.5, 1.3, 1.1], "digits_ln_h32": [1.1, 1.09, 1.3],
            "cancer_ln_d3": [1.8, 1.6, 1.4]}
    shift = {"cancer_ln_wide": {1: -0.02, 2: -0.04}, "digits_ln_h32": {1: -0.001, 2: +0.03},
             "cancer_ln_d3": {1: -0.01, 2: -0.03}}
    sets = []
    for task, profile in (("cancer_ln_wide", "round10"), ("digits_ln_h32", "round11"),
                          ("cancer_ln_d3", "round11")):
        root = tmp_path / f"{profile}_{task}"
        _pair_screen(root, "mlpbeta", names, {task: rows[task]}, shift, "mlp_beta2",
                     [0.99, 0.999])
        sets.append(f"{profile}={root}")
    out = tmp_path / "S"
    assert screen.main(["--stage", "mlpbeta", "--paired", "--out", str(out), *sets]) == 0
    text = (out / "mlpbeta_paired.md").read_text()
    assert "## constant: 2 LayerNorm MLPs; the paired rule picks **mlp beta2 0.99**" in text
    assert ("## warm-up and decay: 1 LayerNorm MLPs; the paired rule picks **mlp beta2 0.999**"
            in text)
    assert (out / "mlpbeta_paired.png").stat().st_size > 0
