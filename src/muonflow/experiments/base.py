"""Experiment registry: a frozen config, ``simulate``, ``checks`` and ``figure`` per claim.

An experiment is four small parts (registered with :func:`experiment`)::

    @dataclass(frozen=True)
    class Config:
        n: int = 64        # matrix size
        seed: int = 0

    def simulate(cfg: Config, progress: Progress) -> dict:       # the expensive part
        return {"errors": np.array(...), "h": 0.1}                # series, saved to disk

    def checks(series: dict, cfg: Config) -> dict[str, Check]:    # pure function of series
        return {"order": within(fit(series), 0.9, 1.1, kind="claim", why=..., catches=...)}

    def figure(series: dict, cfg: Config) -> dict[str, Figure]:   # pure function of series
        ...

    experiment("name", title=..., claim=..., config=Config, simulate=simulate, checks=checks,
               figure=figure, profiles={"smoke": {"n": 8}, "full": {"n": 512}})

The dataclass defaults are the ``quick`` profile; ``profiles`` holds overrides for the others.
The runner saves the series (``series.npz`` + ``series.json``) and evaluates ``checks`` and
``figure`` on the series read back from disk, so ``muonflow report`` rebuilds both from the
saved series alone. A check is a *claim* check (it tests the paper) or a *sanity* check
(implementation, numerics, regression); each names the plausible bug it catches.

Configs are validated before anything runs: every number must be finite, and positive unless
the config lists the field in ``NONNEGATIVE`` (``>= 0``) or ``SIGNED`` (any finite value);
``seed >= 0``; integers fit a signed 64-bit integer (``INT_MAX``). An experiment's
``validate(cfg)`` adds its own relations (e.g. ``n_ref >= 16·max(Ns)``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

PROFILES = ("smoke", "quick", "full")
KINDS = ("claim", "sanity")
RELATIONS = ("<=", ">=", "in")

#: ``progress(fraction in [0, 1], message)``: what ``simulate`` reports as it goes.
Progress = Callable[[float, str], None]


def no_progress(frac: float, msg: str = "") -> None:
    """A :data:`Progress` that says nothing."""


@dataclass(frozen=True)
class Check:
    """One pass/fail comparison, ``value <relation> threshold``.

    ``kind``: ``"claim"`` (tests a claim of the paper) or ``"sanity"`` (implementation,
    numerics or a regression of the library against itself). ``why``: one sentence on where the
    threshold comes from. ``catches``: the plausible bug that must fail the check.
    """

    value: float
    threshold: float | tuple[float, float]
    relation: str
    kind: str
    why: str
    catches: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"check kind must be one of {KINDS}, got {self.kind!r}")
        if self.relation not in RELATIONS:
            raise ValueError(f"check relation must be one of {RELATIONS}, got {self.relation!r}")
        if not self.why.strip() or not self.catches.strip():
            raise ValueError("a check needs a reason (why) and the bug it catches (catches)")

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
        thr = self.threshold
        return {
            "value": json_number(self.value),
            "threshold": [json_number(t) for t in thr] if isinstance(thr, tuple) else
            json_number(thr),
            "relation": self.relation,
            "passed": self.passed,
            "kind": self.kind,
            "why": self.why,
            "catches": self.catches,
        }


def json_number(x: float) -> float | str:
    """``x`` for strict JSON: finite floats as they are, NaN/Inf as the strings 'nan', 'inf'."""
    x = float(x)
    return x if math.isfinite(x) else str(x)


def at_most(value: float, threshold: float, *, kind: str, why: str, catches: str) -> Check:
    """``value <= threshold``."""
    return Check(float(value), float(threshold), "<=", kind, why, catches)


def at_least(value: float, threshold: float, *, kind: str, why: str, catches: str) -> Check:
    """``value >= threshold``."""
    return Check(float(value), float(threshold), ">=", kind, why, catches)


def within(
    value: float, lo: float, hi: float, *, kind: str, why: str, catches: str
) -> Check:
    """``lo <= value <= hi``."""
    return Check(float(value), (float(lo), float(hi)), "in", kind, why, catches)


Series = dict[str, Any]


@dataclass(frozen=True)
class Experiment:
    """A registered experiment: config type, the three functions and the profiles."""

    name: str
    title: str
    claim: str
    config: type
    simulate: Callable[[Any, Progress], Series]
    checks: Callable[[Series, Any], dict[str, Check]]
    figure: Callable[[Series, Any], dict[str, Any]]
    profiles: dict[str, dict[str, Any]]
    notes: Callable[[Series, Any], list[str]] | None = None
    validate: Callable[[Any], None] | None = None
    #: bump when the experiment's code changes meaningfully, so resumed runs recompute it.
    version: int = 1

    def make_config(self, profile: str = "quick", overrides: Iterable[str] = ()) -> Any:
        """The frozen, validated config for ``profile`` with ``key=value`` overrides.

        Raises ``ValueError`` (naming the field and the value) before anything runs.
        """
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
        cfg = self.config(**self.profiles.get(profile, {}))
        updates = parse_overrides(self.config, overrides)
        if updates:
            cfg = dataclasses.replace(cfg, **updates)
        try:
            validate_numbers(cfg)
            if self.validate is not None:
                self.validate(cfg)
        except ValueError as exc:
            raise ValueError(f"{self.name}: invalid config: {exc}") from None
        return cfg


REGISTRY: dict[str, Experiment] = {}


def experiment(
    name: str,
    *,
    title: str,
    claim: str,
    config: type,
    simulate: Callable[[Any, Progress], Series],
    checks: Callable[[Series, Any], dict[str, Check]],
    figure: Callable[[Series, Any], dict[str, Any]],
    profiles: dict[str, dict[str, Any]] | None = None,
    notes: Callable[[Series, Any], list[str]] | None = None,
    validate: Callable[[Any], None] | None = None,
    version: int = 1,
) -> Experiment:
    """Register experiment ``name`` and return it."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"config of experiment {name!r} must be a dataclass")
    fields = {f.name for f in dataclasses.fields(config)}
    if "seed" not in fields:
        raise TypeError(f"config of experiment {name!r} must have a 'seed' field")
    for prof, over in (profiles or {}).items():
        unknown = set(over) - fields
        if prof not in PROFILES or unknown:
            raise TypeError(f"experiment {name!r}: bad profile {prof!r} or keys {unknown}")
    if name in REGISTRY:
        raise ValueError(f"experiment {name!r} registered twice")
    exp = Experiment(
        name, title, claim, config, simulate, checks, figure, dict(profiles or {}), notes,
        validate, version,
    )
    REGISTRY[name] = exp
    return exp


# -- config validation -----------------------------------------------------------------------
def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, tuple | list):
        return [x for v in value for x in _numbers(v)]
    return []


#: Largest integer a config may hold: integers become tensor sizes and seeds, and torch takes
#: them as signed 64-bit (``torch.manual_seed`` refuses more than 2^64 - 1 and experiments add
#: small offsets to the seed).
INT_MAX = 2**63 - 1


def validate_numbers(cfg: Any) -> None:
    """Every number of ``cfg`` finite; positive unless listed in ``NONNEGATIVE`` / ``SIGNED``;
    integers within ``±INT_MAX`` (``seed`` in ``[0, INT_MAX]``)."""
    nonneg = set(getattr(cfg, "NONNEGATIVE", ())) | {"seed"}
    signed = set(getattr(cfg, "SIGNED", ()))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        ints = [v for v in (value if isinstance(value, tuple) else (value,))
                if isinstance(v, int) and not isinstance(v, bool)]  # fmt: skip
        if any(abs(v) > INT_MAX for v in ints):  # before float(): 10**400 overflows it
            lo = -INT_MAX if f.name in signed else (0 if f.name in nonneg else 1)
            raise ValueError(
                f"{f.name} must be an integer in [{lo}, {INT_MAX}] (2**63 - 1), got {value!r}"
            )
        nums = _numbers(value)
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(value, tuple) and not value and _numbers(default):
            raise ValueError(f"{f.name} must not be empty")
        for x in nums:
            if not math.isfinite(x):
                raise ValueError(f"{f.name} must be finite, got {value!r}")
            if f.name in signed:
                continue
            if f.name in nonneg and x < 0:
                raise ValueError(f"{f.name} must be >= 0, got {value!r}")
            if f.name not in nonneg and x <= 0:
                raise ValueError(f"{f.name} must be > 0, got {value!r}")


def require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition`` (for ``validate`` functions)."""
    if not condition:
        raise ValueError(message)


# -- overrides ---------------------------------------------------------------------------------
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


def config_from_dict(config: type, data: dict[str, Any]) -> Any:
    """Rebuild a config saved by :func:`config_dict` (lists back to tuples)."""
    valid = {f.name for f in dataclasses.fields(config)}
    unknown = set(data) - valid
    if unknown:
        raise ValueError(f"saved config has unknown keys {sorted(unknown)}")
    return config(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def config_hash(exp: Experiment, cfg: Any) -> str:
    """Identity of a run's inputs: experiment name, code version and config."""
    blob = json.dumps([exp.name, exp.version, config_dict(cfg)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
