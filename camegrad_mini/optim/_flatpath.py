"""The wrapper's fast path over the flat buffer of :mod:`._flat`: the reach pattern read off the
autograd graphs, the step's sources (Gram matrix, non-shared gradients) and the in-place write."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ._flat import Buffers, FlatLayout, block_gram, combine_into_row0
from ._pertensor import exclusive
from ._stats import Sources
from ._types import BoolArray, FloatArray


def graph_reach(losses: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> BoolArray:
    """(T, P) bool: the parameters each loss's autograd graph reaches (its structure only: an
    edge whose gradient turns out undefined shows up as a change of pattern at step())."""
    index = {id(p): k for k, p in enumerate(params)}
    reach = np.zeros((len(losses), len(params)), dtype=bool)
    for i, loss in enumerate(losses):
        if loss.grad_fn is None:  # a leaf: the loss is a parameter itself, or needs no grad
            if loss.requires_grad and id(loss) in index:
                reach[i, index[id(loss)]] = True
            continue
        stack, seen = [loss.grad_fn], {loss.grad_fn}
        while stack:
            node = stack.pop()
            k = index.get(id(getattr(node, "variable", None)))
            if k is not None:
                reach[i, k] = True
            for nxt, _ in node.next_functions:
                if nxt is not None and nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
    return reach


def _add_last_task(lay: FlatLayout, buffers: Buffers, last: int, coef: FloatArray, weights: FloatArray) -> None:
    """The last task's gradients, when the layout does not hold them: added into row 0."""
    for kind, c in (("shared", coef[last]), ("multi", weights[last])):
        pairs = [(lay.slots[p][0], buffers[p][last]) for p, _ in lay.row_params[kind]]
        dst = [v for v, g in pairs if v is not None and g is not None]
        src = [g for v, g in pairs if v is not None and g is not None]
        if dst:
            torch._foreach_add_(dst, src, alpha=float(c))


def write_flat(
    lay: FlatLayout, buffers: Buffers, params: Sequence[torch.Tensor], coef: FloatArray, weights: FloatArray
) -> None:
    """The fast path's write: the combined direction into row 0 of the shared rows, the
    weighted sum into row 0 of the multi rows, heads scaled in place, ``.grad`` = views."""
    r, last = lay.held_rows, len(coef) - 1
    combine_into_row0(lay.shared_rows, coef[:r])
    combine_into_row0(lay.multi_rows, weights[:r])
    for i, tail in enumerate(lay.tails):
        if tail.numel() and weights[i] != 1.0:
            tail.mul_(float(weights[i]))
    if r <= last:  # the last task's gradients, not held: added into row 0, heads scaled
        _add_last_task(lay, buffers, last, coef, weights)
    own = exclusive(buffers) if lay.fresh_single else set()
    for p, i in lay.fresh_single:  # heads: omega_i g_i, in place where the tensor is ours
        g = buffers[p][i]
        assert g is not None  # a fresh single-task gradient is present when the fast path runs
        p.grad = g.mul_(float(weights[i])) if id(g) in own else g * float(weights[i])
    for p, view in lay.grad_views:
        p.grad = view
    for p in params:
        if p not in lay.params:
            p.grad = None


def flat_sources(
    lay: FlatLayout, buffers: Buffers, t_count: int, write: Callable[[FloatArray, FloatArray], None]
) -> Sources:
    """The step's :class:`~._stats.Sources` read off the flat buffer."""
    last = t_count - 1
    ns: list[tuple[torch.Tensor | None, int]] = [(tail, i) for i, tail in enumerate(lay.tails) if tail.numel()]
    ns += [(lay.multi_rows[i], i) for i in range(lay.held_rows) if lay.multi_rows.shape[1]]
    ns += [(buffers[p][i], i) for p, i in lay.fresh_single]
    gram: Callable[[torch.dtype | None], torch.Tensor]
    if lay.held_rows <= last:
        fresh = [p for p, _ in lay.row_params["multi"]]
        ns += [(buffers[p][last], last) for p in fresh if buffers[p][last] is not None]

        def gram(dtype: torch.dtype | None = None) -> torch.Tensor:
            return lay.last_gram(buffers, dtype)
    else:
        def gram(dtype: torch.dtype | None = None) -> torch.Tensor:
            return block_gram(lay.shared_rows, dtype)
    present = [(g, i) for g, i in ns if g is not None]
    return Sources(
        device=lay.storage.device, gram=gram(None), redo=lambda: gram(torch.float64),
        ns_grads=[g for g, _ in present], ns_tasks=[i for _, i in present],
        shared_tasks=lay.shared_tasks, shared_numel=lay.shared_rows.shape[1],
        has_shared=lay.n_shared > 0, write=write,
    )
