r"""RegMuon: regularized Muon as a drop-in :class:`torch.optim.Optimizer`.

The update of one matrix parameter :math:`W \in \mathbb{R}^{m \times n}` with gradient
:math:`g` is (sum-form momentum, the paper's convention)

.. math::
    M \leftarrow \beta M + g, \qquad
    W \leftarrow (1 - \eta\lambda) W - \eta\, \rho(m, n)\, \nabla K_\varepsilon(M),

with :math:`\nabla K_\varepsilon` the mirror map of a spectral potential (:mod:`muonflow.spectral`;
the default gives :math:`M (M^\top M + \varepsilon^2 I)^{-1/2}`), :math:`\lambda` the decoupled
weight decay and :math:`\rho` a shape factor. With :math:`\eta = h`, :math:`\beta = 1 - \gamma h`
and absolute :math:`\varepsilon = \varepsilon_{dyn}/h` it is exactly the symplectic-Euler scheme
of the damped Hamiltonian flow (``docs/theory.md``, §3; :meth:`RegMuon.from_dynamics`).

- :mod:`.options`: :class:`RegMuonOptions`, every option validated in one place, :data:`DEFAULTS`;
- :mod:`.routing`: which parameter gets which update (by module structure or by name);
- :mod:`.plan`: matrix views, shape factors and the bucket plan of a step;
- :mod:`.kernel`: the functional kernels (:func:`regmuon`: pre → map → post; :func:`adamw`) and
  the map :func:`mirror_map`;
- :mod:`.dtensor`: the same update on FSDP2/DTensor parameters (full-matrix maps from shards);
- :mod:`.optimizer`: the thin :class:`RegMuon` class.

Design notes and recipes: ``docs/optimizer.md``; the package map: ``docs/architecture.md``.
"""

from .kernel import adamw, kinetic_energy, mirror_map, regmuon
from .kernel import orthogonalize as orthogonalize  # deprecated name of mirror_map
from .optimizer import RegMuon
from .options import (
    ATTENTION_WARMUP_DECAY,
    ATTENTION_WARMUP_FACTOR,
    DEFAULTS,
    FEW_TOKENS,
    FEW_TOKENS_CONSTANT_FACTOR,
    FEW_TOKENS_WARMUP_FACTOR,
    NORMALIZED_CNN_DECAYS,
    NORMALIZED_INPUT_ADAMW_LR,
    NORMALIZED_INPUT_LR,
    NORMALIZED_MLP_CONSTANT_FACTOR,
    REGRESSION_CAUTIOUS_DECAY,
    UNNORMALIZED_DECAY,
    WARMUP_LR_FACTOR,
    RegMuonOptions,
)
from .plan import ADJUST_LR, MATRIX_VIEWS, lr_factor, matrix_shape
from .routing import (
    EMBEDDINGS,
    MATRIX_PARAMETERS,
    MatrixSpec,
    Route,
    Routing,
    RoutingWarning,
    decay_by_structure,
    default_adamw_rule,
    input_layer,
    last_executed_layer,
    lr_by_schedule,
    lr_by_structure,
    output_layers,
    register_matrices,
    route_module,
    softmax_head,
)

RegMuonDefaults = RegMuonOptions  # the earlier name of the options type

__all__ = [
    "ADJUST_LR",
    "ATTENTION_WARMUP_DECAY",
    "ATTENTION_WARMUP_FACTOR",
    "DEFAULTS",
    "EMBEDDINGS",
    "FEW_TOKENS",
    "FEW_TOKENS_CONSTANT_FACTOR",
    "FEW_TOKENS_WARMUP_FACTOR",
    "MATRIX_PARAMETERS",
    "MATRIX_VIEWS",
    "NORMALIZED_CNN_DECAYS",
    "NORMALIZED_INPUT_ADAMW_LR",
    "NORMALIZED_INPUT_LR",
    "NORMALIZED_MLP_CONSTANT_FACTOR",
    "REGRESSION_CAUTIOUS_DECAY",
    "UNNORMALIZED_DECAY",
    "WARMUP_LR_FACTOR",
    "MatrixSpec",
    "RegMuon",
    "RegMuonOptions",
    "Route",
    "Routing",
    "RoutingWarning",
    "adamw",
    "decay_by_structure",
    "default_adamw_rule",
    "input_layer",
    "kinetic_energy",
    "last_executed_layer",
    "lr_by_schedule",
    "lr_by_structure",
    "lr_factor",
    "matrix_shape",
    "mirror_map",
    "output_layers",
    "register_matrices",
    "regmuon",
    "route_module",
    "softmax_head",
]
