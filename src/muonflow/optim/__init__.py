r"""RegMuon: regularized Muon as a drop-in :class:`torch.optim.Optimizer`.

The update of one matrix parameter :math:`W \in \mathbb{R}^{m \times n}` with gradient
:math:`g` is (sum-form momentum, the paper's convention)

.. math::
    M \leftarrow \beta M + g, \qquad
    W \leftarrow (1 - \eta\lambda) W - \eta\, \rho(m, n)\, \nabla K_\varepsilon(M),

with :math:`\nabla K_\varepsilon` a spectral map (:mod:`muonflow.spectral`; the default
``relativistic`` potential gives :math:`M (M^\top M + \varepsilon^2 I)^{-1/2}`), :math:`\lambda`
the decoupled weight decay and :math:`\rho` a shape-aware learning-rate factor. With
:math:`\eta = h`, :math:`\beta = 1 - \gamma h`, absolute :math:`\varepsilon = \varepsilon_{dyn}/h`
it is exactly the symplectic-Euler scheme of the damped Hamiltonian flow
(:meth:`RegMuon.from_dynamics`).

- :mod:`~muonflow.optim.functional`: the kernels :func:`regmuon` and :func:`adamw`
  (per-parameter lists, like ``torch.optim._muon.muon``) and the map :func:`orthogonalize`;
- :mod:`~muonflow.optim.routing`: which parameter gets which update (by module structure or
  by name) and the record :class:`Routing`;
- :mod:`~muonflow.optim.optimizer`: the thin :class:`RegMuon` class (routing, grouping and
  packing, state, diagnostics);
- :mod:`~muonflow.optim.defaults`: every default, in :data:`DEFAULTS`.

Design notes and recipes (schedulers, compile, accumulation, autocast, Hugging Face):
``docs/optimizer.md``.
"""

from ..polar import polar, regularized_polar  # the map the step calls (patchable, see functional)
from .defaults import DEFAULTS, RegMuonDefaults
from .functional import (
    ADJUST_LR,
    AUTO_WORKSPACE_FLOOR,
    MAP_WORKSPACE_MN,
    MAP_WORKSPACE_RR,
    MATRIX_VIEWS,
    adamw,
    auto_chunk_rows,
    auto_workspace_cap,
    lr_factor,
    map_workspace_bytes,
    matrix_shape,
    orthogonalize,
    regmuon,
)
from .optimizer import RegMuon
from .routing import (
    EMBEDDINGS,
    MATRIX_PARAMETERS,
    MatrixSpec,
    Route,
    Routing,
    RoutingWarning,
    default_adamw_rule,
    last_executed_layer,
    output_layers,
    register_matrices,
    route_module,
)

__all__ = [
    "ADJUST_LR",
    "AUTO_WORKSPACE_FLOOR",
    "DEFAULTS",
    "EMBEDDINGS",
    "MAP_WORKSPACE_MN",
    "MAP_WORKSPACE_RR",
    "MATRIX_PARAMETERS",
    "MATRIX_VIEWS",
    "MatrixSpec",
    "RegMuon",
    "RegMuonDefaults",
    "Route",
    "Routing",
    "RoutingWarning",
    "adamw",
    "auto_chunk_rows",
    "auto_workspace_cap",
    "default_adamw_rule",
    "last_executed_layer",
    "lr_factor",
    "map_workspace_bytes",
    "matrix_shape",
    "orthogonalize",
    "output_layers",
    "polar",
    "register_matrices",
    "regmuon",
    "regularized_polar",
    "route_module",
]
