"""The planner's host rates: measurement, the on-disk cache, its key, and the bfloat16 switch.

The suite runs with ``MUONFLOW_CALIBRATION=off`` (conftest); these tests turn it back on with
a temporary cache folder. No test asserts a wall-clock time.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import muonflow as mf

PC = importlib.import_module("muonflow.polar.calibration")
P = importlib.import_module("muonflow.polar")


@pytest.fixture
def calibrating(monkeypatch, tmp_path):
    """Calibration on, cache in ``tmp_path``, this process's memory of rates empty; returns
    the list of devices ``measure`` was called for (it returns the reference rates)."""
    monkeypatch.delenv(PC.SWITCH_ENV, raising=False)
    monkeypatch.setenv(PC.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(PC, "_MEMO", {})
    calls: list[torch.device] = []

    def fake_measure(device):
        calls.append(device)
        return dataclasses.replace(
            PC.reference_rates("cpu"), key=PC.host_key(device), measured=True
        )

    monkeypatch.setattr(PC, "measure", fake_measure)
    return calls


def test_measure_gives_sane_rates():
    # Real measurement (about 0.3-1 s): positive finite rates at ascending sizes; bfloat16
    # measured exactly where bf16_native says so; eigh at least at r = 16, 64, 128, 256.
    rates = PC.measure(torch.device("cpu"))
    assert rates.measured and rates.key == PC.host_key(torch.device("cpu"))
    for table in (rates.gemm32, rates.gemm_low, rates.eigh32):
        sizes = [s for s, _ in table]
        assert sizes == sorted(sizes)
        assert all(v > 0 and math.isfinite(v) for _, v in table)
    assert rates.low_native == P.bf16_native(torch.device("cpu"))
    assert [r for r, _ in rates.eigh32][:4] == [16.0, 64.0, 128.0, 256.0]
    assert rates.float64 >= 1.0 and rates.overhead > 0 and rates.bandwidth > 0


def test_cache_measures_once_and_reloads(calibrating):
    path = PC.cache_path()
    cpu = torch.device("cpu")
    first = P.host_rates(cpu)
    assert calibrating == [cpu] and path.exists()
    assert P.host_rates(cpu) is first  # this process remembers
    PC._MEMO.clear()  # a new process: read from disk, no measurement
    again = P.host_rates(cpu)
    assert calibrating == [cpu] and again == first
    assert PC.host_key(cpu) in json.loads(path.read_text())["entries"]
    P.clear_cache()
    assert not path.exists()
    P.host_rates(cpu)
    assert len(calibrating) == 2


def test_corrupt_cache_is_ignored_with_a_warning_and_rewritten(calibrating):
    path = PC.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    for bad in ("{not json", json.dumps({"version": 1, "entries": {"k": {"gemm32": 3}}})):
        path.write_text(bad)
        PC._MEMO.clear()
        with pytest.warns(RuntimeWarning, match="unreadable muonflow calibration cache"):
            rates = P.host_rates(torch.device("cpu"))
        assert rates.gemm32  # measured again
        assert PC.host_key(torch.device("cpu")) in json.loads(path.read_text())["entries"]


def _key_is_sound(host_key) -> bool:
    """The key names torch's version, the CPU capability, and changes with the thread count."""
    cpu = torch.device("cpu")
    key = host_key(cpu)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        other = host_key(cpu)
    finally:
        torch.set_num_threads(threads)
    cap = torch.backends.cpu.get_cpu_capability()
    return torch.__version__ in key and cap in key and other != key


def test_key_names_torch_device_and_threads():
    assert _key_is_sound(PC.host_key)
    # planted bug (kept as code): a key without the thread count reuses a 1-thread measurement
    # for 2 threads, where eigh can be 10x slower
    assert not _key_is_sound(lambda d: PC.host_key(d).rsplit(" | ", 1)[0])


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(PC.CACHE_ENV, str(tmp_path / "a"))
    assert PC.cache_path() == tmp_path / "a" / "host-rates.json"
    monkeypatch.delenv(PC.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert PC.cache_path() == tmp_path / "xdg" / "muonflow" / "host-rates.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert PC.cache_path().parent.parent.name == ".cache"


def test_switch_off_and_pinned_rates(calibrating, monkeypatch):
    monkeypatch.setenv(PC.SWITCH_ENV, "off")
    assert not P.host_rates(torch.device("cpu")).measured and calibrating == []
    monkeypatch.delenv(PC.SWITCH_ENV)
    pinned = dataclasses.replace(PC.reference_rates("cpu"), key="pinned")
    with P.use_rates(pinned):
        assert P.host_rates(torch.device("cpu")) is pinned
    assert calibrating == []  # neither measured


def test_exact_calls_and_import_never_calibrate(calibrating, gen):
    # tol=None is the exact path: no plan, no measurement; "auto" with a tol measures once
    G = torch.randn(4, 12, 8, generator=gen)
    mf.regularized_polar(G, 0.1)
    assert calibrating == []
    mf.regularized_polar(G, 0.1, tol=1e-2)
    mf.regularized_polar(G, 0.1, tol=1e-2)
    assert calibrating == [torch.device("cpu")]


def _python(code: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_measures_nothing(tmp_path):
    env = {PC.CACHE_ENV: str(tmp_path), PC.SWITCH_ENV: "on"}
    _python("import muonflow, muonflow.polar, muonflow.optim", env)
    assert list(tmp_path.iterdir()) == []


def test_bf16_native_by_capability(monkeypatch):
    # The ATen capability decides on CPU (never the model name): AVX2 kernels emulate bf16
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not P.bf16_native(torch.device("cpu"))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert P.bf16_native(torch.device("cpu"))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert not P.bf16_native(torch.device("cpu"))
    assert not P.bf16_native(torch.device("meta"))


def test_forced_avx2_takes_the_float32_paths(tmp_path):
    # ATEN_CPU_CAPABILITY=avx2 / ONEDNN_MAX_CPU_ISA=AVX2 hide native bfloat16 (on this
    # project's AVX-512 BF16 hosts: bf16 GEMMs then run ~100x slower): no bfloat16 rates are
    # measured and "auto" never plans the mixed path, whatever the tolerance.
    env = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", PC.CACHE_ENV:
           str(tmp_path), PC.SWITCH_ENV: "on", "OMP_NUM_THREADS": "1"}  # fmt: skip
    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from muonflow.polar import bf16_native, host_rates, plan_auto\n"
        "G = torch.randn(8, 64, 32)\n"
        "plans = {plan_auto(G, 0.01 * float(G.norm()), t).method for t in (0.07, 0.1, 0.2)}\n"
        "print(bf16_native(torch.device('cpu')), host_rates(torch.device('cpu')).low_native,"
        " 'mixed' in plans)"
    )
    assert _python(code, env) == "False False False"
