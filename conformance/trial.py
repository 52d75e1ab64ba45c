"""One backend on one case: what a conformance test receives, how it calls the backend, and what it records.

A conformance test is marked with the cases it runs (``@cases(op, generator)``); the plugin hands it a
:class:`Trial`. Every call of the backend goes through :meth:`Trial.call` (or :meth:`Trial.seal`), which

- hands the backend its own copies of the inputs (same shapes, strides, dtypes and devices), so the oracle,
  computed afterwards from the caller's tensors, sees the inputs as drawn whatever the backend does to them;
- poisons the outputs the backend allocates with ``new_output`` (NaN-filled), so unwritten elements fail;
- fails the case when the backend changed an input (``inputs modified: q``) or returned an output whose
  type, shape, dtype or device is not the contract's (``dk: dtype float64, the contract says float32``).

A clause that does not apply to a backend raises :class:`Unsupported` (the plugin records *unsupported*
with the reason); a missing operation is :class:`NotImplementedOperation`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import torch
from _pytest.outcomes import Skipped

from conformance import cases as casegen
from conformance.results import Status
from conformance.tolerance import Comparison
from implementations.base import BackendLike, Case, dtype_name, poisoned_outputs
from implementations.ops import OPS

F = TypeVar("F", bound=Callable[..., object])

class Unsupported(Skipped):
    """The case is outside what the backend declares (recorded *unsupported* with the reason)."""

    status = Status.UNSUPPORTED


class NotImplementedOperation(Skipped):
    """The backend has no method for the operation (recorded *not_implemented*)."""

    status = Status.NOT_IMPLEMENTED


def unsupported(reason: str) -> NoReturn:
    """End the case as *unsupported* with ``reason``."""
    raise Unsupported(reason)


def cases(op: str, make: Callable[[BackendLike, str, bool], list[Case]],
          premise: Callable[[Case], bool] | None = None) -> Callable[[F], F]:
    """Declare that a test runs operation ``op`` on the cases ``make(backend, device, quick)`` returns.

    ``premise`` is what every case of the clause must have (fully masked rows need Sq > Sk, say): a case fitted
    to a backend's declared limits (``conformance.cases.reach``) is kept only when it still has it.
    """

    def mark(fn: F) -> F:
        fn.__attnspec_cases__ = (op, make, premise)  # type: ignore[attr-defined]
        return fn

    return mark


# -- the contract's outputs ------------------------------------------------------------------------------


def output_problems(op: str, inputs: dict[str, torch.Tensor], result: object) -> list[str]:
    """Every way ``result`` differs from the contract's outputs of ``op`` (``OPS[op].expected``): type,
    count, shape, dtype, device."""
    spec = OPS[op]
    expected = spec.expected(inputs)
    if spec.bare:
        result = (result,)
    names = spec.outputs
    if not isinstance(result, tuple | list) or len(result) != len(names):
        got = f"{type(result).__name__} of {len(result)}" if isinstance(result, tuple | list) else type(result).__name__
        return [f"{op} must return ({', '.join(names)}), got {got}"]
    problems = []
    for want, got in zip(expected, result):
        if not isinstance(got, torch.Tensor):
            problems.append(f"{want.name}: a {type(got).__module__}.{type(got).__name__}, the contract says a "
                            f"torch tensor on {want.device}")
            continue
        if tuple(got.shape) != want.shape:
            problems.append(f"{want.name}: shape {tuple(got.shape)}, the contract says {want.shape}")
        if got.dtype != want.dtype:
            problems.append(f"{want.name}: dtype {dtype_name(got.dtype)}, the contract says {dtype_name(want.dtype)}")
        if got.device != want.device:
            problems.append(f"{want.name}: device {got.device}, the contract says {want.device} (the inputs' device)")
    return problems


# -- sealed calls -------------------------------------------------------------------------------------------


def copy_exact(x: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` with the same shape, strides, dtype and device (a transposed view stays transposed)."""
    copy = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
    copy.copy_(x)
    return copy


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality, under which a NaN equals the same NaN (``torch.equal`` says NaN != NaN)."""
    if not a.dtype.is_floating_point:
        return torch.equal(a, b)
    bits = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(bits), b.contiguous().view(bits))


@dataclass
class SealedCall:
    """A backend call prepared on private copies of its inputs: :meth:`run` calls the backend (nothing else,
    so a memory probe around it measures the backend alone), :meth:`verify` then checks the inputs are
    unchanged and the outputs are the contract's."""

    fn: Callable[..., Any]
    op: str
    device: str
    originals: dict[str, torch.Tensor]
    copies: dict[str, torch.Tensor]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    result: Any = None

    def run(self) -> Any:
        with poisoned_outputs():
            self.result = self.fn(*self.args, **self.kwargs)
        if self.device == "cuda":
            torch.cuda.synchronize()
        return self.result

    def verify(self) -> Any:
        """The result, once the inputs are found unchanged and the outputs as the contract says (else
        AssertionError naming each problem)."""
        modified = [name for name, x in self.originals.items() if not _same_bits(x, self.copies[name])]
        problems = [f"inputs modified: {', '.join(modified)}"] if modified else []
        positional = {n: a for n, a in zip(OPS[self.op].inputs, self.args) if isinstance(a, torch.Tensor)}
        problems += output_problems(self.op, positional, self.result)
        assert not problems, f"{self.op}: " + "; ".join(problems)
        return self.result


def seal(fn: Callable[..., Any], op: str, device: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SealedCall:
    """Prepare ``fn(*args, **kwargs)`` on exact copies of every tensor argument."""
    names = list(OPS[op].inputs) + [f"arg{i}" for i in range(len(OPS[op].inputs), len(args))]
    originals = {n: a for n, a in zip(names, args) if isinstance(a, torch.Tensor)}
    originals |= {n: a for n, a in kwargs.items() if isinstance(a, torch.Tensor)}
    copies = {n: copy_exact(x) for n, x in originals.items()}
    args = tuple(copies.get(n, a) for n, a in zip(names, args))
    kwargs = {n: copies.get(n, a) for n, a in kwargs.items()}
    return SealedCall(fn, op, device, originals, copies, args, kwargs)


@dataclass
class Trial:
    """One backend on one case: what a conformance test receives, and what it records."""

    backend: BackendLike
    op: str
    case: Case
    clause: str
    id: str
    seed: int = 0
    #: whether any case of this clause fits the backend's declared limits
    reachable: bool = True
    comparisons: list[Comparison] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return self.case.device

    @property
    def dtype(self) -> torch.dtype:
        return self.case.dtype

    def generator(self, salt: int = 0) -> torch.Generator:
        """A torch CPU generator seeded for this case (``salt`` for independent streams)."""
        return casegen.generator(self.seed + salt)

    def seal(self, op: str | None, *args: Any, **kwargs: Any) -> SealedCall:
        """The backend's operation (the trial's own when ``op`` is None) prepared on copies of its inputs;
        ``run()`` it (under a memory probe, say), then ``verify()``."""
        op = op or self.op
        return seal(getattr(self.backend, op), op, self.device, args, kwargs)

    def call(self, op: str | None = None, *args: Any, **kwargs: Any) -> Any:
        """Call the backend's operation on copies of the inputs, with outputs poisoned; fail when it changed
        an input or returned other than the contract's outputs."""
        sealed = self.seal(op, *args, **kwargs)
        sealed.run()
        return sealed.verify()

    def check(self, *comparisons: Comparison) -> None:
        """Record comparisons and fail, naming every output out of bounds, if any is."""
        self.comparisons.extend(comparisons)
        bad = [c for c in comparisons if not c.passed]
        if bad:
            raise AssertionError("; ".join(c.describe() for c in bad))

    def summary(self) -> dict[str, Any]:
        """err / ref_err / ratio of the worst comparison (largest err / bound)."""
        if not self.comparisons:
            return {"err": None, "ref_err": None, "ratio": None, "mult": None, "bound": None}

        def badness(c: Comparison) -> float:
            return c.err / c.bound if c.bound > 0 else (0.0 if c.err == 0 else math.inf)

        worst = max(self.comparisons, key=badness)
        return {"err": worst.err, "ref_err": worst.ref_err, "ratio": worst.ratio, "mult": worst.mult,
                "bound": worst.bound, "worst": worst.name}
