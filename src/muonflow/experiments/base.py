"""Experiment registry: one frozen config dataclass + one run function per claim of the paper.

An experiment is registered with :func:`experiment`::

    @dataclass(frozen=True)
    class Config:
        n: int = 64        # matrix size
        seed: int = 0

    @experiment("smoothing", title=..., claim=..., config=Config,
                profiles={"smoke": {"n": 8}, "full": {"n": 512}})
    def run(cfg: Config, ctx: Context) -> Result: ...

The dataclass defaults are the ``quick`` profile; ``profiles`` holds overrides for the others.
A run returns :class:`Result` — checks (value vs a threshold derived from theory or numerics,
with a one-sentence reason), raw series (JSON-able) and figure files — never a verdict computed
elsewhere: the report is built from these saved results only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROFILES = ("smoke", "quick", "full")


@dataclass(frozen=True)
class Check:
    """One pass/fail comparison, ``value <relation> threshold``, and why that threshold."""

    value: float
    threshold: float | tuple[float, float]
    relation: str  # "<=", ">=" or "in" (threshold = (lo, hi))
    why: str

    @property
    def passed(self) -> bool:
        v = self.value
        if not math.isfinite(v):
            return False
        if self.relation == "<=":
            return v <= typing.cast(float, self.threshold)
        if self.relation == ">=":
            return v >= typing.cast(float, self.threshold)
        lo, hi = typing.cast(tuple[float, float], self.threshold)
        return lo <= v <= hi

    def to_json(self) -> dict[str, Any]:
        thr = list(self.threshold) if isinstance(self.threshold, tuple) else self.threshold
        return {
            "value": _json_float(self.value),
            "threshold": thr,
            "relation": self.relation,
            "passed": self.passed,
            "why": self.why,
        }


def at_most(value: float, threshold: float, why: str) -> Check:
    return Check(float(value), float(threshold), "<=", why)


def at_least(value: float, threshold: float, why: str) -> Check:
    return Check(float(value), float(threshold), ">=", why)


def within(value: float, lo: float, hi: float, why: str) -> Check:
    return Check(float(value), (float(lo), float(hi)), "in", why)


@dataclass
class Result:
    """What an experiment hands back: checks, raw series, figure file names, findings."""

    checks: dict[str, Check] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Context:
    """Where an experiment writes and how it reports progress."""

    out_dir: Path
    progress: Callable[[float, str], None] = lambda frac, msg: None

    def figure_path(self, name: str) -> Path:
        return self.out_dir / name


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    claim: str
    config: type
    run: Callable[[Any, Context], Result]
    profiles: dict[str, dict[str, Any]]
    #: bump when the experiment's code changes meaningfully, so resumed runs recompute it.
    version: int = 1

    def make_config(self, profile: str = "quick", overrides: Iterable[str] = ()) -> Any:
        """The frozen config for ``profile`` with ``key=value`` overrides, type-checked."""
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
        cfg = self.config(**self.profiles.get(profile, {}))
        updates = parse_overrides(self.config, overrides)
        return dataclasses.replace(cfg, **updates) if updates else cfg


REGISTRY: dict[str, Experiment] = {}


def experiment(
    name: str,
    *,
    title: str,
    claim: str,
    config: type,
    profiles: dict[str, dict[str, Any]] | None = None,
    version: int = 1,
) -> Callable[[Callable[[Any, Context], Result]], Callable[[Any, Context], Result]]:
    """Register ``fn(cfg, ctx) -> Result`` as experiment ``name``."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"config of experiment {name!r} must be a dataclass")
    fields = {f.name for f in dataclasses.fields(config)}
    if "seed" not in fields:
        raise TypeError(f"config of experiment {name!r} must have a 'seed' field")
    for prof, over in (profiles or {}).items():
        unknown = set(over) - fields
        if prof not in PROFILES or unknown:
            raise TypeError(f"experiment {name!r}: bad profile {prof!r} or keys {unknown}")

    def register(fn: Callable[[Any, Context], Result]) -> Callable[[Any, Context], Result]:
        if name in REGISTRY:
            raise ValueError(f"experiment {name!r} registered twice")
        REGISTRY[name] = Experiment(name, title, claim, config, fn, dict(profiles or {}), version)
        return fn

    return register


def _parse_value(text: str, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    if origin is tuple:
        args = typing.get_args(typ)
        elem = args[0]
        parts = [p for p in text.split(",") if p.strip()]
        return tuple(_parse_value(p.strip(), elem, key) for p in parts)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(typ):
            if arg is type(None):
                if text.lower() == "none":
                    return None
                continue
            try:
                return _parse_value(text, arg, key)
            except ValueError:
                continue
        raise ValueError(f"--set {key}={text!r}: expected {typ}")
    if typ is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--set {key}={text!r}: expected a boolean (true/false)")
    if typ in (int, float, str):
        try:
            return typ(text)
        except ValueError:
            raise ValueError(f"--set {key}={text!r}: expected {typ.__name__}") from None
    raise ValueError(f"--set {key}: fields of type {typ} cannot be set from the command line")


def parse_overrides(config: type, overrides: Iterable[str]) -> dict[str, Any]:
    """Parse ``["key=value", ...]`` against ``config``'s field types; unknown keys are rejected."""
    hints = typing.get_type_hints(config)
    valid = [f.name for f in dataclasses.fields(config)]
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in valid:
            raise ValueError(f"unknown config key {key!r}; valid: {', '.join(valid)}")
        out[key] = _parse_value(text.strip(), hints[key], key)
    return out


def config_dict(cfg: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def config_hash(exp: Experiment, cfg: Any) -> str:
    """Identity of a run's inputs: experiment name, code version and config."""
    blob = json.dumps([exp.name, exp.version, config_dict(cfg)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)
