"""What the wrapper's step measures before it aggregates: the Gram matrix, the losses and the
finiteness of every gradient, in one host transfer; and the norm clip it applies after."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ._types import FloatArray


@dataclass(frozen=True)
class Sources:
    """What the step needs from the gradients (flat buffer or per tensor).

    Attributes:
        device: Where the gradients live.
        gram: The Gram matrix on the shared parameters (float64, ``device``), float32 products.
        redo: The same Gram matrix computed in float64 (when the float32 one is not trustworthy).
        ns_grads, ns_tasks: The non-shared gradients and the task of each (finiteness checks).
        shared_tasks: The tasks that reach a shared parameter.
        shared_numel: Number of scalar shared parameters.
        has_shared: Whether any parameter is shared.
        write: ``write(coef, weights)`` writes the combined gradients into ``.grad``.
    """

    device: torch.device
    gram: torch.Tensor
    redo: Callable[[], torch.Tensor]
    ns_grads: list[torch.Tensor]
    ns_tasks: list[int]
    shared_tasks: set[int]
    shared_numel: int
    has_shared: bool
    write: Callable[[FloatArray, FloatArray], None]


def weighted(gram: FloatArray, weights: FloatArray) -> FloatArray:
    """Gram matrix of the task-weighted gradients ``omega_i g_i``."""
    with np.errstate(invalid="ignore"):  # a skipped step may carry inf * 0
        return gram * np.outer(weights, weights)


def gram_is_trustworthy(gram: FloatArray, tasks: set[int]) -> bool:
    """Whether a Gram matrix computed in float32 can be used as it is.

    It cannot when a diagonal entry (a squared norm) overflowed, or when a task that reaches
    the shared parameters has a squared norm below 2**-80: its entries' squares were then
    subnormal or flushed to zero in float32 and the matrix has lost its relative precision.
    """
    diag = np.diag(gram)
    if not np.all(np.isfinite(diag)):
        return False
    return all(diag[i] >= 2.0**-80 for i in tasks)


def clip_grad_norm_(grads: list[torch.Tensor], max_norm: float) -> tuple[float, float]:
    """Scale ``grads`` in place to total norm ``max_norm`` if larger (``clip_grad_norm_``'s rule).

    Returns the total norm before clipping and the factor applied. Unlike torch's float32 total,
    which overflows for gradient entries near 1e19 and then leaves the gradients unclipped, the
    norm is redone in float64 when the fast one is not finite.
    """
    if not grads:
        return 0.0, 1.0
    total = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).double()))
    if not math.isfinite(total):
        total = float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g, dtype=torch.float64) for g in grads])))
    coef = min(1.0, max_norm / (total + 1e-6)) if math.isfinite(total) else 1.0
    if coef < 1.0:
        torch._foreach_mul_(grads, coef)
    return total, coef


def _is_low_precision(t: torch.Tensor) -> bool:
    return t.dtype not in (torch.float32, torch.float64)


def host_stats(
    src: Sources, loss_sum: torch.Tensor, t_count: int, world: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Gram matrix (per-process average units), losses and the non-shared gradients' largest
    entries (a finiteness check that cannot overflow, unlike a norm), in one host transfer.

    The largest entries come from ``aminmax`` (NaN propagates into both): the CPU kernel of
    an infinity norm is not vectorised and took 5.5 ms on a 1.4M-entry decoder gradient,
    ``aminmax`` 0.15 ms.
    """
    pieces = [src.gram.reshape(-1), loss_sum.to(src.device, torch.float64)]
    grads = [g.float() if _is_low_precision(g) else g for g in src.ns_grads]
    extremes = [torch.stack(torch.aminmax(g.reshape(-1))) if g.numel() else g.new_zeros(2) for g in grads]
    if extremes:
        pieces.append(torch.cat(extremes).to(torch.float64))
    host = torch.cat(pieces).cpu().numpy()
    gram = host[: t_count * t_count].reshape(t_count, t_count)
    if not gram_is_trustworthy(gram, src.shared_tasks):
        gram = src.redo().cpu().numpy()
    ns = np.abs(host[t_count * (t_count + 1) :].reshape(-1, 2)).max(axis=1)  # NaN stays NaN
    # the reduced gradients are sums over the processes: the average's Gram is 1/world^2 of it
    return gram / world**2, host[t_count * t_count : t_count * (t_count + 1)], ns


def nonfinite_tasks(losses: FloatArray, gram: FloatArray, ns_norms: FloatArray, ns_tasks: list[int]) -> set[int]:
    """The tasks whose loss or gradient is not finite (all of them when only a cross term is)."""
    bad: set[int] = set()
    bad.update(int(i) for i in np.flatnonzero(~np.isfinite(losses)))
    bad.update(int(i) for i in np.flatnonzero(~np.isfinite(np.diag(gram))))
    bad.update(ns_tasks[k] for k in np.flatnonzero(~np.isfinite(ns_norms)))
    if not bad and not np.all(np.isfinite(gram)):
        bad.update(range(gram.shape[0]))
    return bad
