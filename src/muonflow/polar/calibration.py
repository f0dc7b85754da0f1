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


@functools.lru_cache(maxsize=64)
def _device_name(device: torch.device) -> str:
    """(Kept per device: every planned map call reads the cache key.)"""
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
#: Wall-clock budget of :func:`measure` (seconds): no further round of measurements starts
#: after it, and the largest eigh size is skipped when its first call takes an eighth of it
#: (a loaded machine; its time is then extrapolated).
BUDGET_S = 1.0


def _time_all(
    fns: dict[str, Callable[[], object]], device: torch.device
) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds of one call of each function, ``(fastest, typical)``, measured in interleaved
    rounds (a burst of other work then hits every quantity alike, so their ratios hold).

    With one intra-op thread on a CPU: 3 rounds in the thread's CPU time (other processes
    sharing the cores do not inflate it), and both are the fastest. Otherwise wall time (CUDA
    synchronized) over 5 rounds: the fastest, and the median — with several threads on a busy
    machine each parallel region waits for its slowest thread, and the typical call is what a
    plan will meet.
    """
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    single = not cuda and torch.get_num_threads() == 1
    clock = time.thread_time if single else time.perf_counter
    reps = 3 if single else 5
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    for fn in fns.values():  # warm-up: allocation, library initialization
        fn()
    for i in range(reps):
        if i and time.perf_counter() - start > BUDGET_S:  # a busy host: fewer rounds
            break
        for k, fn in fns.items():
            sync()
            t0 = clock()
            fn()
            sync()
            times[k].append(clock() - t0)
    fast = {k: max(min(v), 1e-7) for k, v in times.items()}
    typical = fast if single else {k: max(sorted(v)[len(v) // 2], 1e-7) for k, v in times.items()}
    return fast, typical


def _spd(batch: int, r: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(r)
    X = torch.randn(batch, r, r, generator=g, dtype=dtype).to(device)
    return X @ X.mT / r + torch.eye(r, dtype=dtype, device=device)


#: GEMM sizes ``s`` (``[B, s, s]`` with ``B s³`` fixed) and eigh sizes ``(r, B)`` measured.
_GEMM_SIZES = {"cpu": (16, 48, 128, 512), "cuda": (32, 128, 512, 2048)}
_EIGH_SIZES = ((16, 64), (64, 8), (128, 2), (256, 1), (512, 1))


def measure(device: torch.device) -> HostRates:
    """Measure the rates of ``device`` at the current thread count (:func:`_time_all`; about
    0.3-0.8 s on a quiet CPU): float32 GEMMs, bfloat16 ones where :func:`bf16_native`, a
    float64 GEMM, eigh (``r = 512`` only if its first call takes under ``BUDGET_S/8``), one
    elementwise pass and a tiny operator. GEMMs, the pass and the operator count at their
    fastest, eigh at its typical time (the same with one thread)."""
    cuda = device.type == "cuda"
    work = 2**30 if cuda else 2**24  # B s³ per GEMM
    low = bf16_native(device)
    fns: dict[str, Callable[[], object]] = {}
    flops: dict[str, float] = {}
    for dtype, tag in ((torch.float32, "f32"), (torch.bfloat16, "low")):
        if tag == "low" and not low:
            continue
        for s in _GEMM_SIZES["cuda" if cuda else "cpu"]:
            b = max(1, work // s**3)
            A = _spd(b, s, torch.float32, device).to(dtype)
            fns[f"{tag} {s}"] = functools.partial(torch.bmm, A, A)
            flops[f"{tag} {s}"] = 2.0 * b * s**3
    A64 = _spd(max(1, work // 128**3), 128, torch.float64, device)
    fns["f64"] = functools.partial(torch.bmm, A64, A64)
    tiny = torch.zeros(4, 4, device=device)
    fns["call"] = lambda: [tiny.add_(1.0) for _ in range(16)]  # 16 calls: one is ~µs
    big = torch.zeros(2**22 if cuda else 2**20, device=device)
    fns["pass"] = functools.partial(big.mul_, 1.0)
    for r, b in _EIGH_SIZES:
        S = _spd(b, r, torch.float32, device)
        fn = functools.partial(torch.linalg.eigh, S)
        if r == 512:
            t0 = time.perf_counter()
            fn()
            if time.perf_counter() - t0 > BUDGET_S / 8:  # a slow (busy) host: extrapolate
                continue
        fns[f"eigh {r} {b}"] = fn
    # GEMMs, passes and calls at their fastest (what the hardware does), eigh at its typical
    # time: under contention its many small parallel regions collapse (a 10-100x slowdown
    # seen with 2 threads on a busy 2-core host) where large GEMMs lose little
    t, typical = _time_all(fns, device)

    def table(tag: str) -> Table:
        out: list[tuple[float, float]] = []
        for key in (k for k in fns if k.startswith(tag + " ")):
            rate = flops[key] / t[key]
            # a larger GEMM is never less efficient per flop: a slower reading is another
            # process's burst (seen at 14x on a shared 2-core host), not the hardware
            out.append((float(key.split()[1]), max(rate, out[-1][1]) if out else rate))
        return tuple(out)

    gemm32 = table("f32")
    f64 = t["f64"] / t["f32 128"]  # the same [B, 128, 128] product in float64 and float32
    overhead = t["call"] / 16
    bandwidth = 2.0 * big.numel() * 4 / max(t["pass"] - overhead, 1e-9)
    eigh: list[tuple[float, float]] = []
    for key in (k for k in fns if k.startswith("eigh")):  # a larger eigh is never faster
        per = typical[key] / int(key.split()[2])
        eigh.append((float(key.split()[1]), max(per, eigh[-1][1]) if eigh else per))
    return HostRates(host_key(device), gemm32, table("low"), max(f64, 1.0), tuple(eigh),
                     overhead, bandwidth)  # fmt: skip


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
