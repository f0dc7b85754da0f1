r"""RegMuon: regularized Muon as a drop-in :class:`torch.optim.Optimizer`.

The update of one matrix parameter :math:`W \in \mathbb{R}^{m \times n}` with gradient
:math:`g` is (sum-form momentum, the paper's convention)

.. math::
    M \leftarrow \beta M + g, \qquad
    W \leftarrow (1 - \eta\lambda) W - \eta\, \rho(m, n)\, \nabla K_\varepsilon(M),

with :math:`\nabla K_\varepsilon` a spectral map (:mod:`muonflow.spectral`; the default
``relativistic`` potential gives :math:`M (M^\top M + \varepsilon^2 I)^{-1/2}`), :math:`\lambda`
the decoupled weight decay and :math:`\rho` a shape-aware learning-rate factor.

**It is exactly the discretized Hamiltonian flow** (SPEC §3): with :math:`\eta = h`,
:math:`\beta = 1 - \gamma h`, :math:`\varepsilon = \varepsilon_{dyn}/h` (absolute), no weight
decay, no Nesterov and :math:`\rho = 1`, the iterates equal the symplectic-Euler scheme
:math:`P \leftarrow (1-\gamma h) P - h\nabla f(W)`,
:math:`W \leftarrow W + h \nabla K_{\varepsilon_{dyn}}(P)` with :math:`P = -hM`
(:meth:`RegMuon.from_dynamics`, tested against ``integrate(..., method="muon")``).

The math lives in two functional kernels, :func:`regmuon` (a stack of same-shape matrices,
one batched map call per chunk) and :func:`adamw` (the built-in AdamW for vectors, scalars,
embeddings and heads); :class:`RegMuon` only routes parameters, state and options.
"""

from __future__ import annotations

import functools
import math
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._checks import check_choice
from .polar import POLAR_METHODS, polar, regularized_polar
from .spectral import POTENTIALS, Huber, potential

__all__ = [
    "ADJUST_LR",
    "AUTO_WORKSPACE_FLOOR",
    "MAP_WORKSPACE_MN",
    "MAP_WORKSPACE_RR",
    "RegMuon",
    "adamw",
    "auto_chunk_rows",
    "auto_workspace_cap",
    "default_adamw_rule",
    "map_workspace_bytes",
    "matrix_shape",
    "orthogonalize",
    "regmuon",
]

#: Shape-aware learning-rate factors ``rho(m, n)`` (``m`` = fan-out rows, ``n`` = fan-in cols).
ADJUST_LR: dict[str, Callable[[int, int], float]] = {
    # Keller Jordan's Muon: the update's RMS matches across aspect ratios, sqrt(max(1, m/n)).
    "original": lambda m, n: math.sqrt(max(1.0, m / n)),
    # Moonshot ("Muon is scalable"): RMS of an AdamW update, 0.2 sqrt(max(m, n)).
    "match_rms_adamw": lambda m, n: 0.2 * math.sqrt(max(m, n)),
    "none": lambda m, n: 1.0,
}

MOMENTUM_FORMS = ("sum", "ema")
EPS_MODES = ("absolute", "relative")
LAYOUTS = ("out_in", "in_out")
MATRIX_VIEWS = ("auto", "conv", "batch")
ALGORITHMS = ("regmuon", "adamw")
NONFINITE_POLICIES = ("raise", "skip")

#: ``max_batch_bytes="auto"``: the workspace a map call may use is that of mapping the
#: optimizer's largest matrix alone (what any per-matrix method pays anyway, so batching adds
#: no memory at the peak), or this many bytes if more: a stack of same-shape matrices is mapped
#: in one call unless its estimated workspace exceeds that cap, and then in the fewest chunks
#: that fit. 1 MiB lets stacks of small matrices (MoE experts, heads) share a call: below
#: ~100 KiB of workspace per matrix the map's fixed cost per call (~1 ms on a CPU core) dominates.
AUTO_WORKSPACE_FLOOR = 2**20

#: Workspace of one map call on an ``m x n`` matrix with ``r = min(m, n)``: about
#: ``MAP_WORKSPACE_MN · m·n + MAP_WORKSPACE_RR · r²`` float64 numbers (the working dtype may be
#: float64 whatever the input's; the matmul-only and ``eigh`` paths both keep a few copies of
#: the matrix and several Gram-sized ``r x r`` workspaces). Fitted as an upper bound to the
#: measured peak of live temporaries of :func:`orthogonalize` (output included) over square,
#: tall and wide shapes, float32/float64 inputs, float32 and float64 matmul-only and ``eigh``
#: paths: the largest measured peak is 0.95 of it (square, float64 path). Kernel-internal
#: workspaces (LAPACK's) are not counted. See :func:`map_workspace_bytes`.
MAP_WORKSPACE_MN = 3
MAP_WORKSPACE_RR = 7  # see MAP_WORKSPACE_MN

#: Name components routed to AdamW by :func:`default_adamw_rule` (besides anything containing
#: ``"embed"`` or ending in ``"_head"``): GPT-2 style token/position embeddings and output heads.
DEFAULT_ADAMW_COMPONENTS = frozenset({"wte", "wpe", "head", "lm_head", "classifier", "unembed"})

#: The per-group options (the keys of ``defaults``; groups may override each).
GROUP_OPTIONS = (
    "lr",
    "momentum",
    "eps",
    "eps_mode",
    "potential",
    "momentum_form",
    "nesterov",
    "weight_decay",
    "adjust_lr",
    "tol",
    "method",
    "layout",
    "matrix_view",
    "betas",
    "adamw_eps",
)


def default_adamw_rule(name: str | None, param: Tensor) -> bool:
    """Route a matrix parameter to AdamW if its name marks an embedding or an output head.

    A dotted name component containing ``"embed"``, ending in ``"_head"``, or one of
    :data:`DEFAULT_ADAMW_COMPONENTS` (``wte``, ``wpe``, ``head``, ``lm_head``, ``classifier``,
    ``unembed``) selects AdamW. Unnamed parameters (plain tensors) are never selected: pass
    ``model.named_parameters()`` to the optimizer for this rule to see names. Parameters
    with ``ndim < 2`` always use AdamW, whatever the rule says.
    """
    if name is None:
        return False
    for part in name.split("."):
        if "embed" in part or part.endswith("_head") or part in DEFAULT_ADAMW_COMPONENTS:
            return True
    return False


def matrix_shape(shape: Sequence[int], view: str = "auto") -> tuple[int, int, int]:
    """How a parameter of ``shape`` is seen as a stack of matrices: ``(count, m, n)``.

    ``"batch"``: ``[..., m, n]`` is a batch of ``prod(...)`` matrices (stacked experts, heads);
    ``"conv"``: ``[out, *rest]`` is one ``out x prod(rest)`` matrix (conv kernels);
    ``"auto"``: 2-D and 3-D tensors are batches (3-D = stacked experts ``[E, m, n]``), 4-D+
    tensors are conv kernels (``Conv2d``/``Conv3d``). ``Conv1d`` weights ``[out, in, k]`` need
    ``matrix_view="conv"`` in their parameter group.
    """
    if len(shape) < 2:
        raise ValueError(f"a matrix parameter needs ndim >= 2, got shape {tuple(shape)}")
    if view == "conv" or (view == "auto" and len(shape) >= 4):
        return 1, shape[0], math.prod(shape[1:])
    return math.prod(shape[:-2]), shape[-2], shape[-1]


def map_workspace_bytes(m: int, n: int) -> int:
    """Estimated peak bytes of the temporaries of one map call, per ``m x n`` matrix.

    ``8 · (MAP_WORKSPACE_MN · m·n + MAP_WORKSPACE_RR · min(m, n)² + 32)``: float64 copies of
    the matrix and of its Gram matrix (see :data:`MAP_WORKSPACE_MN`) plus 32 float64 per-matrix
    scalars (scales, ε, κ² estimates), which dominate only for tiny matrices.
    """
    r = min(m, n)
    return 8 * (MAP_WORKSPACE_MN * m * n + MAP_WORKSPACE_RR * r * r + 32)


def auto_chunk_rows(count: int, m: int, n: int, cap: int) -> int | None:
    """Matrices per map call when a call's workspace may reach ``cap`` bytes; ``None``: all.

    With ``w = map_workspace_bytes(m, n)`` (:func:`map_workspace_bytes`), a stack of ``count``
    matrices is split only when ``count · w > cap``, into chunks of ``max(1, cap // w)``
    matrices. ``RegMuon`` with ``max_batch_bytes="auto"`` uses ``cap`` =
    :func:`auto_workspace_cap` of its matrices.
    """
    per_matrix = map_workspace_bytes(m, n)
    if count * per_matrix <= cap:
        return None
    return max(1, cap // per_matrix)


def auto_workspace_cap(shapes: Iterable[tuple[int, int]]) -> int:
    """The workspace cap of ``max_batch_bytes="auto"`` for matrices of the ``(m, n)`` shapes.

    ``max(AUTO_WORKSPACE_FLOOR, max map_workspace_bytes(m, n))``: the peak of a per-matrix
    loop (see :data:`AUTO_WORKSPACE_FLOOR`).
    """
    return max([AUTO_WORKSPACE_FLOOR, *(map_workspace_bytes(m, n) for m, n in shapes)])


# -- functional kernels -------------------------------------------------------------------------
def orthogonalize(
    X: Tensor,
    *,
    potential: str,
    eps: float,
    eps_mode: str,
    tol: float | None,
    method: str,
) -> Tensor:
    r"""The map of the update, :math:`\nabla K_{\varepsilon_i}(X_i)` for every matrix of a stack.

    ``X: [B, m, n]`` (any leading dims). ``eps_mode="absolute"``:
    :math:`\varepsilon_i = \varepsilon`; ``"relative"``:
    :math:`\varepsilon_i = \varepsilon\,\|X_i\|_F/\sqrt{\min(m,n)}` (``eps`` times the RMS
    singular value of each matrix, so the map is invariant under :math:`X_i \to c X_i`).
    ``nuclear`` is the exact polar factor (SVD), ``quadratic`` the identity (returns ``X``).
    """
    if potential == "quadratic":
        return X
    if potential == "nuclear":
        return polar(X)
    if eps_mode == "relative":
        work = torch.float64 if X.dtype == torch.float64 else torch.float32
        rms = torch.linalg.vector_norm(X, dim=(-2, -1), dtype=work) / math.sqrt(min(X.shape[-2:]))
        # A zero matrix maps to zero for every ε > 0; any positive value keeps ε valid there.
        e_rel = eps * rms
        e: float | Tensor = torch.where(e_rel > 0, e_rel, torch.full_like(rms, eps))
    else:
        e = eps
    if potential == "relativistic":
        return regularized_polar(X, e, method=method, tol=tol)
    if potential == "huber":
        return Huber(e).grad(X, method=method, tol=tol)
    raise ValueError(f"unknown potential {potential!r}")  # pragma: no cover - validated


def _segments(counts: Sequence[int], a: int, b: int) -> list[tuple[int, int, int, int, int]]:
    """Pieces of the rows ``[a, b)`` of a stack split by ``counts``.

    Returns ``(i, lo, hi, clo, chi)``: rows ``lo:hi`` of piece ``i`` are rows ``clo:chi`` of the
    chunk.
    """
    out = []
    start = 0
    for i, k in enumerate(counts):
        end = start + k
        lo, hi = max(a, start), min(b, end)
        if lo < hi:
            out.append((i, lo - start, hi - start, lo - a, hi - a))
        start = end
    return out


def regmuon(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffer: Tensor,
    *,
    lr: float,
    momentum: float,
    eps: float,
    eps_mode: str = "relative",
    potential: str = "relativistic",
    momentum_form: str = "sum",
    nesterov: bool = False,
    weight_decay: float = 0.0,
    lr_ratio: float = 1.0,
    tol: float | None = None,
    method: str = "auto",
    chunk_rows: int | None = None,
    layout: Any = None,
) -> None:
    r"""Functional RegMuon update of a stack of same-shape matrices (in place).

    .. math::
        \begin{aligned}
        &M \leftarrow \beta M + g \quad\text{(sum)} \qquad\text{or}\qquad
         M \leftarrow \beta M + (1-\beta) g \quad\text{(ema)} \\
        &X = \begin{cases} g + \beta M & \text{nesterov, sum} \\
                          (1-\beta) g + \beta M & \text{nesterov, ema} \\
                          M & \text{otherwise} \end{cases} \\
        &W \leftarrow (1 - \eta\lambda) W - \eta\,\rho\, \nabla K_{\varepsilon}(X)
        \end{aligned}

    Args:
        params: matrix views ``[k_i, m, n]`` of the parameters (updated in place).
        grads: their gradients, ``[k_i, m, n]``.
        momentum_buffer: ``[sum k_i, m, n]``, the stacked momentum (updated in place).
        lr, momentum, eps, eps_mode, potential, momentum_form, nesterov, weight_decay, tol,
            method: as in :class:`RegMuon` (``η, β, ε, …, λ``).
        lr_ratio: the shape factor ``ρ`` (see :data:`ADJUST_LR`).
        chunk_rows: at most this many matrices per batched map call (``None``: all at once).
            Peak extra memory is a few chunks; the result does not depend on it.
        layout: ``None``, or the :class:`muonflow.distributed.MatrixLayout` of DTensor
            parameters whose local shards these are: the map is then that of the full matrices
            (:func:`muonflow.distributed.map_sharded`; collective).
    """
    counts = [p.shape[0] for p in params]
    bufs = list(momentum_buffer.split(counts))
    beta = momentum
    if momentum_form == "sum":
        torch._foreach_mul_(bufs, beta)  # M = βM
        torch._foreach_add_(bufs, grads)  # M = βM + g
    else:
        torch._foreach_lerp_(bufs, grads, 1 - beta)  # M = βM + (1-β)g
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)  # W = (1-ηλ)W (decoupled)
    total = momentum_buffer.shape[0]
    rows = total if chunk_rows is None else max(1, chunk_rows)
    if layout is not None:  # shards: each rank maps (about) rows / world whole matrices
        rows *= layout.world
    opts: dict[str, Any] = {
        "potential": potential, "eps": eps, "eps_mode": eps_mode, "tol": tol, "method": method
    }  # fmt: skip
    for a in range(0, total, rows):  # one batched map per chunk; the chunks split the stack
        b = min(total, a + rows)
        segs = _segments(counts, a, b)
        if nesterov:
            X = momentum_buffer[a:b] * beta  # X = βM
            pieces = [X[c0:c1] for _, _, _, c0, c1 in segs]
            g_pieces = [grads[i][lo:hi] for i, lo, hi, _, _ in segs]
            alpha = 1.0 if momentum_form == "sum" else 1 - beta
            torch._foreach_add_(pieces, g_pieces, alpha=alpha)  # X = βM + g  (or (1-β)g)
        else:
            X = momentum_buffer[a:b]
        if layout is None:
            D = orthogonalize(X, **opts)  # D = ∇K(X)
        else:  # DTensor shards: the shards of ∇K of the full matrices
            D = layout.map(X, functools.partial(orthogonalize, **opts), **opts)
        torch._foreach_add_(
            [params[i][lo:hi] for i, lo, hi, _, _ in segs],
            [D[c0:c1] for _, _, _, c0, c1 in segs],
            alpha=-lr * lr_ratio,
        )  # W = W - ηρ ∇K(X)


def adamw(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[int],
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    r"""Functional AdamW (decoupled weight decay), the same arithmetic as ``torch.optim.AdamW``.

    .. math::
        \begin{aligned}
        &W \leftarrow (1 - \eta\lambda) W, \quad m \leftarrow \beta_1 m + (1-\beta_1) g, \quad
         v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        &W \leftarrow W - \frac{\eta}{1-\beta_1^t}
         \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}
        \end{aligned}

    ``steps[i]`` is ``t`` of parameter ``i`` (already incremented for this step).
    """
    if not params:
        return
    beta1, beta2 = betas
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    step_size = [-lr / (1 - beta1**t) for t in steps]
    bias2_sqrt = [(1 - beta2**t) ** 0.5 for t in steps]
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, step_size)


# -- validation ---------------------------------------------------------------------------------
def _check_number(value: Any, name: str, lo: float, hi: float, *, hi_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
    v = float(value)
    bad = not (math.isfinite(v) and lo <= v <= hi) or (hi_open and v == hi)
    if bad:
        interval = f"[{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    return v


def _validate_group(group: dict[str, Any]) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the option and value if ``group`` is invalid."""
    check_choice(group["algorithm"], "algorithm", ALGORITHMS)
    _check_number(group["lr"], "lr", 0.0, math.inf)
    _check_number(group["weight_decay"], "weight_decay", 0.0, math.inf)
    if group["algorithm"] == "adamw":
        betas = group["betas"]
        if not (isinstance(betas, tuple | list) and len(betas) == 2):
            raise ValueError(f"betas must be a pair of floats, got {betas!r}")
        for i, b in enumerate(betas):
            _check_number(b, f"betas[{i}]", 0.0, 1.0, hi_open=True)
        if _check_number(group["adamw_eps"], "adamw_eps", 0.0, math.inf) == 0:
            raise ValueError(f"adamw_eps must be > 0, got {group['adamw_eps']!r}")
        return
    form = check_choice(group["momentum_form"], "momentum_form", MOMENTUM_FORMS)
    # Sum form allows β = 1 (no damping: the conservative flow γ = 0); EMA needs β < 1.
    _check_number(group["momentum"], "momentum", 0.0, 1.0, hi_open=form == "ema")
    if _check_number(group["eps"], "eps", 0.0, math.inf) == 0:
        raise ValueError(f"eps must be > 0, got {group['eps']!r} (use potential='nuclear')")
    check_choice(group["eps_mode"], "eps_mode", EPS_MODES)
    pot = check_choice(group["potential"], "potential", POTENTIALS)
    if not isinstance(group["nesterov"], bool):
        raise TypeError(f"nesterov must be a bool, got {group['nesterov']!r}")
    check_choice(group["adjust_lr"], "adjust_lr", ADJUST_LR)
    if group["tol"] is not None and _check_number(group["tol"], "tol", 0.0, math.inf) == 0:
        raise ValueError(f"tol must be > 0 or None, got {group['tol']!r}")
    methods = {"auto", *POLAR_METHODS} if pot == "relativistic" else {"auto", "eigh", "svd"}
    check_choice(group["method"], f"method (potential {pot!r})", methods)
    check_choice(group["layout"], "layout", LAYOUTS)
    check_choice(group["matrix_view"], "matrix_view", MATRIX_VIEWS)


def _param_label(group: dict[str, Any], gi: int, j: int) -> str:
    names = group.get("param_names")
    if names:
        return repr(names[j])
    return f"param_groups[{gi}]['params'][{j}]"


# -- DTensor parameters (torch.distributed FSDP2; muonflow.distributed) ------------------------
def _dtensor_layout(p: Tensor, view: str) -> Any:
    """``None`` for a plain tensor; a DTensor's :class:`muonflow.distributed.MatrixLayout`."""
    if "torch.distributed.tensor" not in sys.modules:  # no DTensor can exist; import nothing
        return None
    from torch.distributed.tensor import DTensor

    if not isinstance(p, DTensor):
        return None
    from .distributed.dtensor import matrix_layout

    return matrix_layout(p, view)


def _local_matrices(
    t: Tensor, layout: Any, k: int, m: int, n: int
) -> tuple[Tensor, tuple[int, int, int]]:
    """``(t, (k, m, n))``, or for a DTensor its local shard and the shard's matrix shape."""
    if layout is None:
        return t, (k, m, n)
    local = t.to_local()  # type: ignore[attr-defined]
    return local, layout.local_shape(local)


def _first_nonfinite(grads: list[Tensor]) -> int | None:
    """Index of the first gradient with a NaN/Inf entry, or ``None``.

    max|g| is finite iff every entry is (NaN propagates; a max never overflows): one fused
    foreach kernel and one host sync per device. DTensor gradients: every rank must agree
    (:func:`muonflow.distributed.dtensor.first_nonfinite`, one small all-reduce).
    """
    if not grads:
        return None
    if "torch.distributed.tensor" in sys.modules:
        from torch.distributed.tensor import DTensor

        if any(isinstance(g, DTensor) for g in grads):
            from .distributed.dtensor import first_nonfinite

            return first_nonfinite(grads)
    norms = torch._foreach_norm(grads, math.inf)
    by_device: dict[torch.device, list[Tensor]] = {}
    for n in norms:
        by_device.setdefault(n.device, []).append(n.float())
    if all(bool(torch.isfinite(torch.stack(ns)).all()) for ns in by_device.values()):
        return None
    return next(i for i, g in enumerate(grads) if not bool(torch.isfinite(g).all()))


# -- the optimizer ------------------------------------------------------------------------------
class RegMuon(Optimizer):
    r"""Regularized Muon for a whole model: RegMuon on matrices, AdamW on everything else.

    .. math::
        \begin{aligned}
        &\rule{110mm}{0.4pt} \\
        &\textbf{input}: \eta \text{ (lr)},\ \beta \text{ (momentum)},\
          \varepsilon \text{ (eps)},\ \lambda \text{ (weight decay)},\
          K \text{ (potential)},\ \rho(m, n) \text{ (adjust\_lr)} \\
        &\textbf{initialize}: M_0 \leftarrow 0 \\
        &\textbf{for}\ t = 1, 2, \ldots: \\
        &\hspace{5mm} g_t \leftarrow \nabla f_t(W_{t-1}) \\
        &\hspace{5mm} M_t \leftarrow \beta M_{t-1} + g_t \quad
          \text{(EMA form: } M_t \leftarrow \beta M_{t-1} + (1-\beta) g_t) \\
        &\hspace{5mm} X_t \leftarrow g_t + \beta M_t \ \text{if nesterov (EMA: } (1-\beta) g_t
          + \beta M_t),\ \text{else } M_t \\
        &\hspace{5mm} \varepsilon_t \leftarrow \varepsilon\ \text{(absolute)}\ \text{or}\
          \varepsilon\, \|X_t\|_F / \sqrt{\min(m, n)}\ \text{(relative)} \\
        &\hspace{5mm} W_t \leftarrow (1 - \eta\lambda) W_{t-1}
          - \eta\, \rho(m, n)\, \nabla K_{\varepsilon_t}(X_t) \\
        &\rule{110mm}{0.4pt}
        \end{aligned}

    :math:`\nabla K_\varepsilon` is applied to each matrix separately, batched:
    ``relativistic`` (default) :math:`X (X^\top X + \varepsilon^2 I)^{-1/2}`, ``huber``
    :math:`U \min(\Sigma/\varepsilon, 1) V^\top`, ``nuclear`` :math:`U V^\top` (exact polar
    factor: ``torch.optim.Muon``'s rule without the Newton–Schulz approximation),
    ``quadratic`` the identity (SGD with heavy-ball momentum).

    **Parameters.** Pass ``model.named_parameters()`` (or groups of ``(name, tensor)`` pairs)
    so that names can be routed; plain tensors work too. In every group (unless its
    ``"algorithm"`` is given as ``"regmuon"`` or ``"adamw"``), scalars and vectors always go to
    the built-in AdamW, and matrices selected by ``adamw`` (default :func:`default_adamw_rule`:
    embeddings and output heads by name) too; the rest to RegMuon. Each user group is split
    into a RegMuon group and an AdamW group (``param_groups[i]["algorithm"]``); schedulers scale
    both. A parameter is viewed as matrices by :func:`matrix_shape`: ``[m, n]`` one matrix,
    ``[E, m, n]`` a batch (experts are orthogonalized separately), conv kernels
    ``[out, in, kh, kw]`` one ``out x (in·kh·kw)`` matrix. Tied parameters listed twice are
    updated once; parameters whose ``.grad`` is ``None`` (frozen, unused) are skipped.

    **ε and the momentum form.** ``eps_mode="absolute"`` uses ε as is, in the units of the
    momentum's singular values: exact Hamiltonian dynamics, the kinetic energy of
    :meth:`kinetic_energy` is the paper's. With EMA momentum the buffer is
    :math:`B = (1-\beta) M`, so EMA with ``eps = ε_B`` equals sum form with
    ``eps = ε_B / (1-β)``. ``eps_mode="relative"`` (the default; scale-free, practical) uses
    ε times the RMS singular value of each map input: the update is then invariant under
    rescaling the loss, and sum and EMA forms give the same iterates.

    **Batched execution.** Matrices of the same shape, dtype and device within a group share
    one stacked momentum storage ``[B, m, n]`` (each parameter's ``state["momentum_buffer"]``
    is a view of it) and is mapped in one batched call, or in chunks of it: by default
    (``max_batch_bytes="auto"``, :func:`auto_workspace_cap`) a call's workspace may reach that
    of mapping the largest matrix alone (or 1 MiB), so the step's peak memory is that of a
    per-matrix loop while stacks of small matrices (experts, heads) share a call;
    ``None`` always maps each stack in one call (fewest calls, most memory).

    Args:
        params: parameters, ``(name, parameter)`` pairs, or dicts defining parameter groups;
            groups may override every option below except ``adamw``, ``on_nonfinite`` and
            ``max_batch_bytes`` (and may give ``"adamw_lr"``/``"adamw_weight_decay"``).
        lr: ``η`` of the matrices (default 0.02).
        momentum: ``β`` in ``[0, 1]`` (sum form; ``[0, 1)`` for EMA) (default 0.95).
        eps: ``ε > 0`` (default 0.03, relative: singular directions weaker than ~3% of the
            RMS singular value are damped instead of amplified; the best compromise of the
            ε sweep in ``benchmarks/train_quality.py``). Ignored by ``nuclear``/``quadratic``.
        eps_mode: ``"relative"`` (default) or ``"absolute"``.
        potential: a key of :data:`muonflow.spectral.POTENTIALS` (default ``"relativistic"``).
        momentum_form: ``"sum"`` (default; the paper's) or ``"ema"`` (``torch.optim.Muon``'s).
        nesterov: use the Nesterov input (default False).
        weight_decay: decoupled weight decay ``λ`` of both parts (default 0).
        adjust_lr: key of :data:`ADJUST_LR`: ``"original"`` (default) ``√max(1, m/n)``,
            ``"match_rms_adamw"`` ``0.2√max(m, n)``, or ``"none"``.
        tol: requested relative accuracy of the map ``∇K`` (default ``1e-3``: loose, which
            lets ``method="auto"`` choose a fast matmul-only path; ``None``: exact to the
            dtype's round-off, as :meth:`from_dynamics` uses).
        method: ``"auto"`` or a key of :data:`muonflow.polar.POLAR_METHODS`.
        layout: ``"out_in"`` (default; ``nn.Linear``: ``m`` = rows) or ``"in_out"``
            (transposed ``Conv1D``-style weights: ``m`` = columns); only ``ρ`` depends on it,
            the map is transpose-equivariant.
        matrix_view: ``"auto"``, ``"conv"`` or ``"batch"`` (see :func:`matrix_shape`).
        adamw_lr: ``η`` of the AdamW part (default 1e-3).
        adamw_betas: ``(β1, β2)`` of AdamW (default ``(0.9, 0.999)``).
        adamw_eps: AdamW's ``ϵ`` (default 1e-8).
        adamw_weight_decay: AdamW's ``λ`` (default: ``weight_decay``).
        adamw: which matrices use AdamW: a predicate ``(name | None, param) -> bool``, an
            iterable of regular expressions searched in the names, or ``None`` for
            :func:`default_adamw_rule`. ``()`` sends every matrix to RegMuon.
        on_nonfinite: ``"raise"`` (default): a NaN/Inf gradient raises ``ValueError`` naming the
            parameter, with every parameter and all optimizer state unchanged; ``"skip"``: the
            step is skipped (nothing changes) and counted in :attr:`skipped_steps`.
        max_batch_bytes: ``"auto"`` (default; chunks whose workspace estimate is at most
            that of the largest matrix alone, see :func:`auto_workspace_cap`), an int
            (cap on the bytes of one batched map input: ``max(1, cap // (m·n·itemsize))``
            matrices per call) or ``None`` (one call per stack). Results do not depend on it
            beyond round-off.

    Example:
        >>> # xdoctest: +SKIP
        >>> opt = RegMuon(model.named_parameters(), lr=0.02, adamw_lr=3e-3)
        >>> loss = loss_fn(model(x), y)
        >>> loss.backward()
        >>> H = opt.hamiltonian(loss)  # optional: loss + kinetic energy, before step()
        >>> opt.step(); opt.zero_grad()

    ``torch.compile``: :meth:`step` is excluded from compilation (it runs eagerly inside a
    compiled training function; compile the model's forward/backward).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 0.02,
        momentum: float = 0.95,
        eps: float = 0.03,
        *,
        eps_mode: str = "relative",
        potential: str = "relativistic",
        momentum_form: str = "sum",
        nesterov: bool = False,
        weight_decay: float = 0.0,
        adjust_lr: str = "original",
        tol: float | None = 1e-3,
        method: str = "auto",
        layout: str = "out_in",
        matrix_view: str = "auto",
        adamw_lr: float = 1e-3,
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float | None = None,
        adamw: Callable[[str | None, Tensor], bool] | Iterable[str] | None = None,
        on_nonfinite: str = "raise",
        max_batch_bytes: int | str | None = "auto",
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "eps": eps,
            "eps_mode": eps_mode,
            "potential": potential,
            "momentum_form": momentum_form,
            "nesterov": nesterov,
            "weight_decay": weight_decay,
            "adjust_lr": adjust_lr,
            "tol": tol,
            "method": method,
            "layout": layout,
            "matrix_view": matrix_view,
            "betas": tuple(adamw_betas),
            "adamw_eps": adamw_eps,
        }
        assert tuple(defaults) == GROUP_OPTIONS
        _validate_group({**defaults, "algorithm": "regmuon"})
        self._adamw_lr = adamw_lr
        self._adamw_weight_decay = (
            weight_decay if adamw_weight_decay is None else adamw_weight_decay
        )
        _validate_group(
            {
                **defaults,
                "algorithm": "adamw",
                "lr": adamw_lr,
                "weight_decay": self._adamw_weight_decay,
            }
        )
        self._adamw_rule = self._make_rule(adamw)
        self.on_nonfinite = check_choice(on_nonfinite, "on_nonfinite", NONFINITE_POLICIES)
        if max_batch_bytes not in (None, "auto") and (
            isinstance(max_batch_bytes, bool)
            or not isinstance(max_batch_bytes, int)
            or max_batch_bytes < 1
        ):
            raise ValueError(
                f"max_batch_bytes must be a positive int, 'auto' or None, got {max_batch_bytes!r}"
            )
        self.max_batch_bytes = max_batch_bytes
        self.skipped_steps = 0
        # (group index, bucket key) -> (members, stacked momentum, their state views)
        self._packs: dict[tuple[int, tuple[Any, ...]], tuple[tuple[Tensor, ...], Tensor, Any]] = {}
        super().__init__(params, defaults)

    # -- construction ---------------------------------------------------------------------------
    @staticmethod
    def _make_rule(adamw: Any) -> Callable[[str | None, Tensor], bool]:
        if adamw is None:
            return default_adamw_rule
        if callable(adamw):
            return adamw
        if isinstance(adamw, str):
            raise TypeError(f"adamw must be a predicate or an iterable of patterns, got {adamw!r}")
        patterns = [re.compile(p) for p in adamw]

        def rule(name: str | None, param: Tensor) -> bool:
            return name is not None and any(p.search(name) for p in patterns)

        return rule

    @classmethod
    def from_dynamics(
        cls,
        params: Any,
        *,
        h: float,
        gamma: float,
        eps: float,
        potential: str = "relativistic",
        P0: Tensor | Sequence[Tensor] | None = None,
    ) -> RegMuon:
        r"""The optimizer whose iterates are the ``"muon"`` symplectic-Euler scheme of the flow.

        .. math::
            P \leftarrow (1 - \gamma h) P - h \nabla f(W), \qquad
            W \leftarrow W + h \nabla K_\varepsilon(P)

        is RegMuon with sum-form momentum, :math:`\eta = h`, :math:`\beta = 1 - \gamma h`,
        absolute :math:`\varepsilon_{opt} = \varepsilon/h`, no Nesterov, no weight decay, no lr
        adjustment and exact maps (``tol=None``), under :math:`P = -hM`. (``quadratic``: its
        map is not scale-invariant, so :math:`\eta = h^2` instead.) Every parameter must be a
        matrix (or a stack ``[..., m, n]``); none is routed to AdamW.

        Args:
            params: the parameters ``W`` (tensors ``[..., m, n]`` or named pairs).
            h: step ``> 0``; gamma: damping ``γ >= 0`` with ``γh <= 1``; eps: the dynamics'
                ``ε > 0`` (ignored by ``nuclear``/``quadratic``).
            potential: the kinetic energy, a key of :data:`muonflow.spectral.POTENTIALS`.
            P0: initial momenta in dynamics units (one per parameter; default 0).
        """
        h = _check_number(h, "h", 0.0, math.inf)
        gamma = _check_number(gamma, "gamma", 0.0, math.inf)
        eps = _check_number(eps, "eps", 0.0, math.inf)
        if h == 0 or eps == 0:
            raise ValueError(f"h and eps must be > 0, got h={h!r}, eps={eps!r}")
        if gamma * h > 1:
            raise ValueError(f"gamma*h must be <= 1 (momentum 1 - gamma*h >= 0), got {gamma * h!r}")
        check_choice(potential, "potential", POTENTIALS)
        items = [params] if isinstance(params, Tensor) else list(params)
        if not items or not isinstance(items[0], dict):
            items = [{"params": items}]
        groups = [{**dict(g), "algorithm": "regmuon"} for g in items]
        opt = cls(
            groups,
            lr=h * h if potential == "quadratic" else h,
            momentum=1 - gamma * h,
            eps=eps / h,
            eps_mode="absolute",
            potential=potential,
            momentum_form="sum",
            nesterov=False,
            weight_decay=0.0,
            adjust_lr="none",
            tol=None,
            matrix_view="batch",
            adamw=(),
        )
        if P0 is not None:
            ps = [p for g in opt.param_groups for p in g["params"]]
            P0s = [P0] if isinstance(P0, Tensor) else list(P0)
            if len(P0s) != len(ps):
                raise ValueError(f"P0 has {len(P0s)} tensors for {len(ps)} parameters")
            for p, P in zip(ps, P0s, strict=True):
                if P.shape != p.shape:
                    raise ValueError(
                        f"P0 shape {tuple(P.shape)} != parameter shape {tuple(p.shape)}"
                    )
                opt.state[p]["momentum_buffer"] = (P.detach() / -h).to(p.dtype).clone()  # M = -P/h
        return opt

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; unless it names its ``"algorithm"``, it is split into RegMuon + AdamW."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        raw = group.pop("params")
        raw = [raw] if isinstance(raw, Tensor) else list(raw)
        adamw_lr = group.pop("adamw_lr", self._adamw_lr)
        adamw_wd = group.pop("adamw_weight_decay", self._adamw_weight_decay)
        algorithm = group.pop("algorithm", None)
        seen: set[int] = set()
        items: list[tuple[str | None, Tensor]] = []
        for item in raw:
            name, p = item if isinstance(item, tuple) else (None, item)
            if isinstance(p, Tensor) and id(p) in seen:
                continue  # a tied parameter listed twice: updated once
            seen.add(id(p))
            items.append((name, p))
        named = any(name is not None for name, _ in items)
        if algorithm is None:
            mats: list[tuple[str | None, Tensor]] = []
            rest: list[tuple[str | None, Tensor]] = []
            for name, p in items:
                is_mat = isinstance(p, Tensor) and p.ndim >= 2 and not self._adamw_rule(name, p)
                (mats if is_mat else rest).append((name, p))
            parts = [(mats, "regmuon"), (rest, "adamw")]
        else:
            check_choice(algorithm, "algorithm", ALGORITHMS)
            parts = [(items, algorithm)]
        for part, algo in parts:
            if not part and (algorithm is None):
                continue
            new = {**group, "algorithm": algo}
            if algo == "adamw":  # the AdamW half of a split group takes the AdamW lr and decay
                new["lr"] = adamw_lr if algorithm is None else group.get("lr", adamw_lr)
                new["weight_decay"] = (
                    adamw_wd if algorithm is None else group.get("weight_decay", adamw_wd)
                )
            new["params"] = [(n, p) for n, p in part] if named else [p for _, p in part]
            for _, p in part:
                if isinstance(p, Tensor) and p.is_complex():
                    raise TypeError(f"RegMuon does not support complex parameters ({p.dtype})")
                if algo == "regmuon" and isinstance(p, Tensor):
                    matrix_shape(p.shape, group.get("matrix_view", self.defaults["matrix_view"]))
            super().add_param_group(new)
            _validate_group(self.param_groups[-1])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("skipped_steps", 0)
        self.__dict__.setdefault("on_nonfinite", "raise")
        self.__dict__.setdefault("max_batch_bytes", "auto")
        self.__dict__.setdefault("_packs", {})
        for group in self.param_groups:  # old checkpoints: new options take their defaults
            for key in GROUP_OPTIONS:
                group.setdefault(key, self.defaults[key])
            group.setdefault("algorithm", "regmuon")

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["regmuon"] = {"skipped_steps": self.skipped_steps}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        extra = state_dict.get("regmuon", {})
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "regmuon"})
        self.skipped_steps = int(extra.get("skipped_steps", 0))
        self._packs = {}

    # -- the step -------------------------------------------------------------------------------
    def _gather(self) -> list[list[tuple[Tensor, Tensor]]] | None:
        """Per group, the ``(param, grad)`` pairs to update; ``None`` if a gradient is non-finite.

        Raises before anything is modified for sparse/complex/mis-shaped gradients and (with
        ``on_nonfinite="raise"``) non-finite ones.
        """
        work: list[list[tuple[Tensor, Tensor]]] = []
        where: list[tuple[int, int]] = []
        for gi, group in enumerate(self.param_groups):
            items = []
            for j, p in enumerate(group["params"]):
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse or g.layout != torch.strided:
                    raise RuntimeError(
                        f"RegMuon does not support sparse gradients: parameter "
                        f"{_param_label(group, gi, j)} has a {g.layout} gradient"
                    )
                if g.is_complex() or p.is_complex():
                    raise TypeError(
                        f"RegMuon does not support complex tensors: parameter "
                        f"{_param_label(group, gi, j)} ({p.dtype}, gradient {g.dtype})"
                    )
                if g.shape != p.shape:
                    raise ValueError(
                        f"gradient of {_param_label(group, gi, j)} has shape {tuple(g.shape)}, "
                        f"expected {tuple(p.shape)}"
                    )
                items.append((p, g))
                where.append((gi, j))
            work.append(items)
        grads = [g for items in work for _, g in items]
        bad = _first_nonfinite(grads)
        if bad is not None:
            if self.on_nonfinite == "skip":
                return None
            gi, j = where[bad]
            raise ValueError(
                f"non-finite gradient (NaN or Inf) in parameter "
                f"{_param_label(self.param_groups[gi], gi, j)} of shape "
                f"{tuple(grads[bad].shape)}; no parameter or optimizer state was changed "
                "(pass on_nonfinite='skip' to skip such steps)"
            )
        return work


    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one step (see the class docstring); returns the closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = self._gather()
        if work is None:
            self.skipped_steps += 1
            return loss
        cap = None
        if self.max_batch_bytes == "auto":
            cap = auto_workspace_cap(
                matrix_shape(p.shape, group["matrix_view"])[1:]
                for group, items in zip(self.param_groups, work, strict=True)
                if group["algorithm"] != "adamw"
                for p, _ in items
            )
        for gi, (group, items) in enumerate(zip(self.param_groups, work, strict=True)):
            if not items:
                continue
            if group["algorithm"] == "adamw":
                self._adamw_group(group, items)
            else:
                self._regmuon_group(gi, group, items, cap)
        return loss

    def _adamw_group(self, group: dict[str, Any], items: list[tuple[Tensor, Tensor]]) -> None:
        params, grads, m, v, steps = [], [], [], [], []
        for p, g in items:
            st = self.state[p]
            if "exp_avg" not in st:
                st["step"] = 0
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["step"] += 1
            params.append(p)
            grads.append(g)
            m.append(st["exp_avg"])
            v.append(st["exp_avg_sq"])
            steps.append(st["step"])
        adamw(
            params,
            grads,
            m,
            v,
            steps,
            lr=group["lr"],
            betas=tuple(group["betas"]),
            eps=group["adamw_eps"],
            weight_decay=group["weight_decay"],
        )

    def _regmuon_group(
        self, gi: int, group: dict[str, Any], items: list[tuple[Tensor, Tensor]], cap: int | None
    ) -> None:
        buckets: dict[tuple[Any, ...], list[tuple[Tensor, Tensor, int]]] = {}
        for p, g in items:
            k, m, n = matrix_shape(p.shape, group["matrix_view"])
            layout = _dtensor_layout(p, group["matrix_view"])  # None unless p is a DTensor
            buckets.setdefault((m, n, p.dtype, p.device, layout), []).append((p, g, k))
        for key, members in buckets.items():
            m, n, dtype, _, layout = key
            params = [p for p, _, _ in members]
            # plain tensors [k, m, n]; DTensors: their local shards, [k_local, rows, cols]
            local = [_local_matrices(p, layout, k, m, n) for p, _, k in members]
            counts = [shape[0] for _, shape in local]
            buf = self._packed_buffer(gi, key, params, [shape for _, shape in local])
            mats, copies = [], []
            for t, shape in local:
                try:
                    mats.append(t.view(shape))
                except RuntimeError:  # non-viewable strides: update a copy and write it back
                    mats.append(t.reshape(shape).clone())
                    copies.append((t, mats[-1]))
            grads = [_local_matrices(g, layout, k, m, n)[0].reshape(shape)
                     for (_, g, k), (_, shape) in zip(members, local, strict=True)]  # fmt: skip
            rows_m, rows_n = (n, m) if group["layout"] == "in_out" else (m, n)
            chunk = None
            if cap is not None:  # max_batch_bytes="auto"
                chunk = auto_chunk_rows(sum(counts), m, n, cap)
            elif self.max_batch_bytes is not None:
                chunk = self.max_batch_bytes // (m * n * dtype.itemsize)
            regmuon(
                mats,
                grads,
                buf,
                lr=group["lr"],
                momentum=group["momentum"],
                eps=group["eps"],
                eps_mode=group["eps_mode"],
                potential=group["potential"],
                momentum_form=group["momentum_form"],
                nesterov=group["nesterov"],
                weight_decay=group["weight_decay"],
                lr_ratio=ADJUST_LR[group["adjust_lr"]](rows_m, rows_n),
                tol=group["tol"],
                method=group["method"],
                chunk_rows=chunk,
                layout=layout,
            )
            for t, mat in copies:
                t.copy_(mat.view(t.shape))

    def _packed_buffer(
        self,
        gi: int,
        key: tuple[Any, ...],
        params: list[Tensor],
        shapes: list[tuple[int, int, int]],
    ) -> Tensor:
        """The stacked momentum ``[sum k_i, m, n]`` of ``params``; their state buffers are views.

        ``shapes``: each parameter's ``(k_i, m, n)``; for DTensor parameters those of the local
        shards, and the state buffers are DTensors (placed as the parameters) viewing the stack.

        Reused while the members and their buffers are unchanged; otherwise (first step, after
        ``load_state_dict``, a member without gradient) repacked, copying existing buffers.
        """
        cached = self._packs.get((gi, key))
        if cached is not None:
            c_params, stacked, views = cached
            if len(c_params) == len(params) and all(
                a is b and self.state[a].get("momentum_buffer") is v
                for a, b, v in zip(c_params, params, views, strict=True)
            ):
                return stacked
        _, _, dtype, device, layout = key
        a, b = shapes[0][1:]
        stacked = torch.zeros(sum(k for k, _, _ in shapes), a, b, dtype=dtype, device=device)
        views = []
        off = 0
        for p, (k, _, _) in zip(params, shapes, strict=True):
            piece = stacked[off : off + k]
            view = piece.view(p.shape) if layout is None else layout.wrap(piece, p)
            old = self.state[p].get("momentum_buffer")
            if old is not None:
                view.copy_(old)
            self.state[p]["momentum_buffer"] = view
            views.append(view)
            off += k
        if cached is not None:  # members that left: give them their own storage back
            keep = {id(p) for p in params}
            for p in cached[0]:
                if id(p) not in keep and "momentum_buffer" in self.state[p]:
                    self.state[p]["momentum_buffer"] = self.state[p]["momentum_buffer"].clone()
        self._packs[(gi, key)] = (tuple(params), stacked, tuple(views))
        return stacked

    # -- energy diagnostics ---------------------------------------------------------------------
    @torch.no_grad()
    def kinetic_energy(self) -> Tensor:
        r"""Total kinetic energy :math:`\sum K_{\varepsilon_{dyn}}(P)` in dynamics units (float64).

        For every RegMuon matrix with momentum :math:`M` (sum form; EMA buffers are divided by
        :math:`1-\beta`), the dynamics step is :math:`h = \eta\rho` (the effective lr;
        ``quadratic``: :math:`h = \sqrt{\eta\rho}`), the momentum :math:`P = -hM` and the scale
        :math:`\varepsilon_{dyn} = h\,\varepsilon_M` (absolute; relative: ε times the RMS
        singular value of ``M``). With :meth:`from_dynamics` (absolute ε, no Nesterov, no weight
        decay, constant lr) this is exactly the :math:`K(P)` of SPEC §3, and
        ``loss + kinetic_energy()`` evaluated *before* ``step()`` is the Hamiltonian
        :math:`H(W_k, P_k)` (non-increasing when ``h`` is small enough; see
        :mod:`muonflow.dynamics`). Otherwise it is a diagnostic. AdamW parameters contribute 0.
        """
        total = torch.zeros((), dtype=torch.float64)
        for group in self.param_groups:
            if group["algorithm"] != "regmuon":
                continue
            stacks: dict[tuple[int, int], list[Tensor]] = {}
            for p in group["params"]:
                buf = self.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    if hasattr(buf, "full_tensor"):  # a DTensor: whole matrices (collective)
                        buf = buf.full_tensor()
                    k, m, n = matrix_shape(p.shape, group["matrix_view"])
                    stacks.setdefault((m, n), []).append(buf.reshape(k, m, n).double())
            for (m, n), bufs in stacks.items():
                M = torch.cat(bufs)
                beta = group["momentum"]
                scale = 1 / (1 - beta) if group["momentum_form"] == "ema" else 1.0
                M = M * scale  # sum-form momentum
                rows_m, rows_n = (n, m) if group["layout"] == "in_out" else (m, n)
                h = group["lr"] * ADJUST_LR[group["adjust_lr"]](rows_m, rows_n)
                pot = group["potential"]
                if pot == "quadratic":
                    h = math.sqrt(h)
                P = -h * M
                if pot in ("relativistic", "huber"):
                    if group["eps_mode"] == "relative":
                        rms = torch.linalg.vector_norm(M, dim=(-2, -1)) / math.sqrt(min(m, n))
                        e = torch.where(rms > 0, group["eps"] * rms, torch.ones_like(rms))
                        eps_dyn: float | Tensor = h * e
                    else:
                        eps_dyn = h * group["eps"] * scale
                    K = potential(pot, eps_dyn).energy(P)
                else:
                    K = potential(pot).energy(P)
                total = total + K.sum().cpu()
        return total

    def hamiltonian(self, loss: Tensor | float) -> Tensor:
        """``loss + kinetic_energy()``, float64 0-dim (call it after backward, before step)."""
        if isinstance(loss, Tensor):
            value = loss.detach().to(device="cpu", dtype=torch.float64)
        else:
            value = torch.tensor(float(loss), dtype=torch.float64)
        return value + self.kinetic_energy()


RegMuon.step = torch.compiler.disable(RegMuon.step)  # type: ignore[method-assign]
