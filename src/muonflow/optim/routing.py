"""Which parameter gets which update: routing by module structure, or by name.

``RegMuon(model)`` routes by structure (:func:`route_module`):

- **AdamW**: parameters of embedding modules (:data:`EMBEDDINGS`: ``nn.Embedding``,
  ``nn.EmbeddingBag``) and any parameter tied to one (the same tensor object, e.g. a tied LM
  head); the parameters of the *output layer* (:func:`output_layers`); parameters a module holds
  directly that are not one of its declared weight matrices (a raw positional
  ``nn.Parameter``, ``bias_k``); scalars and vectors (biases, norm gains).
- **RegMuon**: the declared weight matrices of known layers (:data:`MATRIX_PARAMETERS`:
  ``nn.Linear``, HF ``Conv1D``, ``nn.Conv1d/2d/3d`` and transposed convs,
  ``nn.MultiheadAttention``, ``nn.RNN/LSTM/GRU``, :class:`~muonflow.models.moe.MoEFeedForward`),
  each with its matrix view and layout. :func:`register_matrices` declares more.

Parameters given without a module (``named_parameters()``, plain tensors) are routed by
:func:`default_adamw_rule` on their names; unnamed matrices go to RegMuon with a
:class:`RoutingWarning`. Every decision is recorded in a :class:`Routing`
(``print(opt.routing)``). The rules are explained in ``docs/optimizer.md``.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .plan import check_matrix_view, matrix_shape

__all__ = [
    "EMBEDDINGS",
    "MATRIX_PARAMETERS",
    "MatrixSpec",
    "NamePatterns",
    "Route",
    "Routing",
    "RoutingWarning",
    "default_adamw_rule",
    "last_executed_layer",
    "output_layers",
    "register_matrices",
    "route_module",
]


class RoutingWarning(UserWarning):
    """RegMuon could not route some matrices by structure or name (see the message)."""


@dataclass(frozen=True)
class MatrixSpec:
    """How a layer's weight is seen as matrices: ``view`` (:func:`~muonflow.optim.matrix_shape`)
    and ``layout`` (``"out_in"``: rows are outputs, as ``nn.Linear``; ``"in_out"``: HF
    ``Conv1D``)."""

    view: str = "batch"
    layout: str = "out_in"

    def __post_init__(self) -> None:
        check_matrix_view(self.view)
        if self.layout not in ("out_in", "in_out"):
            raise ValueError(f"unknown layout {self.layout!r}; valid: 'in_out', 'out_in'")


Specs = Mapping[str, MatrixSpec]

_LINEAR = MatrixSpec()
_CONV = MatrixSpec("conv")
_CONV_T = MatrixSpec("conv", "in_out")  # [in, out/groups, *k]: rows are the inputs


def _mha(module: nn.Module) -> Specs:
    # in_proj_weight = [W_q; W_k; W_v] ([3d, d]): three maps packed for speed, so a [3, d, d]
    # stack, the same update as three separate projections (q/k/v_proj_weight, used when kdim or
    # vdim != d). out_proj is an nn.Linear child.
    return {
        "in_proj_weight": MatrixSpec("split:3"),
        "q_proj_weight": _LINEAR,
        "k_proj_weight": _LINEAR,
        "v_proj_weight": _LINEAR,
    }


def _rnn(module: nn.Module) -> Specs:
    # weight_ih_l{k}[_reverse] / weight_hh_l{k}: the gates' matrices stacked by rows
    # (LSTM 4, GRU 3, RNN 1); weight_hr_l{k}: the LSTM projection.
    gates = {"LSTM": 4, "GRU": 3}.get(getattr(module, "mode", ""), 1)
    out: dict[str, MatrixSpec] = {}
    for name in getattr(module, "_flat_weights_names", []):
        if name.startswith(("weight_ih", "weight_hh")):
            out[name] = MatrixSpec(f"split:{gates}")
        elif name.startswith("weight_hr"):
            out[name] = _LINEAR
    return out


#: Declared weight matrices per layer type: ``type`` (or ``"module.QualName"``, for types not
#: to be imported) -> ``{parameter name: MatrixSpec}`` or a function of the module giving it.
#: Looked up along the type's MRO, so subclasses inherit. Extend with :func:`register_matrices`.
MATRIX_PARAMETERS: dict[type | str, Specs | Callable[[nn.Module], Specs]] = {
    nn.Linear: {"weight": _LINEAR},
    nn.Bilinear: {},  # [out, in1, in2]: not a matrix map; its weight goes to AdamW
    nn.Conv1d: {"weight": _CONV},
    nn.Conv2d: {"weight": _CONV},
    nn.Conv3d: {"weight": _CONV},
    nn.ConvTranspose1d: {"weight": _CONV_T},
    nn.ConvTranspose2d: {"weight": _CONV_T},
    nn.ConvTranspose3d: {"weight": _CONV_T},
    nn.MultiheadAttention: _mha,
    nn.RNNBase: _rnn,
    # Hugging Face GPT-2 style Conv1D: y = x W + b with W: [in, out].
    "transformers.pytorch_utils.Conv1D": {"weight": MatrixSpec("batch", "in_out")},
    # Stacked experts [E, m, n] (dense layout: [E·m, d] / [d, E·m] matrices): batches.
    "muonflow.models.moe.MoEFeedForward": {"router": _LINEAR, "w1": _LINEAR, "w2": _LINEAR},
}

#: Embedding layer types (or ``"module.QualName"``): their parameters, and any parameter tied to
#: them, go to AdamW.
EMBEDDINGS: set[type | str] = {nn.Embedding, nn.EmbeddingBag}


def register_matrices(cls: Any = None, /, **params: MatrixSpec | str) -> Any:
    """Declare the weight matrices of a module type: ``register_matrices(Cls, w="batch")``.

    ``params`` maps a parameter name (held directly by the module) to a :class:`MatrixSpec` or
    a view string. Usable as a class decorator, ``@register_matrices(experts="batch")``. ``cls``
    may be a ``"module.QualName"`` string for a type you do not want to import.
    """
    specs = {k: v if isinstance(v, MatrixSpec) else MatrixSpec(v) for k, v in params.items()}

    def add(target: Any) -> Any:
        if not (
            isinstance(target, str) or (isinstance(target, type) and issubclass(target, nn.Module))
        ):
            raise TypeError(f"register_matrices needs an nn.Module subclass, got {target!r}")
        MATRIX_PARAMETERS[target] = specs
        return target

    return add if cls is None else add(cls)


def _lookup(registry: Mapping[Any, Any] | set[Any], module: nn.Module) -> Any:
    for cls in type(module).__mro__:
        for key in (cls, f"{cls.__module__}.{cls.__qualname__}"):
            if key in registry:
                return registry[key] if isinstance(registry, Mapping) else True
    return None


def declared_matrices(module: nn.Module) -> dict[str, MatrixSpec]:
    """``{name: MatrixSpec}`` of the matrices ``module`` declares and holds (ndim >= 2)."""
    specs = _lookup(MATRIX_PARAMETERS, module)
    if specs is None:
        return {}
    if callable(specs):
        specs = specs(module)
    own = dict(module.named_parameters(recurse=False))
    return {k: s for k, s in specs.items() if k in own and own[k].ndim >= 2}


def is_embedding(module: nn.Module) -> bool:
    return bool(_lookup(EMBEDDINGS, module))


def _structural_kind(module: nn.Module) -> str | None:
    """``"normalization"`` (a class name containing ``"Norm"``: batch, layer, group, RMS and
    their Hugging Face kin), ``"embedding"``, ``"recurrent"`` (``nn.RNNBase``,
    ``nn.RNNCellBase``) or ``None``: what the choices by structure read."""
    if "norm" in type(module).__name__.lower():
        return "normalization"
    if is_embedding(module):
        return "embedding"
    if isinstance(module, nn.RNNBase | nn.RNNCellBase):
        return "recurrent"
    return None


def attention_layer(model: nn.Module) -> str | None:
    """The first module, in registration order, whose class name contains ``"Attention"`` (a
    ViT's ``ViTSelfAttention``, ``nn.MultiheadAttention``), or ``None``."""
    return next((name for name, m in model.named_modules()
                 if name and "attention" in type(m).__name__.lower()), None)  # fmt: skip


def convolution_layer(model: nn.Module) -> str | None:
    """The first module, in registration order, that is a convolution (``nn.Conv1d/2d/3d`` and
    their transposes), or ``None``."""
    return next((name for name, m in model.named_modules()
                 if isinstance(m, nn.modules.conv._ConvNd)), None)  # fmt: skip


def lr_by_schedule(model: nn.Module) -> tuple[float, str]:
    """``(factor, why)``: the factor ``RegMuon(model)`` puts on its scheduled lrs if a
    scheduler warms them up (read at the first step) —
    :data:`~muonflow.optim.options.WARMUP_LR_FACTOR` for a model with an embedding or a
    recurrent layer (``nn.RNNBase``, ``nn.RNNCellBase``): a language or sequence model, whose
    stream of training data keeps its held-out loss with its training loss, so that a decay's
    larger peak pays; 1 for the others (small tables and images, where a larger step fits the
    training set sooner and the held-out loss climbs), with the layer that decided it.
    """
    from .options import WARMUP_LR_FACTOR

    for name, module in model.named_modules():
        kind = _structural_kind(module)
        if kind in ("embedding", "recurrent"):
            return WARMUP_LR_FACTOR, f"{kind} layer {name or '(the model)'!r}"
    return 1.0, "no embedding or recurrent layer"


def decay_by_structure(model: nn.Module) -> tuple[float, str]:
    """``(λ, why)``: the matrices' decay ``RegMuon(model)`` sets when none is given, if its
    output layer turns out to be a softmax head (:func:`softmax_head`, read at the first step).

    :data:`~muonflow.optim.options.UNNORMALIZED_DECAY` for a model with no normalization
    layer (a module whose class name contains ``"Norm"``: batch, layer, group, RMS and their
    Hugging Face kin), no embedding and no recurrent layer (``nn.RNNBase``, ``nn.RNNCellBase``):
    a feed-forward network on real-valued features whose output scale is its weights' (an MLP,
    a CNN without batch norm). 0 otherwise, with the layer that decided it. Under another head
    such a model's matrices get no decay, and, if a scheduler's warm-up has lowered their lr at
    the first step, cautious decay :data:`~muonflow.optim.options.REGRESSION_CAUTIOUS_DECAY`.
    """
    from .options import UNNORMALIZED_DECAY

    for name, module in model.named_modules():
        kind = _structural_kind(module)
        if kind is not None:
            return 0.0, f"0 ({kind} layer {name or '(the model)'!r})"
    why = "no normalization, embedding or recurrent layer: the output scales with the weights"
    return UNNORMALIZED_DECAY, f"{UNNORMALIZED_DECAY:g} ({why})"


def lr_by_structure(model: nn.Module) -> tuple[dict[str, float], str]:
    """``({option: lr}, why)``: the lrs ``RegMuon(model)`` sets at its first step if the output
    layer turns out to be a softmax head (:func:`softmax_head`) —
    :data:`~muonflow.optim.options.NORMALIZED_INPUT_LR` for the matrices and
    :data:`~muonflow.optim.options.NORMALIZED_INPUT_ADAMW_LR` for the AdamW part — for a model
    with a normalization layer (as :func:`decay_by_structure` reads it), no embedding and no
    recurrent layer, whose first matrix layer reads the raw input (:func:`input_layer`): a
    ViT's patch projection, a CNN with batch norm, an MLP with LayerNorm. ``({}, "")``
    otherwise: the options' own."""
    from .options import NORMALIZED_INPUT_ADAMW_LR, NORMALIZED_INPUT_LR

    norm = None
    for name, module in model.named_modules():
        kind = _structural_kind(module)
        if kind in ("embedding", "recurrent"):
            return {}, ""
        if kind == "normalization" and norm is None:
            norm = name or "(the model)"
    first = input_layer(model)
    if norm is None or first is None:
        return {}, ""
    lrs = {"lr": NORMALIZED_INPUT_LR, "adamw_lr": NORMALIZED_INPUT_ADAMW_LR}
    return lrs, (f"normalization layer {norm!r}, no embedding or recurrent layer; {first!r} "
                 "reads the raw input")


def input_layer(model: nn.Module) -> str | None:
    """The name of the module that reads ``model``'s raw input: the first, in registration
    order, that holds a declared matrix (:data:`MATRIX_PARAMETERS`) — a first ``Linear`` on
    table columns, a first conv on pixels — or ``None`` when an embedding comes first (its
    rows are looked up, not multiplied) or there is none. ``RegMuon(model)`` checks it against
    the first forward (:class:`FirstForward`): where another matrix layer runs first, that one
    is the input layer its rules read."""
    for name, module in model.named_modules():
        if not name:
            continue
        if is_embedding(module):
            return None
        if declared_matrices(module):
            return name
    return None


#: The largest :func:`softmax_head` ratio read as a softmax head's. A softmax head's ratio is
#: rounding: about 1e-7 with float32 gradients, below 1e-2 when the head's backward runs in
#: bfloat16 (autocast); an unstructured residual over ``K`` outputs gives about ``1/√K``, and a
#: single output exactly 1 (tests/test_optim_routing.py measures each).
SOFTMAX_TOL = 0.05


def softmax_head(grad: Tensor) -> tuple[bool, float]:
    r"""Whether an output layer's gradient ``grad`` (``[K, ...]``, ``K`` outputs) is a softmax
    head's, and the ratio :math:`r = \|\mathbf 1^\top G\| / (\sqrt K \|G\|_F) \in [0, 1]`
    that decides it (``G``: ``grad`` as ``K`` rows).

    A loss that sees the logits through a softmax (cross-entropy, with label smoothing or
    ignored targets too) is invariant to adding a constant to every logit, so its gradient on
    them sums to zero over the outputs for every example, and so does every column of ``G``:
    :math:`r = 0` up to rounding. A regression head (MSE on ``K`` outputs) has no such
    identity, and one output (``K = 1``) gives ``r = 1``. Softmax iff ``K >= 2``, ``G != 0``
    and ``r <= SOFTMAX_TOL``.
    """
    G = grad.detach().reshape(grad.shape[0], -1).double()
    total = float(torch.linalg.vector_norm(G))
    if G.shape[0] < 2 or total == 0.0:
        return False, 1.0
    r = float(torch.linalg.vector_norm(G.sum(0))) / (math.sqrt(G.shape[0]) * total)
    return r <= SOFTMAX_TOL, r


# -- names -----------------------------------------------------------------------------------------
_STRONG_EXACT = frozenset({"wte", "wpe", "head", "lm_head", "classifier", "unembed"})
_WEAK_EXACT = frozenset({"out", "output", "pos", "logits", "readout"})
_WEAK_PREFIX = ("out_", "output_", "pos_", "position")


def default_adamw_rule(name: str | None, param: Tensor) -> bool:
    """Route a matrix parameter given by name only to AdamW if its name marks an embedding or
    an output layer.

    A dotted-name component marks it if it contains ``"emb"`` (``embed``, ``tok_emb``), ends
    with ``"_head"`` or is one of ``wte``, ``wpe``, ``head``, ``lm_head``, ``classifier``,
    ``unembed``; or, before any integer component (that is, outside a repeated block such as
    ``layers.3``), if it is ``out``, ``output``, ``pos``, ``logits``, ``readout`` or starts
    with ``out_``, ``output_``, ``pos_``, ``position``. So ``pos``, ``out.weight`` and
    ``tok_emb.weight`` go to AdamW while ``layers.3.attn.out_proj.weight`` does not. Unnamed
    parameters are never selected. Pass the model, ``RegMuon(model)``, to route by structure.
    """
    if name is None:
        return False
    in_block = False
    for part in name.split("."):
        if part.isdigit():
            in_block = True
            continue
        if "emb" in part or part.endswith("_head"):
            return True
        if part in _STRONG_EXACT:
            return True
        if not in_block and (part in _WEAK_EXACT or part.startswith(_WEAK_PREFIX)):
            return True
    return False


class NamePatterns:
    """``(name, param) -> bool``: some regular expression is found in the name (picklable)."""

    def __init__(self, patterns: Iterable[Any]) -> None:
        self.patterns: list[re.Pattern[str]] = []
        for p in patterns:
            if not isinstance(p, str):
                raise TypeError(f"adamw patterns must be strings, got {type(p).__name__} {p!r}")
            try:
                self.patterns.append(re.compile(p))
            except re.error as e:
                raise ValueError(f"adamw: {p!r} is not a valid regular expression ({e})") from e

    def __call__(self, name: str | None, param: Tensor) -> bool:
        return name is not None and any(p.search(name) for p in self.patterns)

    def __repr__(self) -> str:
        return f"NamePatterns({[p.pattern for p in self.patterns]!r})"


def make_rule(adamw: Any) -> tuple[Callable[[str | None, Tensor], bool], bool]:
    """``(rule, explicit)`` from RegMuon's ``adamw`` argument (``None``: the default rule)."""
    if adamw is None:
        return default_adamw_rule, False
    if callable(adamw):
        return adamw, True
    if isinstance(adamw, str | bytes) or not isinstance(adamw, Iterable):
        raise TypeError(f"adamw must be a predicate or an iterable of patterns, got {adamw!r}")
    return NamePatterns(adamw), True


# -- the record ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    """Where one parameter went and why."""

    name: str  # qualified name, or "param_groups[i][j]" for an unnamed parameter
    shape: tuple[int, ...]
    algorithm: str  # "regmuon" | "adamw"
    reason: str  # see Routing.REASONS
    detail: str = ""  # layer type, tied names, the rule, ...
    view: str | None = None  # regmuon: matrix view and layout
    layout: str | None = None

    @property
    def matrices(self) -> tuple[int, int, int] | None:
        """``(k, m, n)``: how RegMuon sees it (``None`` for AdamW)."""
        return None if self.view is None else matrix_shape(self.shape, self.view)


@dataclass
class Routing:
    """Every routing decision of an optimizer, in parameter order; ``print()`` summarizes."""

    routes: list[Route] = field(default_factory=list)
    source: str = ""  # "module Foo", "named parameters", ...
    output: str = ""  # the output layer(s) and how they were found
    decay: str = ""  # the matrices' decay RegMuon(model) set by structure, and why
    lr: str = ""  # the lrs RegMuon(model) set by structure (and its head), and why
    schedule: str = ""  # the factor RegMuon(model) put on scheduled lrs (a warm-up), and why

    REASONS = (
        "hidden matrix",  # a declared weight matrix of a known layer -> RegMuon
        "embedding",  # a parameter of an embedding layer -> AdamW
        "tied to embedding",  # the same tensor as an embedding's parameter -> AdamW
        "output layer",  # a parameter of the output layer -> AdamW
        "direct parameter",  # held by a module that does not declare it a matrix -> AdamW
        "vector",  # ndim 1 -> AdamW
        "scalar",  # ndim 0 -> AdamW
        "name rule",  # default_adamw_rule matched the name -> AdamW
        "adamw rule",  # the user's adamw= predicate/patterns matched -> AdamW
        "matrix by name",  # named, not matched by the rule -> RegMuon
        "unrouted matrix",  # no name, no module: RegMuon, with a RoutingWarning
        "group algorithm",  # the group named its algorithm
    )

    def by_name(self) -> dict[str, Route]:
        return {r.name: r for r in self.routes}

    def summary(self, max_rows: int = 40) -> str:
        """A compact table: rows grouped by (algorithm, reason, name pattern, shape).

        Integer name components become ``*``, so the layers of a deep model share rows.
        """
        rows: dict[tuple[Any, ...], list[Route]] = {}
        for r in self.routes:
            pattern = ".".join("*" if s.isdigit() else s for s in r.name.split("."))
            key = (r.algorithm, r.reason, pattern, r.shape, r.detail, r.view, r.layout)
            rows.setdefault(key, []).append(r)
        n_el = {a: 0 for a in ("regmuon", "adamw")}
        n_t = {a: 0 for a in ("regmuon", "adamw")}
        for r in self.routes:
            n_el[r.algorithm] += _numel(r.shape)
            n_t[r.algorithm] += 1
        lines = [
            f"RegMuon routing of {self.source or 'parameters'}: "
            + ", ".join(f"{a} {n_t[a]} tensors ({_human(n_el[a])})" for a in n_t)
        ]
        if self.output:
            lines.append(f"output layer: {self.output}")
        if self.decay:
            lines.append(f"matrix weight decay by structure: {self.decay}")
        if self.lr:
            lines.append(f"lr by structure: {self.lr}")
        if self.schedule:
            lines.append(f"lr by schedule: {self.schedule}")
        table: list[tuple[str, str, str, str]] = []
        for algo in ("regmuon", "adamw"):
            for key, members in rows.items():
                if key[0] != algo:
                    continue
                r = members[0]
                where = _compress([m.name for m in members])
                if r.view is not None:
                    k, m, n = matrix_shape(r.shape, r.view)
                    shape = f"{k} × {m} × {n}" if k > 1 else f"{m} × {n}"
                    if r.layout == "in_out":
                        shape += " [in, out]"
                else:
                    shape = " × ".join(map(str, r.shape)) or "scalar"
                reason = r.reason + (f" ({r.detail})" if r.detail else "")
                table.append((algo, reason, where, shape))
        if len(table) > max_rows:
            hidden = len(table) - max_rows
            table = [*table[:max_rows], ("…", f"{hidden} more rows", "", "")]
        widths = [max(len(row[i]) for row in table) for i in range(3)] if table else [0, 0, 0]
        for row in table:
            lines.append(
                "  " + "  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True))
                + "  " + row[3]
            )  # fmt: skip
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _compress(names: list[str]) -> str:
    """Names that differ only in integer components, as one: ``h.{0..11}.attn.weight``."""
    if len(names) == 1:
        return names[0]
    parts = [n.split(".") for n in names]
    out = []
    for i, first in enumerate(parts[0]):
        values = sorted({int(p[i]) for p in parts}) if first.isdigit() else []
        if len(values) <= 1:
            out.append(first)
        elif values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
            out.append(f"{{{values[0]}..{values[-1]}}}")
        else:
            out.append("{" + ",".join(map(str, values)) + "}")
    return ".".join(out) + f" (×{len(names)})"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _human(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit} elements"
    return f"{n} elements"


# -- the output layer ------------------------------------------------------------------------------
def _signature(module: nn.Module) -> tuple[Any, ...]:
    return (type(module), tuple((n, tuple(p.shape)) for n, p in module.named_parameters()))


def _repeated_blocks(model: nn.Module) -> list[str]:
    """Names of composite modules (with children) that have a sibling of the same type and
    parameter shapes: the layers of a repeated stack (``blocks.3``)."""
    out = []
    for name, parent in model.named_modules():
        groups: dict[tuple[Any, ...], list[str]] = {}
        for child_name, child in parent.named_children():
            if next(child.children(), None) is None:
                continue  # a leaf layer: not a block
            groups.setdefault(_signature(child), []).append(child_name)
        for members in groups.values():
            if len(members) > 1:
                out += [f"{name}.{c}" if name else c for c in members]
    return out


def _resolve(model: nn.Module, output: Any) -> list[str]:
    modules = dict(model.named_modules())
    names = {id(m): n for n, m in modules.items()}
    items = [output] if isinstance(output, str | nn.Module) else list(output)
    out = []
    for item in items:
        if isinstance(item, str):
            if item not in modules:
                close = [n for n in modules if n and item.split(".")[-1] in n][:5]
                raise ValueError(
                    f"output={item!r} is not the name of a submodule of the model"
                    + (f"; similar names: {close}" if close else "")
                )
            out.append(item)
        elif isinstance(item, nn.Module):
            if id(item) not in names:
                raise ValueError(
                    f"output={type(item).__name__}(...) is not a submodule of the model"
                )
            out.append(names[id(item)])
        else:
            raise TypeError(
                f"output must be a module, a module name or a list of them, got {item!r}"
            )
    return out


def output_layers(model: nn.Module, output: Any = None) -> tuple[list[str], str]:
    """The output layer(s) of ``model`` as module names, and how they were found.

    **Definition.** ``output`` (a module, its qualified name, or a list of them; ``()`` for
    none) if given. Otherwise, if the model has a Hugging Face ``get_output_embeddings()``
    that returns one of its modules, that module. Otherwise the *last* module, in registration
    order (``model.named_modules()``), that holds a declared weight matrix
    (:data:`MATRIX_PARAMETERS`), is not the model itself and does not lie inside a *repeated
    block* — a composite module with a sibling of the same type and parameter shapes, such as
    ``layers.3`` of a transformer. So a head registered before a stack of identical blocks is
    still found, and a model whose logits reuse the embedding (``x @ wte.weight.T``, no head
    module) has no output layer (the tied embedding already goes to AdamW). ``RegMuon(model)``
    checks this choice against the order in which the candidates run in the model's first
    forward and re-routes before the first step if they differ (a head registered before the
    body).
    """
    if output is not None:
        names = _resolve(model, output)
        return names, "given by output="
    get = getattr(model, "get_output_embeddings", None)
    if callable(get):
        try:
            head = get()
        except (NotImplementedError, AttributeError):
            head = None
        if isinstance(head, nn.Module):
            names = _resolve(model, head)
            return names, "from get_output_embeddings()"
    candidates = output_candidates(model)
    if not candidates:
        return [], "no matrix layer outside repeated blocks"
    return [candidates[-1]], REGISTRATION_ORDER


#: How :func:`output_layers` found an output layer by registration order (``RegMuon(model)``
#: then checks it against the execution order of the first forward, :class:`FirstForward`).
REGISTRATION_ORDER = "the last matrix layer outside repeated blocks, in registration order"
EXECUTION_ORDER = "the last matrix layer outside repeated blocks to run in the first forward"


def matrix_layers(model: nn.Module) -> list[str]:
    """Modules holding declared weight matrices (:data:`MATRIX_PARAMETERS`), other than the model
    itself, in registration order."""
    return [name for name, module in model.named_modules() if name and declared_matrices(module)]


def output_candidates(model: nn.Module) -> list[str]:
    """Modules that may be the output layer, in registration order: those holding declared
    weight matrices, other than the model itself, outside repeated blocks."""
    blocks = _repeated_blocks(model)
    return [name for name, module in model.named_modules()
            if name and declared_matrices(module)
            and not any(name == b or name.startswith(b + ".") for b in blocks)]  # fmt: skip


class FirstForward:
    """Forward hooks that record in which order ``names`` (submodules of ``model``) run during
    the model's first complete forward, call ``done(order)`` once and remove themselves.

    Pickling or deep-copying the model before then copies a hook that does nothing (a copy's
    first forward must not re-route the original's optimizer)."""

    def __init__(self, model: nn.Module, names: list[str], done: Callable[[list[str]], None]):
        self.order: list[str] = []
        self.done = done
        modules = dict(model.named_modules())
        self.handles = [modules[n].register_forward_hook(_Ran(self, n)) for n in names]
        self.handles.append(model.register_forward_hook(_Ran(self, None), always_call=True))

    def ran(self, name: str | None) -> None:
        if name is not None:
            self.order.append(name)
            return
        for h in self.handles:
            h.remove()
        self.done(self.order)


class _Ran:
    def __init__(self, observer: FirstForward, name: str | None) -> None:
        self.observer, self.name = observer, name

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        self.observer.ran(self.name)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_noop_hook, ())


def _noop_hook() -> Callable[..., None]:
    return lambda module, args, output: None


class FirstTokens:
    """A forward pre-hook that reads how many tokens ``module`` (an attention layer) takes in
    its first call — its first tensor input ``[batch, tokens, d]``, ``[tokens, batch, d]`` where
    the module has ``batch_first`` false (``nn.MultiheadAttention``'s default), ``[tokens, d]``
    unbatched — calls ``done(tokens)`` once and removes itself (an input of another shape reads
    nothing). Pickling or deep-copying the module before then copies a hook that does nothing."""

    def __init__(self, module: nn.Module, done: Callable[[int], None]) -> None:
        self.done = done
        self.handle = module.register_forward_pre_hook(_Tokens(self), with_kwargs=True)

    def read(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.handle.remove()
        x = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        if x is None or x.dim() not in (2, 3):
            return
        batch_first = x.dim() == 3 and getattr(module, "batch_first", True)
        self.done(int(x.shape[1] if batch_first else x.shape[0]))


class _Tokens:
    def __init__(self, observer: FirstTokens) -> None:
        self.observer = observer

    def __call__(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        self.observer.read(module, args, kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_noop_hook, ())  # three arguments: (module, args, kwargs) here


def last_executed_layer(model: nn.Module, *args: Any, **kwargs: Any) -> str:
    """Name of the last module with a declared weight matrix that runs in ``model(*args)``.

    Runs one forward pass in eval mode without gradients (training flags restored), for use as
    ``RegMuon(model, output=last_executed_layer(model, x))`` when registration order does not
    match execution order. A head computed functionally (``x @ emb.weight.T``) is no module
    call and is not seen.
    """
    order: list[str] = []
    names = [name for name, module in model.named_modules() if declared_matrices(module)]
    observer = FirstForward(model, names, order.extend)
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for h in observer.handles:  # a forward that raised
            h.remove()
        for m, mode in modes:
            m.train(mode)
    if not order:
        raise ValueError("no module holding a declared weight matrix ran in the forward pass")
    return order[-1]


# -- routing ---------------------------------------------------------------------------------------
def _qual(module_name: str, attr: str) -> str:
    return f"{module_name}.{attr}" if module_name else attr


def route_module(
    model: nn.Module,
    *,
    output: Any = None,
    extra_adamw: Callable[[str | None, Tensor], bool] | None = None,
) -> tuple[Routing, list[tuple[str, Tensor]]]:
    """Route every parameter of ``model`` by structure (module docstring; precedence: embedding
    or tied > output layer > declared matrix > vector/scalar > direct parameter).

    ``extra_adamw(name, param)`` may send further declared matrices to AdamW. Returns the
    :class:`Routing` and the ``(name, parameter)`` pairs in the same order.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"route_module needs an nn.Module, got {type(model).__name__}")
    owners: dict[Tensor, list[tuple[str, nn.Module, str]]] = {}
    for mname, module in model.named_modules():
        for attr, p in module.named_parameters(recurse=False):
            owners.setdefault(p, []).append((mname, module, attr))
    outputs, how = output_layers(model, output)
    out_set = set(outputs)
    routing = Routing(source=f"module {type(model).__name__}",
                      output=(", ".join(outputs) or "none") + f" ({how})")  # fmt: skip
    pairs: list[tuple[str, Tensor]] = []
    for name, p in model.named_parameters():
        own = owners[p]
        others = [_qual(m, a) for m, _, a in own if _qual(m, a) != name]
        tied = f"tied: {', '.join(others)}" if others else ""
        shape = tuple(p.shape)
        emb = [(m, a) for m, mod, a in own if is_embedding(mod)]
        spec = next(
            (s for _, mod, a in own if (s := declared_matrices(mod).get(a)) is not None), None
        )
        if emb:
            m, a = emb[0]
            if _qual(m, a) == name:
                route = Route(name, shape, "adamw", "embedding", tied)
            else:
                route = Route(name, shape, "adamw", "tied to embedding", _qual(m, a))
        elif any(m in out_set for m, _, _ in own):
            route = Route(name, shape, "adamw", "output layer", type(own[0][1]).__name__)
        elif spec is not None:
            if extra_adamw is not None and extra_adamw(name, p):
                route = Route(name, shape, "adamw", "adamw rule")
            else:
                matrix_shape(shape, spec.view)  # the view must fit: raises otherwise
                layer = type(next(mod for _, mod, a in own if a in declared_matrices(mod))).__name__
                route = Route(
                    name, shape, "regmuon", "hidden matrix", layer, spec.view, spec.layout
                )
        elif p.ndim <= 1:
            route = Route(name, shape, "adamw", "vector" if p.ndim == 1 else "scalar")
        else:
            route = Route(name, shape, "adamw", "direct parameter",
                          f"of {type(own[0][1]).__name__}")  # fmt: skip
        routing.routes.append(route)
        pairs.append((name, p))
    return routing, pairs


def route_params(
    items: list[tuple[str | None, Any]],
    rule: Callable[[str | None, Tensor], bool],
    explicit: bool,
    view: str,
    layout: str,
) -> list[Route]:
    """Route parameters given without a module (by name): one :class:`Route` each."""
    out = []
    for i, (name, p) in enumerate(items):
        label = name if name is not None else f"params[{i}]"
        shape = tuple(p.shape)
        if p.ndim <= 1:
            out.append(Route(label, shape, "adamw", "vector" if p.ndim == 1 else "scalar"))
        elif rule(name, p):
            reason = "adamw rule" if explicit else "name rule"
            out.append(Route(label, shape, "adamw", reason))
        else:
            reason = "matrix by name" if (name is not None or explicit) else "unrouted matrix"
            out.append(Route(label, shape, "regmuon", reason, "", view, layout))
    return out


def warn_unrouted(count: int, stacklevel: int) -> None:
    """The one warning for matrices that could be routed neither by structure nor by name."""
    if count:
        warnings.warn(
            f"RegMuon got {count} matrix parameter{'s' if count > 1 else ''} without names or a "
            "module, so it cannot tell hidden weights from embeddings or the output layer: "
            f"{'they all go' if count > 1 else 'it goes'} to RegMuon. Pass the model, "
            "RegMuon(model), to route by structure (or model.named_parameters(), or adamw=() "
            "to confirm that every matrix is a hidden weight).",
            RoutingWarning,
            stacklevel=stacklevel,
        )
