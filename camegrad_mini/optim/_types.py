"""Type aliases shared by the optimizer package (public through ``py.typed``).

- :data:`FloatArray`: a float64 numpy array, what every function here returns;
- :data:`GramLike`: what a function over the Gram matrix accepts (a numpy array, a tensor, or
  nested sequences of numbers, converted to a float64 array);
- :data:`WeightsLike`: task weights (None means all ones);
- :data:`GradsLike`: task gradients as :func:`camegrad_mini.optim.gram_matrix` accepts them: a
  (T, D) array or tensor, or T per-task sequences of per-parameter tensors (None: the task does
  not reach that parameter).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
GramLike = Union[NDArray[Any], torch.Tensor, Sequence[Sequence[float]]]
WeightsLike = Union[NDArray[Any], torch.Tensor, Sequence[float], None]
GradsLike = Union[NDArray[Any], torch.Tensor, Sequence[Sequence[Union[torch.Tensor, None]]]]

__all__ = ["FloatArray", "BoolArray", "GramLike", "WeightsLike", "GradsLike"]
