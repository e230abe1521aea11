"""``CAMEGrad``: a ``torch.optim``-style wrapper that runs CAME-Grad (or a baseline) around any
optimizer, and ``StepInfo``, the diagnostics of one step. Usage and recipes are in the class
docstring of :class:`CAMEGrad`."""

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

from . import functional as F
from .aggregators import CAME, Aggregator, CAGrad, PCGrad, get_aggregator
from .functional import AggregationResult

__all__ = ["CAMEGrad", "CAME_Grad", "StepInfo"]

SharedMode = Literal["auto", "all"]


@dataclass(frozen=True)
class StepInfo:
    """Diagnostics of one :meth:`CAMEGrad.step`.

    All inner products and norms are measured on the **shared** parameters (those that receive
    the combined direction) and in unscaled units (a GradScaler's factor is divided out).

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
    gradients on the shared parameters (per-tensor dot products, no concatenation), the
    aggregation on that T x T matrix, the combined gradient written into ``.grad``, an optional
    clip, and the base optimizer's ``step()``. The same loop runs every baseline
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
    to clip). Not supported: a ``closure`` (LBFGS) and DDP (the per-task gradients would have to
    be all-reduced before the non-linear aggregation).

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
        self._buffers: dict[torch.Tensor, list[torch.Tensor | None]] = {}
        self._num_tasks: int | None = None
        self._task_weights: np.ndarray | None = None
        self._loss_sum: torch.Tensor | None = None
        self._n_backward = 0
        self._scaled = False

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
        values = torch.stack([loss.detach().reshape(()).float() for loss in loss_list])
        if scaler is not None:
            loss_list = [scaler.scale(loss) for loss in loss_list]
        for i, loss in enumerate(loss_list):
            if loss.requires_grad:
                grads = torch.autograd.grad(
                    loss, params, retain_graph=retain_graph or i < t_count - 1, allow_unused=True
                )
            else:
                grads = (None,) * len(params)
            for p, g in zip(params, grads):
                if g is None:
                    continue
                if g.layout != torch.strided:
                    raise ValueError("losses produce a sparse gradient; CAMEGrad needs dense gradients")
                slot = self._buffers.get(p)
                if slot is None:
                    slot = self._buffers[p] = [None] * t_count
                slot[i] = g if slot[i] is None else slot[i] + g
        self._num_tasks = t_count
        self._task_weights = weights
        self._scaled = scaler is not None
        self._loss_sum = values if self._loss_sum is None else self._loss_sum + values.to(self._loss_sum.device)
        self._n_backward += 1

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

    def _classify(self):
        t_count = self._num_tasks
        shared, single, multi = [], [], []
        for p, gs in self._buffers.items():
            reach = [i for i in range(t_count) if gs[i] is not None]
            if self._shared_mode == "auto":
                is_shared = len(reach) >= 2
            elif self._shared_mode == "all":
                is_shared = True
            else:
                is_shared = id(p) in self._shared_ids
            if is_shared:
                shared.append((p, reach, gs))
            elif len(reach) == 1:
                single.append((p, reach[0], gs[reach[0]]))
            else:
                multi.append((p, reach, gs))
        return shared, single, multi

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
            mat = torch.stack(vecs)
            block = (mat @ mat.T).double()
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

    def _aggregate_and_step(self, scaler: torch.amp.GradScaler | None) -> StepInfo:
        t_count = self._num_tasks
        weights = self._task_weights
        shared, single, multi = self._classify()
        self._step_count += 1
        any_grad = next((gs[i] for gs in self._buffers.values() for i in range(t_count) if gs[i] is not None), None)
        device = any_grad.device if any_grad is not None else self._loss_sum.device

        gram_t = self._gram(shared, device)
        # One host transfer for the Gram matrix, the non-shared gradients' largest entries (a
        # finiteness check that cannot overflow, unlike a norm) and the losses.
        ns_grads = [g for _, _, g in single] + [gs[i] for _, reach, gs in multi for i in reach]
        ns_tasks = [i for _, i, _ in single] + [i for _, reach, _ in multi for i in reach]
        pieces = [gram_t.reshape(-1), self._loss_sum.to(device, torch.float64)]
        if ns_grads:
            norms = torch._foreach_norm([g.float() if _is_low_precision(g) else g for g in ns_grads], ord=math.inf)
            pieces.append(torch.stack(norms).to(torch.float64))
        host = torch.cat(pieces).cpu().numpy()
        gram = host[: t_count * t_count].reshape(t_count, t_count)
        losses = host[t_count * t_count : t_count * t_count + t_count]
        ns_norms = host[t_count * t_count + t_count :]
        if not _gram_is_trustworthy(gram, {i for _, reach, _ in shared for i in reach}):
            gram = self._gram(shared, device, torch.float64).cpu().numpy()
        grad_scale = float(scaler.get_scale()) if scaler is not None else None
        if grad_scale:
            gram = gram / grad_scale**2
            if not self._scaled:  # recipe B: the caller passed already scaled losses to backward()
                losses = losses / grad_scale
        shared_numel = sum(p.numel() for p, _, _ in shared)

        bad = set()
        bad.update(int(i) for i in np.flatnonzero(~np.isfinite(losses)))
        bad.update(int(i) for i in np.flatnonzero(~np.isfinite(np.diag(gram))))
        bad.update(ns_tasks[k] for k in np.flatnonzero(~np.isfinite(ns_norms)))
        if not bad and not np.all(np.isfinite(gram)):
            bad.update(range(t_count))

        result: AggregationResult | None = None
        if not bad:
            if shared:
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
            shared_numel=shared_numel,
            grad_scale=grad_scale,
        )

        if bad:
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
                warnings.warn(f"CAMEGrad.step skipped: {reason}", RuntimeWarning, stacklevel=3)
            nan = np.full((t_count, t_count), np.nan)
            return StepInfo(
                **base_info, cosines=nan, conflict=False, alpha=None, coefficients=None, norms={},
                degenerate=None, skipped=True, skip_reason=reason,
            )

        assert result is not None
        self._write(shared, single, multi, result.coefficients, weights)

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
