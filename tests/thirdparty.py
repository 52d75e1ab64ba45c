"""Third-party backends used by the suite's own tests: a good one, a broken factory, and crashing ones."""

from __future__ import annotations

import os
import time

import torch

from implementations.base import Backend, BackendUnavailable, Capabilities, new_output
from implementations.schedule import pairwise_tree
from implementations.validate import rows_arg


class ThirdPartySum(Backend):
    """A minimal external backend: a float32 reduction with no declared schedule."""

    name = "thirdparty-sum"
    capabilities = Capabilities(devices=("cpu",), dtypes=(), reduce_dtypes=(torch.float32,))

    def reduce_sum(self, x: torch.Tensor):  # noqa: ANN201
        rows_arg(self.capabilities, "reduce_sum", x)
        out = new_output((), torch.float32, x.device)
        out.copy_(x.double().sum())
        return out, None


def good() -> ThirdPartySum:
    return ThirdPartySum()


def missing_gpu() -> Backend:
    raise BackendUnavailable("needs a GPU that is not here")


def broken() -> Backend:
    raise RuntimeError("factory exploded")


class Crashy(Backend):
    """A pairwise-tree reduction that aborts the process (like a segfaulting kernel) on n = 7 and hangs
    on n = 100."""

    name = "crashy"
    capabilities = Capabilities(devices=("cpu",), dtypes=(), reduce_dtypes=(torch.float32,),
                                reduce_schedule="pairwise tree")

    def reduce_sum(self, x: torch.Tensor):  # noqa: ANN201
        rows_arg(self.capabilities, "reduce_sum", x)
        if x.numel() == 7:
            os.abort()
        if x.numel() == 100:
            time.sleep(3600)
        tree = pairwise_tree(x.numel())
        return torch.tensor(tree.evaluate(x.numpy())), tree


def crashy() -> Crashy:
    return Crashy()
