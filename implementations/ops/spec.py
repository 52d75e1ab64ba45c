"""What every operation of the backend contract defines: :class:`OpSpec`.

An operation's module (``implementations/ops/<name>.py``) holds its one definition: the signature, the
positional inputs, the capability field declaring which input dtypes it accepts, the boundary check that
turns a call's arguments into a validated inputs record, the outputs the contract promises (names, shapes,
dtypes, device), its cost model (FLOPs or the fewest bytes moved), its oracle (the materialising float64
definition) and the naive dtype-``t`` form the tolerance rule measures against, the tolerance multipliers of
what it outputs, and its benchmark operations (:class:`~implementations.ops.workload.BenchOp`). The suite
(conformance checks, benchmarks, report) reads operations from :data:`implementations.ops.OPS`;
docs/adding-an-operation.md says how to add one.

Backends import an operation's inputs record and ``implementation``, never its ``oracle`` or ``naive``: a bug
must not hide in both the oracle and a kernel (``tests/test_definitions.py`` holds them to it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

from implementations.base import Capabilities
from implementations.ops.workload import BenchOp

I = TypeVar("I")  # noqa: E741 - the operation's inputs record


@dataclass(frozen=True)
class Expected:
    """One output the contract promises: its name, shape, dtype and device."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def like(cls, name: str, x: torch.Tensor) -> Expected:
        """An output shaped, typed and placed like ``x``."""
        return cls(name, tuple(x.shape), x.dtype, x.device)


@dataclass(frozen=True)
class OpSpec(Generic[I]):
    """One operation of the contract."""

    name: str
    #: the method's signature, as docs and listings show it
    signature: str
    #: the positional tensor arguments, in order
    inputs: tuple[str, ...]
    #: the names of what it returns, in order (a reduction's schedule last)
    outputs: tuple[str, ...]
    #: the input dtypes a backend declares for it (empty: not declared)
    declared_dtypes: Callable[[Capabilities], tuple[torch.dtype, ...]]
    #: the boundary check: ``(capabilities, *args, **kwargs) -> inputs record``, or InvalidInputError naming
    #: the problem (SPEC ATT-11, KD-8)
    validate: Callable[..., I]
    #: the tensors the contract promises for the given positional inputs (a schedule is not a tensor: it is
    #: checked by the WD clauses)
    expected: Callable[[dict[str, torch.Tensor]], list[Expected]]
    #: the float64 oracle: the operation's inputs (and keywords) -> its outputs, on the CPU (SPEC "Tolerance
    #: rule"); None where the clauses compute their references in place
    oracle: Callable[..., Any] | None = None
    #: the naive form in dtype ``t``: the oracle's arguments plus ``dtype`` -> its outputs, on the inputs'
    #: device, rounded as an honest dtype-``t`` implementation rounds
    naive: Callable[..., Any] | None = None
    #: the tolerance rule's multiplier of each value the clauses compare (SPEC "Tolerance rule")
    multipliers: Mapping[str, float] = field(default_factory=dict)
    #: the benchmark operations that time it
    benchmarks: tuple[BenchOp, ...] = ()
    #: returns one tensor rather than a tuple
    bare: bool = False

    def implementation(self, impl: Callable[[Any, I], Any]) -> Callable[..., Any]:
        """Decorate a backend's method that takes the validated inputs record: the result is the contract's
        method, which checks its arguments once at the boundary and hands the record on."""

        @functools.wraps(impl)
        def method(backend: Any, *args: Any, **kwargs: Any) -> Any:
            return impl(backend, self.validate(backend.capabilities, *args, **kwargs))

        method.__doc__ = f"{self.signature}\n\n{impl.__doc__ or ''}".rstrip()
        return method
