"""SGD as a stochastic differential equation: vectorized simulators and stationary moments.

Chapter 2 of the book compares three objects on the same loss ``L``:

* **SGD with Gaussian gradient noise**, ``theta_{k+1} = theta_k - eta * g_hat(theta_k)`` with
  ``E g_hat = grad L`` and ``Cov g_hat = Sigma / B`` (``B`` the batch size);
* **the SDE** ``d theta = -grad L dt + sqrt(eta Sigma / B) dW`` in the time ``t = k eta``
  (Li, Tai & E 2017; Mandt, Hoffman & Blei 2017), simulated with **Euler-Maruyama** at a step
  ``dt`` much smaller than ``eta`` (with ``dt = eta`` Euler-Maruyama *is* Gaussian-noise SGD);
* closed forms: for a quadratic loss ``L = 1/2 theta^T H theta`` the SDE is an Ornstein-Uhlenbeck
  process whose stationary covariance solves the continuous Lyapunov equation
  ``H S + S H = eta Sigma / B``; SGD's exact stationary covariance solves the discrete Lyapunov
  equation ``S = (I - eta H) S (I - eta H)^T + eta^2 Sigma / B``.

For escapes from a well (sharp versus flat minima) it also gives the Kramers/Arrhenius law and
the exact mean first-passage time of a 1-D diffusion, computed by quadrature.

Everything is NumPy, vectorized over chains: a state has shape ``(n_chains, d)``; a gradient
function maps ``(n_chains, d) -> (n_chains, d)`` (1-D escape code uses ``(n_chains,)``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.linalg

__all__ = [
    "ChainStatistics",
    "EscapeResult",
    "sde_diffusion",
    "noise_temperature",
    "stability_limit",
    "stationary_cov_ou",
    "stationary_cov_sgd",
    "stationary_cov_euler_maruyama",
    "simulate_sgd",
    "simulate_euler_maruyama",
    "simulate_escape",
    "censored_exponential_mean",
    "kramers_escape_time",
    "mean_first_passage_time_1d",
    "quadratic_mean_weak_errors",
    "PathAverages",
    "simulate_path_averages",
    "linear_sde_moments",
]

Array = np.ndarray
GradFn = Callable[[Array], Array]


# --------------------------------------------------------------------------------------------
# small helpers and validation
# --------------------------------------------------------------------------------------------
def _as_square(name: str, M) -> Array:
    M = np.atleast_2d(np.asarray(M, dtype=float))
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {M.shape}")
    return M


def _as_psd(name: str, M) -> Array:
    M = _as_square(name, M)
    if not np.allclose(M, M.T, atol=1e-12 * max(1.0, np.abs(M).max())):
        raise ValueError(f"{name} must be symmetric, got {M.tolist()}")
    if np.linalg.eigvalsh(M).min() < -1e-12 * max(1.0, np.abs(M).max()):
        raise ValueError(f"{name} must be positive semi-definite, got eigenvalues {np.linalg.eigvalsh(M).tolist()}")
    return M


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def _sqrt_psd(M: Array) -> Array:
    """A factor ``C`` with ``C C^T = M`` for a PSD ``M`` (eigen-decomposition, so singular ``M`` works)."""
    w, V = np.linalg.eigh(M)
    return V * np.sqrt(np.clip(w, 0.0, None))


def sde_diffusion(eta: float, noise_cov, batch_size: int) -> Array:
    """The SDE's diffusion matrix ``D = eta Sigma / B`` (so that ``d theta = -grad L dt + D^{1/2} dW``).

    Why ``eta``: one SGD step moves the mean by ``-eta grad L`` and adds noise of covariance
    ``eta^2 Sigma / B``; in the time ``t = k eta`` a step lasts ``dt = eta``, so the noise per unit
    time is ``eta^2 Sigma / B / eta = eta Sigma / B``.

    Explained in: Chapter 2, §2.4 (numerics that check the algebra).
    """
    eta = _positive("eta", eta)
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    return eta * _as_psd("noise_cov", noise_cov) / batch_size


def noise_temperature(eta: float, noise_var: float, batch_size: int) -> float:
    """The noise temperature ``T = eta sigma^2 / (2 B)`` of SGD in one dimension.

    The SDE ``d theta = -L' dt + sqrt(eta sigma^2 / B) dW`` has the Gibbs stationary density
    ``exp(-L / T)`` with ``2 T = eta sigma^2 / B``: only the ratio ``eta / B`` enters
    (the "temperature" of Jastrzebski et al. 2017).

    Explained in: Chapter 2, §2.5 (sharp versus flat minima: escape times).
    """
    eta = _positive("eta", eta)
    noise_var = _positive("noise_var", noise_var)
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    return eta * noise_var / (2.0 * batch_size)


def stability_limit(H) -> float:
    """The largest stable learning rate ``2 / lambda_max(H)`` of (S)GD on a quadratic with Hessian ``H``.

    Explained in: Chapter 2, §2.4 (numerics that check the algebra).
    """
    H = _as_psd("H", H)
    lam = np.linalg.eigvalsh(H).max()
    if lam <= 0:
        raise ValueError("H has no positive eigenvalue, so every learning rate is 'stable' (no limit)")
    return 2.0 / lam


# --------------------------------------------------------------------------------------------
# stationary covariances of the quadratic problem
# --------------------------------------------------------------------------------------------
def stationary_cov_ou(H, eta: float, noise_cov, batch_size: int) -> Array:
    """Stationary covariance of the OU process ``d theta = -H theta dt + sqrt(eta Sigma/B) dW``.

    Solves the continuous Lyapunov equation ``H S + S H^T = eta Sigma / B``
    (``scipy.linalg.solve_continuous_lyapunov`` solves ``A X + X A^H = Q``). Requires ``H``
    positive definite, otherwise the process has no stationary law.

    Explained in: Chapter 2, §2.4 (numerics that check the algebra).
    """
    H = _as_psd("H", H)
    if np.linalg.eigvalsh(H).min() <= 0:
        raise ValueError("H must be positive definite for the OU process to have a stationary covariance")
    D = sde_diffusion(eta, noise_cov, batch_size)
    if D.shape != H.shape:
        raise ValueError(f"noise_cov has shape {D.shape} but H has shape {H.shape}")
    S = scipy.linalg.solve_continuous_lyapunov(H, D)
    return 0.5 * (S + S.T)


def _solve_discrete(A: Array, Q: Array) -> Array:
    rho = np.abs(np.linalg.eigvals(A)).max()
    if rho >= 1.0:
        raise ValueError(
            f"the iteration matrix has spectral radius {rho:.4g} >= 1: the step is beyond the stability "
            "limit 2 / lambda_max(H), so there is no stationary covariance"
        )
    S = scipy.linalg.solve_discrete_lyapunov(A, Q)
    return 0.5 * (S + S.T)


def stationary_cov_sgd(H, eta: float, noise_cov, batch_size: int) -> Array:
    """Exact stationary covariance of SGD on ``L = 1/2 theta^T H theta`` with noise ``Cov = Sigma/B``.

    ``theta_{k+1} = (I - eta H) theta_k - eta xi_k`` gives the discrete Lyapunov equation
    ``S = (I - eta H) S (I - eta H)^T + eta^2 Sigma / B``; it has a solution only below the
    stability limit ``eta < 2 / lambda_max(H)`` (ValueError otherwise).

    Explained in: Chapter 2, §2.4 (numerics that check the algebra).
    """
    H = _as_psd("H", H)
    eta = _positive("eta", eta)
    Sigma = _as_psd("noise_cov", noise_cov)
    if Sigma.shape != H.shape:
        raise ValueError(f"noise_cov has shape {Sigma.shape} but H has shape {H.shape}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    A = np.eye(len(H)) - eta * H
    return _solve_discrete(A, eta**2 * Sigma / batch_size)


def stationary_cov_euler_maruyama(H, dt: float, diffusion) -> Array:
    """Stationary covariance of Euler-Maruyama with step ``dt`` for ``d theta = -H theta dt + D^{1/2} dW``.

    One step is ``theta + dt (-H theta) + sqrt(dt) D^{1/2} z``, so ``S = (I - dt H) S (I - dt H)^T + dt D``.
    As ``dt -> 0`` it tends to the OU covariance; with ``D = eta Sigma / B`` and ``dt = eta`` it is
    exactly SGD's covariance (the two iterations coincide in law).

    Explained in: Chapter 2, §2.4 (numerics that check the algebra).
    """
    H = _as_psd("H", H)
    dt = _positive("dt", dt)
    D = _as_psd("diffusion", diffusion)
    if D.shape != H.shape:
        raise ValueError(f"diffusion has shape {D.shape} but H has shape {H.shape}")
    return _solve_discrete(np.eye(len(H)) - dt * H, dt * D)


# --------------------------------------------------------------------------------------------
# vectorized simulators
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChainStatistics:
    """What a run of many parallel chains returns.

    ``mean`` and ``cov`` average over chains *and* over all recorded steps after the burn-in
    (time averages shrink the Monte Carlo error because the chains are ergodic);
    ``final`` is the state of every chain at the end, shape ``(n_chains, d)``;
    ``n_records`` is how many steps entered the averages.
    """

    mean: Array
    cov: Array
    final: Array
    n_records: int


def _run_chains(step_mean: Callable[[Array], Array], noise_factor: Array, theta0: Array,
                n_steps: int, burn_in: int, rng: np.random.Generator) -> ChainStatistics:
    """Iterate ``theta <- step_mean(theta) + z @ noise_factor.T`` and accumulate moments after ``burn_in``."""
    if int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps}")
    if int(burn_in) != burn_in or not 0 <= burn_in < n_steps:
        raise ValueError(f"burn_in must be an integer in [0, n_steps), got {burn_in} with n_steps={n_steps}")
    theta = np.array(theta0, dtype=float, copy=True)
    if theta.ndim != 2:
        raise ValueError(f"theta0 must have shape (n_chains, d), got {theta.shape}")
    d = theta.shape[1]
    if noise_factor.shape != (d, d):
        raise ValueError(f"the noise covariance must be {d}x{d} to match theta0, got {noise_factor.shape}")
    s1 = np.zeros(d)
    s2 = np.zeros((d, d))
    n_rec = 0
    for k in range(n_steps):
        z = rng.standard_normal(theta.shape)
        theta = step_mean(theta) + z @ noise_factor.T
        if k >= burn_in:
            s1 += theta.sum(0)
            s2 += theta.T @ theta
            n_rec += 1
    n = n_rec * theta.shape[0]
    mean = s1 / n
    cov = s2 / n - np.outer(mean, mean)
    return ChainStatistics(mean=mean, cov=0.5 * (cov + cov.T), final=theta, n_records=n_rec)


def simulate_sgd(grad: GradFn, theta0, *, eta: float, noise_cov, batch_size: int, n_steps: int,
                 burn_in: int, rng: np.random.Generator) -> ChainStatistics:
    """SGD with Gaussian gradient noise, many chains at once.

    ``theta_{k+1} = theta_k - eta (grad L(theta_k) + xi_k)``, ``xi_k ~ N(0, Sigma / B)``
    independent across steps and chains. Gaussian noise is the modelling assumption behind the
    SDE; real minibatch noise is neither Gaussian nor independent of ``theta`` in general.

    Explained in: Chapter 2, §2.4 (numerics), §2.5 (escape times) and §2.7 (mini-batch noise).
    """
    eta = _positive("eta", eta)
    Sigma = _as_psd("noise_cov", noise_cov)
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    factor = eta * _sqrt_psd(Sigma / batch_size)
    return _run_chains(lambda th: th - eta * grad(th), factor, np.asarray(theta0, dtype=float),
                       n_steps, burn_in, rng)


def simulate_euler_maruyama(drift: GradFn, theta0, *, dt: float, diffusion, n_steps: int,
                            burn_in: int, rng: np.random.Generator) -> ChainStatistics:
    """Euler-Maruyama for ``d theta = drift(theta) dt + D^{1/2} dW`` (Kloeden & Platen 1992).

    One step: ``theta + drift(theta) dt + sqrt(dt) D^{1/2} z`` with ``z ~ N(0, I)``. For the SGD
    SDE pass ``drift = lambda th: -grad(th)`` and ``diffusion = sde_diffusion(eta, Sigma, B)``;
    choose ``dt`` well below ``eta`` to approximate the SDE rather than SGD itself.

    Explained in: Chapter 2, §2.4 (numerics that check the algebra).
    """
    dt = _positive("dt", dt)
    D = _as_psd("diffusion", diffusion)
    factor = np.sqrt(dt) * _sqrt_psd(D)
    return _run_chains(lambda th: th + dt * drift(th), factor, np.asarray(theta0, dtype=float),
                       n_steps, burn_in, rng)


# --------------------------------------------------------------------------------------------
# escapes from a well
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EscapeResult:
    """First-passage times of many 1-D SGD chains (in the SDE time ``t = k eta``).

    ``times[i]`` is chain ``i``'s first-passage time, ``nan`` if it had not escaped by
    ``t_max``; ``mean_time`` is the maximum-likelihood mean of an exponential law from these
    right-censored data (total observed time / number of escapes), ``n_escaped`` the number of
    escapes; ``stderr`` is ``mean_time / sqrt(n_escaped)``, the large-sample standard error.
    """

    times: Array
    t_max: float
    mean_time: float
    n_escaped: int
    stderr: float


def censored_exponential_mean(times, t_max: float) -> tuple[float, int]:
    """MLE of an exponential mean from first-passage times censored at ``t_max`` (``nan`` = censored).

    For an exponential law the likelihood of ``n`` escapes and the survivors gives
    ``mean = (sum of observed times + t_max * survivors) / n``. Escapes over a high barrier are
    close to exponential (Kramers), which is why this estimator fits; it lets a simulation stop
    at ``t_max`` instead of waiting for the slowest chain. Returns ``(mean, n)``; ``inf`` if ``n = 0``.
    """
    t = np.asarray(times, dtype=float)
    t_max = _positive("t_max", t_max)
    escaped = np.isfinite(t)
    if np.any(t[escaped] > t_max * (1 + 1e-12)):
        raise ValueError("an escape time exceeds t_max")
    n = int(escaped.sum())
    total = t[escaped].sum() + t_max * (~escaped).sum()
    return (total / n if n else float("inf")), n


def simulate_escape(grad: Callable[[Array], Array], x0: float, boundary: float, *, eta: float,
                    noise_var: float | Callable[[Array], Array], batch_size: int, n_chains: int, t_max: float,
                    rng: np.random.Generator, block: int = 256) -> EscapeResult:
    """First-passage times of 1-D SGD with Gaussian gradient noise from ``x0`` across ``boundary``.

    Chains run ``x <- x - eta (L'(x) + xi)``, ``xi ~ N(0, noise_var / batch_size)``; a chain has
    escaped at the first step that puts it beyond ``boundary`` (on the far side from ``x0``).
    ``noise_var`` is a number (constant noise) or a function ``x -> sigma^2(x)`` (state-dependent
    noise, e.g. proportional to the curvature as in Zhu et al. 2019; values must be >= 0).
    Times are reported in SDE time ``t = k eta`` so runs with different ``eta`` compare.
    Only the chains still inside are updated, in blocks of ``block`` steps (noise drawn per block).

    Explained in: Chapter 2, §2.5 (sharp versus flat minima: escape times).
    """
    eta = _positive("eta", eta)
    var_fn: Callable[[Array], Array] | None = None
    const_var = 0.0  # noise_var when it is a number
    if callable(noise_var):
        var_fn = noise_var
    else:
        const_var = _positive("noise_var", noise_var)
    t_max = _positive("t_max", t_max)
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if int(n_chains) != n_chains or n_chains < 1:
        raise ValueError(f"n_chains must be a positive integer, got {n_chains}")
    if boundary == x0:
        raise ValueError("boundary must differ from x0")
    sign = 1.0 if boundary > x0 else -1.0
    std = None if var_fn is not None else eta * np.sqrt(const_var / batch_size)
    max_steps = int(np.ceil(t_max / eta))
    steps = np.full(n_chains, -1, dtype=np.int64)
    alive = np.arange(n_chains)
    x = np.full(n_chains, float(x0))
    k = 0
    while k < max_steps and alive.size:
        nb = min(block, max_steps - k)
        noise = rng.standard_normal((nb, alive.size))
        if std is not None:
            noise *= std
        done = np.zeros(alive.size, dtype=bool)
        for j in range(nb):
            if var_fn is not None:  # then std is None
                v = np.asarray(var_fn(x), dtype=float)
                if np.any(v < 0) or not np.all(np.isfinite(v)):
                    raise ValueError("noise_var(x) must be finite and non-negative")
                x = x - eta * grad(x) + noise[j] * eta * np.sqrt(v / batch_size)
            else:
                x = x - eta * grad(x) + noise[j]
            crossed = (sign * (x - boundary) > 0) & ~done
            if crossed.any():
                steps[alive[crossed]] = k + j + 1
                done |= crossed
        k += nb
        alive, x = alive[~done], x[~done]
    times = np.where(steps > 0, steps * eta, np.nan)
    t_cap = max_steps * eta
    mean, n = censored_exponential_mean(times, t_cap)
    return EscapeResult(times=times, t_max=t_cap, mean_time=mean, n_escaped=n,
                        stderr=mean / np.sqrt(n) if n else float("inf"))


def kramers_escape_time(h_min: float, h_saddle: float, barrier: float, temperature: float) -> float:
    """Kramers' mean escape time ``2 pi / sqrt(h_min |h_saddle|) * exp(barrier / T)`` (Kramers 1940).

    For ``d x = -L'(x) dt + sqrt(2 T) dW`` leaving a minimum of curvature ``h_min = L''`` over a saddle
    of curvature ``h_saddle < 0`` that lies ``barrier`` above it; asymptotic as ``barrier / T -> inf``
    (corrections are of relative order ``T / barrier``). The exponential is the Arrhenius law.
    The book derives it from the exact first-passage time by Laplace's method (chapter 2's appendix).

    Explained in: Chapter 2, §2.5 (escape times); Chapter 2b, §A.3 (Kramers' law by Laplace's
    method).
    """
    h_min = _positive("h_min", h_min)
    if not np.isfinite(h_saddle) or h_saddle >= 0:
        raise ValueError(f"h_saddle must be negative (a maximum of the loss), got {h_saddle}")
    barrier = _positive("barrier", barrier)
    temperature = _positive("temperature", temperature)
    return 2.0 * np.pi / np.sqrt(h_min * abs(h_saddle)) * np.exp(barrier / temperature)


def mean_first_passage_time_1d(loss: Callable[[Array], Array], x0: float, boundary: float,
                               temperature: float, *, far: float, n_grid: int = 20001) -> float:
    """Exact mean first-passage time of ``d x = -L'(x) dt + sqrt(2 T) dW`` from ``x0`` to ``boundary``.

    With a reflecting wall at ``far`` (put it where ``L`` is already many ``T`` high, on the side
    away from ``boundary``), the classical formula (Gardiner 2009, ch. 5) reads
    ``tau = (1/T) int_{x0}^{b} exp(L(y)/T) int_{far}^{y} exp(-L(z)/T) dz dy``,
    evaluated here by the trapezoidal rule on ``n_grid`` points. It is exact for the SDE, so it
    separates the two errors in a simulation: Kramers' asymptotics and SGD's finite step.

    Explained in: Chapter 2, §2.5 (escape times); Chapter 2b, §A.2 (the mean first-passage time) and
    §A.3.
    """
    temperature = _positive("temperature", temperature)
    if boundary == x0:
        return 0.0
    sign = 1.0 if boundary > x0 else -1.0
    if sign * (x0 - far) <= 0:
        raise ValueError("far must lie on the other side of x0 from boundary")
    if int(n_grid) != n_grid or n_grid < 101:
        raise ValueError(f"n_grid must be an integer >= 101, got {n_grid}")
    # Work in u = sign * x so that the boundary is to the right; the integrals are orientation-free.
    u = np.linspace(sign * far, sign * boundary, int(n_grid))
    Lu = np.asarray(loss(sign * u), dtype=float)
    ref = Lu.min()
    inner = np.exp(-(Lu - ref) / temperature)
    du = u[1] - u[0]
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (inner[1:] + inner[:-1]) * du)])
    outer = np.exp((Lu - ref) / temperature) * cum / temperature
    mask = u >= sign * x0
    uo, fo = u[mask], outer[mask]
    return float(np.sum(0.5 * (fo[1:] + fo[:-1]) * np.diff(uo)))


def quadratic_mean_weak_errors(curvature: float, etas, t_end: float, x0: float = 1.0) -> dict[str, Array]:
    """Exact weak errors of the mean on ``L = curvature x^2 / 2`` at time ``t_end``, for each ``eta``.

    SGD's mean is ``(1 - eta h)^k x0`` with ``k = t_end / eta`` steps (noise does not enter the
    mean of a linear iteration), the SDE's is ``exp(-h t) x0`` and the SME's, whose drift is
    ``-(h + eta h^2 / 2) x``, is ``exp(-(h + eta h^2/2) t) x0``. Returns ``|SGD - SDE|`` and
    ``|SGD - SME|``: they shrink like ``eta`` and ``eta^2`` (weak orders one and two).
    ``t_end / eta`` must be a whole number of steps for every ``eta`` (checked).

    Explained in: Chapter 2, §2.2 (weak order one, and the stochastic modified equation).
    """
    hc = _positive("curvature", curvature)
    t_end = _positive("t_end", t_end)
    etas = np.asarray(etas, dtype=float)
    if np.any(etas <= 0) or np.any(etas * hc >= 1):
        raise ValueError("every eta must satisfy 0 < eta < 1 / curvature (a monotone, stable contraction)")
    k = t_end / etas
    if not np.allclose(k, np.round(k), rtol=0, atol=1e-9):
        raise ValueError("t_end / eta must be an integer number of steps for every eta")
    sgd = x0 * (1.0 - etas * hc) ** np.round(k)
    sde = x0 * np.exp(-hc * t_end) * np.ones_like(etas)
    sme = x0 * np.exp(-(hc + etas * hc**2 / 2.0) * t_end)
    return {"eta": etas, "sgd": sgd, "sde": sde, "sme": sme,
            "error_sde": np.abs(sgd - sde), "error_sme": np.abs(sgd - sme)}


# --------------------------------------------------------------------------------------------
# averages along paths (for Ito's lemma and Dynkin's formula)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PathAverages:
    """Chain averages of observables along Euler-Maruyama paths.

    ``times`` has shape ``(n_records,)`` (starting with ``0``); ``mean[r]`` and ``stderr[r]`` are the
    average over chains of each observable at ``times[r]`` and its standard error, shape
    ``(n_records, n_observables)``.
    """

    times: Array
    mean: Array
    stderr: Array


def simulate_path_averages(drift: GradFn, theta0, *, dt: float, diffusion, n_steps: int, record_every: int,
                           observables: Callable[[Array], Array], rng: np.random.Generator) -> PathAverages:
    """Euler-Maruyama for ``d theta = drift dt + D^{1/2} dW`` from ``theta0`` (shape ``(n_chains, d)``).

    Records the chain average of ``observables(theta)`` (a map ``(n_chains, d) -> (n_chains, m)``) at
    time 0 and every ``record_every`` steps, with its standard error. Unlike :func:`simulate_euler_maruyama`
    it keeps the time course (for transients), not a time average.

    Explained in: Chapter 2, §2.1 (an Itô primer) and §2.6 (Itô's lemma for each task's loss).
    """
    dt = _positive("dt", dt)
    D = _as_psd("diffusion", diffusion)
    for name, v in (("n_steps", n_steps), ("record_every", record_every)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v}")
    theta = np.array(theta0, dtype=float, copy=True)
    if theta.ndim != 2 or theta.shape[1] != D.shape[0]:
        raise ValueError(f"theta0 must have shape (n_chains, {D.shape[0]}), got {theta.shape}")
    factor = np.sqrt(dt) * _sqrt_psd(D)
    n = theta.shape[0]

    def stats(th):
        o = np.asarray(observables(th), dtype=float).reshape(n, -1)
        return o.mean(0), o.std(0, ddof=1) / np.sqrt(n)

    times, means, errs = [0.0], [], []
    m, e = stats(theta)
    means.append(m)
    errs.append(e)
    for k in range(1, int(n_steps) + 1):
        theta = theta + dt * drift(theta) + rng.standard_normal(theta.shape) @ factor.T
        if k % record_every == 0:
            m, e = stats(theta)
            times.append(k * dt)
            means.append(m)
            errs.append(e)
    return PathAverages(times=np.array(times), mean=np.array(means), stderr=np.array(errs))


def linear_sde_moments(A, theta_star, diffusion, theta0, times) -> tuple[Array, Array]:
    """Exact mean and covariance of ``d theta = -A (theta - theta*) dt + D^{1/2} dW`` from ``theta0``.

    ``m_t = theta* + e^{-A t} (theta0 - theta*)``; the covariance solves ``S' = -A S - S A^T + D``
    with ``S_0 = 0``, so ``S_t = S_inf - e^{-A t} S_inf e^{-A^T t}`` with ``A S_inf + S_inf A^T = D``
    (requires the eigenvalues of ``A`` to have positive real parts). Returns arrays of shape
    ``(len(times), d)`` and ``(len(times), d, d)``.

    Explained in: Chapter 2, §2.6 (Itô's lemma for each task's loss).
    """
    A = _as_square("A", A)
    if np.linalg.eigvals(A).real.min() <= 0:
        raise ValueError("A must have eigenvalues with positive real parts (a stable linear drift)")
    D = _as_psd("diffusion", diffusion)
    ts = np.atleast_1d(np.asarray(times, dtype=float))
    star = np.asarray(theta_star, dtype=float)
    start = np.asarray(theta0, dtype=float)
    S_inf = scipy.linalg.solve_continuous_lyapunov(A, D)
    means, covs = [], []
    for t in ts:
        E = scipy.linalg.expm(-A * t)
        means.append(star + E @ (start - star))
        S = S_inf - E @ S_inf @ E.T
        covs.append(0.5 * (S + S.T))
    return np.array(means), np.array(covs)
