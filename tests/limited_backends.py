"""Backends whose declared shape limits keep most of the standard cases out (``--backend tests.limited_backends:NAME``).

``square128``: the defect-free ``Control`` backend of tests/mutants.py declaring what many real kernels
require: square problems (Sq = Sk) whose lengths are multiples of 128, head dims 64 and 128 only, and
contiguous inputs. Every clause must still reach it with fitted cases (conformance.cases.reach).
``emulated``: ``Control`` declaring that its kernels run in an emulator, whose clauses are sampled.
``workspace_once``: a linear-memory backend that keeps a workspace from its first large call.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from implementations import validate
from implementations.reference_tiled import TiledReferenceBackend
from tests.mutants import Control

LIMITS = {"seq_len_multiple": 128, "equal_seq_lens": True, "head_dim_set": (64, 128), "contiguous_only": True}


class Square128(Control):
    name = "square128"
    capabilities = dataclasses.replace(Control.capabilities, **LIMITS)

    def attention(self, q, k, v, *, causal=None, scale=None, tiles=None):  # noqa: ANN001, ANN201
        validate.attention_args(self.capabilities, q, k, v, causal=causal, scale=scale, tiles=tiles)
        return super().attention(q, k, v, causal=causal, scale=scale, tiles=tiles)


def square128() -> Square128:
    return Square128()


class Emulated(Control):
    name = "emulated"
    capabilities = dataclasses.replace(Control.capabilities, emulated=True)


def emulated() -> Emulated:
    return Emulated()


class WorkspaceOnce(TiledReferenceBackend):
    """reference-tiled (linear memory) that, like a kernel planning its launches, allocates a 64 MiB workspace
    at its first call with Sq >= 4096 and keeps it: linear in S afterwards, and no Sq x Sk buffer."""

    name = "workspace-once"
    workspace: np.ndarray | None = None

    def attention(self, q, k, v, **kwargs):  # noqa: ANN001, ANN003, ANN201
        if self.workspace is None and q.shape[2] >= 4096:
            self.workspace = np.ones(1 << 23)
        return super().attention(q, k, v, **kwargs)


def workspace_once() -> WorkspaceOnce:
    return WorkspaceOnce()
