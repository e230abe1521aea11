"""How :class:`camegrad_mini.optim.CAMEGrad` collects the per-task gradients of a step, from its
first ``backward()`` to its ``step()``: one ``torch.autograd.grad`` per task, the results kept
per task and added up over the backward calls of an accumulation.

The gradients go into the persistent flat buffer of :mod:`._flat` when one is laid out for this
step's reach pattern (which task reaches which parameter), copied there by tensor hooks as the
backward passes produce them; otherwise they stay the tensors autograd returns, for the
per-tensor path of :mod:`._pertensor`. The buffer of the next step is planned here too: from the
losses' autograd graphs before a step, or from a finished step's (under DDP: reduced) pattern.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from . import _ddp, _flatpath, _pertensor
from ._flat import Buffers, FlatLayout
from ._pertensor import SharedRule
from ._types import BoolArray, FloatArray


class Plan(NamedTuple):
    """The flat buffer to build at the next step's first backward() (``FlatLayout``'s arguments)."""

    param_ids: tuple[int, ...]
    reach: BoolArray
    shared: list[int]
    multi: list[int]
    single: list[tuple[int, int]]
    dtype: torch.dtype
    device: torch.device
    hold_last: bool

    def build(self, params: Sequence[torch.Tensor]) -> FlatLayout:
        return FlatLayout(params, self.reach, self.shared, self.multi, self.single, self.dtype, self.device,
                          self.hold_last)


@dataclass
class Pending:
    """The step in progress, from its first ``CAMEGrad.backward()`` to its ``CAMEGrad.step()``.

    Attributes:
        num_tasks, task_weights, scaled: T, omega and whether a GradScaler scaled the losses.
        reach: (T, P) bool, task i reached parameter k.
        layout: The flat buffer this step writes into, or None (per-tensor path).
        loss_sum: Per-task loss values summed over the backward calls.
        buffers: The per-task gradients (see :data:`._flat.Buffers`).
        n_backward: backward() calls completed.
        overflow: A gradient of this step found no slot in the flat buffer.
    """

    num_tasks: int
    task_weights: FloatArray
    scaled: bool
    reach: BoolArray
    layout: FlatLayout | None
    loss_sum: torch.Tensor
    buffers: Buffers = field(default_factory=dict)
    n_backward: int = 0
    overflow: bool = False


def _slot_hook(ref: weakref.ref, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
    """Tensor hook on a parameter during a step (see :meth:`TaskGradientCollector.begin`); a weak
    reference, so that the parameters never keep the collector (and its buffer) alive."""
    collector = ref()
    return None if collector is None else collector._into_slot(p, g)


class TaskGradientCollector:
    """The per-task gradients of the step in progress, and the flat buffer they are written into.

    Owned by one :class:`camegrad_mini.optim.CAMEGrad`: its ``backward()`` calls :meth:`begin`
    (first call of a step) and :meth:`collect`; its ``step()`` calls :meth:`complete`, reads
    :attr:`pending` and ends with :meth:`clear`.

    Attributes:
        shared: The wrapper's ``shared`` option (which parameters the buffer's shared rows hold).
        layout: The flat buffer in use, or None.
        plan: The next step's buffer: None keeps :attr:`layout`, False drops it, a :class:`Plan`
            is built at the next step's first backward().
        use_flat: False: never lay out a buffer, always the per-tensor path (the tests' reference).
        pending: The step in progress, or None between steps.
    """

    def __init__(self, shared: SharedRule) -> None:
        self.shared = shared
        self.layout: FlatLayout | None = None
        self.plan: Plan | Literal[False] | None = None
        self.use_flat = True
        self.pending: Pending | None = None
        self._hook_handles: list[Any] = []
        self._hook_task: int | None = None  # the task whose backward pass is running

    def clear(self) -> None:
        """Forget the step in progress and remove its slot hooks (the buffer stays)."""
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []
        self._hook_task = None
        self.pending = None

    def check_consistent(self, t_count: int, weights: FloatArray, scaled: bool) -> None:
        """ValueError unless a later backward() of a step matches the earlier ones."""
        pend = self.pending
        if pend is None or pend.n_backward == 0:
            return
        if t_count != pend.num_tasks:
            raise ValueError(
                f"losses has {t_count} entries but earlier backward() calls of this step had {pend.num_tasks}"
            )
        if not np.array_equal(weights, pend.task_weights):
            raise ValueError("task_weights changed between backward() calls of one step")
        if scaled != pend.scaled:
            raise ValueError("scaler must be given to every backward() call of a step or to none")

    # ---------------------------------------------------------------- during backward()
    def begin(
        self, params: list[torch.Tensor], loss_list: list[torch.Tensor], weights: FloatArray, scaled: bool,
        values: torch.Tensor, world_size: Callable[[], int],
    ) -> Pending:
        """First backward() of a step: build the planned flat buffer, or, with none that fits and
        outside DDP, one planned from the losses' autograd graphs; use it if it fits.

        ``world_size`` is asked only when a buffer would be planned from the graphs, so that
        ``distributed=True`` without a process group fails where it always did.
        """
        t_count = len(loss_list)
        ids = tuple(id(p) for p in params)
        self._build_planned(params, ids)
        if not self._fits(ids, t_count) and self._flat_wanted(t_count, 1) and world_size() == 1:
            # Without DDP the reach pattern can be read off the graphs before the backward passes,
            # so even a wrapper's first step (after a checkpoint load, say) runs the same
            # arithmetic as every later one. Under DDP the ranks must agree on the buffer's
            # layout, so it is planned from the reduced pattern of a first step instead.
            self.plan = self._plan_from_graph(params, ids, loss_list)
            self._build_planned(params, ids)
        lay = self.layout if self._fits(ids, t_count) else None
        self.clear()  # a first backward() that raised may have left hooks behind
        self.pending = Pending(t_count, weights, scaled, np.zeros((t_count, len(params)), dtype=bool), lay, values)
        if lay is not None:
            # Each parameter's gradient is copied into its slot by a tensor hook the moment the
            # backward pass produces it and autograd.grad returns the slot itself, so a task's
            # fresh gradients never all coexist with the buffer (peak memory at the floor's).
            # The hooks live from the first backward() of a step to its step() (or zero_grad()).
            ref = weakref.ref(self)
            self._hook_handles = [p.register_hook(functools.partial(_slot_hook, ref, p)) for p in lay.slots]
        return self.pending

    def collect(
        self, pend: Pending, params: list[torch.Tensor], loss_list: Sequence[torch.Tensor], retain_graph: bool
    ) -> None:
        """One backward pass per task (method note, step 1), its gradients added to ``pend``."""
        t_count = len(loss_list)
        for i, loss in enumerate(loss_list):
            if not loss.requires_grad:
                continue
            self._hook_task = i  # the slot hooks copy task i's gradients as they are produced
            try:
                grads = torch.autograd.grad(
                    loss, params, retain_graph=retain_graph or i < t_count - 1, allow_unused=True
                )
            finally:
                self._hook_task = None
            self._store(pend, i, params, grads)
            del grads  # else task i's fresh gradients stay alive during task i+1's backward pass
        pend.n_backward += 1

    def _flat_wanted(self, t_count: int, world: int) -> bool:
        """Whether to keep the gradients in the flat buffer. Not for two tasks in one process:
        there the per-tensor path (three dot products per tensor, the combination written in
        place into task 0's gradients) saves the buffer's copy of each gradient and measured
        1-3% faster per step; under DDP the buffer is what makes one collective possible."""
        return self.use_flat and (world > 1 or t_count > 2)

    def _build_planned(self, params: list[torch.Tensor], ids: tuple[int, ...]) -> None:
        if self.plan is not None:
            self.layout = None  # release the old buffer before allocating the new one
            plan, self.plan = self.plan, None
            if plan is not False and plan.param_ids == ids:
                self.layout = plan.build(params)

    def _fits(self, ids: tuple[int, ...], t_count: int) -> bool:
        lay = self.layout
        return (
            lay is not None and lay.num_tasks == t_count and lay.param_ids == ids
            and all(p.dtype == lay.dtype and p.device == lay.storage.device for p in lay.params)
        )

    def _plan_from_graph(
        self, params: list[torch.Tensor], ids: tuple[int, ...], loss_list: list[torch.Tensor]
    ) -> Plan | Literal[False]:
        reach = _flatpath.graph_reach(loss_list, params)
        kinds = {(p.dtype, p.device) for k, p in enumerate(params) if reach[:, k].any()}
        if len(kinds) != 1 or next(iter(kinds))[0] not in (torch.float32, torch.float64):
            return False
        ((dtype, device),) = kinds
        return Plan(ids, reach, *_pertensor.split_indices(params, reach, self.shared), dtype, device, False)

    def _into_slot(self, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
        """The slot hook's work: copy (or, accumulating, add) ``g`` into its slot; None leaves
        ``g`` as it is (no task running, no slot, or a pending gradient outside the buffer)."""
        pend, i = self.pending, self._hook_task
        lay = pend.layout if pend is not None else None
        held = lay.slot(p, i) if lay is not None and i is not None else None
        if pend is None or i is None or held is None:
            return None
        if g.dtype != held.dtype or g.device != held.device or g.layout != torch.strided:
            return None
        gs = pend.buffers.get(p)
        prev = None if gs is None else gs[i]
        if prev is None:
            held.copy_(g)
        elif prev is held:
            held.add_(g)
        else:
            return None
        return held

    def _store(self, pend: Pending, i: int, params: list[torch.Tensor], grads: Sequence[torch.Tensor | None]) -> None:
        """Add task ``i``'s gradients to the pending ones: into their slot of the flat buffer
        (one batched copy, or add when accumulating) or, without a slot, kept as returned."""
        lay = pend.layout
        copy_dst: list[torch.Tensor] = []
        copy_src: list[torch.Tensor] = []
        add_dst: list[torch.Tensor] = []
        add_src: list[torch.Tensor] = []
        for k, (p, g) in enumerate(zip(params, grads, strict=True)):
            if g is None:
                continue
            if g.layout != torch.strided:
                raise ValueError("losses produce a sparse gradient; CAMEGrad needs dense gradients")
            pend.reach[i, k] = True
            gs = pend.buffers.get(p)
            if gs is None:
                gs = pend.buffers[p] = [None] * pend.num_tasks
            held = lay.slot(p, i) if lay is not None else None
            prev = gs[i]
            if g is held:  # the slot hook already wrote it
                gs[i] = held
            elif held is not None and held.dtype == g.dtype and held.device == g.device and (
                prev is None or prev is held
            ):
                (copy_dst if prev is None else add_dst).append(held)
                (copy_src if prev is None else add_src).append(g)
                gs[i] = held
            else:
                # without a slot: a change of pattern (caught by the reach check too), or a
                # gradient the layout leaves as returned (see FlatLayout's hold_last); under
                # DDP everything must be held, to travel in the one collective
                pend.overflow |= lay is None or lay.hold_all
                gs[i] = g if prev is None else prev + g
        if copy_dst:
            torch._foreach_copy_(copy_dst, copy_src)
        if add_dst:
            torch._foreach_add_(add_dst, add_src)

    # ---------------------------------------------------------------- at step()
    def complete(self, pend: Pending, params: list[torch.Tensor], world: int, process_group: Any) -> bool:
        """Finish the step's gradients: zero stale slots, average over the processes (DDP), plan
        the next step's buffer, and say whether the flat fast path applies: every gradient of
        this step sits in the buffer laid out for this reach pattern."""
        lay = pend.layout
        if lay is not None:
            lay.zero_unwritten(pend.buffers)
        if world > 1:
            local = _ddp.Reduced(pend.loss_sum, pend.reach, pend.overflow)
            reduced = _ddp.all_reduce(params, pend.buffers, lay, local, world, process_group)
            pend.loss_sum, pend.reach, pend.overflow = reduced.loss_sum, reduced.reach, reduced.overflow
        fast = lay is not None and not pend.overflow and np.array_equal(pend.reach, lay.reach)
        self._plan_next(pend, params, world)
        return fast

    def _plan_next(self, pend: Pending, params: list[torch.Tensor], world: int) -> None:
        """Plan the next step's flat buffer from this step's (reduced) reach pattern: keep the
        current one if the pattern is unchanged, none for mixed or low-precision gradients.
        Under DDP it holds the last task's gradients too, so that one collective carries all."""
        lay, reach = self.layout, pend.reach
        ids = tuple(id(p) for p in params)
        hold_last = world > 1
        if (lay is not None and lay.param_ids == ids and np.array_equal(lay.reach, reach)
                and (lay.held_rows == lay.num_tasks) == (hold_last or lay.num_tasks == 1)):
            return
        kinds = {(g.dtype, g.device) for gs in pend.buffers.values() for g in gs if g is not None}
        if (not self._flat_wanted(reach.shape[0], world) or len(kinds) != 1
                or next(iter(kinds))[0] not in (torch.float32, torch.float64)):
            self.plan = False
            return
        ((dtype, device),) = kinds
        split = _pertensor.split_indices(params, reach, self.shared)
        self.plan = Plan(ids, reach.copy(), *split, dtype, device, hold_last)
