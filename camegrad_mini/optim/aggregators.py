"""Aggregator objects: one interface for LS, PCGrad, MGDA, CAGrad and CAME-Grad.

An aggregator is a callable ``aggregator(gram, task_weights) -> AggregationResult`` over the raw
Gram matrix of the task gradients (see ``camegrad_mini.optim.functional``), holding its
hyperparameters and any state (PCGrad's random generator). :class:`camegrad_mini.optim.CAMEGrad`
accepts one by object or by name (:func:`get_aggregator`), so every chapter compares methods
through the same training loop. Aggregators save and restore their state through
``state_dict`` / ``load_state_dict`` so that a checkpoint resumes bit-for-bit.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from . import functional as F
from ._types import GramLike, WeightsLike
from .functional import AggregationResult

__all__ = [
    "Aggregator",
    "LinearScalarization",
    "PCGrad",
    "MGDA",
    "CAGrad",
    "CAME",
    "AGGREGATORS",
    "get_aggregator",
]


class Aggregator:
    """Base class: a named, stateful map from (Gram matrix, task weights) to an aggregation.

    Subclasses implement :meth:`__call__` and list their hyperparameters in ``_config_keys``.
    """

    name: str = "base"
    _config_keys: tuple[str, ...] = ()

    def __call__(self, gram: GramLike, task_weights: WeightsLike = None) -> AggregationResult:
        """Aggregate.

        Args:
            gram: Raw (T, T) Gram matrix of the task gradients.
            task_weights: omega, shape (T,); None means all ones.

        Returns:
            The :class:`camegrad_mini.optim.AggregationResult`.
        """
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The hyperparameters, as a plain dict."""
        return {k: getattr(self, k) for k in self._config_keys}

    def state_dict(self) -> dict[str, Any]:
        """Name, hyperparameters and internal state (a deep copy)."""
        return {"name": self.name, "config": copy.deepcopy(self.config())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; ValueError if it belongs to another method."""
        if state.get("name") != self.name:
            raise ValueError(
                f"state_dict is for aggregator {state.get('name')!r}, not {self.name!r}"
            )
        for k, v in state.get("config", {}).items():
            if k in self._config_keys:
                setattr(self, k, copy.deepcopy(v))
        self._validate()

    def _validate(self) -> None:
        """Check hyperparameters; subclasses raise ValueError naming the bad argument."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class LinearScalarization(Aggregator):
    """Linear scalarization, ``sum_i omega_i g_i`` (see :func:`camegrad_mini.optim.linear_scalarization`)."""

    name = "ls"

    def __call__(self, gram: GramLike, task_weights: WeightsLike = None) -> AggregationResult:
        return F.linear_scalarization(gram, task_weights)


class PCGrad(Aggregator):
    """PCGrad (see :func:`camegrad_mini.optim.pcgrad`) with a seeded projection order.

    Args:
        seed: Seed of the numpy generator that draws the projection order; the generator state is
            part of :meth:`state_dict`, so a resumed run draws the same orders.
    """

    name = "pcgrad"
    _config_keys = ("seed",)

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._validate()
        self._rng = np.random.default_rng(seed)

    def _validate(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")

    def __call__(self, gram: GramLike, task_weights: WeightsLike = None) -> AggregationResult:
        return F.pcgrad(gram, task_weights, rng=self._rng)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["rng_state"] = copy.deepcopy(self._rng.bit_generator.state)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._rng = np.random.default_rng(self.seed)
        if "rng_state" in state:
            self._rng.bit_generator.state = copy.deepcopy(state["rng_state"])


class MGDA(Aggregator):
    """MGDA min-norm direction (see :func:`camegrad_mini.optim.mgda`)."""

    name = "mgda"

    def __call__(self, gram: GramLike, task_weights: WeightsLike = None) -> AggregationResult:
        return F.mgda(gram, task_weights)


class CAGrad(Aggregator):
    """CAGrad (see :func:`camegrad_mini.optim.cagrad`).

    Args:
        c: Conflict-aversion radius, >= 0 (the official default is 0.5, the same number as
            CAME-Grad's rho).
        rescale: 0, 1 (official default) or 2.
    """

    name = "cagrad"
    _config_keys = ("c", "rescale")

    def __init__(self, c: float = 0.5, rescale: int = 1) -> None:
        self.c = c
        self.rescale = rescale
        self._validate()

    def _validate(self) -> None:
        F.cagrad(np.eye(1), c=self.c, rescale=self.rescale)  # raises ValueError naming the argument

    def __call__(self, gram: GramLike, task_weights: WeightsLike = None) -> AggregationResult:
        return F.cagrad(gram, task_weights, c=self.c, rescale=self.rescale)


class CAME(Aggregator):
    """CAME-Grad, S1 -> S2 -> S3 (see :func:`camegrad_mini.optim.came_grad`).

    Args:
        rho: Trust-region factor in [0, 1) (official code default 0.5).
        kappa: Energy amplification >= 1 (official code default 1.5).
        nu: Fusion weight in [0, 1] (official code default 0.2).
        eps: S2's epsilon (**[open]**; relative to the largest gradient norm by default).
        eps_mode: ``"relative"`` or ``"absolute"``.
        rectify_on: ``"raw"`` (default, as the method note reads) or ``"weighted"`` gradients in S1.
        allow_kappa_below_one: Permit 0 < kappa < 1.
    """

    name = "came"
    _config_keys = ("rho", "kappa", "nu", "eps", "eps_mode", "rectify_on", "allow_kappa_below_one")

    def __init__(
        self,
        rho: float = 0.5,
        kappa: float = 1.5,
        nu: float = 0.2,
        eps: float = 1e-8,
        eps_mode: str = "relative",
        rectify_on: str = "raw",
        allow_kappa_below_one: bool = False,
    ) -> None:
        self.rho = rho
        self.kappa = kappa
        self.nu = nu
        self.eps = eps
        self.eps_mode = eps_mode
        self.rectify_on = rectify_on
        self.allow_kappa_below_one = allow_kappa_below_one
        self._validate()

    def _validate(self) -> None:
        F.validate_came_hyperparameters(
            self.rho, self.kappa, self.nu, self.eps, allow_kappa_below_one=self.allow_kappa_below_one
        )
        if self.eps_mode not in ("relative", "absolute"):
            raise ValueError(f"eps_mode must be 'relative' or 'absolute', got {self.eps_mode!r}")
        if self.rectify_on not in ("raw", "weighted"):
            raise ValueError(f"rectify_on must be 'raw' or 'weighted', got {self.rectify_on!r}")

    def __call__(self, gram: GramLike, task_weights: WeightsLike = None) -> AggregationResult:
        return F.came_grad(gram, task_weights, **self.config())


#: Aggregator classes by name.
AGGREGATORS: dict[str, type[Aggregator]] = {
    "ls": LinearScalarization,
    "pcgrad": PCGrad,
    "mgda": MGDA,
    "cagrad": CAGrad,
    "came": CAME,
}


def get_aggregator(aggregator: str | Aggregator = "came", **kwargs: Any) -> Aggregator:
    """Build an aggregator from its name, or return an aggregator object unchanged.

    Args:
        aggregator: ``"ls"``, ``"pcgrad"``, ``"mgda"``, ``"cagrad"``, ``"came"`` (aliases:
            ``"came-grad"``, ``"camegrad"``, ``"linear"``, ``"sum"``), or an :class:`Aggregator`.
        **kwargs: Constructor arguments for a named aggregator (for example ``rho=0.5`` for
            ``"came"``, ``c=0.5, rescale=1`` for ``"cagrad"``, ``seed=0`` for ``"pcgrad"``).

    Returns:
        The aggregator.

    Explained in: Chapter 4, §4.8.

    Examples:
        >>> import numpy as np
        >>> get_aggregator("came-grad", rho=0.3)
        CAME(rho=0.3, kappa=1.5, nu=0.2, eps=1e-08, eps_mode='relative', rectify_on='raw', allow_kappa_below_one=False)
        >>> get_aggregator("mgda")(np.eye(2)).coefficients
        array([1., 1.])
    """
    if isinstance(aggregator, Aggregator):
        if kwargs:
            raise ValueError("aggregator is already an object; pass its options to its constructor")
        return aggregator
    if not isinstance(aggregator, str):
        raise ValueError(f"aggregator must be a name or an Aggregator, got {type(aggregator).__name__}")
    key = aggregator.lower().replace("_", "-")
    key = {"came-grad": "came", "camegrad": "came", "linear": "ls", "sum": "ls"}.get(key, key)
    if key not in AGGREGATORS:
        raise ValueError(f"aggregator must be one of {sorted(AGGREGATORS)}, got {aggregator!r}")
    return AGGREGATORS[key](**kwargs)
