"""CAME-Grad and its baselines: pure functions over the task-gradient Gram matrix, aggregator
objects, and the ``CAMEGrad`` optimizer wrapper.

Quick start (the official trainer's call, method note "Interface")::

    from camegrad_mini.optim import CAMEGrad
    opt = CAMEGrad(torch.optim.AdamW(model.parameters(), lr=1e-4), rho=0.5, kappa=1.5, nu=0.2)
    info = opt.step([loss_report, loss_cls], task_weights=[1.0, 4.0])
    info.inner_products[0, 1] < 0     # did the two task gradients conflict on the shared parameters?

Modules:

- ``camegrad_mini.optim.functional``: LS, PCGrad, MGDA, CAGrad and the CAME-Grad stages
  :func:`~camegrad_mini.optim.rectify` (S1), :func:`~camegrad_mini.optim.inject`
  (S2), :func:`~camegrad_mini.optim.fuse` (S3) and
  :func:`~camegrad_mini.optim.came_grad`, each returning diagnostics;
- ``camegrad_mini.optim.simplex``: the closed forms and the small simplex solver;
- ``camegrad_mini.optim.aggregators``: the methods as objects, :func:`get_aggregator`;
- ``camegrad_mini.optim.wrapper``: :class:`CAMEGrad` and :class:`StepInfo`.
"""

from . import aggregators, functional, simplex
from .aggregators import CAME, MGDA, Aggregator, CAGrad, LinearScalarization, PCGrad, get_aggregator
from .functional import (
    AggregationResult,
    RectifyResult,
    aggregate,
    cagrad,
    came_grad,
    combine,
    conflict_indicator,
    fuse,
    gram_matrix,
    inject,
    linear_scalarization,
    mgda,
    pairwise_cosines,
    pcgrad,
    rectify,
    validate_came_hyperparameters,
)
from .simplex import SimplexSolution, min_norm_weights, minimize_on_segment, solve_simplex_dual
from .wrapper import CAME_Grad, CAMEGrad, StepInfo

__all__ = [
    "CAMEGrad",
    "CAME_Grad",
    "StepInfo",
    "get_aggregator",
    "Aggregator",
    "LinearScalarization",
    "PCGrad",
    "MGDA",
    "CAGrad",
    "CAME",
    "AggregationResult",
    "RectifyResult",
    "gram_matrix",
    "combine",
    "pairwise_cosines",
    "conflict_indicator",
    "linear_scalarization",
    "pcgrad",
    "mgda",
    "cagrad",
    "rectify",
    "inject",
    "fuse",
    "came_grad",
    "aggregate",
    "validate_came_hyperparameters",
    "SimplexSolution",
    "minimize_on_segment",
    "solve_simplex_dual",
    "min_norm_weights",
    "functional",
    "aggregators",
    "simplex",
]
