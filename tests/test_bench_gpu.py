"""``benchmarks/bench_gpu.py`` runs without a GPU: its CPU dry run times every column (the
calibrated map, the mixed map, the Newton–Schulz baselines), the FLOP floor and the optimizer
step on tiny shapes, so the GPU run cannot fail on a typo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "bench_gpu.py"


def test_gpu_benchmark_dry_run_on_cpu(tmp_path):
    out = tmp_path / "table.md"
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", "--repeats", "1",
           "--warmup", "1", "--tols", "0.1", "--markdown", str(out)]  # fmt: skip
    run = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    table = out.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| tall") or
            line.startswith("| stack")]  # fmt: skip
    assert len(rows) == 2
    for row in rows:  # shape, 4 map cells, mixed, 4 baselines, NS error, limit
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 1 + 4 + 1 + 4 + 1 + 1
        assert all(cells)
    assert "RegMuon / Muon" in table
