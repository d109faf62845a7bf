"""The three-point prediction of Parameter Linear Prediction (arXiv 2310.10958), as one formula with no imports.

:class:`dynamics.strategies.PLP` applies it to the parameters during training (with foreach kernels);
``analyses.trajectory`` measures its error on recorded paths. It lives apart from the strategies so that an
analysis can use it without importing training code.
"""

from __future__ import annotations

from typing import Any


def plp_prediction(first: Any, second: Any, third: Any, k: Any = 1.0) -> Any:
    """The three-point prediction ``m23 + k s`` = ``(theta2 + theta3)/2 + k (theta3 - theta1)/2``.

    For tensors or numpy arrays (``k`` may broadcast, e.g. one factor per window); :meth:`PLP.observe`
    applies the same formula with foreach kernels, and ``analyses.trajectory`` measures its error.
    """
    return (second + third) / 2 + k * (third - first) / 2
