r"""Measurements of the mean-field theory: Wasserstein distances, chaos, stability.

The statements measured: docs/theory.md §5 (propagation of chaos, well-posedness).

* :func:`wasserstein2` — the quadratic Wasserstein distance between two particle clouds
  through POT: exact (network simplex, ``ot.emd2``) for small clouds, sliced
  (``ot.sliced_wasserstein_distance``, a lower bound) for large ones.
* :func:`propagation_of_chaos` — **synchronous coupling**: a reference system of
  ``N_ref >= 16 N_max`` particles is integrated once; each ``N``-system is started from
  ``N`` of the *same* initial draws (the reference cloud is cut into ``N_ref / N`` disjoint
  replicas, all integrated in one batched call), and the error of the observables
  ``m_ρ(t) = ∫F dρ_t`` and ``J(ρ_t)`` against the reference is averaged over replicas:

  .. math::
      e_N(t) = \Big(\frac1S\sum_{s=1}^S \|O(\rho^{(s)}_{N,t}) - O(\rho_{N_{ref},t})\|^2\Big)^{1/2}
      \approx C(t)\,N^{-1/2}.

  The fitted exponent of ``e_N`` against ``N`` is the chaos rate (theory: ``−1/2``). Because
  the reference shares the draws, the variance is ``σ²(1/N − 1/N_ref)``: with
  ``N_ref >= 16 N_max`` this biases the fitted exponent by less than ``0.02``.
* :func:`stability` — well-posedness: two initial laws at distance ``δ`` (the cloud and a
  perturbed copy, coupled particle by particle) are integrated together and their distance
  ``d(t)`` is compared with the Gronwall form ``C e^{Lt} δ`` (``C``, ``L`` fitted).

Every integration goes through :func:`muonflow.dynamics.integrate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._checks import check_choice, check_scale
from .._deps import require
from ..dynamics import HamiltonianFlow, integrate
from ._state import State, as_blocks, flatten, from_blocks
from .objective import ProbabilityObjective

__all__ = [
    "ChaosResult",
    "StabilityResult",
    "coupling_distance",
    "fit_power_law",
    "phase_space",
    "propagation_of_chaos",
    "stability",
    "wasserstein2",
]


def phase_space(theta: State, P: State) -> Tensor:
    """``[N, 2D]``: each particle's parameters and momenta flattened and concatenated."""
    return torch.cat([flatten(theta), flatten(P)], dim=1)


def _cloud(X: State | Tensor, name: str) -> np.ndarray:
    blocks, _ = as_blocks(X, name)
    if blocks[0].shape[0] == 0:
        raise ValueError(f"{name} is an empty cloud (shape {tuple(blocks[0].shape)})")
    return flatten(X).detach().double().cpu().numpy()


def wasserstein2(
    X: State | Tensor,
    Y: State | Tensor,
    *,
    method: str = "auto",
    exact_max: int = 4096,
    n_projections: int = 256,
    seed: int = 0,
) -> float:
    r"""``W₂`` between the uniform empirical measures of clouds ``X: [N, ...]``, ``Y: [M, ...]``.

    Each particle is flattened to a vector (blocks concatenated; use :func:`phase_space` for
    ``(θ, P)`` clouds).

    .. math::  W_2(\mu, \nu)^2 = \min_{\pi \in \Pi(\mu,\nu)} \sum_{ij} \pi_{ij}\,\|x_i - y_j\|^2

    ``method``: ``"exact"`` (``ot.emd2``, network simplex, ``O(N²)`` memory), ``"sliced"``
    (``ot.sliced_wasserstein_distance`` with ``n_projections`` random directions; the sliced
    distance ``SW₂ <= W₂``), or ``"auto"`` (exact when ``max(N, M) <= exact_max``).
    """
    check_choice(method, "method", {"auto", "exact", "sliced"})
    x, y = _cloud(X, "X"), _cloud(Y, "Y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"wasserstein2: the clouds live in different dimensions: {x.shape} vs {y.shape}"
        )
    if method == "auto":
        method = "exact" if max(len(x), len(y)) <= exact_max else "sliced"
    ot = require("ot", "the Wasserstein distance")
    a = np.full(len(x), 1.0 / len(x))
    b = np.full(len(y), 1.0 / len(y))
    if method == "exact":
        # squared distances from exact differences (ot.dist expands ‖x‖² + ‖y‖² − 2⟨x, y⟩,
        # which cancels catastrophically for nearby clouds)
        M = (
            torch.cdist(
                torch.from_numpy(x),
                torch.from_numpy(y),
                compute_mode="donot_use_mm_for_euclid_dist",
            )
            .square()
            .numpy()
        )
        cost = ot.emd2(a, b, M, numItermax=max(100_000, 50 * len(x) * len(y)))
        return math.sqrt(max(float(cost), 0.0))
    return float(ot.sliced_wasserstein_distance(x, y, a, b, n_projections=n_projections, seed=seed))


def coupling_distance(X: State | Tensor, Y: State | Tensor) -> float:
    r"""The cost of the identity coupling, :math:`(\frac1N\sum_i \|x_i - y_i\|^2)^{1/2} \ge W_2`."""
    x, y = _cloud(X, "X"), _cloud(Y, "Y")
    if x.shape != y.shape:
        raise ValueError(
            f"coupling_distance needs clouds of equal shape, got {x.shape} vs {y.shape}"
        )
    return float(np.sqrt(np.mean(np.sum((x - y) ** 2, axis=1))))


def fit_power_law(n: Tensor, err: Tensor) -> float:
    """Least-squares exponent ``a`` of ``err ≈ c n^a`` (slope of ``log err`` on ``log n``)."""
    x = torch.log(torch.as_tensor(n, dtype=torch.float64))
    y = torch.log(torch.as_tensor(err, dtype=torch.float64))
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / xc.square().sum())


def _segments(times: Tensor) -> list[float]:
    t = torch.as_tensor(times, dtype=torch.float64).flatten()
    if t.numel() == 0 or float(t[0]) < 0 or bool((t.diff() <= 0).any()):
        raise ValueError(f"times must be non-negative and strictly increasing, got {t.tolist()}")
    return torch.diff(t, prepend=t.new_zeros(1)).tolist()


def _evolve(
    flow: HamiltonianFlow,
    theta: State,
    P: State,
    times: Tensor,
    observe,
    *,
    h: float | None,
    method: str,
) -> list:
    """Integrate segment by segment and call ``observe(theta, P)`` at each time."""
    out = []
    for dt in _segments(times):
        if dt > 0:
            traj = integrate(flow, theta, P, dt, h=h, method=method, record_every=10**9)
            theta, P = traj.W, traj.P
        out.append(observe(theta, P))
    return out


@dataclass(frozen=True)
class ChaosResult:
    r"""Synchronous-coupling errors against the reference system.

    ``Ns [K]``, ``times [T]``, ``replicas [K]`` (systems averaged per ``N``), ``n_ref``;
    ``errors[name]``: ``[K, T]`` RMS errors (over replicas) of

    - ``"mean_feature"``: :math:`\|m_N - m_{ref}\|`;
    - ``"J"``: :math:`|J_N - J_{ref}|`;
    - ``"coupling"``: the phase-space RMS particle distance
      :math:`(\frac1N\sum_i |z_i^N - z_i^{ref}|^2)^{1/2}`, ``z = (θ, P)`` (pooled over replicas);
    - ``"J_linear"`` and ``"J_remainder"`` (risks with an explicit gradient): the linear part
      :math:`\langle\nabla R(m_{ref}), m_N - m_{ref}\rangle` of ``J``'s error and the rest;

    ``slopes[name]``: ``[T]`` fitted exponents per time; ``slope[name]``: the mean of the
    per-time ones; ``w2``: ``[K, len(w2_times)]`` raw ``W₂`` between the first ``N``-system's
    phase-space cloud and the whole reference cloud at the requested time indices (empty if
    none were asked); ``reference``: the reference system's observables, ``"mean_feature"``
    ``[T, *out]`` and ``"J"`` ``[T]`` (the proxy of the mean-field solution).
    """

    Ns: Tensor
    times: Tensor
    replicas: Tensor
    n_ref: int
    errors: dict[str, Tensor]
    slopes: dict[str, Tensor]
    slope: dict[str, float]
    w2: Tensor
    reference: dict[str, Tensor]


def propagation_of_chaos(
    objective: ProbabilityObjective,
    kinetic,
    gamma: float,
    theta_ref: State,
    P_ref: State,
    Ns: list[int],
    times: Tensor | list[float],
    *,
    h: float | None,
    method: str = "muon",
    max_replicas: int | None = None,
    w2_times: tuple[int, ...] = (),
) -> ChaosResult:
    r"""Measure propagation of chaos by synchronous coupling (see the module docs).

    Args:
        objective: a single-system :class:`ProbabilityObjective`.
        kinetic, gamma: the kinetic potential and damping of the flow.
        theta_ref, P_ref: ``N_ref`` i.i.d. initial draws of ``μ_0`` (states ``[N_ref, ...]``).
        Ns: particle counts; ``N_ref >= 16 max(Ns)`` is required.
        times: increasing observation times (``0`` allowed: the initial sampling error).
        h, method: passed to :func:`~muonflow.dynamics.integrate` (same scheme and step for
            every ``N``, so the time-discretization error cancels in the comparison).
        max_replicas: cap on the replicas per ``N`` (default ``N_ref // N``, all of them).
        w2_times: indices into ``times`` at which to also compute the raw ``W₂`` (exact LP)
            between the first replica's cloud and the reference cloud.
    """
    blocks, p_blocks, is_tuple, Ns, t = _chaos_inputs(
        objective, theta_ref, P_ref, Ns, times, w2_times
    )
    n_ref = blocks[0].shape[0]
    ref = _Observed.run(objective, kinetic, gamma, theta_ref, P_ref, t, h=h, method=method,
                        packed=False)
    errs: dict[str, list[Tensor]] = {}
    w2 = torch.zeros(len(Ns), len(w2_times), dtype=torch.float64)
    reps = []
    for i, n in enumerate(Ns):
        S = n_ref // n if max_replicas is None else min(n_ref // n, max_replicas)
        th0 = from_blocks(tuple(x[: S * n] for x in blocks), is_tuple)
        P0 = from_blocks(tuple(x[: S * n] for x in p_blocks), is_tuple)
        obs = _Observed.run(objective.with_systems(S), kinetic, gamma, th0, P0, t, h=h,
                            method=method, packed=True)  # fmt: skip
        for key, e in _coupled_errors(obs, ref, objective.risk).items():
            errs.setdefault(key, []).append(e)
        for j, k in enumerate(w2_times):
            w2[i, j] = wasserstein2(obs.z[k, :n], ref.z[k], method="exact")
        reps.append(S)
    n_t = torch.tensor(Ns, dtype=torch.float64)
    errors = {k: torch.stack(v).double() for k, v in errs.items()}
    slopes = {
        k: torch.tensor(
            [fit_power_law(n_t, e[:, j]) for j in range(e.shape[1])], dtype=torch.float64
        )
        for k, e in errors.items()
    }
    return ChaosResult(
        Ns=n_t,
        times=t,
        replicas=torch.tensor(reps),
        n_ref=n_ref,
        errors=errors,
        slopes=slopes,
        slope={k: float(s.mean()) for k, s in slopes.items()},
        w2=w2,
        reference={"mean_feature": ref.m, "J": ref.J},
    )


def _chaos_inputs(
    objective: ProbabilityObjective,
    theta_ref: State,
    P_ref: State,
    Ns: list[int],
    times: Tensor | list[float],
    w2_times: tuple[int, ...],
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], bool, list[int], Tensor]:
    """Validate :func:`propagation_of_chaos`'s inputs: ``(θ blocks, P blocks, is_tuple, Ns, t)``."""
    if objective.systems != 1:
        raise ValueError(f"propagation_of_chaos needs a single-system objective, got {objective!r}")
    blocks, is_tuple = as_blocks(theta_ref, "theta_ref")
    p_blocks, _ = as_blocks(P_ref, "P_ref")
    n_ref = blocks[0].shape[0]
    Ns = sorted(int(n) for n in Ns)
    if not Ns or Ns[0] < 1:
        raise ValueError(f"propagation_of_chaos: Ns must be positive integers, got {Ns}")
    if n_ref < 16 * Ns[-1]:
        raise ValueError(
            f"propagation_of_chaos needs N_ref >= 16 max(Ns) = {16 * Ns[-1]}, got N_ref = {n_ref}"
        )
    t = torch.as_tensor(times, dtype=torch.float64).flatten()
    if any(not 0 <= k < len(t) for k in w2_times):
        raise ValueError(f"w2_times must index times (0..{len(t) - 1}), got {w2_times}")
    return blocks, p_blocks, is_tuple, Ns, t


@dataclass(frozen=True)
class _Observed:
    """Observables at the observation times: ``m: [T, S, *out]``, ``J: [T, S]`` for ``S``
    packed systems (``packed=True``), ``m: [T, *out]``, ``J: [T]`` for the reference;
    ``z: [T, S·N, 2D]`` the phase-space cloud."""

    m: Tensor
    J: Tensor
    z: Tensor

    @classmethod
    def run(
        cls,
        objective: ProbabilityObjective,
        kinetic,
        gamma: float,
        theta: State,
        P: State,
        t: Tensor,
        *,
        h: float | None,
        method: str,
        packed: bool,
    ) -> _Observed:
        S = objective.systems

        def observe(th: State, p: State) -> tuple[Tensor, Tensor, Tensor]:
            m = objective.mean_feature(th)
            if packed:  # [S, *out] and [S], also for S = 1
                return m.reshape(S, *m.shape[S > 1 :]), objective.values(th), phase_space(th, p)
            return m, objective.value(th), phase_space(th, p)

        obs = _evolve(HamiltonianFlow(objective, kinetic, gamma), theta, P, t, observe, h=h,
                      method=method)  # fmt: skip
        return cls(*(torch.stack([o[k] for o in obs]) for k in range(3)))


def _coupled_errors(obs: _Observed, ref: _Observed, risk) -> dict[str, Tensor]:
    """RMS errors over the replicas of ``obs`` against ``ref``, each ``[T]`` (see
    :class:`ChaosResult`): particle ``i`` of the replicas is coupled to reference particle ``i``
    (the same initial draw)."""
    from .risks import Risk

    n = obs.z.shape[1]
    dm = (obs.m - ref.m.unsqueeze(1)).flatten(2)  # [T, S, |out|]
    dJ = obs.J - ref.J.unsqueeze(1)  # [T, S]
    out = {
        "mean_feature": dm.square().sum(-1).mean(1).sqrt(),
        "J": dJ.square().mean(1).sqrt(),
        "coupling": (obs.z - ref.z[:, :n]).square().sum(-1).mean(1).sqrt(),
    }
    if isinstance(risk, Risk):  # J's error = ⟨∇R(m_ref), δm⟩ + the rest
        lin = (dm * risk.grad(ref.m).flatten(1).unsqueeze(1)).sum(-1)  # [T, S]
        out["J_linear"] = lin.square().mean(1).sqrt()
        out["J_remainder"] = (dJ - lin).square().mean(1).sqrt()
    return out


@dataclass(frozen=True)
class StabilityResult:
    r"""Distance between two coupled solutions started at distance ``δ``.

    ``times [T]``; ``coupled [T]``: the identity-coupling distance
    :math:`(\frac1N\sum_i\|z_i - z'_i\|^2)^{1/2}` in phase space (an upper bound of ``W₂``;
    ``coupled[0] = δ``); ``w2 [T]``: ``W₂`` of the two phase-space clouds
    (:func:`wasserstein2`); ``rate``, ``prefactor``: the least-squares fit
    ``coupled(t) ≈ prefactor · e^{rate t} δ``; ``envelope``: the smallest ``L`` with
    ``coupled(t) <= e^{L t} δ`` at every observed ``t > 0``.
    """

    times: Tensor
    delta: float
    coupled: Tensor
    w2: Tensor
    rate: float
    prefactor: float
    envelope: float


def stability(
    objective: ProbabilityObjective,
    kinetic,
    gamma: float,
    theta0: State,
    P0: State,
    times: Tensor | list[float],
    *,
    delta: float,
    direction: tuple[State, State] | None = None,
    generator: torch.Generator | None = None,
    h: float | None,
    method: str = "muon",
    w2_method: str = "auto",
) -> StabilityResult:
    r"""Grow two initial laws at distance ``δ`` and fit ``d(t) ≈ C e^{Lt} δ``.

    The second law is the push-forward of the first by ``(θ, P) -> (θ + δu, P + δv)``, with
    the direction ``(u, v)`` (default: Gaussian, from ``generator``) normalized so that the
    coupling distance at ``t = 0`` is exactly ``δ``. Both clouds are integrated in one batched
    call (two packed systems with the same step sequence).
    """
    delta = float(check_scale(delta, "delta", allow_zero=False))
    if objective.systems != 1:
        raise ValueError(f"stability needs a single-system objective, got {objective!r}")
    tb, is_tuple = as_blocks(theta0, "theta0")
    pb, _ = as_blocks(P0, "P0")
    if direction is None:
        ub = tuple(torch.randn(x.shape, generator=generator, dtype=x.dtype) for x in tb)
        vb = tuple(torch.randn(x.shape, generator=generator, dtype=x.dtype) for x in pb)
    else:
        ub, _ = as_blocks(direction[0], "direction[0]")
        vb, _ = as_blocks(direction[1], "direction[1]")
    n = tb[0].shape[0]
    norm = math.sqrt(sum(float(x.square().sum()) for x in (*ub, *vb)) / n)
    if norm == 0:
        raise ValueError("stability: the perturbation direction is zero")
    th2 = tuple(x + (delta / norm) * u for x, u in zip(tb, ub, strict=True))
    p2 = tuple(x + (delta / norm) * v for x, v in zip(pb, vb, strict=True))
    pair = objective.with_systems(2)
    flow = HamiltonianFlow(pair, kinetic, gamma)
    both_th = from_blocks(tuple(torch.cat(z) for z in zip(tb, th2, strict=True)), is_tuple)
    both_p = from_blocks(tuple(torch.cat(z) for z in zip(pb, p2, strict=True)), is_tuple)

    def observe(th: State, P: State) -> tuple[float, float]:
        z = phase_space(th, P)
        za, zb = z[:n], z[n:]
        return coupling_distance(za, zb), wasserstein2(za, zb, method=w2_method)

    t = torch.as_tensor(times, dtype=torch.float64).flatten()
    obs = _evolve(flow, both_th, both_p, t, observe, h=h, method=method)
    coupled = torch.tensor([o[0] for o in obs], dtype=torch.float64)
    w2 = torch.tensor([o[1] for o in obs], dtype=torch.float64)
    y = torch.log(coupled / delta)
    tc = t - t.mean()
    rate = float((tc * (y - y.mean())).sum() / tc.square().sum()) if len(t) > 1 else 0.0
    prefactor = math.exp(float(y.mean()) - rate * float(t.mean()))
    pos = t > 0
    envelope = float((y[pos] / t[pos]).max()) if bool(pos.any()) else 0.0
    return StabilityResult(
        times=t,
        delta=delta,
        coupled=coupled,
        w2=w2,
        rate=rate,
        prefactor=prefactor,
        envelope=envelope,
    )
