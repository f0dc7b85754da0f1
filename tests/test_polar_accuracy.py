"""The accuracy contract of ``regularized_polar`` per dtype and method, on hard spectra, and the
input range and Gram-matrix checks (issue #23: "float64 at the default tol misses its own
contract", "svd in float32 gives 3.9e-2", "1e100 / 1e200 return all zeros",
"``inv_sqrt_from_gram`` accepts non-symmetric or indefinite input").

The promise (docstring of :func:`muonflow.polar.regularized_polar`, ``docs/polar.md`` §7), with
``t = tol`` (default eight roundoffs of ``G``'s dtype), ``u_out`` the roundoff of ``G``'s dtype,
``κ_F = ‖G‖_F/ε`` and ``n = max(m, n)``:

- ``"eigh"``, ``"svd"``, ``"auto"``: relative Frobenius error ``<= max(t, svd_floor) + u_out``,
  ``svd_floor = u₆₄(8n + 2κ_F)``: the map's own conditioning, no method reaches below it;
- ``"poly"``: ``<= max(t, 64u₆₄) + u_out``, or a ``ValueError`` saying it cannot.

References are 32-digit (mpmath) maps of the input as given, exact to ``u₆₄`` here.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import unit_roundoff
from reference import relativistic_map_mp, relativistic_map_ref

import muonflow as mf
from muonflow.polar import default_tol, inv_sqrt_from_gram
from muonflow.polar.exact import svd_floor
from muonflow.polar.maps import poly_floor_tol

F64 = torch.float64


def hard_matrix(m: int, n: int, decades: float, seed: int = 0) -> torch.Tensor:
    """Random singular vectors, singular values log-spaced from 1 down to ``10^-decades``."""
    gen = torch.Generator().manual_seed(seed)
    r = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, r, generator=gen, dtype=F64))
    V, _ = torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=F64))
    return (U * torch.logspace(0, -decades, r, dtype=F64)) @ V.mT


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.norm(out.double() - ref) / torch.linalg.norm(ref))


def promise(method: str, G: torch.Tensor, eps: float, tol: float | None) -> float:
    t = default_tol(G.dtype) if tol is None else tol
    if method == "poly":
        return poly_floor_tol(t) + unit_roundoff(G.dtype)
    kappa = float(torch.linalg.norm(G.double())) / eps
    return max(t, svd_floor(kappa, F64, max(G.shape[-2:]))) + unit_roundoff(G.dtype)


@pytest.mark.parametrize("shape", [(9, 6), (5, 8)])
@pytest.mark.parametrize("eps", [1.0, 1e-3, 1e-6, 1e-9])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_every_path_keeps_its_promise_on_a_twelve_decade_spectrum(shape, eps, dtype):
    # catches: eigh results accepted up to √u₆₄ = 1.5e-8 at float64's default tol 8.9e-16
    # (measured 5.8e-12 at ε = 1e-3, where 6.5e-14 is reachable), float32 SVD at u₃₂‖G‖/ε
    # (3.9e-2 and 0.79 at ε = 1e-6, 1e-9), "auto" choosing that float32 SVD, and "poly"
    # returning errors up to 6.7e8 (float64 floor ½u₆₄κ² = 55) without a word
    G = hard_matrix(*shape, decades=12).to(dtype)
    ref = relativistic_map_mp(G, eps)
    for tol in (None, 1e-3, 1e-8):
        for method in ("eigh", "svd", "auto", "poly"):
            try:
                out = mf.regularized_polar(G, eps, method=method, tol=tol)
            except ValueError as exc:
                assert method == "poly" and "method='poly' cannot meet tol" in str(exc)
                continue
            bound = promise(method, G, eps, tol)
            assert rel_err(out, ref) <= bound, (method, tol)


def test_poly_refuses_what_it_cannot_compute():
    # ε = 1e-9‖G‖ on a twelve-decade spectrum: κ² = 1e18 is beyond float64's Gram floor
    # (½u₆₄κ² = 55); the old code returned relative errors 1.2-1.4 at tol 1e-3
    G = hard_matrix(9, 6, decades=12)
    with pytest.raises(ValueError, match=r"method='poly' cannot meet tol=0.001 .* 1 of 1"):
        mf.regularized_polar(G, 1e-9, method="poly", tol=1e-3)
    # and keeps what it can show: the same spectrum at ε = 1e-3 (κ² = 1e6, floor 5.6e-11)
    out = mf.regularized_polar(G, 1e-3, method="poly", tol=1e-8)
    assert rel_err(out, relativistic_map_mp(G, 1e-3)) <= 1e-8 + unit_roundoff(F64)


@pytest.mark.parametrize("k", [-1000, -660, -330, 330, 660, 1000])
@pytest.mark.parametrize(("method", "tol"), [("eigh", None), ("svd", None), ("poly", 1e-8),
                                             ("auto", 1e-8), ("auto", None)])  # fmt: skip
def test_float64_at_any_finite_scale(k, method, tol):
    # The map is invariant under (G, ε) -> (sG, sε); s = 2^k keeps the input exact. catches: a
    # scaling capped at 2^100, which returned all zeros at 1e100 ("poly") and 1e200 ("auto")
    G = torch.randn(7, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    s = 2.0**k
    out = mf.regularized_polar(G * s, 0.3 * s, method=method, tol=tol)
    assert rel_err(out, relativistic_map_mp(G, 0.3)) <= promise(method, G, 0.3, tol)


@pytest.mark.parametrize("k", [-120, 120])
@pytest.mark.parametrize("method", ["eigh", "svd", "poly", "auto"])
def test_float32_at_the_ends_of_its_range(k, method):
    # 2^±120 (1.3e∓36): the Gram matrix of the input as given would overflow or underflow
    G = torch.randn(7, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    s = 2.0**k
    out = mf.regularized_polar((G * s).float(), 0.3 * s, method=method, tol=1e-3)
    assert torch.isfinite(out).all()
    assert rel_err(out, relativistic_map_ref(G, 0.3)) <= 1e-3 + unit_roundoff(torch.float32)


# -- inv_sqrt_from_gram: symmetric positive semi-definite input, up to rounding -------------------
@pytest.mark.parametrize(
    ("A", "what"),
    [
        (-torch.eye(3), "positive semi-definite"),  # returned 10·I at ε = 0.1
        (torch.tensor([[1.0, 2.0], [2.0, 1.0]]), "positive semi-definite"),
        # indefinite although every diagonal entry and every 2x2 minor is admissible
        (torch.full((3, 3), -0.6).fill_diagonal_(1.0), "positive semi-definite"),
        (torch.tensor([[1.0, 0.5], [0.2, 1.0]]), "symmetric"),
        (torch.stack([torch.eye(2), torch.tensor([[1.0, 0.0], [0.1, 1.0]])]), "matrix 1"),
    ],
)
@pytest.mark.parametrize("method", ["auto", "eigh", "poly"])
def test_inv_sqrt_from_gram_refuses_what_no_gram_matrix_is(A, what, method):
    # catches: finite garbage for indefinite or non-symmetric A (the old code returned 10·I
    # for A = -I), and a check that only looks at the diagonal or at 2x2 minors
    with pytest.raises(ValueError, match=what):
        inv_sqrt_from_gram(A, 0.1, method=method)


@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.bfloat16])
def test_inv_sqrt_from_gram_accepts_gram_matrices_as_rounded(dtype):
    # XᵀX as a GEMM forms it (tall X: 4096 rows, not bitwise symmetric in general), a
    # rank-deficient one (eigenvalues -u‖A‖ after rounding), the zero matrix, and a sum of
    # row-shard Gram matrices: all must pass. catches: a tolerance tied to exact symmetry or
    # to λ_min >= 0 exactly
    gen = torch.Generator().manual_seed(2)
    X = torch.randn(4096, 48, generator=gen).to(dtype)
    low = (torch.randn(64, 3, generator=gen) @ torch.randn(3, 24, generator=gen)).to(dtype)
    shards = [torch.randn(300, 16, generator=gen).to(dtype) for _ in range(4)]
    for A in (X.mT @ X, low.mT @ low, torch.zeros(5, 5, dtype=dtype),
              sum(x.mT @ x for x in shards)):  # fmt: skip
        M = inv_sqrt_from_gram(A, 0.5, tol=1e-2)
        assert torch.isfinite(M).all()


def test_inv_sqrt_from_gram_check_is_relative_to_the_dtype():
    # An asymmetry of 1e-5·tr|A| is rounding in bfloat16/float32 (√u = 0.044 / 2.4e-4) but not
    # in float64 (√u = 1.1e-8): catches a tolerance that ignores the dtype
    A = torch.eye(4, dtype=F64)
    A[0, 1] += 4e-5
    for dtype in (torch.float32, torch.bfloat16):
        inv_sqrt_from_gram(A.to(dtype), 0.1, tol=1e-2)
    with pytest.raises(ValueError, match=r"symmetric: matrix 0 has max \|A_ij - A_ji\| = 9\d\d δ"):
        inv_sqrt_from_gram(A, 0.1)
    inv_sqrt_from_gram(A, 0.1, validate=False)  # a Gram matrix the caller formed: unchecked
    assert math.isclose(float(inv_sqrt_from_gram(torch.eye(2, dtype=F64), 0.0 + 1.0)[0, 0]),
                        2**-0.5, rel_tol=1e-15)  # fmt: skip
