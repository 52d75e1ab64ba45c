"""Backends that spoil what the harness hands them or return other than the contract's outputs.

Each is the ``reference`` backend (correct) with one spoiling habit, plugged in as
``--backend tests.spoilers:NAME``. The harness must fail every case they touch, naming the problem.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from implementations.reference import ReferenceBackend


class _Spoiler(ReferenceBackend):
    """The reference backend under another name."""

    def __init__(self, name: str) -> None:
        self.name = name


class ZeroInputs(_Spoiler):
    """Zeroes q, k, v in place and returns the (right) answer for zeros: an oracle computed afterwards from
    the same tensors would agree."""

    def attention(self, q, k, v, **kwargs):  # noqa: ANN001, ANN003, ANN201
        for x in (q, k, v):
            x.zero_()
        return super().attention(q, k, v, **kwargs)


class WideGradients(_Spoiler):
    """Returns dq, dk, dv in float64 whatever the inputs' dtype."""

    def attention_backward(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        return tuple(g.double() for g in super().attention_backward(*args, **kwargs))


class WideStatistics(_Spoiler):
    """Returns m and l in float64 for float32 rows."""

    def softmax_stats(self, x, **kwargs):  # noqa: ANN001, ANN003, ANN201
        return tuple(t.double() for t in super().softmax_stats(x, **kwargs))


class MatrixSum(_Spoiler):
    """Returns the reduction's value shaped (1, 1) instead of a 0-dim tensor."""

    def reduce_sum(self, x):  # noqa: ANN001, ANN201
        value, schedule = super().reduce_sum(x)
        return value.reshape(1, 1), schedule


class NumpyOut(_Spoiler):
    """Returns out as a NumPy array."""

    def attention(self, q, k, v, **kwargs):  # noqa: ANN001, ANN003, ANN201
        out, lse = super().attention(q, k, v, **kwargs)
        return np.asarray(out), lse


class MetaLse(_Spoiler):
    """Returns lse on the meta device."""

    def attention(self, q, k, v, **kwargs):  # noqa: ANN001, ANN003, ANN201
        out, lse = super().attention(q, k, v, **kwargs)
        return out, torch.empty(lse.shape, dtype=lse.dtype, device="meta")


#: the factories ``--backend tests.spoilers:NAME`` calls
zero_inputs = functools.partial(ZeroInputs, "zero-inputs")
wide_gradients = functools.partial(WideGradients, "wide-gradients")
wide_statistics = functools.partial(WideStatistics, "wide-statistics")
matrix_sum = functools.partial(MatrixSum, "matrix-sum")
numpy_out = functools.partial(NumpyOut, "numpy-out")
meta_lse = functools.partial(MetaLse, "meta-lse")
