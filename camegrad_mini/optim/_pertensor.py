"""The wrapper's per-tensor path: which parameter gets which gradient, the Gram matrix over the
shared parameters' per-task tensors, and the write into ``.grad``.

Every step can take this path (the flat buffer of :mod:`._flat` is an optimisation of it, with
the same results); gradients of mixed or low-precision dtypes, and a step whose reach pattern
differs from the buffer's, always do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ._flat import Buffers
from ._types import BoolArray, FloatArray

#: (parameter, tasks reaching it, its per-task gradients) of a shared or multi-task parameter.
Reached = tuple[torch.Tensor, list[int], list["torch.Tensor | None"]]
#: (parameter, its one task, that task's gradient) of a single-task parameter (a head).
Single = tuple[torch.Tensor, int, torch.Tensor]


@dataclass(frozen=True)
class SharedRule:
    """The wrapper's ``shared`` option: ``"auto"``, ``"all"`` or ``"explicit"`` (``ids``)."""

    mode: str
    ids: frozenset[int] = frozenset()

    def kind(self, p: torch.Tensor, reach: Sequence[int]) -> str:
        """How a parameter reached by the tasks ``reach`` is combined: "shared" (the aggregated
        direction), "single" (its one task's weighted gradient) or "multi" (the weighted sum)."""
        if self.mode == "auto":
            is_shared = len(reach) >= 2
        elif self.mode == "all":
            is_shared = True
        else:
            is_shared = id(p) in self.ids
        return "shared" if is_shared else ("single" if len(reach) == 1 else "multi")


def classify(buffers: Buffers, t_count: int, rule: SharedRule) -> tuple[list[Reached], list[Single], list[Reached]]:
    """The buffered parameters by kind (see :meth:`SharedRule.kind`): shared, single, multi."""
    shared: list[Reached] = []
    single: list[Single] = []
    multi: list[Reached] = []
    for p, gs in buffers.items():
        reach = [i for i in range(t_count) if gs[i] is not None]
        kind = rule.kind(p, reach)
        if kind == "shared":
            shared.append((p, reach, gs))
        elif kind == "single":
            g = gs[reach[0]]
            assert g is not None  # reach lists the tasks with a gradient
            single.append((p, reach[0], g))
        else:
            multi.append((p, reach, gs))
    return shared, single, multi


def split_indices(
    params: Sequence[torch.Tensor], reach: BoolArray, rule: SharedRule
) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Indices of the reached parameters by kind, in a canonical order: shared, multi, and
    (index, task) of single-task parameters sorted by task."""
    shared: list[int] = []
    multi: list[int] = []
    single: list[tuple[int, int]] = []
    for k, p in enumerate(params):
        tasks = np.flatnonzero(reach[:, k]).tolist()
        if tasks:
            kind = rule.kind(p, tasks)
            if kind == "single":
                single.append((k, tasks[0]))
            else:
                (shared if kind == "shared" else multi).append(k)
    return shared, multi, sorted(single, key=lambda ki: (ki[1], ki[0]))


def _present(gs: list[torch.Tensor | None], reach: Sequence[int]) -> list[torch.Tensor]:
    """The gradients of the tasks in ``reach`` (all present by construction of ``reach``)."""
    out = [gs[i] for i in reach]
    return [g for g in out if g is not None]


def shared_gram(
    shared: list[Reached], t_count: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Gram matrix of the task gradients on the shared parameters, float64 on ``device``.

    Dot products run in ``dtype`` (at least the gradients' own precision). float32 is fast
    but not scale-safe: squares overflow for entries near 1e19 and underflow below about
    1e-19; the step checks the result (``_stats.gram_is_trustworthy``) and redoes it in
    float64, which holds the square of every float32 number.
    """
    gram = torch.zeros(t_count, t_count, dtype=torch.float64, device=device)
    pair_dots = []
    for _, reach, gs in shared:
        vecs = [g.reshape(-1) for g in _present(gs, reach)]
        if vecs[0].dtype != dtype and vecs[0].dtype != torch.float64:
            vecs = [v.to(dtype) for v in vecs]
        if t_count == 2 and len(reach) == 2:
            a, b = vecs
            pair_dots.append(torch.stack([torch.dot(a, a), torch.dot(a, b), torch.dot(b, b)]))
            continue
        # stacked a column chunk at a time: a whole (T, n) copy of a large tensor would
        # raise the step's peak memory by T times that tensor
        chunk = max(1, 2**16 // len(vecs))
        block = torch.zeros(len(vecs), len(vecs), dtype=torch.float64, device=device)
        for c0 in range(0, vecs[0].numel(), chunk):
            mat = torch.stack([v[c0 : c0 + chunk] for v in vecs])
            block += (mat @ mat.T).double()
        idx = torch.tensor(reach, device=device)
        gram[idx[:, None], idx[None, :]] += block
    if pair_dots:
        d = torch.stack(pair_dots).double().sum(0)
        gram += torch.stack([torch.stack([d[0], d[1]]), torch.stack([d[1], d[2]])])
    return gram


def exclusive(buffers: Buffers) -> set[int]:
    """ids of buffered gradients that may be overwritten in place.

    A tensor returned by ``autograd.grad`` is fresh, except that pass-through nodes can hand
    the same tensor to several parameters (``(p + q) @ v``) or an expanded view (``p.sum()``).
    Only contiguous tensors whose storage no other buffer shares are reused; reusing them
    saves an allocation and a pass over memory per parameter.
    """
    counts: dict[int, int] = {}
    tensors = [g for gs in buffers.values() for g in gs if g is not None]
    for g in tensors:
        ptr = g.untyped_storage().data_ptr()
        counts[ptr] = counts.get(ptr, 0) + 1
    return {id(g) for g in tensors if g.is_contiguous() and counts[g.untyped_storage().data_ptr()] == 1}


def weighted_sum(gs: list[torch.Tensor | None], reach: Sequence[int], coef: FloatArray) -> torch.Tensor:
    """``sum_{i in reach} coef_i gs[i]`` in a fresh tensor."""
    vecs = _present(gs, reach)
    out = vecs[0] * float(coef[reach[0]])
    for i, g in zip(reach[1:], vecs[1:], strict=True):
        out.add_(g, alpha=float(coef[i]))
    return out


def _write_full_shared(full: list[tuple[torch.Tensor, list[torch.Tensor]]], own: set[int], coef: FloatArray) -> None:
    """``.grad = sum_i coef_i g_i`` for shared parameters every task reaches, in place into
    task 0's gradient where it is exclusively ours, else into a fresh tensor."""
    inplace = [(p, gs) for p, gs in full if id(gs[0]) in own]
    fresh = [(p, gs) for p, gs in full if id(gs[0]) not in own]
    targets: list[tuple[list[tuple[torch.Tensor, list[torch.Tensor]]], Sequence[torch.Tensor]]] = []
    if inplace:
        first = [gs[0] for _, gs in inplace]
        if coef[0] != 1.0:
            torch._foreach_mul_(first, float(coef[0]))
        targets.append((inplace, first))
    if fresh:
        targets.append((fresh, torch._foreach_mul([gs[0] for _, gs in fresh], float(coef[0]))))
    for group, out in targets:
        for i in range(1, len(coef)):
            torch._foreach_add_(list(out), [gs[i] for _, gs in group], alpha=float(coef[i]))
        for (p, _), g in zip(group, out, strict=True):
            p.grad = g


def _write_single(single: list[Single], own: set[int], weights: FloatArray) -> None:
    """``.grad = omega_i g_i`` for single-task parameters, in place where the tensor is ours."""
    for i in range(len(weights)):
        w_i = float(weights[i])
        mine = [(p, g) for p, j, g in single if j == i and id(g) in own]
        other = [(p, g) for p, j, g in single if j == i and id(g) not in own]
        if mine:
            if w_i != 1.0:
                torch._foreach_mul_([g for _, g in mine], w_i)
            for p, g in mine:
                p.grad = g
        if other:
            for (p, _), g in zip(other, torch._foreach_mul([g for _, g in other], w_i), strict=True):
                p.grad = g


def write(
    buffers: Buffers, params: Sequence[torch.Tensor], parts: tuple[list[Reached], list[Single], list[Reached]],
    coef: FloatArray, weights: FloatArray,
) -> None:
    """Write ``sum_i coef_i g_i`` into the shared parameters' ``.grad``, ``omega_i g_i`` into
    single-task parameters, ``sum_i omega_i g_i`` into the others and None where unreached."""
    shared, single, multi = parts
    t_count = len(coef)
    own = exclusive(buffers)
    full = [(p, _present(gs, reach)) for p, reach, gs in shared if len(reach) == t_count]
    if full:
        _write_full_shared(full, own, coef)
    for p, reach, gs in shared:
        if len(reach) < t_count:
            p.grad = weighted_sum(gs, reach, coef)
    _write_single(single, own, weights)
    for p, reach, gs in multi:
        p.grad = weighted_sum(gs, reach, weights)
    reached = set(id(p) for p in buffers)
    for p in params:
        if id(p) not in reached:
            p.grad = None
