"""The sympy derivations of chapter 2 ("SGD as a stochastic differential equation").

Each function derives one step of the argument with explicit substitutions (no open-ended
``simplify`` on large expressions) and returns sympy objects the chapter displays and the tests
check:

* :func:`sgd_step_moments` and :func:`euler_maruyama_step_moments`: mean and covariance of one
  SGD step and of one Euler-Maruyama step of the SDE ``d theta = -grad L dt + sqrt(eta Sigma/B) dW``
  of length ``dt = eta``: they agree, which is why the SDE is the natural continuous model;
* :func:`ito_lemma`: Ito's lemma derived by a second-order Taylor expansion with the rules
  ``dW_a dW_b = delta_ab dt``, ``dt dW = dt^2 = 0``; its ``dt`` coefficient is the generator
  ``(calL f) = b . grad f + (1/2) tr(D Hess f)``;
* :func:`task_loss_ito`: Ito's lemma for each task's loss under the joint SDE
  ``d theta = -g_joint dt + sqrt(eta) Sigma_omega^{1/2} dW``:
  ``E dL_i = [-<grad L_i, g_joint> + (eta/2) tr(H_i Sigma_omega)] dt``;
* :func:`minibatch_covariance`: the covariance of a mini-batch mean gradient over a finite data
  set, with and without replacement (``Sigma / B`` and ``(N - B)/(N - 1) Sigma / B``);
* :func:`dynkin_moments_1d` and :func:`one_step_moment_gap_1d`: the SDE's exact one-step moments
  as power series in ``eta`` (Dynkin's formula ``E f(X_Dt) = sum Dt^n/n! (calL^n f)(x)`` with the
  generator ``calL``); the plain SDE misses SGD's mean at ``O(eta^2)`` (weak order one), the
  stochastic modified equation (SME) of Li, Tai & E (2017) with the drift
  ``-grad(L + (eta/4)|grad L|^2)`` matches it to ``O(eta^3)`` (weak order two);
* :func:`sme_correction_identity`: ``(eta/4) grad |grad L|^2 = (eta/2) H grad L`` in 2-D;
* :func:`quadratic_mean_rates`: the same statement, exactly, for the mean of a quadratic;
* :func:`lyapunov_2x2`, :func:`lyapunov_gap_series`: stationary covariances of the OU process
  (continuous Lyapunov equation) and of SGD (discrete Lyapunov equation) for a symbolic 2x2
  Hessian, and their difference as a series in ``eta`` (it starts at ``eta^2``).
"""
from __future__ import annotations

import sympy as sp

__all__ = [
    "expectation",
    "ito_lemma",
    "task_loss_ito",
    "minibatch_covariance",
    "sgd_step_moments",
    "euler_maruyama_step_moments",
    "generator_1d",
    "dynkin_moments_1d",
    "sgd_moments_1d",
    "one_step_moment_gap_1d",
    "sme_correction_identity",
    "quadratic_mean_rates",
    "lyapunov_symbols",
    "lyapunov_2x2",
    "lyapunov_gap_series",
    "truncate",
]

eta, B = sp.symbols("eta B", positive=True)
#: the time step of Dynkin's expansion (``Delta t``; the book keeps ``h`` for a curvature)
Dt = sp.Symbol(r"\Delta t", positive=True)


def truncate(expr: sp.Expr, var: sp.Symbol, order: int) -> sp.Expr:
    """Keep the terms of ``expr`` (a polynomial in ``var`` after expansion) up to ``var**order``."""
    e = sp.expand(expr)
    return sp.Add(*[e.coeff(var, k) * var**k for k in range(order + 1)])


def expectation(expr: sp.Expr, noise: list[sp.Symbol], cov: sp.Matrix) -> sp.Expr:
    """``E[expr]`` for a polynomial of degree <= 2 in zero-mean noise with covariance ``cov``.

    The rule is the definition of the first two moments, applied monomial by monomial:
    ``E[1] = 1``, ``E[xi_i] = 0``, ``E[xi_i xi_j] = cov[i, j]``. Higher degrees would need
    higher moments (Gaussian or not), so they raise ValueError.
    """
    noise = list(noise)
    if cov.shape != (len(noise), len(noise)):
        raise ValueError(f"cov must be {len(noise)}x{len(noise)} for {len(noise)} noise symbols, got {cov.shape}")
    poly = sp.Poly(sp.expand(expr), *noise)
    out = sp.Integer(0)
    for powers, coeff in poly.terms():
        deg = sum(powers)
        if deg == 0:
            out += coeff
        elif deg == 1:
            continue
        elif deg == 2:
            idx = [i for i, p in enumerate(powers) for _ in range(p)]
            out += coeff * cov[idx[0], idx[1]]
        else:
            raise ValueError(f"expectation needs moments of order {deg}; only orders <= 2 are defined here")
    return out


# --------------------------------------------------------------------------------------------
# Ito's lemma, derived from the multiplication table of dt and dW
# --------------------------------------------------------------------------------------------
def ito_lemma(f: sp.Expr, state: list[sp.Symbol], drift: sp.Matrix, factor: sp.Matrix) -> dict[str, sp.Basic]:
    """Ito's lemma for ``f(X)`` with ``dX = b dt + F dW`` (``b = drift``, ``F = factor``, ``D = F F^T``).

    Derived, not quoted: expand ``f(X + dX) - f(X)`` to second order in ``dX = b dt + F dW`` and
    reduce every product with the Ito multiplication table ``dW_a dW_b = delta_ab dt``,
    ``dt dW_a = 0``, ``dt^2 = 0`` (terms beyond first order in ``dt`` vanish). Returns the
    coefficient of ``dt`` (``drift_term``), the coefficients of ``dW`` (``noise_terms``), the
    generator written out, ``generator = b . grad f + (1/2) tr(D Hess f)``, and their difference
    (``check``, zero after expansion).

    Explained in: Chapter 2, §2.1 (an Itô primer).
    """
    state = list(state)
    d, m = len(state), factor.shape[1]
    if drift.shape != (d, 1) or factor.shape[0] != d:
        raise ValueError(f"drift must be {d}x1 and factor {d}xm for {d} state variables, "
                         f"got {drift.shape}, {factor.shape}")
    dt = sp.Symbol("dt", positive=True)
    dW = sp.symbols(f"dW_1:{m + 1}", real=True)
    dX = drift * dt + factor * sp.Matrix(dW)
    grad = sp.Matrix([sp.diff(f, v) for v in state])
    hess = sp.hessian(f, state)
    taylor = sp.expand((grad.T * dX)[0] + sp.Rational(1, 2) * (dX.T * hess * dX)[0])
    reduced = sp.Integer(0)
    for powers, coeff in sp.Poly(taylor, dt, *dW).terms():
        p_dt, p_w = powers[0], powers[1:]
        order2 = 2 * p_dt + sum(p_w)            # dt counts as two half-orders, dW as one
        if order2 > 2:
            continue                             # dt^2, dt dW, dW^3, ... are o(dt)
        if sum(p_w) == 2:
            reduced += coeff * dt if max(p_w) == 2 else 0   # dW_a^2 = dt, dW_a dW_b = 0
        else:
            reduced += coeff * dt**p_dt * sp.Mul(*[w**p for w, p in zip(dW, p_w, strict=True)])
    reduced = sp.expand(reduced)
    drift_term = reduced.coeff(dt)
    noise_terms = sp.Matrix([reduced.coeff(w) for w in dW])
    D = factor * factor.T
    generator = (drift.T * grad)[0] + sp.Rational(1, 2) * (D * hess).trace()
    return {"dt": dt, "dW": dW, "taylor": taylor, "reduced": reduced, "drift_term": drift_term,
            "noise_terms": noise_terms, "generator": generator,
            "check": sp.expand(drift_term - generator)}


def task_loss_ito(n_tasks: int = 2) -> dict[str, sp.Basic]:
    """Ito's lemma for each task's loss under the joint SDE of linear scalarization, in 2-D.

    Tasks ``L_i(theta_1, theta_2)`` are generic smooth functions, ``g_joint = sum_i omega_i grad L_i``,
    and the SDE is ``d theta = -g_joint dt + sqrt(eta) F dW`` with ``F`` a lower-triangular symbolic
    factor, ``Sigma_omega = F F^T``. Returns, per task, Ito's ``dt`` coefficient (from
    :func:`ito_lemma`), the claimed form ``-<grad L_i, g_joint> + (eta/2) tr(H_i Sigma_omega)``
    and their difference (zero after expansion).

    Explained in: Chapter 2, §2.6 (Itô's lemma for each task's loss).
    """
    if int(n_tasks) != n_tasks or n_tasks < 1:
        raise ValueError(f"n_tasks must be a positive integer, got {n_tasks}")
    th = sp.symbols("theta_1 theta_2", real=True)
    losses = [sp.Function(f"L_{i}")(*th) for i in range(n_tasks)]
    omegas = sp.symbols(f"omega_0:{n_tasks}", positive=True)
    grads = [sp.Matrix([sp.diff(L, v) for v in th]) for L in losses]
    g_joint = sp.zeros(2, 1)
    for w, g in zip(omegas, grads, strict=True):
        g_joint += w * g
    F = sp.Matrix(2, 2, lambda i, j: sp.Symbol(f"F_{i + 1}{j + 1}", real=True) if j <= i else 0)
    Sigma_w = F * F.T
    out = {"theta": th, "losses": losses, "omega": omegas, "g_joint": g_joint, "F": F, "Sigma_omega": Sigma_w,
           "drift_terms": [], "claimed": [], "differences": []}
    for L, g in zip(losses, grads, strict=True):
        ito = ito_lemma(L, list(th), -g_joint, sp.sqrt(eta) * F)
        claimed = -(g.T * g_joint)[0] + eta / 2 * (sp.hessian(L, th) * Sigma_w).trace()
        out["drift_terms"].append(ito["drift_term"])
        out["claimed"].append(claimed)
        out["differences"].append(sp.expand(ito["drift_term"] - claimed))
    return out


# --------------------------------------------------------------------------------------------
# mini-batch noise on a finite data set
# --------------------------------------------------------------------------------------------
def minibatch_covariance() -> dict[str, sp.Basic]:
    """Covariance of the mean of ``B`` per-example gradients drawn from ``N``, with and without replacement.

    Write ``M2 = (1/N) sum_n v_n v_n^T`` and ``g = (1/N) sum_n v_n``; the per-example covariance is
    ``Sigma = M2 - g g^T``. The batch mean is ``(1/B) sum_b v_{n_b}``, so its covariance is
    ``(1/B^2) sum_{b, b'} Cov(v_{n_b}, v_{n_b'})``. Every draw is uniform, so a term with ``b = b'``
    is ``M2 - g g^T``. For ``b != b'``: with replacement the draws are independent (0); without
    replacement ``E[v_{n_b} v_{n_b'}^T] = (1/(N(N-1))) sum_{n != m} v_n v_m^T = (N^2 g g^T - N M2)/(N(N-1))``.
    ``M2`` and ``g g^T`` are fixed matrices, so they enter as commuting symbols (``g g^T`` is one
    symbol, written out, returned as ``ggT``). Returns both covariances,
    their ratio (the finite-population factor ``(N - B)/(N - 1)``) and the trace identity
    ``tr Sigma = E_n |v_n|^2 - |g|^2`` (``tr M2 = E_n |v_n|^2``).

    Explained in: Chapter 2, §2.7 (where Sigma comes from: mini-batch noise).
    """
    N = sp.Symbol("N", positive=True, integer=True)
    M2 = sp.Symbol("M_2", real=True)
    ggT = sp.Symbol(r"g g^{\top}", real=True)
    same = M2 - ggT
    cross = {"with": sp.Integer(0), "without": (N**2 * ggT - N * M2) / (N * (N - 1)) - ggT}
    cov = {k: sp.factor(sp.simplify((B * same + B * (B - 1) * c) / B**2)) for k, c in cross.items()}
    ratio = sp.factor(sp.cancel(cov["without"] / cov["with"]))
    second_moment, g_norm2 = sp.symbols(r"\mathbb{E}_n\|v_n\|^2 \|g\|^2", real=True)
    return {"N": N, "M2": M2, "ggT": ggT, "Sigma": same, "cross": cross, "cov_with": cov["with"],
            "cov_without": cov["without"], "ratio": ratio,
            "trace_Sigma": same.subs({M2: second_moment, ggT: g_norm2}),
            "second_moment": second_moment, "g_norm2": g_norm2}


def _sym_matrix(name: str, d: int) -> sp.Matrix:
    return sp.Matrix(d, d, lambda i, j: sp.Symbol(f"{name}_{min(i, j) + 1}{max(i, j) + 1}", real=True))


def sgd_step_moments(d: int = 2) -> dict[str, sp.Basic]:
    """Mean and covariance of one SGD step ``Delta = -eta (g + xi)``, ``E xi = 0``, ``Cov xi = Sigma / B``.

    Returns the symbols (``g``, ``xi``, ``Sigma``), the increment, ``mean = E Delta`` and
    ``cov = E[Delta Delta^T] - mean mean^T``; the result is ``-eta g`` and ``eta^2 Sigma / B``.

    Explained in: Chapter 2, §2.1 (one SGD step: its mean and covariance).
    """
    if d < 1:
        raise ValueError(f"d must be a positive integer, got {d}")
    g = sp.Matrix(d, 1, lambda i, _: sp.Symbol(f"g_{i + 1}", real=True))
    xi = sp.Matrix(d, 1, lambda i, _: sp.Symbol(f"xi_{i + 1}", real=True))
    Sigma = _sym_matrix("Sigma", d)
    cov_xi = Sigma / B
    delta = -eta * (g + xi)
    mean = delta.applyfunc(lambda e: expectation(e, list(xi), cov_xi))
    second = (delta * delta.T).applyfunc(lambda e: expectation(e, list(xi), cov_xi))
    cov = (second - mean * mean.T).applyfunc(sp.expand)
    return {"g": g, "xi": xi, "Sigma": Sigma, "increment": delta, "mean": mean, "second_moment": second, "cov": cov}


def euler_maruyama_step_moments(d: int = 2) -> dict[str, sp.Basic]:
    """Mean and covariance of one Euler-Maruyama step of the SGD SDE, with ``Sigma = F F^T``.

    ``Delta = -g dt + sqrt(dt) sqrt(eta / B) F z`` with ``z`` standard normal and ``F`` a lower-
    triangular symbolic factor of ``Sigma`` (a Cholesky factor, so ``sqrt(eta Sigma / B)`` is
    explicit). Returns ``mean`` and ``cov`` in terms of ``dt`` and, after the substitution
    ``dt = eta``, ``mean_at_eta`` and ``cov_at_eta`` (which equals ``eta^2 F F^T / B``, i.e.
    SGD's ``eta^2 Sigma / B`` once ``Sigma = F F^T``, returned as ``Sigma_from_F``).

    Explained in: Chapter 2, §2.1 (one SGD step: its mean and covariance).
    """
    if d < 1:
        raise ValueError(f"d must be a positive integer, got {d}")
    dt = sp.Symbol("dt", positive=True)
    g = sp.Matrix(d, 1, lambda i, _: sp.Symbol(f"g_{i + 1}", real=True))
    z = sp.Matrix(d, 1, lambda i, _: sp.Symbol(f"z_{i + 1}", real=True))
    F = sp.Matrix(d, d, lambda i, j: sp.Symbol(f"F_{i + 1}{j + 1}", real=True) if j <= i else 0)
    delta = -g * dt + sp.sqrt(dt) * sp.sqrt(eta / B) * F * z
    eye = sp.eye(d)
    mean = delta.applyfunc(lambda e: expectation(e, list(z), eye))
    second = (delta * delta.T).applyfunc(lambda e: expectation(e, list(z), eye))
    cov = (second - mean * mean.T).applyfunc(sp.expand)
    FFt = (F * F.T).applyfunc(sp.expand)
    cov_at_eta = cov.subs(dt, eta).applyfunc(sp.expand)
    return {"g": g, "z": z, "F": F, "dt": dt, "increment": delta, "mean": mean, "cov": cov,
            "Sigma_from_F": FFt, "mean_at_eta": mean.subs(dt, eta), "cov_at_eta": cov_at_eta}


# --------------------------------------------------------------------------------------------
# one-dimensional weak expansions
# --------------------------------------------------------------------------------------------
x, y = sp.symbols("x y", real=True)
Lf = sp.Function("L")
sf = sp.Function("s")


def generator_1d(f: sp.Expr, drift: sp.Expr, var: sp.Expr, v: sp.Symbol = y) -> sp.Expr:
    """The generator ``calL f = b f' + (1/2) sigma^2 f''`` of ``dX = b dt + sigma dW`` in the variable ``v``.

    Explained in: Chapter 2, §2.2 (weak order one, and the stochastic modified equation).
    """
    return drift * sp.diff(f, v) + sp.Rational(1, 2) * var * sp.diff(f, v, 2)


def dynkin_moments_1d(drift: sp.Expr, var: sp.Expr, order: int = 2) -> tuple[sp.Expr, sp.Expr]:
    """First two moments of ``X_Dt - x`` for ``dX = b(X) dt + sigma(X) dW``, ``X_0 = x``, to ``O(Dt^order)``.

    Dynkin's (Ito-Taylor) expansion ``E f(X_Dt) = sum_{n <= order} Dt^n / n! (calL^n f)(x)`` applied
    to ``f = y - x`` and ``f = (y - x)^2``; ``drift`` and ``var = sigma^2`` are expressions in
    the symbol ``y`` (the state), evaluated at ``y = x`` at the end. The step is the symbol :data:`Dt`.
    """
    if int(order) != order or order < 1:
        raise ValueError(f"order must be a positive integer, got {order}")
    out = []
    for f in (y - x, (y - x) ** 2):
        total, term = sp.Integer(0), f
        for n in range(1, order + 1):
            term = generator_1d(term, drift, var)
            total += Dt**n / sp.factorial(n) * term
        out.append(sp.expand(total.subs(y, x).doit()))
    return out[0], out[1]


def sgd_moments_1d() -> tuple[sp.Expr, sp.Expr]:
    """SGD's exact one-step moments in 1-D: ``E Delta = -eta L'(x)``, ``E Delta^2 = eta^2 (L'(x)^2 + s(x)/B)``."""
    mom = sgd_step_moments(1)
    sub = {mom["g"][0]: sp.diff(Lf(x), x), mom["Sigma"][0, 0]: sf(x)}
    return sp.expand(mom["mean"][0].subs(sub)), sp.expand(mom["second_moment"][0].subs(sub))


def one_step_moment_gap_1d(corrected: bool) -> dict[str, sp.Expr]:
    """SDE minus SGD one-step moments, through ``O(eta^2)``, with ``Dt = eta``.

    The SDE has diffusion ``sigma^2 = eta s(y) / B`` (``s`` the per-example gradient-noise
    variance, allowed to depend on the state) and drift ``-L'(y)`` (plain, ``corrected=False``)
    or the SME drift ``-d/dy [L + (eta/4) L'^2]`` (``corrected=True``). Dynkin's expansion to order
    3 is truncated at ``eta^2`` (every ``eta^2`` term is then complete). Returns the SDE moments,
    SGD's moments and the two gaps.

    Explained in: Chapter 2, §2.2 (weak order one, and the stochastic modified equation).
    """
    Ly = Lf(y)
    drift = -sp.diff(Ly, y)
    if corrected:
        drift = -sp.diff(Ly + eta / 4 * sp.diff(Ly, y) ** 2, y)
    var = eta * sf(y) / B
    m1, m2 = dynkin_moments_1d(drift, var, order=3)
    m1, m2 = truncate(m1.subs(Dt, eta), eta, 2), truncate(m2.subs(Dt, eta), eta, 2)
    s1, s2 = sgd_moments_1d()
    return {"drift": drift, "sde_mean": m1, "sde_second": m2, "sgd_mean": s1, "sgd_second": s2,
            "mean_gap": sp.expand(m1 - s1), "second_gap": sp.expand(m2 - s2)}


def sme_correction_identity() -> dict[str, sp.Basic]:
    """In 2-D, ``-(eta/4) grad |grad L|^2 = -(eta/2) H grad L`` for a generic smooth ``L(x1, x2)``.

    Explained in: Chapter 2, §2.2 (the stochastic modified equation).
    """
    x1, x2 = sp.symbols("x_1 x_2", real=True)
    L2 = sp.Function("L")(x1, x2)
    grad = sp.Matrix([sp.diff(L2, x1), sp.diff(L2, x2)])
    hess = sp.hessian(L2, (x1, x2))
    lhs = -eta / 4 * sp.Matrix([sp.diff((grad.T * grad)[0], v) for v in (x1, x2)])
    rhs = -eta / 2 * hess * grad
    return {"lhs": lhs, "rhs": rhs, "difference": (lhs - rhs).applyfunc(sp.expand)}


def quadratic_mean_rates(order: int = 3) -> dict[str, sp.Expr]:
    """Decay rates of the mean on ``L = h x^2 / 2``: SGD, the SDE and the SME, as series in ``eta``.

    SGD: ``E x_k = (1 - eta h)^k x_0 = exp(r t) x_0`` with ``t = k eta`` and ``r = log(1 - eta h)/eta``.
    SDE: ``r = -h``. SME: drift ``-(h + eta h^2 / 2) x`` gives ``r = -h - eta h^2 / 2``.

    Explained in: Chapter 2, §2.2 (weak order one, and the stochastic modified equation).
    """
    curv = sp.Symbol("h", positive=True)
    r_sgd = sp.log(1 - eta * curv) / eta
    series = sp.series(r_sgd, eta, 0, order).removeO()
    return {"sgd_exact": r_sgd, "sgd_series": sp.expand(series), "sde": -curv,
            "sme": -curv - eta * curv**2 / 2, "curvature": curv}


# --------------------------------------------------------------------------------------------
# Lyapunov equations for a 2x2 Hessian
# --------------------------------------------------------------------------------------------
def lyapunov_symbols(diagonal: bool = False) -> dict[str, sp.Matrix]:
    """Symbolic ``H`` (``[[a, b], [b, c]]``, or ``diag(lambda_1, lambda_2)``), ``Sigma`` and the unknown ``S``."""
    if diagonal:
        l1, l2 = sp.symbols("lambda_1 lambda_2", positive=True)
        H = sp.diag(l1, l2)
    else:
        a, c = sp.symbols("a c", positive=True)
        b = sp.Symbol("b", real=True)
        H = sp.Matrix([[a, b], [b, c]])
    Sigma = _sym_matrix("Sigma", 2)
    S = _sym_matrix("S", 2)
    return {"H": H, "Sigma": Sigma, "S": S}


def _solve_sym(eq: sp.Matrix, S: sp.Matrix) -> sp.Matrix:
    """Solve the 3 distinct equations of a symmetric 2x2 matrix equation, linear in ``S``'s 3 unknowns."""
    unknowns = [S[0, 0], S[0, 1], S[1, 1]]
    sol = sp.solve([eq[0, 0], eq[0, 1], eq[1, 1]], unknowns, dict=True)
    if len(sol) != 1:
        raise ValueError("the Lyapunov equation has no unique solution for these symbols")
    return S.subs(sol[0]).applyfunc(sp.factor)


def lyapunov_2x2(kind: str, diagonal: bool = False, rhs: sp.Matrix | None = None) -> dict[str, sp.Matrix]:
    """Stationary covariance for a symbolic 2x2 Hessian, solving a linear system for ``S``.

    ``kind="continuous"``: ``H S + S H = eta Sigma / B`` (OU process of the SDE);
    ``kind="discrete"``: ``S = (I - eta H) S (I - eta H)^T + eta^2 Sigma / B`` (SGD itself).
    ``rhs`` replaces ``eta Sigma / B`` in the continuous equation (used for the series).

    Explained in: Chapter 2, §2.3 (the quadratic case: an Ornstein-Uhlenbeck process).
    """
    syms = lyapunov_symbols(diagonal)
    H, Sigma, S = syms["H"], syms["Sigma"], syms["S"]
    if kind == "continuous":
        eq = H * S + S * H - (eta * Sigma / B if rhs is None else rhs)
    elif kind == "discrete":
        A = sp.eye(2) - eta * H
        eq = A * S * A.T + eta**2 * Sigma / B - S
    else:
        raise ValueError(f"kind must be 'continuous' or 'discrete', got {kind!r}")
    return {**syms, "equation": eq, "solution": _solve_sym(eq, S)}


def lyapunov_gap_series(order: int = 3, diagonal: bool = False) -> dict[str, sp.Basic]:
    """``S_sgd - S_ou`` as a series in ``eta`` through ``eta**order``, derived order by order.

    Expanding the discrete equation gives ``H S + S H - eta H S H = eta Sigma / B``. Put
    ``S = sum_k eta^k S_k``: ``eta^1``: ``H S_1 + S_1 H = Sigma / B`` (so ``eta S_1`` is the OU
    covariance); ``eta^{k+1}``: ``H S_{k+1} + S_{k+1} H = H S_k H``. Each order is one more
    continuous Lyapunov solve, so the gap ``sum_{k>=2} eta^k S_k`` starts at ``eta^2``.
    Returns the terms ``S_k`` (k = 1..order) and the truncated gap.

    Explained in: Chapter 2, §2.3 (the quadratic case: an Ornstein-Uhlenbeck process).
    """
    if int(order) != order or order < 2:
        raise ValueError(f"order must be an integer >= 2, got {order}")
    base = lyapunov_2x2("continuous", diagonal=diagonal, rhs=lyapunov_symbols(diagonal)["Sigma"] / B)
    H = base["H"]
    terms = [base["solution"]]
    for _ in range(order - 1):
        nxt = lyapunov_2x2("continuous", diagonal=diagonal, rhs=(H * terms[-1] * H).applyfunc(sp.expand))
        terms.append(nxt["solution"])
    gap = sp.zeros(2, 2)
    for k, Sk in enumerate(terms[1:], start=2):
        gap += eta**k * Sk
    return {"H": H, "Sigma": base["Sigma"], "terms": terms, "gap": gap}
