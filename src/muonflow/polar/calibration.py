r"""The host's rates for the ``method="auto"`` cost model, measured once and cached on disk.

The planner (:mod:`.planning`) predicts the time of each path from

.. math::
    t_{gemm}(B, m, k, n) = c + \frac{2Bmkn}{R(s)},\ s = (mkn)^{1/3}, \qquad
    t_{eigh}(B, r) = c + B\,e(r), \qquad t_{pass}(N) = c + \frac{bytes(N)}{W},

with ``R`` the GEMM rate per dtype (float32; bfloat16 where the hardware has it natively;
float64 as a factor), ``e(r)`` the seconds of one symmetric eigendecomposition, ``W`` the
bandwidth of an elementwise pass and ``c`` the cost of one operator call. They are measured
by :func:`measure` (well under a second on a quiet CPU) for the current torch version, device
and thread count (eigh's LAPACK and every small operator slow down on a busy multi-threaded
machine, so the thread count is part of the key), and cached as JSON in
``$MUONFLOW_CACHE_DIR`` (else ``$XDG_CACHE_HOME/muonflow``, else ``~/.cache/muonflow``).
Nothing is measured at import; the first ``method="auto"`` call with a ``tol`` measures.
:func:`clear_cache` deletes the file; ``MUONFLOW_CALIBRATION=off`` (or :func:`use_rates`) uses
fixed rates instead (:func:`reference_rates`). Design and numbers: ``docs/polar.md``.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

__all__ = [
    "HostRates",
    "bf16_native",
    "cache_path",
    "clear_cache",
    "host_key",
    "host_rates",
    "measure",
    "reference_rates",
    "use_rates",
]

#: Environment variables: the cache folder, and ``off`` to use :func:`reference_rates`.
CACHE_ENV = "MUONFLOW_CACHE_DIR"
SWITCH_ENV = "MUONFLOW_CALIBRATION"
_FILE = "host-rates.json"
_VERSION = 1

Table = tuple[tuple[float, float], ...]


def _interp(table: Table, x: float, slope_hi: float | None = None) -> float:
    """Piecewise log-log interpolation of ``table`` (ascending x) at ``x``; constant beyond
    the ends, or with log-log slope ``slope_hi`` above the last point."""
    xs = [p[0] for p in table]
    if x <= xs[0]:
        return table[0][1]
    if x >= xs[-1]:
        if slope_hi is None:
            return table[-1][1]
        return table[-1][1] * (x / xs[-1]) ** slope_hi
    i = bisect.bisect_right(xs, x)
    (x0, y0), (x1, y1) = table[i - 1], table[i]
    t = math.log(x / x0) / math.log(x1 / x0)
    return math.exp((1 - t) * math.log(y0) + t * math.log(y1))


#: Growth of eigh's time with ``r`` above the largest measured size (log-log slope): LAPACK's
#: ``syevd`` gains BLAS-3 efficiency with size (measured 2.0 from 256 to 512 and 2.5 from 512
#: to 1024, one thread); 2.5 errs on the slow side.
EIGH_SLOPE = 2.5


@dataclass(frozen=True)
class HostRates:
    """Measured (or reference) rates of one device at one thread count; hashable, so plans
    built from it are cached."""

    key: str  #: what they were measured for (:func:`host_key`)
    gemm32: Table  #: ``(s, flop/s)`` of float32 ``[B, s, s] @ [B, s, s]``
    gemm_low: Table  #: the same in bfloat16; empty where bfloat16 is not native
    float64: float  #: float64 / float32 GEMM time at ``s = 128``
    eigh32: Table  #: ``(r, seconds)`` of one float32 ``r x r`` eigendecomposition
    overhead: float  #: seconds per operator call
    bandwidth: float  #: bytes/s of an elementwise pass (read + write)
    measured: bool = True  #: False: :func:`reference_rates`

    @property
    def low_native(self) -> bool:
        """Whether bfloat16 GEMMs run natively (and were measured)."""
        return bool(self.gemm_low)

    def gemm(self, dtype: torch.dtype, batch: float, m: float, k: float, n: float) -> float:
        """Seconds of ``[batch, m, k] @ [batch, k, n]`` in ``dtype``."""
        s = (m * k * n) ** (1 / 3)
        if dtype in (torch.bfloat16, torch.float16):
            rate = _interp(self.gemm_low, s) if self.gemm_low else _interp(self.gemm32, s) / 64
        else:
            rate = _interp(self.gemm32, s)
            if dtype == torch.float64:
                rate /= self.float64
        return self.overhead + 2.0 * batch * m * k * n / rate

    def eigh(self, dtype: torch.dtype, batch: float, r: float) -> float:
        """Seconds of ``torch.linalg.eigh`` of ``[batch, r, r]`` (float64: ``float64`` x)."""
        t = _interp(self.eigh32, r, slope_hi=EIGH_SLOPE)
        if r < self.eigh32[0][0]:  # below the smallest measured size: at least O(r^2) cheaper
            t = self.eigh32[0][1] * (r / self.eigh32[0][0]) ** 2
        f = self.float64 if dtype == torch.float64 else 1.0
        return self.overhead + batch * t * f

    def passes(self, count: float, numel: float, dtype: torch.dtype) -> float:
        """Seconds of ``count`` elementwise passes (read + write) over ``numel`` entries."""
        size = torch.empty((), dtype=dtype).element_size()
        return count * (self.overhead + 2.0 * numel * size / self.bandwidth)


# -- what the hardware offers ------------------------------------------------------------------
#: ATen CPU capabilities with bfloat16 dot products in their kernels' instruction sets
#: (oneDNN then runs bfloat16 GEMMs natively); lower ones (``AVX2``, ``DEFAULT``) emulate.
_LOW_CAPABILITIES = ("AVX512", "AMX", "SVE")


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 GEMMs natively, by the capability torch reports.

    CUDA: ``torch.cuda.is_bf16_supported(including_emulation=False)``. CPU: the ATen kernel
    capability (``torch.backends.cpu.get_cpu_capability()``, lowered by
    ``ATEN_CPU_CAPABILITY``) is AVX-512-class (or AMX/SVE) and oneDNN reports bfloat16 support
    (lowered by ``ONEDNN_MAX_CPU_ISA``); the CPU's model name is never consulted. Whether
    bfloat16 is also *faster* is the calibration's business.
    """
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type != "cpu":
        return False
    cap = torch.backends.cpu.get_cpu_capability().upper()
    if not cap.startswith(_LOW_CAPABILITIES):
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        cap = ".".join(map(str, torch.cuda.get_device_capability(idx)))
        return f"cuda {torch.cuda.get_device_name(idx)} sm{cap}"
    if device.type == "cpu":
        cpu = platform.processor() or platform.machine()
        return f"cpu {torch.backends.cpu.get_cpu_capability()} {cpu} x{os.cpu_count()}"
    return device.type


def host_key(device: torch.device) -> str:
    """The cache key: torch version, device (CPU capability and processor, or GPU name) and
    intra-op thread count."""
    return f"torch {torch.__version__} | {_device_name(device)} | {torch.get_num_threads()} threads"


# -- reference rates ---------------------------------------------------------------------------
def reference_rates(device_type: str) -> HostRates:
    """Fixed rates for when calibration is off (and for tests): on CPU a float32 GEMM rate
    rising with size and ``eigh`` at ``5 + 1200/r`` GEMMs of its size (measured
    single-threaded on a 2-core AVX2 host, ``docs/polar.md``), no native bfloat16; on
    accelerators half-precision GEMMs at 4x float32's rate and no competitive eigh."""
    if device_type in ("cpu", "meta"):
        gemm: Table = ((8.0, 1.5e10), (32.0, 5e10), (128.0, 1e11), (512.0, 1.2e11))
        eigh: Table = tuple(
            (r, (5.0 + 1200.0 / r) * 2 * r**3 / _interp(gemm, r))
            for r in (8.0, 32.0, 128.0, 512.0, 1024.0)
        )
        return HostRates("reference cpu", gemm, (), 2.0, eigh, 2e-6, 1e10, measured=False)
    gemm = ((32.0, 1e11), (256.0, 1e13), (2048.0, 5e13))
    low = tuple((s, 4 * v) for s, v in gemm)
    eigh = ((32.0, 1e-3), (256.0, 5e-3), (2048.0, 0.2))  # batched eigh: latency-bound
    return HostRates(f"reference {device_type}", gemm, low, 2.0, eigh, 1e-5, 1e12, False)


# -- measuring ---------------------------------------------------------------------------------
#: Wall-clock budget of :func:`measure` (seconds): the largest eigh size is skipped once the
#: measurements so far took this long (a loaded machine); its time is then extrapolated.
BUDGET_S = 1.0


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """Seconds of one call after a warm-up. With one intra-op thread on a CPU: the fastest of
    3 calls in the thread's CPU time (other processes sharing the cores do not inflate it).
    Otherwise wall time (CUDA synchronized), the median of 5: with several threads on a busy
    machine each parallel region waits for its slowest thread, and the typical call, not the
    luckiest, is what a plan will meet."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    single = not cuda and torch.get_num_threads() == 1
    clock = time.thread_time if single else time.perf_counter
    reps = 3 if single else 5

    def run(fn: Callable[[], object]) -> float:
        fn()  # warm-up: allocation, library initialization
        times = []
        for _ in range(reps):
            sync()
            t0 = clock()
            fn()
            sync()
            times.append(clock() - t0)
        t = min(times) if single else sorted(times)[reps // 2]
        return max(t, 1e-7)

    return run


def _spd(batch: int, r: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(r)
    X = torch.randn(batch, r, r, generator=g, dtype=dtype).to(device)
    return X @ X.mT / r + torch.eye(r, dtype=dtype, device=device)


def measure(device: torch.device) -> HostRates:
    """Measure the rates of ``device`` at the current thread count (:func:`_timer`; about
    0.3-0.8 s on a quiet CPU). GEMMs of ``[B, s, s]`` with ``B s^3`` fixed
    per size, bfloat16 only where :func:`bf16_native`, eigh up to ``r = 512`` (CPU) within
    :data:`BUDGET_S`."""
    run = _timer(device)
    t_start = time.perf_counter()
    cuda = device.type == "cuda"
    sizes = (32, 128, 512, 2048) if cuda else (16, 48, 128, 512)
    work = 2**30 if cuda else 2**24  # B s^3 per GEMM measurement

    def gemm_table(dtype: torch.dtype) -> Table:
        out = []
        for s in sizes:
            b = max(1, work // s**3)
            A = _spd(b, s, torch.float32, device).to(dtype)
            t = run(functools.partial(torch.bmm, A, A))
            out.append((float(s), 2.0 * b * s**3 / t))
        return tuple(out)

    gemm32 = gemm_table(torch.float32)
    low = gemm_table(torch.bfloat16) if bf16_native(device) else ()
    A = _spd(max(1, work // 128**3), 128, torch.float64, device)
    t64 = run(lambda: torch.bmm(A, A))
    f64 = t64 / (2.0 * A.shape[0] * 128**3 / _interp(gemm32, 128.0))
    tiny = torch.zeros(4, 4, device=device)
    overhead = run(lambda: [tiny.add_(1.0) for _ in range(16)]) / 16
    big = torch.zeros(2**22 if cuda else 2**20, device=device)
    bandwidth = 2.0 * big.numel() * 4 / max(run(lambda: big.mul_(1.0)) - overhead, 1e-9)
    eigh: list[tuple[float, float]] = []
    for r, b in ((16, 64), (64, 8), (128, 2), (256, 1), (512, 1)):
        if r == 512 and time.perf_counter() - t_start > BUDGET_S:
            break
        S = _spd(b, r, torch.float32, device)
        eigh.append((float(r), run(functools.partial(torch.linalg.eigh, S)) / b))
    return HostRates(host_key(device), gemm32, low, max(f64, 1.0), tuple(eigh), overhead,
                     bandwidth)  # fmt: skip


# -- the cache -----------------------------------------------------------------------------------
def cache_path() -> Path:
    """``$MUONFLOW_CACHE_DIR/host-rates.json``, else under ``$XDG_CACHE_HOME/muonflow``, else
    ``~/.cache/muonflow``."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(xdg) / "muonflow")
    return Path(root) / _FILE


def _load() -> dict[str, HostRates]:
    path = cache_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        if data.get("version") != _VERSION:
            return {}
        out = {}
        for key, e in data["entries"].items():
            def table(name: str, e: dict = e) -> Table:
                return tuple((float(a), float(b)) for a, b in e[name])

            rates = HostRates(
                key,
                table("gemm32"),
                table("gemm_low"),
                float(e["float64"]),
                table("eigh32"),
                float(e["overhead"]),
                float(e["bandwidth"]),
            )
            if not rates.gemm32 or not rates.eigh32:
                raise ValueError("empty table")
            out[key] = rates
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        warnings.warn(
            f"ignoring the unreadable muonflow calibration cache {path} ({err}); it will be "
            "measured again and rewritten",
            RuntimeWarning,
            stacklevel=3,
        )
        return {}


def _store(entries: dict[str, HostRates]) -> None:
    path = cache_path()
    records = {}
    for key, rates in entries.items():
        d = asdict(rates)
        d.pop("key")
        d.pop("measured")
        records[key] = d
    data = {"version": _VERSION, "entries": records}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)  # atomic: concurrent processes never read half a file
    except OSError as err:  # a read-only home: keep the rates for this process only
        warnings.warn(f"could not write {path} ({err})", RuntimeWarning, stacklevel=3)


def clear_cache() -> None:
    """Delete the cache file and forget this process's measurements (the next ``"auto"``
    call measures again)."""
    _MEMO.clear()
    with contextlib.suppress(FileNotFoundError):
        cache_path().unlink()


_MEMO: dict[str, HostRates] = {}
_PINNED: list[HostRates] = []


@contextlib.contextmanager
def use_rates(rates: HostRates) -> Iterator[HostRates]:
    """Plan with ``rates`` inside the block, on every device (tests; what-if studies)."""
    _PINNED.append(rates)
    try:
        yield rates
    finally:
        _PINNED.pop()


def host_rates(device: torch.device) -> HostRates:
    """The rates the planner uses for ``device`` now: pinned by :func:`use_rates`; the
    reference ones if ``MUONFLOW_CALIBRATION=off`` or the device is not a CPU or GPU;
    else this process's, the cache's, or freshly measured and cached (:func:`measure`)."""
    if _PINNED:
        return _PINNED[-1]
    off = os.environ.get(SWITCH_ENV, "").strip().lower() in ("off", "0", "false", "no")
    if off or device.type not in ("cpu", "cuda"):
        return reference_rates(device.type)
    key = host_key(device)
    rates = _MEMO.get(key)
    if rates is None:
        entries = _load()
        rates = entries.get(key)
        if rates is None:
            rates = measure(device)
            entries[key] = rates
            _store(entries)
        _MEMO[key] = rates
    return rates
