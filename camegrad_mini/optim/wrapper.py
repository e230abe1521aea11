"""``CAMEGrad``: a ``torch.optim``-style wrapper that runs CAME-Grad (or a baseline) around any
optimizer, and ``StepInfo``, the diagnostics of one step. Usage and recipes are in the class
docstring of :class:`CAMEGrad`."""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from . import functional as F
from ._flat import FlatLayout, block_gram, combine_into_row0
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
    task_weights: np.ndarray
    losses: np.ndarray
    num_backward: int
    inner_products: np.ndarray
    weighted_inner_products: np.ndarray
    cosines: np.ndarray
    conflict: bool
    alpha: np.ndarray | None
    coefficients: np.ndarray | None
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
    def weights(self) -> np.ndarray | None:
        """Alias of :attr:`coefficients`."""
        return self.coefficients

    @property
    def inner_product_01(self) -> float:
        """The raw inner product ``<g_0, g_1>`` on the shared parameters (NaN if T < 2)."""
        return float(self.inner_products[0, 1]) if self.num_tasks >= 2 else float("nan")


def _weighted(gram: np.ndarray, weights: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # a skipped step may carry inf * 0
        return gram * np.outer(weights, weights)


def _gram_is_trustworthy(gram: np.ndarray, tasks: set[int]) -> bool:
    """Whether a Gram matrix computed in float32 can be used as it is.

    It cannot when a diagonal entry (a squared norm) overflowed, or when a task that reaches
    the shared parameters has a squared norm below 2**-80: its entries' squares were then
    subnormal or flushed to zero in float32 and the matrix has lost its relative precision.
    """
    diag = np.diag(gram)
    if not np.all(np.isfinite(diag)):
        return False
    return all(diag[i] >= 2.0**-80 for i in tasks)


def _clip_grad_norm_(grads: list[torch.Tensor], max_norm: float) -> tuple[float, float]:
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


def _graph_reach(losses: list[torch.Tensor], params: list[torch.Tensor]) -> np.ndarray:
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


def _slot_hook(ref: weakref.ref, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
    """Tensor hook on a parameter during a step (see ``CAMEGrad._start_step``); a weak reference,
    so that the parameters never keep the optimizer alive."""
    opt = ref()
    return None if opt is None or opt._hook_task is None else opt._into_slot(p, g)


def _is_low_precision(t: torch.Tensor) -> bool:
    return t.dtype not in (torch.float32, torch.float64)


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
        if not isinstance(base_optimizer, torch.optim.Optimizer) or isinstance(base_optimizer, CAMEGrad):
            raise ValueError(
                f"base_optimizer must be a torch.optim.Optimizer (not a CAMEGrad), got {type(base_optimizer).__name__}"
            )
        F.validate_came_hyperparameters(rho, kappa, nu, eps, allow_kappa_below_one=allow_kappa_below_one)
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

        if isinstance(aggregator, str):
            name = get_aggregator(aggregator).name
            if name == "came":
                agg: Aggregator = CAME(
                    rho, kappa, nu, eps=eps, eps_mode=eps_mode, rectify_on=rectify_on,
                    allow_kappa_below_one=allow_kappa_below_one,
                )
            elif name == "cagrad":
                agg = CAGrad(c=rho, rescale=cagrad_rescale)
            elif name == "pcgrad":
                agg = PCGrad(seed=seed)
            else:
                agg = get_aggregator(name)
        else:
            agg = get_aggregator(aggregator)

        if isinstance(shared, str):
            if shared not in ("auto", "all"):
                raise ValueError(f"shared must be 'auto', 'all' or an iterable of parameters, got {shared!r}")
            self._shared_mode: str = shared
            self._shared_ids: set[int] = set()
        else:
            try:
                shared_list = list(shared)
            except TypeError:
                raise ValueError("shared must be 'auto', 'all' or an iterable of parameters") from None
            if not shared_list or not all(isinstance(p, torch.Tensor) for p in shared_list):
                raise ValueError("shared must be a non-empty iterable of parameter tensors")
            self._shared_mode = "explicit"
            self._shared_ids = {id(p) for p in shared_list}

        self._base = base_optimizer
        self._aggregator = agg
        self.nonfinite = nonfinite
        self.max_grad_norm = max_grad_norm
        self._step_count = 0
        self._last_info: StepInfo | None = None
        self._distributed = distributed
        self._process_group = process_group
        # The flat buffer of the per-task gradients (see ``_flat``): the layout in use, and the
        # plan for the next step's (None: keep; False: drop; a tuple: build at next backward).
        self._layout: FlatLayout | None = None
        self._plan: tuple | bool | None = None
        self._use_flat = True  # False: always the per-tensor path (the tests' reference)
        self._clear_pending()

        # The Optimizer machinery (step hooks, profiling) without registering parameters twice:
        # the parameters, their groups and their state live in the base optimizer.
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()

    # ---------------------------------------------------------------- delegation to the base
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The base optimizer's parameter groups (LR schedulers write here)."""
        return self._base.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self._base.param_groups = value

    @property
    def state(self) -> Any:  # type: ignore[override]
        """The base optimizer's per-parameter state."""
        return self._base.state

    @state.setter
    def state(self, value: Any) -> None:
        self._base.state = value

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
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

    # ---------------------------------------------------------------- gradients
    def _clear_pending(self) -> None:
        for handle in getattr(self, "_hook_handles", ()):
            handle.remove()
        self._hook_handles: list[Any] = []
        self._hook_task: int | None = None
        self._buffers: dict[torch.Tensor, list[torch.Tensor | None]] = {}
        self._num_tasks: int | None = None
        self._task_weights: np.ndarray | None = None
        self._loss_sum: torch.Tensor | None = None
        self._n_backward = 0
        self._scaled = False
        self._reach: np.ndarray | None = None  # (T, P) bool: task i reached parameter k
        self._overflow = False  # a gradient of this step found no slot in the flat buffer
        self._step_layout: FlatLayout | None = None  # the layout this step writes into

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
        self._clear_pending()

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
        if self._num_tasks is not None:
            if t_count != self._num_tasks:
                raise ValueError(
                    f"losses has {t_count} entries but earlier backward() calls of this step had {self._num_tasks}"
                )
            if not np.array_equal(weights, self._task_weights):
                raise ValueError("task_weights changed between backward() calls of one step")
            if (scaler is not None) != self._scaled:
                raise ValueError("scaler must be given to every backward() call of a step or to none")
        params = self._trainable_params()
        if not params:
            raise ValueError("base_optimizer has no parameter with requires_grad=True")
        if self._n_backward == 0:
            # step() overwrites every .grad (or sets it to None), so the previous step's gradients
            # are dead weight now: releasing them keeps one gradient copy less alive during the
            # per-task backward passes.
            for p in params:
                p.grad = None
            self._start_step(params, t_count, loss_list)
        values = torch.stack([loss.detach().reshape(()).float() for loss in loss_list])
        if scaler is not None:
            loss_list = [scaler.scale(loss) for loss in loss_list]
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
            self._store(i, params, grads, t_count)
            del grads  # else task i's fresh gradients stay alive during task i+1's backward pass
        self._num_tasks = t_count
        self._task_weights = weights
        self._scaled = scaler is not None
        self._loss_sum = values if self._loss_sum is None else self._loss_sum + values.to(self._loss_sum.device)
        self._n_backward += 1

    def _start_step(self, params: list[torch.Tensor], t_count: int, loss_list: list[torch.Tensor]) -> None:
        """First backward() of a step: build the planned flat buffer, or, with none that fits and
        outside DDP, one planned from the losses' autograd graphs; use it if it fits."""
        ids = tuple(id(p) for p in params)
        self._build_planned(params, ids)
        if not self._fits(ids, t_count) and self._flat_wanted(t_count, 1) and self._world_size() == 1:
            # Without DDP the reach pattern can be read off the graphs before the backward passes,
            # so even a wrapper's first step (after a checkpoint load, say) runs the same
            # arithmetic as every later one. Under DDP the ranks must agree on the buffer's
            # layout, so it is planned from the reduced pattern of a first step instead.
            self._plan = self._plan_from_graph(params, ids, loss_list)
            self._build_planned(params, ids)
        lay = self._layout
        fits = self._fits(ids, t_count)
        self._step_layout = lay if fits else None
        self._reach = np.zeros((t_count, len(params)), dtype=bool)
        self._overflow = False
        if fits:
            # Each parameter's gradient is copied into its slot by a tensor hook the moment the
            # backward pass produces it and autograd.grad returns the slot itself, so a task's
            # fresh gradients never all coexist with the buffer (peak memory at the floor's).
            # The hooks live from the first backward() of a step to its step() (or zero_grad()).
            ref = weakref.ref(self)
            self._hook_handles = [p.register_hook(functools.partial(_slot_hook, ref, p)) for p in lay.slots]

    def _flat_wanted(self, t_count: int, world: int) -> bool:
        """Whether to keep the gradients in the flat buffer. Not for two tasks in one process:
        there the per-tensor path (three dot products per tensor, the combination written in
        place into task 0's gradients) saves the buffer's copy of each gradient and measured
        1-3% faster per step; under DDP the buffer is what makes one collective possible."""
        return self._use_flat and (world > 1 or t_count > 2)

    def _build_planned(self, params: list[torch.Tensor], ids: tuple[int, ...]) -> None:
        if self._plan is not None:
            self._layout = None  # release the old buffer before allocating the new one
            plan, self._plan = self._plan, None
            if plan is not False and plan[0] == ids:
                self._layout = FlatLayout(params, *plan[1:])

    def _fits(self, ids: tuple[int, ...], t_count: int) -> bool:
        lay = self._layout
        return (
            lay is not None and lay.num_tasks == t_count and lay.param_ids == ids
            and all(p.dtype == lay.dtype and p.device == lay.storage.device for p in lay.params)
        )

    def _plan_from_graph(self, params: list[torch.Tensor], ids: tuple[int, ...], loss_list) -> tuple | bool:
        reach = _graph_reach(loss_list, params)
        kinds = {(p.dtype, p.device) for k, p in enumerate(params) if reach[:, k].any()}
        if len(kinds) != 1 or next(iter(kinds))[0] not in (torch.float32, torch.float64):
            return False
        ((dtype, device),) = kinds
        return (ids, reach, *self._split(params, reach), dtype, device, False)

    def _into_slot(self, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
        """The slot hook's work: copy (or, accumulating, add) ``g`` into its slot; None leaves
        ``g`` as it is (no slot, or a pending gradient outside the buffer)."""
        lay, i = self._step_layout, self._hook_task
        held = lay.slot(p, i) if lay is not None and i is not None else None
        if held is None or g.dtype != held.dtype or g.device != held.device or g.layout != torch.strided:
            return None
        gs = self._buffers.get(p)
        prev = None if gs is None else gs[i]
        if prev is None:
            held.copy_(g)
        elif prev is held:
            held.add_(g)
        else:
            return None
        return held

    def _store(self, i: int, params: list[torch.Tensor], grads, t_count: int) -> None:
        """Add task ``i``'s gradients to the pending ones: into their slot of the flat buffer
        (one batched copy, or add when accumulating) or, without a slot, kept as returned."""
        lay = self._step_layout
        copy_dst, copy_src, add_dst, add_src = [], [], [], []
        for k, (p, g) in enumerate(zip(params, grads)):
            if g is None:
                continue
            if g.layout != torch.strided:
                raise ValueError("losses produce a sparse gradient; CAMEGrad needs dense gradients")
            self._reach[i, k] = True
            gs = self._buffers.get(p)
            if gs is None:
                gs = self._buffers[p] = [None] * t_count
            held = lay.slot(p, i) if lay is not None else None
            if g is held:  # the slot hook already wrote it
                gs[i] = held
            elif held is not None and held.dtype == g.dtype and held.device == g.device and (
                gs[i] is None or gs[i] is held
            ):
                (copy_dst if gs[i] is None else add_dst).append(held)
                (copy_src if gs[i] is None else add_src).append(g)
                gs[i] = held
            else:
                # without a slot: a change of pattern (caught by the reach check too), or a
                # gradient the layout leaves as returned (see FlatLayout's hold_last); under
                # DDP everything must be held, to travel in the one collective
                self._overflow |= lay is None or lay.hold_all
                gs[i] = g if gs[i] is None else gs[i] + g
        if copy_dst:
            torch._foreach_copy_(copy_dst, copy_src)
        if add_dst:
            torch._foreach_add_(add_dst, add_src)

    # ---------------------------------------------------------------- the step
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
        if self._num_tasks is None:
            raise RuntimeError("step() needs losses or a preceding backward() call")
        if self._scaled and scaler is None:
            raise ValueError("backward() was called with a scaler: pass the same scaler to step()")
        try:
            with torch.no_grad():
                info = self._aggregate_and_step(scaler)
        finally:
            self._clear_pending()
        self._last_info = info
        return info

    def _kind(self, p: torch.Tensor, reach: list[int]) -> str:
        """How a parameter reached by the tasks ``reach`` is combined: "shared" (the aggregated
        direction), "single" (its one task's weighted gradient) or "multi" (the weighted sum)."""
        if self._shared_mode == "auto":
            is_shared = len(reach) >= 2
        elif self._shared_mode == "all":
            is_shared = True
        else:
            is_shared = id(p) in self._shared_ids
        return "shared" if is_shared else ("single" if len(reach) == 1 else "multi")

    def _classify(self):
        t_count = self._num_tasks
        shared, single, multi = [], [], []
        for p, gs in self._buffers.items():
            reach = [i for i in range(t_count) if gs[i] is not None]
            kind = self._kind(p, reach)
            if kind == "shared":
                shared.append((p, reach, gs))
            elif kind == "single":
                single.append((p, reach[0], gs[reach[0]]))
            else:
                multi.append((p, reach, gs))
        return shared, single, multi

    def _split(self, params: list[torch.Tensor], reach: np.ndarray) -> tuple[list, list, list]:
        """Indices of the reached parameters by kind (see :meth:`_kind`), in a canonical order:
        shared, multi, and (index, task) of single-task parameters sorted by task."""
        out: dict[str, list] = {"shared": [], "multi": [], "single": []}
        for k, p in enumerate(params):
            tasks = np.flatnonzero(reach[:, k]).tolist()
            if tasks:
                kind = self._kind(p, tasks)
                out[kind].append((k, tasks[0]) if kind == "single" else k)
        return out["shared"], out["multi"], sorted(out["single"], key=lambda ki: (ki[1], ki[0]))

    def _gram(self, shared, device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Gram matrix of the task gradients on the shared parameters, float64 on ``device``.

        Dot products run in ``dtype`` (at least the gradients' own precision). float32 is fast
        but not scale-safe: squares overflow for entries near 1e19 and underflow below about
        1e-19; :meth:`_aggregate_and_step` checks the result with :func:`_gram_is_trustworthy`
        and redoes it in float64, which holds the square of every float32 number.
        """
        t_count = self._num_tasks
        gram = torch.zeros(t_count, t_count, dtype=torch.float64, device=device)
        pair_dots = []
        for p, reach, gs in shared:
            vecs = [gs[i].reshape(-1) for i in reach]
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
            for a in range(0, vecs[0].numel(), chunk):
                mat = torch.stack([v[a : a + chunk] for v in vecs])
                block += (mat @ mat.T).double()
            idx = torch.tensor(reach, device=device)
            gram[idx[:, None], idx[None, :]] += block
        if pair_dots:
            d = torch.stack(pair_dots).double().sum(0)
            gram += torch.stack([torch.stack([d[0], d[1]]), torch.stack([d[1], d[2]])])
        return gram

    def _exclusive(self) -> set[int]:
        """ids of buffered gradients that may be overwritten in place.

        A tensor returned by ``autograd.grad`` is fresh, except that pass-through nodes can hand
        the same tensor to several parameters (``(p + q) @ v``) or an expanded view (``p.sum()``).
        Only contiguous tensors whose storage no other buffer shares are reused; reusing them
        saves an allocation and a pass over memory per parameter.
        """
        counts: dict[int, int] = {}
        tensors = [g for gs in self._buffers.values() for g in gs if g is not None]
        for g in tensors:
            ptr = g.untyped_storage().data_ptr()
            counts[ptr] = counts.get(ptr, 0) + 1
        return {
            id(g) for g in tensors if g.is_contiguous() and counts[g.untyped_storage().data_ptr()] == 1
        }

    def _write(self, shared, single, multi, coef: np.ndarray, weights: np.ndarray) -> None:
        """Write ``sum_i coef_i g_i`` into the shared parameters' ``.grad``, ``omega_i g_i`` into
        single-task parameters, ``sum_i omega_i g_i`` into the others and None where unreached."""
        t_count = self._num_tasks
        own = self._exclusive()
        full = [(p, gs) for p, reach, gs in shared if len(reach) == t_count]
        if full:
            # in place into task 0's buffer where it is exclusively ours, else a fresh tensor
            inplace = [(p, gs) for p, gs in full if id(gs[0]) in own]
            fresh = [(p, gs) for p, gs in full if id(gs[0]) not in own]
            targets = []
            if inplace:
                first = [gs[0] for _, gs in inplace]
                if coef[0] != 1.0:
                    torch._foreach_mul_(first, float(coef[0]))
                targets.append((inplace, first))
            if fresh:
                targets.append((fresh, torch._foreach_mul([gs[0] for _, gs in fresh], float(coef[0]))))
            for group, out in targets:
                for i in range(1, t_count):
                    torch._foreach_add_(out, [gs[i] for _, gs in group], alpha=float(coef[i]))
                for (p, _), g in zip(group, out):
                    p.grad = g
        for p, reach, gs in shared:
            if len(reach) < t_count:
                p.grad = self._weighted_sum(gs, reach, coef)
        for i in range(t_count):
            w_i = float(weights[i])
            mine = [(p, g) for p, j, g in single if j == i and id(g) in own]
            other = [(p, g) for p, j, g in single if j == i and id(g) not in own]
            if mine:
                if w_i != 1.0:
                    torch._foreach_mul_([g for _, g in mine], w_i)
                for p, g in mine:
                    p.grad = g
            if other:
                for (p, _), g in zip(other, torch._foreach_mul([g for _, g in other], w_i)):
                    p.grad = g
        for p, reach, gs in multi:
            p.grad = self._weighted_sum(gs, reach, weights)
        reached = set(id(p) for p in self._buffers)
        for p in self._trainable_params():
            if id(p) not in reached:
                p.grad = None

    def _write_skip_signal(self) -> None:
        """Leave one non-finite ``.grad`` and no other: what a GradScaler reads as "skip this step"."""
        params = self._trainable_params()
        for p in params:
            p.grad = None
        params[0].grad = torch.full_like(params[0], math.inf)

    @staticmethod
    def _weighted_sum(gs, reach, coef) -> torch.Tensor:
        out = gs[reach[0]] * float(coef[reach[0]])
        for i in reach[1:]:
            out.add_(gs[i], alpha=float(coef[i]))
        return out

    # ---------------------------------------------------------------- DDP and the flat buffer
    def _world_size(self) -> int:
        """Number of processes to average over (1: no collective)."""
        if self._distributed is False:
            return 1
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            if self._distributed:
                raise RuntimeError("CAMEGrad(distributed=True) needs an initialised torch.distributed process group")
            return 1
        return dist.get_world_size(self._process_group)

    def _synchronise(self, params: list[torch.Tensor], world: int) -> bool:
        """Zero stale slots, average over the processes (DDP) and say whether the flat fast path
        applies: every gradient of this step sits in the buffer laid out for this reach pattern."""
        lay = self._step_layout
        if lay is not None:
            lay.zero_unwritten(self._buffers)
        if world > 1:
            self._all_reduce(params, lay, world)
        return lay is not None and not self._overflow and np.array_equal(self._reach, lay.reach)

    def _all_reduce(self, params: list[torch.Tensor], lay: FlatLayout | None, world: int) -> None:
        """One all_reduce of the flat buffer, whose meta part carries the losses, the reach bitmap
        and the overflow count, so every later decision is taken on the same data on every rank.
        Gradients without a slot (first step, changed pattern) take one more collective."""
        t_count, p_count = self._reach.shape
        if lay is not None:
            meta, target = lay.meta, lay.storage
        else:
            meta = torch.empty(t_count * (p_count + 1) + 1, dtype=torch.float64, device=self._loss_sum.device)
            target = meta
        meta[:t_count] = self._loss_sum.to(meta)
        meta[t_count:-1] = torch.from_numpy(self._reach.reshape(-1)).to(meta)
        meta[-1] = float(self._overflow)
        torch.distributed.all_reduce(target, group=self._process_group)
        host = meta.double().cpu().numpy()
        self._loss_sum = torch.from_numpy(host[:t_count] / world)
        self._reach = host[t_count:-1].reshape(t_count, p_count) > 0.5
        self._overflow = bool(host[-1] > 0.5)
        missing = []
        for k, p in enumerate(params):
            for i in np.flatnonzero(self._reach[:, k]).tolist():
                held = lay.slot(p, i) if lay is not None else None
                gs = self._buffers.setdefault(p, [None] * t_count)
                if held is not None:
                    gs[i] = held  # reduced in place (zeros from ranks that did not reach it)
                else:
                    missing.append((p, i))
        if missing:
            self._exchange(missing)

    def _exchange(self, missing: list[tuple[torch.Tensor, int]]) -> None:
        """All-reduce the gradients that have no slot, one collective per dtype, in the order
        every rank derives from the reduced reach bitmap (zeros where a rank has none)."""
        groups: dict[torch.dtype, list[tuple[torch.Tensor, int]]] = {}
        for p, i in missing:
            dt = p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32
            groups.setdefault(dt, []).append((p, i))
        for dt in sorted(groups, key=str):
            items = groups[dt]
            local = [self._buffers[p][i] for p, i in items]
            flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).to(dt)
                              for (p, _), g in zip(items, local)])
            del local
            torch.distributed.all_reduce(flat, group=self._process_group)
            off = 0
            for p, i in items:
                self._buffers[p][i] = flat[off : off + p.numel()].view_as(p).to(p.dtype)
                off += p.numel()

    def _plan_layout(self, params: list[torch.Tensor], world: int) -> None:
        """Plan the next step's flat buffer from this step's (reduced) reach pattern: keep the
        current one if the pattern is unchanged, none for mixed or low-precision gradients.
        Under DDP it holds the last task's gradients too, so that one collective carries all."""
        lay, reach = self._layout, self._reach
        ids = tuple(id(p) for p in params)
        hold_last = world > 1
        if (lay is not None and lay.param_ids == ids and np.array_equal(lay.reach, reach)
                and (lay.held_rows == lay.num_tasks) == (hold_last or lay.num_tasks == 1)):
            return
        kinds = {(g.dtype, g.device) for gs in self._buffers.values() for g in gs if g is not None}
        if not self._flat_wanted(reach.shape[0], world) or len(kinds) != 1 or next(iter(kinds))[0] not in (torch.float32, torch.float64):
            self._plan = False
            return
        ((dtype, device),) = kinds
        self._plan = (ids, reach.copy(), *self._split(params, reach), dtype, device, hold_last)

    def _write_flat(self, lay: FlatLayout, coef: np.ndarray, weights: np.ndarray) -> None:
        """The fast path's write: the combined direction into row 0 of the shared rows, the
        weighted sum into row 0 of the multi rows, heads scaled in place, ``.grad`` = views."""
        r, last = lay.held_rows, self._num_tasks - 1
        combine_into_row0(lay.shared_rows, coef[:r])
        combine_into_row0(lay.multi_rows, weights[:r])
        for i, tail in enumerate(lay.tails):
            if tail.numel() and weights[i] != 1.0:
                tail.mul_(float(weights[i]))
        if r <= last:  # the last task's gradients, not held: added into row 0, heads scaled
            for kind, c in (("shared", coef[last]), ("multi", weights[last])):
                pairs = [(lay.slots[p][0], self._buffers[p][last]) for p, _ in lay.row_params[kind]]
                pairs = [(v, g) for v, g in pairs if g is not None]
                if pairs:
                    torch._foreach_add_([v for v, _ in pairs], [g for _, g in pairs], alpha=float(c))
        own = self._exclusive() if lay.fresh_single else set()
        for p, i in lay.fresh_single:  # heads: omega_i g_i, in place where the tensor is ours
            g = self._buffers[p][i]
            p.grad = g.mul_(float(weights[i])) if id(g) in own else g * float(weights[i])
        for p, view in lay.grad_views:
            p.grad = view
        for p in self._trainable_params():
            if p not in lay.params:
                p.grad = None

    def _sources(self, fast: bool) -> dict[str, Any]:
        """What the step needs from the gradients, from the flat buffer or per tensor."""
        lay = self._step_layout
        if fast:
            last = self._num_tasks - 1
            ns = [(tail, i) for i, tail in enumerate(lay.tails) if tail.numel()]
            ns += [(lay.multi_rows[i], i) for i in range(lay.held_rows) if lay.multi_rows.shape[1]]
            ns += [(self._buffers[p][i], i) for p, i in lay.fresh_single]
            if lay.held_rows <= last:
                fresh = [p for p, _ in lay.row_params["multi"]]
                ns += [(self._buffers[p][last], last) for p in fresh if self._buffers[p][last] is not None]

                def gram(dtype=None):
                    return lay.last_gram(self._buffers, dtype)
            else:
                def gram(dtype=None):
                    return block_gram(lay.shared_rows, dtype)
            return dict(
                device=lay.storage.device, gram=gram(), redo=lambda: gram(torch.float64),
                ns_grads=[g for g, _ in ns], ns_tasks=[i for _, i in ns],
                shared_tasks=lay.shared_tasks, shared_numel=lay.shared_rows.shape[1],
                has_shared=lay.n_shared > 0, write=lambda c, w: self._write_flat(lay, c, w),
            )
        shared, single, multi = self._classify()
        t_count = self._num_tasks
        any_grad = next((gs[i] for gs in self._buffers.values() for i in range(t_count) if gs[i] is not None), None)
        device = any_grad.device if any_grad is not None else self._loss_sum.device
        return dict(
            device=device, gram=self._gram(shared, device),
            redo=lambda: self._gram(shared, device, torch.float64),
            ns_grads=[g for _, _, g in single] + [gs[i] for _, reach, gs in multi for i in reach],
            ns_tasks=[i for _, i, _ in single] + [i for _, reach, _ in multi for i in reach],
            shared_tasks={i for _, reach, _ in shared for i in reach},
            shared_numel=sum(p.numel() for p, _, _ in shared), has_shared=bool(shared),
            write=lambda c, w: self._write(shared, single, multi, c, w),
        )

    def _host_stats(self, src: dict[str, Any], world: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Gram matrix (per-process average units), losses and the non-shared gradients' largest
        entries (a finiteness check that cannot overflow, unlike a norm), in one host transfer.

        The largest entries come from ``aminmax`` (NaN propagates into both): the CPU kernel of
        an infinity norm is not vectorised and took 5.5 ms on a 1.4M-entry decoder gradient,
        ``aminmax`` 0.15 ms.
        """
        t_count, device = self._num_tasks, src["device"]
        pieces = [src["gram"].reshape(-1), self._loss_sum.to(device, torch.float64)]
        grads = [g.float() if _is_low_precision(g) else g for g in src["ns_grads"]]
        extremes = [torch.stack(torch.aminmax(g.reshape(-1))) if g.numel() else g.new_zeros(2) for g in grads]
        if extremes:
            pieces.append(torch.cat(extremes).to(torch.float64))
        host = torch.cat(pieces).cpu().numpy()
        gram = host[: t_count * t_count].reshape(t_count, t_count)
        if not _gram_is_trustworthy(gram, src["shared_tasks"]):
            gram = src["redo"]().cpu().numpy()
        ns = np.abs(host[t_count * (t_count + 1) :].reshape(-1, 2)).max(axis=1)  # NaN stays NaN
        # the reduced gradients are sums over the processes: the average's Gram is 1/world^2 of it
        return gram / world**2, host[t_count * t_count : t_count * (t_count + 1)], ns

    def _aggregate_and_step(self, scaler: torch.amp.GradScaler | None) -> StepInfo:
        t_count = self._num_tasks
        weights = self._task_weights
        self._step_count += 1
        params = self._trainable_params()
        world = self._world_size()
        fast = self._synchronise(params, world)
        self._plan_layout(params, world)
        src = self._sources(fast)
        gram, losses, ns_norms = self._host_stats(src, world)
        grad_scale = float(scaler.get_scale()) if scaler is not None else None
        if grad_scale:
            gram = gram / grad_scale**2
            if not self._scaled:  # recipe B: the caller passed already scaled losses to backward()
                losses = losses / grad_scale
        ns_tasks = src["ns_tasks"]

        bad = set()
        bad.update(int(i) for i in np.flatnonzero(~np.isfinite(losses)))
        bad.update(int(i) for i in np.flatnonzero(~np.isfinite(np.diag(gram))))
        bad.update(ns_tasks[k] for k in np.flatnonzero(~np.isfinite(ns_norms)))
        if not bad and not np.all(np.isfinite(gram)):
            bad.update(range(t_count))

        result: AggregationResult | None = None
        if not bad:
            if src["has_shared"]:
                result = self._aggregator(gram, weights)
            else:
                result = dataclasses.replace(
                    F.linear_scalarization(gram, weights),
                    method=self._aggregator.name,
                    degenerate="no_shared_parameters",
                )
            if not np.all(np.isfinite(result.coefficients)):
                bad.update(range(t_count))
                result = None

        base_info = dict(
            step=self._step_count,
            method=self._aggregator.name,
            num_tasks=t_count,
            task_weights=weights.copy(),
            losses=losses.copy(),
            num_backward=self._n_backward,
            inner_products=gram.copy(),
            weighted_inner_products=_weighted(gram, weights),
            shared_numel=src["shared_numel"],
            grad_scale=grad_scale,
        )
        if bad:
            return self._skip(base_info, bad, scaler)
        assert result is not None
        # averaging over the processes is folded into the coefficients: no pass over the buffer
        src["write"](result.coefficients / world, weights / world)
        return self._finish(base_info, result, scaler)

    def _skip(self, base_info: dict[str, Any], bad: set[int], scaler: torch.amp.GradScaler | None) -> StepInfo:
        t_count = self._num_tasks
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

    def _finish(self, base_info: dict[str, Any], result: AggregationResult,
                scaler: torch.amp.GradScaler | None) -> StepInfo:
        grad_norm, clip_coef = None, 1.0
        if self.max_grad_norm is not None:
            if scaler is not None:
                scaler.unscale_(self._base)
            with_grad = [p.grad for p in self._trainable_params() if p.grad is not None]
            grad_norm, clip_coef = _clip_grad_norm_(with_grad, self.max_grad_norm)
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
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
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

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
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
        self._clear_pending()


#: The official trainer's name for the optimizer (``from ... import CAME_Grad``, method note,
#: Interface), so that its code runs unchanged against this package.
CAME_Grad = CAMEGrad
