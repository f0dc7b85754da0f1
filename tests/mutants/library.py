"""Mutants of the research side: integrators and their ledgers, potentials, particles, the PDE.

Every mutant is one plausible bug, written as the smallest runtime patch of the library seam
that holds the buggy line (a method of an integrator, a potential's profile, the particle
objective's force, the PDE solver's inputs or outputs).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from .catalog import Mutant
from .patching import original, replace_attribute, replace_function


# -- integrators (muonflow.dynamics) ---------------------------------------------------------------
def _hd_without_damping(mp: pytest.MonkeyPatch) -> None:
    from muonflow.dynamics import _inner, _Point

    def step(self, s, x, h):
        P = tuple(p + h * f for p, f in zip(x.P, x.F, strict=True))  # bug: no 1/(1+γh)
        V = s.velocity(P)
        W = tuple(w + h * v for w, v in zip(x.W, V, strict=True))
        J, F = s.force(W)
        return _Point(W, P, J, F), s.power_factor(h) * _inner(P, V)

    replace_attribute(mp, "muonflow.dynamics:HamiltonianDescent.step", step)


def _rk4_stages(damping: bool, weights: tuple[float, float, float, float]):
    """An RK4 step with optional damping in the stages and the given stage weights."""
    from muonflow.dynamics import _axpy, _inner, _Point

    def step(self, s, x, h):
        g = s.gamma if damping else 0.0

        def deriv(P, F):
            V = s.velocity(P)
            return V, tuple(f - g * p for f, p in zip(F, P, strict=True)), _inner(P, V)

        k1 = deriv(x.P, x.F)
        k2 = deriv(_axpy(1.0, x.P, h / 2, k1[1]), s.force(_axpy(1.0, x.W, h / 2, k1[0]))[1])
        k3 = deriv(_axpy(1.0, x.P, h / 2, k2[1]), s.force(_axpy(1.0, x.W, h / 2, k2[0]))[1])
        k4 = deriv(_axpy(1.0, x.P, h, k3[1]), s.force(_axpy(1.0, x.W, h, k3[0]))[1])
        ks = (k1, k2, k3, k4)

        def comb(base, j):
            return tuple(
                b + h * sum(w * k[j][i] for w, k in zip(weights, ks, strict=True))
                for i, b in enumerate(base)
            )

        W, P = comb(x.W, 0), comb(x.P, 1)
        d = s.power_factor(h) * sum(w * k[2] for w, k in zip(weights, ks, strict=True))
        J, F = s.force(W)
        return _Point(W, P, J, F), d

    return step


def _rk4_without_damping(mp: pytest.MonkeyPatch) -> None:
    replace_attribute(
        mp, "muonflow.dynamics:RK4.step", _rk4_stages(False, (1 / 6, 1 / 3, 1 / 3, 1 / 6))
    )


def _rk4_equal_weights(mp: pytest.MonkeyPatch) -> None:
    replace_attribute(mp, "muonflow.dynamics:RK4.step", _rk4_stages(True, (0.25,) * 4))


def _ledger_times(path: str, factor: float):
    def plant(mp: pytest.MonkeyPatch) -> None:
        real = original(path)

        def step(self, s, x, h):
            point, d = real(self, s, x, h)
            return point, factor * d

        replace_attribute(mp, path, step)

    return plant


def _muon_old_momentum(mp: pytest.MonkeyPatch) -> None:
    from muonflow.dynamics import _inner, _Point

    def step(self, s, x, h):
        P = tuple((1.0 - s.gamma * h) * p + h * f for p, f in zip(x.P, x.F, strict=True))
        V = s.velocity(x.P)  # bug: W moved with the old momentum
        W = tuple(w + h * v for w, v in zip(x.W, V, strict=True))
        J, F = s.force(W)
        return _Point(W, P, J, F), s.power_factor(h) * _inner(x.P, V)

    replace_attribute(mp, "muonflow.dynamics:Muon.step", step)


def _leapfrog_linear_damping(mp: pytest.MonkeyPatch) -> None:
    from muonflow.dynamics import _inner, _Point

    def step(self, s, x, h):
        a = 1.0 - s.gamma * h / 2  # bug: 1 − γh/2 instead of e^{−γh/2}
        Ph = tuple(a * p + (h / 2) * f for p, f in zip(x.P, x.F, strict=True))
        V = s.velocity(Ph)
        W = tuple(w + h * v for w, v in zip(x.W, V, strict=True))
        d = s.power_factor(h) * _inner(Ph, V)
        J, F = s.force(W)
        P = tuple(a * (p + (h / 2) * f) for p, f in zip(Ph, F, strict=True))
        return _Point(W, P, J, F), d

    replace_attribute(mp, "muonflow.dynamics:ConformalLeapfrog.step", step)


def _h_max_without_gamma2_eps(mp: pytest.MonkeyPatch) -> None:
    replace_function(
        mp,
        "muonflow.dynamics:muon_energy_step_bound",
        lambda real: lambda L, eps, gamma: 2 * gamma * eps / L,  # bug: L instead of L + γ²ε
    )


def _reference_loose_rtol(mp: pytest.MonkeyPatch) -> None:
    def make(real):
        def integrate_reference(s, W0, P0, t_end, h, *, rtol, atol, **kw):
            # bug: the solver's tolerance floored at 1e-6 whatever was asked
            return real(s, W0, P0, t_end, h, rtol=max(rtol, 1e-6), atol=atol, **kw)

        return integrate_reference

    replace_function(mp, "muonflow.dynamics:_integrate_reference", make)


def _fixed_step_ledger_without_weight(mp: pytest.MonkeyPatch) -> None:
    replace_attribute(
        mp,
        "muonflow.dynamics:_System.power_factor",
        lambda self, h: self.gamma * h,  # bug: γh instead of γhw (w = 1/N for particles)
    )


# -- potentials (muonflow.spectral) ----------------------------------------------------------------
def _relativistic_eps_squared(mp: pytest.MonkeyPatch) -> None:
    def grad(self, P, *, method="auto", tol=None):
        from muonflow.polar import regularized_polar

        return regularized_polar(P, self.eps**2, method=method, tol=tol)  # bug: ε² for ε

    replace_attribute(mp, "muonflow.spectral:Relativistic.grad", grad)


def _relativistic_energy_offset(mp: pytest.MonkeyPatch) -> None:
    replace_attribute(
        mp, "muonflow.spectral:Relativistic.k", lambda self, s, eps: torch.hypot(s, eps)
    )  # bug: √(σ² + ε²) without the − ε (K(0) = rε ≠ 0)


def _huber_kink_at_2eps(mp: pytest.MonkeyPatch) -> None:
    replace_attribute(
        mp,
        "muonflow.spectral:Huber.dk_over_s",
        lambda self, lam, eps: 1 / torch.maximum(torch.sqrt(lam), 2 * eps),  # bug: 2ε
    )


# -- particles (muonflow.meanfield) ----------------------------------------------------------------
def _force_without_n(mp: pytest.MonkeyPatch) -> None:
    real = original("muonflow.meanfield.objective:ProbabilityObjective.value_and_force")

    def value_and_force(self, theta):
        J, F = real(self, theta)
        n = self.num_particles(theta)  # bug: the Euclidean gradient ∂J/∂θ_i = force / N
        return J, tuple(f / n for f in F) if isinstance(F, tuple) else F / n

    replace_attribute(
        mp, "muonflow.meanfield.objective:ProbabilityObjective.value_and_force", value_and_force
    )


def _own_contribution_twice(mp: pytest.MonkeyPatch) -> None:
    from muonflow.meanfield._state import from_blocks

    def value_and_force(self, theta):
        blocks, is_tuple, n = self._split(theta)
        with torch.no_grad():
            F, pullback = self._vjp(blocks, is_tuple)
            J, _ = self._risk_grad(self._mean(blocks, is_tuple, n, first=F))
            per = n // self.systems
            m = self._mean(blocks, is_tuple, n, first=F)[torch.arange(n) // per]
            _, g = self._risk_grad(m + F / per)  # bug: particle i sees its own F_i twice
            grads = pullback(g)
            gb = grads if isinstance(grads, tuple) else (grads,)
        return J.mean(), from_blocks(tuple(-x for x in gb), is_tuple)

    replace_attribute(
        mp, "muonflow.meanfield.objective:ProbabilityObjective.value_and_force", value_and_force
    )


def _kinetic_weight_without_n(mp: pytest.MonkeyPatch) -> None:
    replace_attribute(
        mp,
        "muonflow.meanfield.objective:ProbabilityObjective.kinetic_weight",
        lambda self, theta: 1.0 / self.systems,  # bug: 1/S instead of 1/(S·N)
    )


def _objective_mean_of_particle_risks(mp: pytest.MonkeyPatch) -> None:
    cls = "muonflow.meanfield.objective:ProbabilityObjective"
    real_vf = original(f"{cls}.value_and_force")

    def values(self, theta):
        blocks, is_tuple, _ = self._split(theta)
        F = self._call_feature(blocks, is_tuple)
        per_particle = self._risk_values(F)  # bug: mean_i R(F(θ_i)) instead of R(mean_i F)
        return per_particle.reshape(self.systems, -1).mean(1)

    def value(self, theta, weights=None):
        return values(self, theta).mean()

    def value_and_force(self, theta):
        return value(self, theta), real_vf(self, theta)[1]

    replace_attribute(mp, f"{cls}.values", values)
    replace_attribute(mp, f"{cls}.value", value)
    replace_attribute(mp, f"{cls}.value_and_force", value_and_force)


def _neuron_pullback_sigma(mp: pytest.MonkeyPatch) -> None:
    def vjp(self, theta, *, value=True):
        (W,) = self._blocks(theta)
        X = self.X.to(W)
        s, _ = self.activation.apply_with_deriv_(W @ X)
        return s, lambda c: (c * s) @ X.mT  # bug: σ(h) where σ'(h) belongs

    replace_attribute(mp, "muonflow.meanfield.features:Neuron.vjp", vjp)


def _squared_risk_grad_without_1_over_b(mp: pytest.MonkeyPatch) -> None:
    real = original("muonflow.meanfield.risks:SquaredRisk._grad")
    replace_attribute(
        mp,
        "muonflow.meanfield.risks:SquaredRisk._grad",
        lambda self, m: real(self, m) * self.num_points,  # bug: (m − y) instead of (m − y)/B
    )


def _force_constants_x10(mp: pytest.MonkeyPatch) -> None:
    def make(real):
        def force_bounds(feature, objective):
            fb = real(feature, objective)  # bug: both constants ten times too large
            return dataclasses.replace(fb, lipschitz=10 * fb.lipschitz, source=10 * fb.source)

        return force_bounds

    replace_function(mp, "muonflow.meanfield.bounds:force_bounds", make)


def _coupling_to_other_draws(mp: pytest.MonkeyPatch) -> None:
    def make(real):
        def coupled_errors(obs, ref, risk):
            # bug (off by one): particle i is paired with reference particle i − 1
            return real(obs, dataclasses.replace(ref, z=torch.roll(ref.z, 1, dims=1)), risk)

        return coupled_errors

    replace_function(mp, "muonflow.meanfield.measures:_coupled_errors", make)


# -- the mean-field PDE (muonflow.meanfield.pde) ---------------------------------------------------
def _pde_model(change):
    """A bug in how ``solve_vlasov`` uses its model: ``change(model, grid)`` -> the model used."""

    def plant(mp: pytest.MonkeyPatch) -> None:
        from muonflow.meanfield.pde import ScalarModel

        def make(real):
            def solve_vlasov(objective, kinetic, gamma, grid, mass0, times, **kw):
                if isinstance(objective, ScalarModel):
                    objective = change(objective, grid)
                return real(objective, kinetic, gamma, grid, mass0, times, **kw)

            return solve_vlasov

        replace_function(mp, "muonflow.meanfield.pde:solve_vlasov", make)

    return plant


def _shift_velocity(model, grid):
    v = model.velocity
    return dataclasses.replace(model, velocity=lambda p: v(p + grid.d_p))  # one cell off in P


def _flip_force(model, grid):
    f = model.force
    return dataclasses.replace(model, force=lambda th, m: -f(th, m))


def _pde_dissipation_x2(mp: pytest.MonkeyPatch) -> None:
    def make(real):
        def solve_vlasov(*args, **kw):
            sol = real(*args, **kw)
            return dataclasses.replace(sol, dissipated=2 * sol.dissipated)  # bug: factor 2

        return solve_vlasov

    replace_function(mp, "muonflow.meanfield.pde:solve_vlasov", make)


def _gaussian_masses_variance(mp: pytest.MonkeyPatch) -> None:
    real = original("muonflow.meanfield.pde:PhaseGrid.gaussian_masses")

    def gaussian_masses(self, mean, std, dtype=torch.float64):
        return real(self, mean, (std[0] ** 2, std[1] ** 2), dtype)  # bug: variance for sd

    replace_attribute(mp, "muonflow.meanfield.pde:PhaseGrid.gaussian_masses", gaussian_masses)


MUTANTS: tuple[Mutant, ...] = (
    Mutant("hd_without_damping", "hamiltonian_descent: P' = P + hF (no 1/(1+γh))",
           "muonflow.dynamics:HamiltonianDescent.step", _hd_without_damping,
           experiments=("continuous_limit", "energy_ledger")),
    Mutant("rk4_without_damping", "RK4 stages Ṗ = F (the −γP term dropped)",
           "muonflow.dynamics:RK4.step", _rk4_without_damping,
           experiments=("continuous_limit", "energy_ledger", "particles_vs_pde")),
    Mutant("rk4_equal_weights", "RK4 stage weights 1/4 each instead of (1, 2, 2, 1)/6",
           "muonflow.dynamics:RK4.step", _rk4_equal_weights,
           experiments=("continuous_limit", "energy_ledger")),
    Mutant("leapfrog_ledger_x2", "conformal leapfrog's dissipated increment doubled",
           "muonflow.dynamics:ConformalLeapfrog.step",
           _ledger_times("muonflow.dynamics:ConformalLeapfrog.step", 2.0),
           experiments=("energy_ledger",)),
    Mutant("hd_ledger_x2", "hamiltonian_descent's dissipated increment doubled",
           "muonflow.dynamics:HamiltonianDescent.step",
           _ledger_times("muonflow.dynamics:HamiltonianDescent.step", 2.0),
           experiments=("energy_ledger",)),
    Mutant("muon_scheme_old_momentum", "muon scheme moves W with ∇K(P) of the old momentum",
           "muonflow.dynamics:Muon.step", _muon_old_momentum,
           experiments=("discrete_monotonicity", "energy_ledger", "teacher_student")),
    Mutant("leapfrog_linear_damping", "conformal leapfrog damps by 1 − γh/2, not e^{−γh/2}",
           "muonflow.dynamics:ConformalLeapfrog.step", _leapfrog_linear_damping,
           experiments=("continuous_limit", "energy_ledger")),
    Mutant("h_max_without_gamma2_eps", "muon_energy_step_bound = 2γε/L (γ²ε term dropped)",
           "muonflow.dynamics:muon_energy_step_bound", _h_max_without_gamma2_eps,
           experiments=("discrete_monotonicity",)),
    Mutant("reference_loose_rtol", "the DOP853 reference ignores rtol below 1e-6",
           "muonflow.dynamics:_integrate_reference", _reference_loose_rtol,
           experiments=("dissipation", "teacher_student")),
    Mutant("fixed_step_ledger_without_weight", "fixed-step ledgers use γh, not γhw (w = 1/N)",
           "muonflow.dynamics:_System.power_factor", _fixed_step_ledger_without_weight,
           experiments=("energy_ledger",)),
    Mutant("relativistic_eps_squared", "Relativistic.grad maps with ε² where ε belongs",
           "muonflow.spectral:Relativistic.grad", _relativistic_eps_squared,
           experiments=("smoothing", "continuous_limit")),
    Mutant("relativistic_energy_offset", "Relativistic energy √(σ²+ε²) without the −ε",
           "muonflow.spectral:Relativistic.k", _relativistic_energy_offset,
           experiments=("smoothing", "dissipation")),
    Mutant("huber_kink_at_2eps", "Huber map min(σ/2ε, 1): kink at 2ε, energy unchanged",
           "muonflow.spectral:Huber.dk_over_s", _huber_kink_at_2eps,
           experiments=("dissipation", "discrete_monotonicity")),
    Mutant("force_without_n", "mean-field force −∂J/∂θ_i instead of −N ∂J/∂θ_i",
           "muonflow.meanfield.objective:ProbabilityObjective.value_and_force",
           _force_without_n,
           experiments=("continuous_limit", "chaos", "particles_vs_pde", "teacher_student")),
    Mutant("own_contribution_twice", "particle i's force uses m + F(θ_i)/N (itself twice)",
           "muonflow.meanfield.objective:ProbabilityObjective.value_and_force",
           _own_contribution_twice,
           experiments=("energy_ledger", "teacher_student")),
    Mutant("kinetic_weight_without_n", "particle kinetic weight 1 instead of 1/N",
           "muonflow.meanfield.objective:ProbabilityObjective.kinetic_weight",
           _kinetic_weight_without_n,
           experiments=("dissipation", "energy_ledger", "teacher_student")),
    Mutant("objective_mean_of_particle_risks", "J = mean_i R(F(θ_i)) instead of R(∫F dρ)",
           "muonflow.meanfield.objective:ProbabilityObjective.value(s)",
           _objective_mean_of_particle_risks,
           experiments=("dissipation", "chaos")),
    Mutant("neuron_pullback_sigma", "Neuron pullback uses σ(WX) where σ'(WX) belongs",
           "muonflow.meanfield.features:Neuron.vjp", _neuron_pullback_sigma,
           experiments=("continuous_limit", "chaos", "stability")),
    Mutant("squared_risk_grad_without_1_over_b", "∇R = m − y instead of (m − y)/B",
           "muonflow.meanfield.risks:SquaredRisk._grad", _squared_risk_grad_without_1_over_b,
           experiments=("particles_vs_pde", "teacher_student")),
    Mutant("coupling_to_other_draws", "coupling pairs particle i with reference particle i − 1",
           "muonflow.meanfield.measures:_coupled_errors", _coupling_to_other_draws,
           experiments=("chaos",)),
    Mutant("force_constants_x10", "a-priori force constants (Lipschitz, source) ×10",
           "muonflow.meanfield.bounds:force_bounds", _force_constants_x10,
           experiments=("stability",)),
    Mutant("pde_velocity_one_cell_off", "PDE θ-velocity k'(P + ΔP): one cell off in P",
           "muonflow.meanfield.pde:solve_vlasov", _pde_model(_shift_velocity),
           experiments=("particles_vs_pde",)),
    Mutant("pde_force_sign", "PDE momentum flux with +∂_θ δJ/δρ (force sign flipped)",
           "muonflow.meanfield.pde:solve_vlasov", _pde_model(_flip_force),
           experiments=("chaos", "particles_vs_pde")),
    Mutant("pde_dissipation_x2", "the PDE's dissipated energy doubled",
           "muonflow.meanfield.pde:solve_vlasov", _pde_dissipation_x2,
           experiments=("particles_vs_pde",)),
    Mutant("gaussian_masses_variance", "PhaseGrid.gaussian_masses takes sd² for sd",
           "muonflow.meanfield.pde:PhaseGrid.gaussian_masses", _gaussian_masses_variance,
           experiments=("chaos", "particles_vs_pde")),
)  # fmt: skip

