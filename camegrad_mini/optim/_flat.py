"""The flat per-task gradient buffer behind :class:`camegrad_mini.optim.CAMEGrad`.

Once a step has shown which task reaches which parameter, the wrapper keeps every (task,
parameter) gradient of the next steps in one persistent 1-D tensor::

    [ shared rows (T, Ds) | multi rows (T, Dm) | single-task tail | meta ]

- the shared rows hold the parameters that receive the combined direction (zeros where a task
  does not reach one), so the Gram matrix is a few large matrix products (:func:`block_gram`)
  instead of per-parameter stacking copies;
- the combined direction is one matrix-vector product written in place into row 0
  (:func:`combine_into_row0`), and each parameter's ``.grad`` is a fixed view of it;
- under DDP the whole tensor, meta included, is one ``all_reduce``. Meta holds the T losses,
  the (T, P) reach bitmap and an overflow count (gradients that found no slot), so that every
  decision after the collective (fast path or not, skip or not) is taken on identical data on
  every rank.

Only dense float32/float64 gradients on one device use the layout; anything else takes the
wrapper's general per-tensor path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._types import BoolArray, FloatArray

#: The pending per-task gradients of a step: for each parameter, one entry per task (None: the
#: task did not reach it).
Buffers = dict[torch.Tensor, list[torch.Tensor | None]]

#: Columns per chunk of the Gram matrix product. Chunks of 16K columns go through one batched
#: product whose per-chunk results are summed in float64: on one CPU thread this is as fast as
#: or faster than one (T, D) @ (D, T) product for skinny T (MKL's kernel ran an 8 x 1M product
#: at a quarter of its 32 x 1M speed) and more accurate (float32 accumulation over a million
#: terms was off by 1e-5 relative, the chunked sum by 1e-7).
GRAM_CHUNK = 16384
#: From this many rows on (CPU), the Gram matrix is accumulated chunk by chunk through a small
#: cache-resident copy (:func:`chunked_gram`): measured on one thread with 31 rows of 1M, 86 ms
#: against 144 ms for the batched product over strided chunks; below it the Python loop's
#: per-chunk overhead is larger than the gain.
CHUNKED_FROM = 9
#: Columns per chunk of :func:`chunked_gram` (32 rows x 32K float32 = 4 MiB).
COPY_CHUNK = 32768
#: Columns per chunk when the Gram matrix is redone in a wider dtype (bounded temporary memory).
CONVERT_CHUNK = 131072


def _gram_converted(rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``rows @ rows.T`` with the entries converted to ``dtype`` chunk by chunk (float64 out)."""
    t, d = rows.shape
    gram = torch.zeros(t, t, dtype=torch.float64, device=rows.device)
    for a in range(0, d, CONVERT_CHUNK):
        blk = rows[:, a : a + CONVERT_CHUNK].to(dtype)
        gram += (blk @ blk.T).double()
    return gram


def chunked_gram(
    rows: torch.Tensor, last: Sequence[tuple[slice, torch.Tensor | None]] | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Gram matrix (float64) of ``rows`` (R, D), and of one more row if ``last`` is given.

    Each chunk of columns is copied into a small buffer and multiplied there: the rows are read
    from memory once, and ``last`` (a list of (column slice, tensor or None) covering every
    column: the last task's per-parameter gradients, zeros where None) joins the same product
    instead of costing a second pass over the rows.
    """
    r, d = rows.shape
    t = r + (last is not None)
    buf = torch.empty(t, min(COPY_CHUNK, max(d, 1)), dtype=dtype or rows.dtype, device=rows.device)
    gram = torch.zeros(t, t, dtype=torch.float64, device=rows.device)
    for cols, g in last if last is not None else [(slice(0, d), None)]:
        flat = None if g is None else g.reshape(-1)
        for a in range(cols.start, cols.stop, COPY_CHUNK):
            w = min(COPY_CHUNK, cols.stop - a)
            blk = buf[:, :w]
            blk[:r].copy_(rows[:, a : a + w])
            if last is not None:
                blk[r].copy_(flat[a - cols.start : a - cols.start + w]) if flat is not None else blk[r].zero_()
            gram += torch.mm(blk, blk.T).double()
    return gram


def block_gram(rows: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Gram matrix ``rows @ rows.T`` of a (T, D) matrix, float64 on ``rows``' device.

    Args:
        rows: (T, D); may be a strided view (row stride >= D).
        dtype: Compute in this dtype when it differs from the rows' (the float64 redo).
    """
    t, d = rows.shape
    if rows.device.type == "cpu" and t >= CHUNKED_FROM:
        return chunked_gram(rows, None, dtype)
    if dtype is not None and dtype != rows.dtype:
        return _gram_converted(rows, dtype)
    n = d // GRAM_CHUNK
    rest = rows[:, n * GRAM_CHUNK :]
    gram = (rest @ rest.T).double()
    if n:
        chunks = rows[:, : n * GRAM_CHUNK].reshape(t, n, GRAM_CHUNK).transpose(0, 1)  # a view
        gram += torch.bmm(chunks, chunks.transpose(1, 2)).sum(0, dtype=torch.float64)
    return gram


def combine_into_row0(rows: torch.Tensor, coef: FloatArray) -> None:
    """Overwrite ``rows[0]`` with ``sum_i coef[i] * rows[i]``, in place and without a temporary.

    ``rows[0] = coef[0] * rows[0] + rows[1:].T @ coef[1:]``: the matrix read does not overlap
    row 0, so one ``addmv_`` streams the buffer once.
    """
    if rows.shape[1] == 0:
        return
    if rows.shape[0] == 1:
        rows[0].mul_(float(coef[0]))
        return
    rest = torch.as_tensor(np.asarray(coef[1:], dtype=np.float64), device=rows.device).to(rows.dtype)
    rows[0].addmv_(rows[1:].T, rest, beta=float(coef[0]))


class FlatLayout:
    """One persistent buffer for the per-task gradients of a fixed reach pattern.

    Args:
        params: The trainable parameters, in the wrapper's order (index k of the reach bitmap).
        reach: (T, P) bool, which task reaches which parameter (the pattern this layout holds).
        shared, multi: Indices of parameters in the combined rows and in the weighted-sum rows.
        single: (parameter index, task) of parameters reached by one task only.
        dtype, device: Of every gradient held.
        hold_last: Hold every gradient (DDP: one collective over everything). Otherwise the
            last task's gradients and those of single-task parameters (heads) stay the tensors
            autograd returns: a slot allocated before the backward pass that fills it coexists
            with that pass's activations (and with the fresh gradient until the hook's copy), and
            the step's peak memory would exceed that of plain per-task gradients.
    """

    def __init__(self, params: Sequence[torch.Tensor], reach: BoolArray, shared: list[int], multi: list[int],
                 single: list[tuple[int, int]], dtype: torch.dtype, device: torch.device,
                 hold_last: bool = True) -> None:
        t, p_count = reach.shape
        r = t if hold_last or t == 1 else t - 1  # rows held in the buffer
        self.num_tasks, self.held_rows, self.reach, self.dtype = t, r, reach.copy(), dtype
        self.param_ids = tuple(id(p) for p in params)
        self.n_shared = len(shared)
        self.shared_tasks = {i for i in range(t) if reach[i, shared].any()} if shared else set()
        ds = sum(params[k].numel() for k in shared)
        dm = sum(params[k].numel() for k in multi)
        self.hold_all = hold_last or t == 1
        held_single = single if self.hold_all else []
        tail = [sum(params[k].numel() for k, i in held_single if i == task) for task in range(r)]
        n_grad = r * (ds + dm) + sum(tail)
        self.n_meta = t + t * p_count + 1  # losses, reach bitmap, overflow count
        self.storage = torch.zeros(n_grad + self.n_meta, dtype=dtype, device=device)
        self.meta = self.storage[n_grad:]
        self.shared_rows = self.storage[: r * ds].view(r, ds)
        self.multi_rows = self.storage[r * ds : r * (ds + dm)].view(r, dm)
        self.slots: dict[torch.Tensor, list[torch.Tensor | None]] = {}
        self.grad_views: list[tuple[torch.Tensor, torch.Tensor]] = []  # (param, its .grad view)
        self.row_params: dict[str, list[tuple[torch.Tensor, slice]]] = {"shared": [], "multi": []}
        for kind, rows, idx in (("shared", self.shared_rows, shared), ("multi", self.multi_rows, multi)):
            off = 0
            for k in idx:
                p, n = params[k], params[k].numel()
                views = [rows[i, off : off + n].view_as(p) for i in range(r)]
                self.slots[p] = [*views, *[None] * (t - r)]
                self.grad_views.append((p, views[0]))
                self.row_params[kind].append((p, slice(off, off + n)))
                off += n
        self.tails: list[torch.Tensor] = []
        # single-task parameters whose gradients are not held: (parameter, task)
        self.fresh_single = [] if self.hold_all else [(params[k], i) for k, i in single]
        off = r * (ds + dm)
        for task in range(r):
            self.tails.append(self.storage[off : off + tail[task]])
            for k, i in held_single:
                if i == task:
                    p, n = params[k], params[k].numel()
                    view = self.storage[off : off + n].view_as(p)
                    self.slots[p] = [None] * t
                    self.slots[p][i] = view
                    self.grad_views.append((p, view))
                    off += n
        self.params = set(self.slots) | {p for p, _ in self.fresh_single}

    def slot(self, p: torch.Tensor, task: int) -> torch.Tensor | None:
        """The view that holds task ``task``'s gradient of ``p``, or None."""
        slots = self.slots.get(p)
        return None if slots is None else slots[task]

    def zero_unwritten(self, buffers: Buffers) -> list[tuple[torch.Tensor, int]]:
        """Zero the slots this step did not write (stale: last step's values or its combined
        direction in row 0) and return them as (parameter, task)."""
        stale: list[tuple[torch.Tensor, int]] = []
        views: list[torch.Tensor] = []
        for p, slots in self.slots.items():
            gs = buffers.get(p)
            for i, s in enumerate(slots):
                if s is not None and (gs is None or gs[i] is not s):
                    stale.append((p, i))
                    views.append(s)
        if views:
            torch._foreach_zero_(views)
        return stale

    def last_gram(self, buffers: Buffers, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Gram matrix when the last task's gradients are not held: the held rows' block, and
        the last task's row from its own per-parameter tensors."""
        t, r = self.num_tasks, self.held_rows
        if self.storage.device.type == "cpu" and t >= CHUNKED_FROM:
            last = [(cols, buffers[p][t - 1]) for p, cols in self.row_params["shared"]]
            return chunked_gram(self.shared_rows, last, dtype)
        gram = torch.zeros(t, t, dtype=torch.float64, device=self.storage.device)
        gram[:r, :r] = block_gram(self.shared_rows, dtype)
        cross = torch.zeros(r + 1, dtype=torch.float64, device=self.storage.device)
        for p, cols in self.row_params["shared"]:
            g = buffers[p][t - 1]
            if g is None:
                continue
            g = g.reshape(-1) if dtype is None else g.reshape(-1).to(dtype)
            rows = self.shared_rows[:, cols] if dtype is None else self.shared_rows[:, cols].to(dtype)
            cross[:r] += (rows @ g).double()
            cross[r] += torch.dot(g, g).double()
        gram[t - 1, :r] = gram[:r, t - 1] = cross[:r]
        gram[t - 1, t - 1] = cross[r]
        return gram
