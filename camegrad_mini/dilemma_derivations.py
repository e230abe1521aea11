"""Symbolic derivations behind chapter 3 (the Double Dilemma), with SymPy.

Each function derives one identity from definitions (vectors, covariance matrices, inner
products) rather than typing the answer in, and returns SymPy expressions that the chapter
displays and the tests compare with the numeric closed forms in :mod:`camegrad_mini.dilemma`.

Two-task "polar" setting: ``g_0 = n_0 (1, 0)``, ``g_1 = n_1 (cos t, sin t)``, weights
``w_0, w_1`` (or ``1 - w, w``), magnitude ratio ``gamma = n_1 / n_0`` and weighted magnitude ratio
``gamma_w = w_1 n_1 / (w_0 n_0)``. Task noises ``xi_0, xi_1`` have scales ``sigma_0, sigma_1`` and
cross-task correlation ``c``. The number of parameters is ``p`` (``theta`` in ``R^p``).
"""
from __future__ import annotations

import sympy as sp

__all__ = [
    "SYMBOLS",
    "polar_vectors",
    "joint_energy",
    "energy_ratio",
    "energy_ratio_minimum",
    "weighted_noise_variance",
    "observed_energy",
    "gradient_noise_diffusion_trace",
    "drift_alignments",
    "deviation_weight_thresholds",
    "deviation_cosine_thresholds",
]

w0, w1, n0, n1, s0, s1, sigma = sp.symbols("omega_0 omega_1 n_0 n_1 sigma_0 sigma_1 sigma", positive=True)
gamma, gamma_w = sp.symbols("gamma gamma_omega", positive=True)
w = sp.symbols("w", nonnegative=True)
phi = sp.symbols("varphi", real=True)
c = sp.symbols("c", real=True)
p = sp.symbols("p", positive=True, integer=True)

SYMBOLS = dict(w0=w0, w1=w1, n0=n0, n1=n1, sigma0=s0, sigma1=s1, sigma=sigma, gamma=gamma, gamma_w=gamma_w,
               w=w, phi=phi, c=c, p=p)


def polar_vectors() -> tuple[sp.Matrix, sp.Matrix]:
    """``g_0 = n_0 (1, 0)`` and ``g_1 = n_1 (cos phi, sin phi)`` as column vectors.

    Explained in: Chapter 3, §3.2 (the energy of the joint gradient).
    """
    return sp.Matrix([n0, 0]), sp.Matrix([n1 * sp.cos(phi), n1 * sp.sin(phi)])


def joint_energy() -> sp.Expr:
    """``|w_0 g_0 + w_1 g_1|^2`` expanded: ``w_0^2 n_0^2 + w_1^2 n_1^2 + 2 w_0 w_1 n_0 n_1 cos(phi)``.

    The last term is the cross term ``2 w_0 w_1 <g_0, g_1>``; it is negative exactly when the
    gradients conflict (``cos phi < 0``).

    Explained in: Chapter 3, §3.2 (the energy of the joint gradient) and §3.4 (the diffusion term).
    """
    g0, g1 = polar_vectors()
    gj = w0 * g0 + w1 * g1
    return sp.expand(sp.trigsimp(sp.expand(gj.dot(gj))))


def energy_ratio() -> sp.Expr:
    """``|g_joint|^2 / (w_0^2 n_0^2 + w_1^2 n_1^2)`` in terms of ``gamma_w`` and ``phi`` only.

    Substituting ``n_1 = gamma_w w_0 n_0 / w_1`` cancels every other symbol:
    ``1 + 2 gamma_w cos(phi) / (1 + gamma_w^2)``.

    Explained in: Chapter 3, §3.2 (the energy of the joint gradient).
    """
    ratio = joint_energy() / (w0**2 * n0**2 + w1**2 * n1**2)
    return sp.simplify(ratio.subs(n1, gamma_w * w0 * n0 / w1))


def energy_ratio_minimum() -> tuple[sp.Expr, sp.Expr]:
    """The weighted magnitude ratio that minimizes the energy ratio under conflict, and the minimum.

    Returns ``(gamma_w_star, ratio_at_gamma_w_star)`` = ``(1, 1 + cos(phi))``: the energy collapses
    most when the two *weighted* gradients have equal length, and to zero at ``phi = pi``.

    Explained in: Chapter 3, §3.2 (the energy of the joint gradient).
    """
    e = energy_ratio()
    crit = [s for s in sp.solve(sp.diff(e, gamma_w), gamma_w) if s.is_positive]
    if len(crit) != 1:
        raise RuntimeError(f"expected one positive critical point, got {crit}")
    return crit[0], sp.simplify(e.subs(gamma_w, crit[0]))


def weighted_noise_variance() -> sp.Expr:
    """``Var(w_0 xi_0 + w_1 xi_1)`` per coordinate for task noises with scales ``sigma_i`` and correlation ``c``.

    It is the quadratic form ``w^T C w`` with ``C = [[s_0^2, c s_0 s_1], [c s_0 s_1, s_1^2]]``:
    ``w_0^2 s_0^2 + w_1^2 s_1^2 + 2 c w_0 w_1 s_0 s_1``. Its cross term carries the noise
    correlation ``c``; the gradients' conflict angle does not appear at all.

    Explained in: Chapter 3, §3.4 (the diffusion term: the covariance of the weighted noise).
    """
    C = sp.Matrix([[s0**2, c * s0 * s1], [c * s0 * s1, s1**2]])
    wv = sp.Matrix([w0, w1])
    return sp.expand((wv.T * C * wv)[0, 0])


def observed_energy() -> sp.Expr:
    """``E |g_joint + w_0 xi_0 + w_1 xi_1|^2`` for zero-mean isotropic noises in ``p`` dimensions.

    The mean of the stochastic joint gradient's energy is the drift's energy plus ``p`` times the
    weighted noise variance (the mixed term ``2 <g_joint, E noise>`` vanishes). An energy measured
    on mini-batch gradients therefore mixes the paper's cross term ``2 w_0 w_1 <g_0, g_1>`` with
    the noise's cross term ``2 c w_0 w_1 s_0 s_1``, which can have the opposite sign.

    Explained in: Chapter 3, §3.4 (the diffusion term: the covariance of the weighted noise).
    """
    return sp.expand(joint_energy() + p * weighted_noise_variance())


def gradient_noise_diffusion_trace() -> sp.Expr:
    """Trace of ``Cov(w_0 xi_0 + w_1 xi_1)`` when ``xi_i = sigma zeta_i g_i`` with ``corr(zeta_0, zeta_1) = c``.

    The covariance is ``sigma^2 sum_ij w_i w_j C_ij g_i g_j^T``; its trace is
    ``sigma^2 (w_0^2 n_0^2 + w_1^2 n_1^2 + 2 c w_0 w_1 n_0 n_1 cos(phi))``. Only here does the
    conflict angle enter the diffusion, through ``c cos(phi)``, and only for ``c = 1`` is it
    ``sigma^2 |g_joint|^2``, the paper's energy.

    Explained in: Chapter 3, §3.4 (the diffusion term: the covariance of the weighted noise).
    """
    g0, g1 = polar_vectors()
    C = sp.Matrix([[1, c], [c, 1]])
    gs, ws = [g0, g1], [w0, w1]
    cov = sp.zeros(2, 2)
    for i in range(2):
        for j in range(2):
            cov += sigma**2 * ws[i] * ws[j] * C[i, j] * gs[i] * gs[j].T
    return sp.expand(sp.trigsimp(sp.expand(cov.trace())))


def drift_alignments() -> tuple[sp.Expr, sp.Expr]:
    """``<g_joint, g_0> / n_0^2`` and ``<g_joint, g_1> / n_0^2`` with ``w_0 = 1 - w``, ``w_1 = w``, ``n_1 = gamma n_0``.

    ``(1 - w) + w gamma cos(phi)`` and ``gamma ((1 - w) cos(phi) + w gamma)``; drift deviation means one
    of them is negative.

    Explained in: Chapter 3, §3.3 (drift term deviation).
    """
    g0, g1 = polar_vectors()
    gj = (1 - w) * g0 + w * g1
    subs = {n1: gamma * n0}
    a0 = sp.expand(sp.trigsimp(sp.expand(gj.dot(g0).subs(subs) / n0**2)))
    a1 = sp.expand(sp.trigsimp(sp.expand(gj.dot(g1).subs(subs) / n0**2)))
    return a0, a1


def deviation_weight_thresholds() -> tuple[sp.Expr, sp.Expr]:
    """Solve ``<g_joint, g_i> = 0`` for the weight: ``(w_lo, w_hi)``.

    ``w_lo = -cos(phi) / (gamma - cos(phi))`` (task 1 is hurt for ``w < w_lo``) and
    ``w_hi = 1 / (1 - gamma cos(phi))`` (task 0 is hurt for ``w > w_hi``); both lie in (0, 1) only
    under conflict.

    Explained in: Chapter 3, §3.3 (drift term deviation).
    """
    a0, a1 = drift_alignments()
    (w_hi,) = sp.solve(sp.Eq(a0, 0), w)
    (w_lo,) = sp.solve(sp.Eq(a1, 0), w)
    return sp.simplify(w_lo), sp.simplify(w_hi)


def deviation_cosine_thresholds() -> tuple[sp.Expr, sp.Expr]:
    """Solve ``<g_joint, g_i> = 0`` for ``cos(phi)`` in terms of ``gamma_w``.

    Task 0 is hurt iff ``cos(phi) < -1/gamma_w``, task 1 iff ``cos(phi) < -gamma_w``; so some task
    is hurt iff ``cos(phi) < -min(gamma_w, 1/gamma_w)``.

    Explained in: Chapter 3, §3.3 (drift term deviation).
    """
    ct = sp.symbols("cos_phi", real=True)
    g0, g1 = polar_vectors()
    gj = w0 * g0 + w1 * g1
    subs = {n1: gamma_w * w0 * n0 / w1}
    roots = []
    for g in (g0, g1):
        e = sp.trigsimp(sp.expand(gj.dot(g))).subs(subs).subs(sp.cos(phi), ct)
        (root,) = sp.solve(sp.Eq(sp.expand(e), 0), ct)
        roots.append(sp.simplify(root))
    return roots[0], roots[1]
