"""``CAMEGrad``: a ``torch.optim``-style wrapper that runs CAME-Grad (or a baseline) around any
optimizer, and ``StepInfo``, the diagnostics of one step. Usage and recipes are in the class
docstring of :class:`CAMEGrad`.

``CAMEGrad`` itself checks its inputs, delegates to the base optimizer and runs the step; the
parts live in private modules:

- ``_collect``: the per-task gradients of a step, collected during ``backward()`` (and averaged
  over the processes under DDP, with ``_ddp``), in the flat buffer of ``_flat`` when one fits;
- ``_flatpath`` and ``_pertensor``: the step read off the flat buffer, or tensor by tensor;
- ``_stats``: the Gram matrix and finiteness checks in one host transfer, and the norm clip.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from . import _ddp, _flatpath, _pertensor, _stats
from . import functional as F
from ._collect import Pending, TaskGradientCollector
from ._flat import FlatLayout
from ._pertensor import SharedRule
from ._stats import Sources
from ._types import FloatArray
from .aggregators import CAME, Aggregator, CAGrad, PCGrad, get_aggregator
from .functional import AggregationResult

__all__ = ["CAMEGrad", "CAME_Grad", "StepInfo"]

SharedMode = Literal["auto", "all"]


@dataclass(frozen=True)
class StepInfo:
    """Diagnostics of one :meth:`CAMEGrad.step`.

    All inner products and norms are measured on the **shared** parameters (those that receive
    the combined direction) and in unscaled units (a GradScaler's factor is divided out). Under
    DDP they are those of the whole batch (gradients and losses averaged over the processes).

    Attributes:
        step: 1-based index of this step (counts skipped steps too).
        method: Aggregator name.
        num_tasks: T.
        task_weights: omega, shape (T,).
        losses: Per-task loss values (unscaled), summed over the backward calls of this step.
        num_backward: Number of :meth:`CAMEGrad.backward` calls aggregated (accumulation).
        inner_products: (T, T) Gram matrix of the **raw** (unweighted) task gradients
            ``<g_i, g_j>``; ``inner_products[0, 1]`` is the g_0 . g_1 whose sign gives the paper's
            conflict statistic (positive task weights do not change the sign).
        weighted_inner_products: (T, T) Gram matrix of the task-weighted gradients omega_i g_i.
        cosines: (T, T) pairwise cosines (0 where a gradient is zero).
        conflict: True when some ``<g_i, g_j> < 0``.
        alpha: Dual solution (CAME-Grad, CAGrad, MGDA), else None.
        coefficients: The written shared gradient is ``sum_i coefficients[i] * g_i`` (raw g_i);
            None for a skipped step.
        norms: Vector norms on the shared parameters: ``"g_joint"`` (LS direction),
            ``"g_final"`` (written direction) and, for CAME-Grad, ``"mu"``, ``"g_alpha"``,
            ``"u_star"``, ``"u_en"``.
        degenerate: None or the degenerate case hit (see
            :func:`camegrad_mini.optim.rectify`; also ``"no_shared_parameters"``).
        skipped: True when the base optimizer did not step because a loss or gradient was not
            finite (with a GradScaler: the scaler skips it).
        skip_reason: Why the step was skipped, else None.
        shared_numel: Number of scalar parameters that were combined.
        grad_norm: Total norm of the written ``.grad`` before clipping (only when
            ``max_grad_norm`` is set, else None).
        clip_coef: Factor the clip applied (1.0 when it did not clip or no clip is set).
        grad_scale: The GradScaler's scale during this step, else None.
        extras: Method-specific details from the aggregator.
    """

    step: int
    method: str
    num_tasks: int
    task_weights: FloatArray
    losses: FloatArray
    num_backward: int
    inner_products: FloatArray
    weighted_inner_products: FloatArray
    cosines: FloatArray
    conflict: bool
    alpha: FloatArray | None
    coefficients: FloatArray | None
    norms: dict[str, float]
    degenerate: str | None
    skipped: bool
    skip_reason: str | None = None
    shared_numel: int = 0
    grad_norm: float | None = None
    clip_coef: float = 1.0
    grad_scale: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def weights(self) -> FloatArray | None:
        """Alias of :attr:`coefficients`."""
        return self.coefficients

    @property
    def inner_product_01(self) -> float:
        """The raw inner product ``<g_0, g_1>`` on the shared parameters (NaN if T < 2)."""
        return float(self.inner_products[0, 1]) if self.num_tasks >= 2 else float("nan")


def _check_base(base_optimizer: object) -> None:
    if not isinstance(base_optimizer, torch.optim.Optimizer) or isinstance(base_optimizer, CAMEGrad):
        raise ValueError(
            f"base_optimizer must be a torch.optim.Optimizer (not a CAMEGrad), got {type(base_optimizer).__name__}"
        )


def _validate_options(nonfinite: str, max_grad_norm: object, distributed: object) -> None:
    """ValueError naming the argument for an invalid wrapper option (the aggregator's are
    checked by :func:`camegrad_mini.optim.validate_came_hyperparameters`)."""
    if nonfinite not in ("skip", "raise"):
        raise ValueError(f"nonfinite must be 'skip' or 'raise', got {nonfinite!r}")
    if max_grad_norm is not None and (
        isinstance(max_grad_norm, bool)
        or not isinstance(max_grad_norm, (int, float))
        or not math.isfinite(max_grad_norm)
        or max_grad_norm <= 0
    ):
        raise ValueError(f"max_grad_norm must be None or a finite number > 0, got {max_grad_norm!r}")
    if distributed not in (None, True, False):
        raise ValueError(f"distributed must be None, True or False, got {distributed!r}")


def _build_aggregator(
    aggregator: str | Aggregator, rho: float, kappa: float, nu: float, eps: float, eps_mode: str,
    rectify_on: str, allow_kappa_below_one: bool, cagrad_rescale: int, seed: int,
) -> Aggregator:
    """The aggregator a name stands for, given the wrapper's hyperparameters (see ``CAMEGrad``)."""
    if not isinstance(aggregator, str):
        return get_aggregator(aggregator)
    name = get_aggregator(aggregator).name
    if name == "came":
        return CAME(
            rho, kappa, nu, eps=eps, eps_mode=eps_mode, rectify_on=rectify_on,
            allow_kappa_below_one=allow_kappa_below_one,
        )
    if name == "cagrad":
        return CAGrad(c=rho, rescale=cagrad_rescale)
    if name == "pcgrad":
        return PCGrad(seed=seed)
    return get_aggregator(name)


def _shared_rule(shared: SharedMode | Iterable[torch.Tensor]) -> SharedRule:
    """The ``shared`` option, checked (ValueError naming it)."""
    if isinstance(shared, str):
        if shared not in ("auto", "all"):
            raise ValueError(f"shared must be 'auto', 'all' or an iterable of parameters, got {shared!r}")
        return SharedRule(shared)
    try:
        shared_list = list(shared)
    except TypeError:
        raise ValueError("shared must be 'auto', 'all' or an iterable of parameters") from None
    if not shared_list or not all(isinstance(p, torch.Tensor) for p in shared_list):
        raise ValueError("shared must be a non-empty iterable of parameter tensors")
    return SharedRule("explicit", frozenset(id(p) for p in shared_list))


class CAMEGrad(torch.optim.Optimizer):
    """Multi-task optimizer wrapper: per-task gradients, aggregation, then the base optimizer.

    It is a ``torch.optim.Optimizer`` whose ``param_groups``, ``state`` and ``defaults`` are those
    of the wrapped optimizer, so LR schedulers, ``zero_grad`` and checkpointing work unchanged.
    It matches the official trainer's call (method note, Interface)::

        opt = CAMEGrad(torch.optim.AdamW(model.parameters(), lr=1e-4), rho=0.5, kappa=1.5, nu=0.2)
        info = opt.step([loss_report, loss_cls], task_weights=[1.0, 4.0])
        conflicted = info.inner_products[0, 1] < 0   # on the shared parameters

    One step = one backward pass per task (``torch.autograd.grad``: no single-task gradient lands
    in ``.grad``, and each graph is freed after the last task), the Gram matrix of the task
    gradients on the shared parameters (see **Speed** below), the aggregation on that T x T
    matrix, the combined gradient written into ``.grad``, an optional clip, and the base
    optimizer's ``step()``. The same loop runs every baseline
    (``aggregator="ls" | "pcgrad" | "mgda" | "cagrad"``).

    Split form, for gradient accumulation (aggregate-after-accumulate: the per-task gradients of
    the micro-batches add up, then one aggregation) and mixed precision::

        for micro_batch in chunks:
            opt.backward(losses_of(micro_batch), task_weights=[1.0, 4.0], scaler=scaler)
        info = opt.step(scaler=scaler)
        scaler.update()

    With a ``torch.amp.GradScaler`` the losses are scaled inside :meth:`backward` (equivalently,
    pass ``[scaler.scale(l) for l in losses]`` to ``backward()`` without the scaler and give the
    scaler to ``step()`` only). The aggregation runs on the unscaled Gram matrix (its coefficients
    do not depend on the scale), the combined scaled gradient goes to ``.grad``, and
    ``scaler.step(base_optimizer)`` unscales it and skips the update when it is not finite; the
    caller still calls ``scaler.update()``. The one-call form is
    ``opt.step(losses, task_weights, scaler=scaler)``. Schedulers and checkpoints::

        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)   # writes opt.param_groups
        torch.save({"opt": opt.state_dict()}, path); opt.load_state_dict(torch.load(path)["opt"])

    **[open]** choices the paper leaves to us, all parameters here: which parameters are combined
    (``shared``), the epsilon of S2, the gradients S1 rectifies (raw by default), the treatment of
    non-finite gradients (``nonfinite``) and an optional norm clip (``max_grad_norm``, the same for
    every method; the official LS path clips by value at 0.1 and the CAME-Grad path is not shown
    to clip). Not supported: a ``closure`` (LBFGS).

    **DDP.** Wrap the model in ``DistributedDataParallel`` and use the wrapper unchanged: when a
    process group with more than one process is initialised, :meth:`step` averages the per-task
    gradients over the processes (sum / world size, as DDP does) *before* the Gram matrix, so
    every aggregator takes the step one process would take on the whole batch. In the steady
    state that is one ``all_reduce`` per step over one flat buffer holding every per-task
    gradient (head gradients included), the losses and the reach pattern; the first step, or a
    step whose pattern of which-task-reaches-which-parameter changed, adds one collective.
    Accumulation reduces once, at :meth:`step`. Non-finite checks and the GradScaler's skip see
    reduced, identical data on every rank, so ranks never diverge. The per-task gradients come
    from ``torch.autograd.grad``, which DDP's own gradient hooks never see: DDP does no
    all-reduce of its own (``no_sync()`` is not needed) and raises nothing on the next forward.
    ``static_graph=True`` is not supported.

    **Speed.** Which task reaches which parameter is read off the losses' autograd graphs (under
    DDP: from the first step's reduced pattern), and the per-task gradients are then written into
    one persistent flat buffer by tensor hooks as the backward passes produce them (the last
    task's stay as autograd returns them, so the step's peak memory stays at that of plain
    per-task gradients). The Gram matrix is a few large matrix products over the buffer, the
    combined direction is written in place and the parameters' ``.grad`` are views of the buffer,
    overwritten by the next step. Gradients of mixed or low-precision dtypes, and a step whose
    reach pattern differs from the buffer's, take a per-tensor path with the same results.

    Args:
        base_optimizer: Any ``torch.optim.Optimizer`` (AdamW in the official trainer).
        rho: S1 trust-region factor in [0, 1); also CAGrad's ``c`` when ``aggregator="cagrad"``.
        kappa: S2 energy amplification, >= 1 (see ``allow_kappa_below_one``).
        nu: S3 fusion weight in [0, 1].
        aggregator: ``"came"`` (default), ``"ls"``, ``"pcgrad"``, ``"mgda"``, ``"cagrad"``, or an
            :class:`camegrad_mini.optim.Aggregator` object (then rho/kappa/nu/eps/seed
            are not used).
        shared: Which parameters receive the combined direction (**[open]**; the paper is silent).
            ``"auto"``: those reached by two or more task losses in this step; parameters reached
            by one task get that task's weighted gradient omega_i g_i (the official trainer's
            heads), unreached ones get ``.grad = None``. ``"all"``: every reached parameter is
            flattened into one vector (a task that does not reach a parameter contributes zeros).
            An iterable of parameters: exactly those are combined; other parameters get the
            weighted sum ``sum_i omega_i g_i``.
        nonfinite: ``"skip"`` (default: warn, leave parameters and optimizer state untouched,
            return a StepInfo with ``skipped=True``) or ``"raise"`` (FloatingPointError). With a
            GradScaler the scaler's own skip logic is used instead. NaN or inf is never written
            into parameters.
        max_grad_norm: If set, the final ``.grad`` of all parameters is clipped to this total
            norm (``torch.nn.utils.clip_grad_norm_``'s rule, with a total norm that cannot
            overflow), identically for every method.
        eps: S2's epsilon (**[open]**).
        eps_mode: ``"relative"`` (default: eps times the largest task-gradient norm, scale free)
            or ``"absolute"``.
        rectify_on: Gradients S1 rectifies: ``"raw"`` (default, as the method note reads) or
            ``"weighted"``.
        allow_kappa_below_one: Permit 0 < kappa < 1.
        cagrad_rescale: CAGrad's rescale option (0, 1 or 2) when ``aggregator="cagrad"``.
        seed: Seed of PCGrad's random projection order.
        distributed: None (default): all-reduce the per-task gradients when
            ``torch.distributed`` is initialised with more than one process in
            ``process_group``; False: never (each process aggregates its own gradients); True:
            always (RuntimeError at the first :meth:`backward` or :meth:`step` if no process
            group is initialised).
        process_group: The group to average over (None: the default group).

    Raises:
        ValueError: For an invalid argument, naming it.

    Explained in: Chapter 4, §4.1 (the update) and §4.8 (the methods through one training loop).

    Examples:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
        >>> opt = CAMEGrad(torch.optim.SGD([w], lr=0.1))
        >>> info = opt.step([(w ** 2).sum(), (w - 1.0).pow(2).sum()])
        >>> info.num_tasks, info.skipped, info.inner_products
        (2, False, array([[ 8.,  8.],
               [ 8., 16.]]))
        >>> w.detach()
        tensor([ 0.5929, -0.1451])
    """

    def __init__(
        self,
        base_optimizer: torch.optim.Optimizer,
        rho: float = 0.5,
        kappa: float = 1.5,
        nu: float = 0.2,
        *,
        aggregator: str | Aggregator = "came",
        shared: SharedMode | Iterable[torch.Tensor] = "auto",
        nonfinite: Literal["skip", "raise"] = "skip",
        max_grad_norm: float | None = None,
        eps: float = 1e-8,
        eps_mode: Literal["relative", "absolute"] = "relative",
        rectify_on: Literal["raw", "weighted"] = "raw",
        allow_kappa_below_one: bool = False,
        cagrad_rescale: int = 1,
        seed: int = 0,
        distributed: bool | None = None,
        process_group: Any = None,
    ) -> None:
        _check_base(base_optimizer)
        F.validate_came_hyperparameters(rho, kappa, nu, eps, allow_kappa_below_one=allow_kappa_below_one)
        _validate_options(nonfinite, max_grad_norm, distributed)
        agg = _build_aggregator(aggregator, rho, kappa, nu, eps, eps_mode, rectify_on, allow_kappa_below_one,
                                cagrad_rescale, seed)
        self._shared = _shared_rule(shared)
        self._shared_mode: str = self._shared.mode
        self._base = base_optimizer
        self._aggregator = agg
        self.nonfinite = nonfinite
        self.max_grad_norm = max_grad_norm
        self._step_count = 0
        self._last_info: StepInfo | None = None
        self._distributed = distributed
        self._process_group = process_group
        # the per-task gradients of the step in progress, and the flat buffer that holds them
        self._collector = TaskGradientCollector(self._shared)
        self._init_step_hooks()

    def _init_step_hooks(self) -> None:
        """The Optimizer machinery (step hooks, profiling) without registering parameters twice:
        the parameters, their groups and their state live in the base optimizer."""
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()

    # ---------------------------------------------------------------- delegation to the base
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The base optimizer's parameter groups (LR schedulers write here)."""
        return self._base.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self._base.param_groups = value

    @property
    def state(self) -> Any:
        """The base optimizer's per-parameter state."""
        return self._base.state

    @state.setter
    def state(self, value: Any) -> None:
        self._base.state = value

    @property
    def defaults(self) -> dict[str, Any]:
        """The base optimizer's defaults."""
        return self._base.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self._base.defaults = value

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The wrapped base optimizer (pass it to ``scaler.step`` in custom loops)."""
        return self._base

    base_optimizer = optimizer

    @property
    def aggregator(self) -> Aggregator:
        """The aggregator object (its hyperparameters may be changed between steps)."""
        return self._aggregator

    @property
    def last_info(self) -> StepInfo | None:
        """The :class:`StepInfo` of the most recent :meth:`step`, or None before the first."""
        return self._last_info

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group to the base optimizer."""
        self._base.add_param_group(param_group)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._patch_step_function()

    def __repr__(self) -> str:
        return f"CAMEGrad({self._aggregator!r}, base={type(self._base).__name__}, shared={self._shared_mode!r})"

    # ---------------------------------------------------------------- the collector's flat buffer
    # (the tests compare the flat path with the per-tensor one through these two)
    @property
    def _layout(self) -> FlatLayout | None:
        """The flat buffer of the per-task gradients in use, or None (per-tensor path)."""
        return self._collector.layout

    @property
    def _use_flat(self) -> bool:
        """False: always the per-tensor path (the tests' reference)."""
        return self._collector.use_flat

    @_use_flat.setter
    def _use_flat(self, value: bool) -> None:
        self._collector.use_flat = value

    # ---------------------------------------------------------------- gradients
    def _trainable_params(self) -> list[torch.Tensor]:
        seen: set[int] = set()
        params = []
        for group in self._base.param_groups:
            for p in group["params"]:
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    @staticmethod
    def _loss_list(losses: Sequence[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
        if isinstance(losses, torch.Tensor):
            loss_list = [losses] if losses.dim() == 0 else list(losses.unbind(0))
        else:
            loss_list = list(losses)
        if not loss_list:
            raise ValueError("losses must contain at least one loss")
        for i, loss in enumerate(loss_list):
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError(f"losses[{i}] must be a scalar tensor")
        return loss_list

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the parameters' ``.grad`` (base optimizer) and any pending per-task gradients."""
        self._base.zero_grad(set_to_none=set_to_none)
        self._collector.clear()

    def backward(
        self,
        losses: Sequence[torch.Tensor] | torch.Tensor,
        task_weights: Sequence[float] | torch.Tensor | None = None,
        *,
        scaler: torch.amp.GradScaler | None = None,
        retain_graph: bool = False,
    ) -> None:
        """Compute and accumulate the per-task gradients (method note, step 1).

        One ``torch.autograd.grad(loss_i, params, retain_graph=i < T-1, allow_unused=True)`` per
        task over the base optimizer's trainable parameters; the results are kept in per-task
        buffers and add up over repeated calls until :meth:`step`. No task gradient is written
        into ``.grad``; the first call of a step sets the parameters' ``.grad`` to None (the
        previous step's gradients, which :meth:`step` would overwrite anyway), to save memory.

        Args:
            losses: T scalar losses (a sequence, or a 1-D tensor of them), unweighted.
            task_weights: omega, length T (None: ones). Must be the same in every call of one
                accumulation.
            scaler: A GradScaler: the losses are scaled here; pass the same scaler to :meth:`step`.
            retain_graph: Keep the graph after the last task too.

        Raises:
            ValueError: Mismatched number of losses, weights or scaler use across calls.
        """
        loss_list = self._loss_list(losses)
        t_count = len(loss_list)
        weights = F._as_weights(task_weights, t_count)
        self._collector.check_consistent(t_count, weights, scaler is not None)
        params = self._trainable_params()
        if not params:
            raise ValueError("base_optimizer has no parameter with requires_grad=True")
        values = torch.stack([loss.detach().reshape(()).float() for loss in loss_list])
        pend = self._collector.pending
        if pend is None or pend.n_backward == 0:
            # step() overwrites every .grad (or sets it to None), so the previous step's gradients
            # are dead weight now: releasing them keeps one gradient copy less alive during the
            # per-task backward passes.
            for p in params:
                p.grad = None
            pend = self._collector.begin(params, loss_list, weights, scaler is not None, values, self._world_size)
        else:
            pend.loss_sum = pend.loss_sum + values.to(pend.loss_sum.device)
        if scaler is not None:
            loss_list = [scaler.scale(loss) for loss in loss_list]
        self._collector.collect(pend, params, loss_list, retain_graph)

    def step(  # type: ignore[override]
        self,
        losses: Sequence[torch.Tensor] | torch.Tensor | None = None,
        task_weights: Sequence[float] | torch.Tensor | None = None,
        *,
        scaler: torch.amp.GradScaler | None = None,
        closure: Any = None,
    ) -> StepInfo:
        """Aggregate the per-task gradients, write ``.grad`` and step the base optimizer.

        With ``losses`` this first calls :meth:`backward` (the official trainer's one-call form);
        without, it uses the gradients accumulated by earlier :meth:`backward` calls.

        Args:
            losses: T scalar losses, or None to use the pending gradients.
            task_weights: omega (only together with ``losses``).
            scaler: The GradScaler used in :meth:`backward`, if any.
            closure: Not supported (ValueError if given).

        Returns:
            The :class:`StepInfo` of this step (also kept as :attr:`last_info`).

        Raises:
            RuntimeError: No losses and no pending gradients.
            FloatingPointError: Non-finite loss or gradient with ``nonfinite="raise"``.
        """
        if closure is not None:
            raise ValueError("closure is not supported: pass losses to step() or call backward() first")
        if losses is not None:
            self.backward(losses, task_weights, scaler=scaler)
        elif task_weights is not None:
            raise ValueError("task_weights must be given to backward() (or to step() together with losses)")
        pend = self._collector.pending
        if pend is None or pend.n_backward == 0:
            raise RuntimeError("step() needs losses or a preceding backward() call")
        if pend.scaled and scaler is None:
            raise ValueError("backward() was called with a scaler: pass the same scaler to step()")
        try:
            with torch.no_grad():
                info = self._aggregate_and_step(pend, scaler)
        finally:
            self._collector.clear()
        self._last_info = info
        return info

    # ---------------------------------------------------------------- the step
    def _world_size(self) -> int:
        """Number of processes to average over (1: no collective)."""
        return _ddp.world_size(self._distributed, self._process_group)

    def _sources(self, pend: Pending, fast: bool, params: list[torch.Tensor]) -> Sources:
        """What the step needs from the gradients, from the flat buffer or per tensor."""
        t_count, buffers = pend.num_tasks, pend.buffers
        if fast and pend.layout is not None:
            lay = pend.layout
            return _flatpath.flat_sources(
                lay, buffers, t_count, lambda c, w: _flatpath.write_flat(lay, buffers, params, c, w)
            )
        parts = _pertensor.classify(buffers, t_count, self._shared)
        shared, single, multi = parts
        any_grad = next((g for gs in buffers.values() for g in gs if g is not None), None)
        device = any_grad.device if any_grad is not None else pend.loss_sum.device
        return Sources(
            device=device, gram=_pertensor.shared_gram(shared, t_count, device),
            redo=lambda: _pertensor.shared_gram(shared, t_count, device, torch.float64),
            ns_grads=[g for _, _, g in single] + [g for _, reach, gs in multi for g in _pertensor._present(gs, reach)],
            ns_tasks=[i for _, i, _ in single] + [i for _, reach, _ in multi for i in reach],
            shared_tasks={i for _, reach, _ in shared for i in reach},
            shared_numel=sum(p.numel() for p, _, _ in shared), has_shared=bool(shared),
            write=lambda c, w: _pertensor.write(buffers, params, parts, c, w),
        )

    def _aggregate_and_step(self, pend: Pending, scaler: torch.amp.GradScaler | None) -> StepInfo:
        """Reduce (DDP), measure, aggregate, write ``.grad`` and step, or skip a non-finite step."""
        weights = pend.task_weights
        self._step_count += 1
        params = self._trainable_params()
        world = self._world_size()
        fast = self._collector.complete(pend, params, world, self._process_group)
        src = self._sources(pend, fast, params)
        gram, losses, ns_norms = _stats.host_stats(src, pend.loss_sum, pend.num_tasks, world)
        grad_scale = float(scaler.get_scale()) if scaler is not None else None
        if grad_scale:
            gram = gram / grad_scale**2
            if not pend.scaled:  # recipe B: the caller passed already scaled losses to backward()
                losses = losses / grad_scale
        bad = _stats.nonfinite_tasks(losses, gram, ns_norms, src.ns_tasks)
        result = None if bad else self._aggregate(gram, weights, src.has_shared)
        base_info = dict(
            step=self._step_count,
            method=self._aggregator.name,
            num_tasks=pend.num_tasks,
            task_weights=weights.copy(),
            losses=losses.copy(),
            num_backward=pend.n_backward,
            inner_products=gram.copy(),
            weighted_inner_products=_stats.weighted(gram, weights),
            shared_numel=src.shared_numel,
            grad_scale=grad_scale,
        )
        if result is None:
            return self._skip(base_info, bad or set(range(pend.num_tasks)), scaler)
        # averaging over the processes is folded into the coefficients: no pass over the buffer
        src.write(result.coefficients / world, weights / world)
        return self._finish(base_info, result, scaler)

    def _aggregate(self, gram: FloatArray, weights: FloatArray, has_shared: bool) -> AggregationResult | None:
        """The aggregator's result on a finite Gram matrix, or None if its coefficients are not finite."""
        if has_shared:
            result = self._aggregator(gram, weights)
        else:
            result = dataclasses.replace(
                F.linear_scalarization(gram, weights),
                method=self._aggregator.name,
                degenerate="no_shared_parameters",
            )
        return result if np.all(np.isfinite(result.coefficients)) else None

    def _skip(self, base_info: dict[str, Any], bad: set[int], scaler: torch.amp.GradScaler | None) -> StepInfo:
        t_count = int(base_info["num_tasks"])
        reason = f"non-finite loss or gradient in task(s) {sorted(bad)}"
        if scaler is not None:
            # Let the scaler see the overflow, so that scaler.step() skips the update and the
            # caller's scaler.update() lowers the scale, as in a single-loss AMP loop. The
            # gradients themselves may be finite (a non-finite loss with a finite gradient),
            # so hand it one gradient that is not, rather than trusting them to be.
            self._write_skip_signal()
            scaler.step(self._base)
        elif self.nonfinite == "raise":
            raise FloatingPointError(f"CAMEGrad.step: {reason}")
        else:
            warnings.warn(f"CAMEGrad.step skipped: {reason}", RuntimeWarning, stacklevel=4)
        nan = np.full((t_count, t_count), np.nan)
        return StepInfo(
            **base_info, cosines=nan, conflict=False, alpha=None, coefficients=None, norms={},
            degenerate=None, skipped=True, skip_reason=reason,
        )

    def _write_skip_signal(self) -> None:
        """Leave one non-finite ``.grad`` and no other: what a GradScaler reads as "skip this step"."""
        params = self._trainable_params()
        for p in params:
            p.grad = None
        params[0].grad = torch.full_like(params[0], math.inf)

    def _finish(self, base_info: dict[str, Any], result: AggregationResult,
                scaler: torch.amp.GradScaler | None) -> StepInfo:
        grad_norm, clip_coef = None, 1.0
        if self.max_grad_norm is not None:
            if scaler is not None:
                scaler.unscale_(self._base)
            with_grad = [p.grad for p in self._trainable_params() if p.grad is not None]
            grad_norm, clip_coef = _stats.clip_grad_norm_(with_grad, self.max_grad_norm)
        if scaler is not None:
            scaler.step(self._base)
        else:
            self._base.step()
        return StepInfo(
            **base_info,
            cosines=result.cosines,
            conflict=result.conflict,
            alpha=result.alpha,
            coefficients=result.coefficients,
            norms=dict(result.norms),
            degenerate=result.degenerate,
            skipped=False,
            grad_norm=grad_norm,
            clip_coef=clip_coef,
            extras=dict(result.extras),
        )

    # ---------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Base optimizer state plus the wrapper's: aggregator (hyperparameters, RNG state),
        step counter, ``nonfinite`` and ``max_grad_norm``. Pending (un-stepped) gradients are not saved."""
        return {
            "base": self._base.state_dict(),
            "camegrad": {
                "aggregator": self._aggregator.state_dict(),
                "step": self._step_count,
                "nonfinite": self.nonfinite,
                "max_grad_norm": self.max_grad_norm,
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (round trip exact).

        Raises:
            ValueError: The state dict belongs to another aggregator, or is not a CAMEGrad one.
        """
        if not isinstance(state_dict, dict) or "base" not in state_dict or "camegrad" not in state_dict:
            raise ValueError("state_dict must come from CAMEGrad.state_dict() (keys 'base' and 'camegrad')")
        own = state_dict["camegrad"]
        self._aggregator.load_state_dict(own["aggregator"])
        self._base.load_state_dict(state_dict["base"])
        self._step_count = int(own.get("step", 0))
        self.nonfinite = own.get("nonfinite", self.nonfinite)
        self.max_grad_norm = own.get("max_grad_norm", self.max_grad_norm)
        self._collector.clear()


#: The official trainer's name for the optimizer (``from ... import CAME_Grad``, method note,
#: Interface), so that its code runs unchanged against this package.
CAME_Grad = CAMEGrad
