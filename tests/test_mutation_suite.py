"""The mutation suite (``tests/mutants``): its catalog, its patches, its margins, and runs of it.

The suite plants plausible library bugs at run time and requires each to fail a *claim* check of
the reproduction (``python -m tests.mutants``; docs/reproduction.md). Here:

- the catalog holds at least 30 mutants, among them every bug the reproduction was once blind
  to; every mutant's patch applies (its seam exists) and is undone completely;
- the margin of a failed check is computed as documented;
- two mutants run end to end through one experiment each (smoke profile) and fail a claim check;
- the whole suite (slow, about half an hour on two cores; opt in with
  ``MUONFLOW_MUTATION_SUITE=1``): every mutant fails a claim check on its profile, and the
  library without a mutant fails none.
"""

from __future__ import annotations

import inspect
import math
import os
import sys

import pytest
from mutants.catalog import all_mutants
from mutants.run import BASELINE, caught, failed_claims, main, margin, run_one

from muonflow.experiments import REGISTRY  # registers the experiments, loads the library

#: bugs the reproduction was blind or weak to before the suite existed; each must stay caught
REQUIRED = (
    "hd_without_damping", "rk4_without_damping", "leapfrog_ledger_x2", "hd_ledger_x2",
    "pde_velocity_one_cell_off", "pde_dissipation_x2", "fast_map_polar_factor",
    "ema_one_minus_beta_squared", "force_constants_x10", "map_old_momentum", "nesterov_ignored",
    "h_max_without_gamma2_eps", "relative_eps_frobenius", "own_contribution_twice",
    "undone_matrix_update", "force_without_n",
)  # fmt: skip


def _bindings() -> dict[tuple[str, str], int]:
    """Identity of everything the patches could touch: every attribute of every loaded muonflow
    module and of every class defined in one."""
    out = {}
    for name, mod in list(sys.modules.items()):
        if mod is None or not (name == "muonflow" or name.startswith("muonflow.")):
            continue
        for attr, value in list(vars(mod).items()):
            out[(name, attr)] = id(value)
            if inspect.isclass(value) and value.__module__ == name:
                for a, v in list(vars(value).items()):
                    out[(f"{name}.{attr}", a)] = id(v)
    return out


def test_catalog_holds_every_required_mutant():
    catalog = all_mutants()
    assert len(catalog) >= 30
    assert set(REQUIRED) <= set(catalog)
    for m in catalog.values():
        assert m.profile in ("smoke", "quick") and m.bug and m.seam
        assert m.experiments and set(m.experiments) <= set(REGISTRY), m.name


@pytest.mark.parametrize("name", sorted(all_mutants()))
def test_patch_applies_and_is_undone(name):
    before = _bindings()
    mp = pytest.MonkeyPatch()
    all_mutants()[name].plant(mp)
    try:
        assert _bindings() != before, "the mutant changed nothing"
    finally:
        mp.undo()
    assert _bindings() == before


def test_margin_is_the_relative_excess():
    assert margin({"value": 3.0, "threshold": 1.0, "relation": "<="}) == pytest.approx(2.0)
    assert margin({"value": 0.5, "threshold": 2.0, "relation": ">="}) == pytest.approx(0.75)
    assert margin({"value": 0.25, "threshold": 0.0, "relation": "<="}) == pytest.approx(0.25)
    band = {"value": 1.3, "threshold": [0.9, 1.1], "relation": "in"}
    assert margin(band) == pytest.approx(2.0)
    assert math.isinf(margin({"value": "nan", "threshold": 1.0, "relation": "<="}))


@pytest.mark.parametrize(
    ("name", "experiment"),
    [("undone_matrix_update", "continuous_limit"), ("force_without_n", "particles_vs_pde")],
)
def test_a_mutant_fails_a_claim_check(name, experiment):
    result = run_one(name, "smoke", (experiment,))
    assert result["experiments"][experiment]["status"] == "ok"
    assert caught(result)
    assert all(c["margin"] > 0 for _, c in failed_claims(result))


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MUONFLOW_MUTATION_SUITE") != "1",
                    reason="the whole mutation suite: set MUONFLOW_MUTATION_SUITE=1")
def test_every_mutant_fails_a_claim_check(capsys):
    assert main(["--baseline", "--jobs", "2"]) == 0, capsys.readouterr().out
    assert BASELINE == "none"
