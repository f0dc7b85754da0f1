"""Results on disk: series, metrics, atomic writes, output folders.

An experiment's folder ``OUT/<name>/`` holds

- ``series.npz`` + ``series.json`` — what ``simulate`` returned: a tree of dicts whose numeric
  arrays (tensors, arrays, numeric lists) are stored in the ``.npz`` (exact binary) and whose
  scalars and strings are in the ``.json``; non-finite floats are tagged
  (``{"__float__": "nan"}``), so the JSON is strict and round-trips exactly;
- ``metrics.json`` — the verdict: ``{"name", "status", "checks": {name: {"value",
  "threshold", "relation", "passed", "kind", "why", "catches"}}, "config", ...}``
  (``docs/reproduction.md``; non-finite check values are the strings ``"nan"``/``"inf"``);
- the PNG figures.

Files are written through a temporary file renamed into place and get the permissions the
process umask allows (as ``open()`` would), not ``mkstemp``'s 0600. Temporary names carry the
host and process id that made them (``.NAME.run-HOST-PID-xxxx.tmp``), so a later run removes
what a killed one left (:func:`clean_stale_temps`) and never what a live one is using.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np

METRICS = "metrics.json"
SERIES_JSON = "series.json"
SERIES_NPZ = "series.npz"
FAILED = "failed_run.json"

_REQUIRED = ("name", "status", "checks", "config", "config_hash")
_CHECK_KEYS = ("value", "threshold", "passed", "kind")


class CorruptResultError(ValueError):
    """A saved result that cannot be read; the message says which and how to redo it."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _chmod_default(path: Path, directory: bool = False) -> None:
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_many(path.parent, {path.name: data})


def atomic_write_many(folder: Path, files: dict[str, bytes]) -> None:
    """Write every file of ``files`` (name -> content) in ``folder`` under a temporary name,
    then rename them all into place: an error before the renames leaves every earlier file as
    it was."""
    tmps: dict[str, str] = {}
    try:
        for name, data in files.items():
            fd, tmps[name] = tempfile.mkstemp(dir=folder, prefix=_owned(f".{name}."), suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            _chmod_default(Path(tmps[name]))
        for name, tmp in tmps.items():
            os.replace(tmp, Path(folder) / name)
    finally:
        for tmp in tmps.values():
            Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps(obj: Any) -> str:
    """Strict JSON (a NaN or Inf left anywhere raises instead of writing a bare token)."""
    return json.dumps(obj, indent=1, allow_nan=False)


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by the string ``'nan'``/``'inf'``/``'-inf'``."""
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def _owned(prefix: str) -> str:
    """``prefix`` + ``HOST-PID-``: whose temporary file or folder this is."""
    return f"{prefix}{_host()}-{os.getpid()}-"


#: ``.NAME.<what>[.-]HOST-PID-xxxxxxxx.tmp`` (host and ``tempfile``'s part have no ``.``/``-``)
_OWNED = re.compile(r"^\..*[.-](?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[a-z0-9_]+\.tmp$")
#: untagged, from older versions: ``.NAME.run-xxxxxxxx.tmp``, ``.metrics.json.xxxxxxxx.tmp``
_LEGACY = re.compile(
    r"^\.([A-Za-z0-9_]+\.(run|old)-|(metrics\.json|series\.json|series\.npz|failed_run\.json"
    r"|report\.md|report\.html|[A-Za-z0-9_.-]+\.png)\.)[a-z0-9_]{8}\.tmp$"
)


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A fresh directory under ``parent`` (same file system, for an atomic swap), named with
    its owner (:func:`clean_stale_temps`)."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=_owned(prefix), suffix=".tmp"))
    _chmod_default(path, directory=True)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temps(out: Path) -> list[Path]:
    """Remove the temporary files and folders that killed runs left in the results folder
    ``out`` and its result folders: those of this host whose process is gone, and the untagged
    ones of older versions (only names this module makes). Returns what was removed."""
    removed = []
    here = _host()
    folders = [out, *(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))]
    for folder in folders:
        for p in folder.iterdir():
            m = _OWNED.match(p.name)
            stale = (m is not None and m["host"] == here and not _alive(int(m["pid"]))) or (
                m is None and _LEGACY.match(p.name) is not None
            )
            if stale:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def check_writable(folder: Path, what: str) -> None:
    """Raise ``ValueError`` (naming ``what`` and the reason) unless files can be created in the
    existing ``folder``: a temporary folder is made and removed, nothing else is touched."""
    try:
        probe = make_temp_dir(folder, ".write-probe-")
        probe.rmdir()
    except OSError as exc:
        raise ValueError(f"{what} {folder} is not writable: {exc.strerror or exc}") from None


def check_out_dir(out: Path) -> Path:
    """Create ``out`` if needed and make sure files can be written in it — before any work.

    Raises ``ValueError`` with a clear message if ``out`` is a file, or is not writable.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {out} is not writable: {exc.strerror or exc}") from None
    check_writable(out, "--out")
    return out


# -- figures -----------------------------------------------------------------------------------
#: A figure is a plain PNG file name: no folder part, no leading dot.
_FIGURE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\.png$")


def is_figure_name(name: Any) -> bool:
    """Whether ``name`` is a plain ``*.png`` file name (what ``figure`` functions may return)."""
    return isinstance(name, str) and _FIGURE_NAME.match(name) is not None and ".." not in name


def figure_path(folder: Path, name: Any) -> Path:
    """The file of figure ``name`` in a result ``folder``: a plain ``*.png`` name whose file,
    symbolic links resolved, lies inside ``folder``. Raises :class:`CorruptResultError`
    otherwise (a ``metrics.json`` naming ``../../secret.txt`` must not make the report embed
    that file)."""
    folder = Path(folder)
    hint = f"rerun it: muonflow run {folder.name} --out {folder.parent}"
    if not is_figure_name(name):
        raise CorruptResultError(
            f"{folder / METRICS} names figure {name!r}: figures must be plain '*.png' file "
            f"names inside {folder} (no folders, '..', absolute paths or leading dots); {hint}"
        )
    path = folder / name
    if path.exists() or path.is_symlink():
        real, root = path.resolve(), folder.resolve()
        if not real.is_relative_to(root) or not real.is_file():
            raise CorruptResultError(
                f"figure {name!r} of {folder.name} is a link to {real}, outside {folder} or not "
                f"a file; the report embeds only files inside the results folder; {hint}"
            )
    return path


# -- series ------------------------------------------------------------------------------------
def _is_scalar(x: Any) -> bool:
    return isinstance(x, bool | int | float | str | np.generic) or x is None


def _encode_scalar(x: Any) -> Any:
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return {"__float__": str(x)}
    return x


def _decode(x: Any, arrays: Any) -> Any:
    if isinstance(x, dict):
        if set(x) == {"__float__"}:
            return float(x["__float__"])
        if set(x) == {"__array__"}:
            return np.asarray(arrays[x["__array__"]])
        return {k: _decode(v, arrays) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode(v, arrays) for v in x]
    return x


def _as_array(x: Any) -> np.ndarray | None:
    """A numeric array for tensors, arrays and (nested, rectangular) numeric lists; else None."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biuf":
            raise TypeError(f"series arrays must be numeric, got dtype {x.dtype}")
        return x
    if isinstance(x, list | tuple):
        if any(isinstance(v, dict | str) or v is None for v in _flat(x)):
            return None
        try:
            arr = np.asarray(x)
        except ValueError:  # ragged
            return None
        return arr if arr.dtype.kind in "biuf" else None
    return None


def _flat(x: Any) -> list[Any]:
    if isinstance(x, list | tuple):
        return [v for item in x for v in _flat(item)]
    return [x]


def encode_series(series: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """``(json_tree, arrays)``: arrays replaced by ``{"__array__": key}`` references."""
    arrays: dict[str, np.ndarray] = {}

    def enc(x: Any, path: str) -> Any:
        if isinstance(x, dict):
            out = {}
            for k, v in x.items():
                if not isinstance(k, str):
                    raise TypeError(f"series keys must be strings, got {k!r} at {path or '/'}")
                out[k] = enc(v, f"{path}/{k}")
            return out
        arr = _as_array(x)
        if arr is not None:
            key = f"a{len(arrays)}"
            arrays[key] = arr
            return {"__array__": key}
        if _is_scalar(x):
            return _encode_scalar(x)
        if isinstance(x, list | tuple):  # ragged or mixed: a JSON list
            return [enc(v, f"{path}/{i}") for i, v in enumerate(x)]
        raise TypeError(f"cannot save {type(x).__name__} at {path or '/'} in a series")

    return enc(series, ""), arrays


def save_series(series: dict[str, Any], directory: Path) -> None:
    """Write ``series.json`` and ``series.npz`` into ``directory``."""
    tree, arrays = encode_series(series)
    directory = Path(directory)
    import io

    buf = io.BytesIO()
    np.savez(buf, **cast(dict[str, Any], arrays))
    atomic_write_bytes(directory / SERIES_NPZ, buf.getvalue())
    atomic_write_text(directory / SERIES_JSON, dumps(tree))


def load_series(directory: Path) -> dict[str, Any]:
    """The series saved by :func:`save_series` (numeric arrays as ``numpy`` arrays)."""
    directory = Path(directory)
    try:
        tree = json.loads((directory / SERIES_JSON).read_text(encoding="utf-8"))
        with np.load(directory / SERIES_NPZ, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        return _decode(tree, arrays)
    except (OSError, ValueError, KeyError) as exc:
        raise CorruptResultError(f"the series in {directory} cannot be read ({exc})") from None


# -- metrics -----------------------------------------------------------------------------------
def validate_metrics(data: Any, path: Path) -> dict[str, Any]:
    """Return ``data`` if it is a complete metrics dict; raise :class:`CorruptResultError`."""
    name = path.parent.name
    hint = f"rerun it: muonflow run {name} --out {path.parent.parent}"
    if not isinstance(data, dict):
        raise CorruptResultError(f"corrupt result {path} (not a JSON object); {hint}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise CorruptResultError(f"corrupt result {path} (missing {', '.join(missing)}); {hint}")
    if data["status"] not in ("ok", "error") or not isinstance(data["checks"], dict):
        raise CorruptResultError(f"corrupt result {path} (bad status or checks); {hint}")
    for cname, c in data["checks"].items():
        if not isinstance(c, dict) or any(k not in c for k in _CHECK_KEYS):
            raise CorruptResultError(f"corrupt result {path} (check {cname!r} incomplete); {hint}")
    return data


def load_metrics(path: Path) -> dict[str, Any]:
    """Read and validate ``metrics.json``; :class:`CorruptResultError` if torn or incomplete."""
    path = Path(path)
    name = path.parent.name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        hint = f"rerun it: muonflow run {name} --out {path.parent.parent}"
        raise CorruptResultError(f"corrupt result {path} ({exc}); {hint}") from None
    return validate_metrics(data, path)


def try_load_metrics(path: Path) -> dict[str, Any] | None:
    """Saved metrics, or None if missing, torn or incomplete (then: not finished)."""
    try:
        return load_metrics(path)
    except (FileNotFoundError, CorruptResultError):
        return None


def counts(metrics: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """``{"claim": (passed, total), "sanity": (passed, total)}``."""
    out = {}
    for kind in ("claim", "sanity"):
        cs = [c for c in metrics["checks"].values() if c["kind"] == kind]
        out[kind] = (sum(bool(c["passed"]) for c in cs), len(cs))
    return out


def ratio(pair: tuple[int, int] | list[int]) -> str:
    """``"passed/total"``."""
    return f"{pair[0]}/{pair[1]}"


def passed(metrics: dict[str, Any]) -> bool:
    """Finished without error and every check (claim and sanity) passed."""
    return metrics["status"] == "ok" and all(c["passed"] for c in metrics["checks"].values())
