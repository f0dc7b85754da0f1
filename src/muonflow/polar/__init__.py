r"""Matrix-function kernels for spectral maps, batched over ``[..., m, n]``.

A spectral map keeps the singular vectors and maps the singular values; the regularized Muon
map is

.. math::  \nabla K_\varepsilon(G) = G\,(G^\top G + \varepsilon^2 I)^{-1/2}
           = U \,\mathrm{diag}\big(\sigma/\sqrt{\sigma^2+\varepsilon^2}\big)\, V^\top ,

which tends to the Muon polar factor :math:`U V^\top` as :math:`\varepsilon \to 0`. Every path
starts from one Gram front (:mod:`.front`: scaling, :math:`A = X^\top X + \varepsilon^2 I` of
the short side, a spectral bound, the rounding bound) and computes :math:`A^{-1/2}` by
``"eigh"`` (:mod:`.exact`), ``"svd"`` (the reference), ``"poly"``, a matmul-only minimax
polynomial iteration (:mod:`.polynomial`, :mod:`.schedules`), or ``"mixed"``, the same
steps iterated on ``X`` in bfloat16 where that is accurate enough (:mod:`.mixed`);
``"auto"`` (:mod:`.planning`) picks the one meeting ``tol`` in the least time predicted from
the host's measured rates (:mod:`.calibration`). :mod:`.baselines` holds Newton–Schulz and Gram
Newton–Schulz; :mod:`.autodiff` the derivatives of the exact paths (Daleckii–Krein), valid at
repeated singular values. Design, cost model and precision analysis: ``docs/polar.md``.
"""

import sys
import types
from typing import Any

from .baselines import NS_COEFFICIENTS, gram_newton_schulz, newton_schulz
from .calibration import HostRates, bf16_native, clear_cache, host_rates, use_rates
from .exact import WeightFn, gram_eigh_map, spectral_map, svd_map
from .front import (
    GramFront,
    default_tol,
    float32_gemm_roundoff,
    gram_floor,
    gram_front,
    gram_rounding_bound,
    lmax_estimate,
    unit_roundoff,
    work_dtype,
)
from .maps import (
    POLAR_FLOOR,
    POLAR_METHODS,
    inv_sqrt_from_gram,
    plan_auto,
    polar,
    polar_factor,
    regularized_polar,
)
from .mixed import mixed_map
from .planning import AutoPlan, choose_method
from .polynomial import gram_poly_inv_sqrt, step_dtypes
from .schedules import (
    POLY_DEGREES,
    RHO_MIN,
    TARGET_MIN,
    PolySchedule,
    PolyStep,
    amp_limit,
    minimax_odd,
    poly_schedule,
)

__all__ = [
    "NS_COEFFICIENTS",
    "POLAR_FLOOR",
    "POLAR_METHODS",
    "POLY_DEGREES",
    "RHO_MIN",
    "TARGET_MIN",
    "AutoPlan",
    "GramFront",
    "HostRates",
    "PolySchedule",
    "PolyStep",
    "WeightFn",
    "amp_limit",
    "bf16_native",
    "choose_method",
    "clear_cache",
    "default_tol",
    "float32_gemm_roundoff",
    "gram_eigh_map",
    "gram_floor",
    "gram_front",
    "gram_newton_schulz",
    "gram_poly_inv_sqrt",
    "gram_rounding_bound",
    "host_rates",
    "inv_sqrt_from_gram",
    "lmax_estimate",
    "minimax_odd",
    "mixed_map",
    "newton_schulz",
    "plan_auto",
    "polar",
    "polar_factor",
    "poly_schedule",
    "regularized_polar",
    "spectral_map",
    "step_dtypes",
    "svd_map",
    "unit_roundoff",
    "use_rates",
    "work_dtype",
]


class _DeprecatedCall(types.ModuleType):
    """``muonflow.polar`` is this package; calling it is the deprecated ``polar(G)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return polar(*args, **kwargs)


sys.modules[__name__].__class__ = _DeprecatedCall
