"""The clauses of SPEC.md, parsed from the copy shipped with the package, and the tests that check them.

``CLAUSES`` maps a clause id (``"ATT-7"``) to its area, a short title and its full statement. A
conformance test names its clause with ``@clause("ATT-7")``; :func:`tests_by_clause` finds those tests and
their docstrings, so the report states each clause with the tests that check it and the two cannot drift.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

SPEC_PATH = Path(__file__).with_name("SPEC.md")

AREAS: dict[str, str] = {
    "ATT": "exact attention, forward",
    "GRAD": "attention gradients",
    "SMX": "softmax statistics (online softmax)",
    "KD": "knowledge-distillation loss",
    "WD": "work-depth cost model",
    "DIST": "context-parallel attention",
    "VAR": "attention variants: window, softcap, bias, ALiBi",
    "VLEN": "packed variable-length batches",
    "DEC": "decode over a paged KV cache, split-KV",
    "FP8": "fp8 forward",
}

#: The test module of each area, one per SPEC chapter.
MODULES: dict[str, str] = {
    "ATT": "conformance.test_attention",
    "GRAD": "conformance.test_gradients",
    "SMX": "conformance.test_softmax_stats",
    "KD": "conformance.test_kd_loss",
    "WD": "conformance.test_work_depth",
    "DIST": "conformance.test_dist",
    "VAR": "conformance.test_variants",
    "VLEN": "conformance.test_varlen",
    "DEC": "conformance.test_decode",
    "FP8": "conformance.test_fp8",
}

TITLES: dict[str, str] = {
    "ATT-1": "forward output", "ATT-2": "log-sum-exp", "ATT-3": "causal alignment",
    "ATT-4": "fully masked rows", "ATT-5": "causal independence", "ATT-6": "GQA / MQA",
    "ATT-7": "tile-size independence", "ATT-8": "custom scale", "ATT-9": "large logits",
    "ATT-10": "linear memory", "ATT-11": "bad input",
    "GRAD-1": "gradients", "GRAD-2": "recomputation from lse", "GRAD-3": "delta",
    "GRAD-4": "GQA gradient sums", "GRAD-5": "masked rows in backward", "GRAD-6": "determinism",
    "GRAD-7": "float64 gradcheck",
    "SMX-1": "row statistics", "SMX-2": "merge algebra", "SMX-3": "any split, any tree",
    "SMX-4": "split-KV merge", "SMX-5": "extreme rows",
    "KD-1": "KD loss", "KD-2": "KD gradient", "KD-3": "non-negativity", "KD-4": "shift invariance",
    "KD-5": "entropy grows with T", "KD-6": "high-temperature limit", "KD-7": "fused equals unfused",
    "KD-8": "bad input",
    "WD-0": "the model", "WD-1": "declared schedule", "WD-2": "kernel follows schedule",
    "WD-3": "blocked schedule and Brent", "WD-4": "merge tree depth", "WD-5": "scans",
    "DIST-1": "context-parallel forward", "DIST-2": "context-parallel gradients", "DIST-3": "global causal masks",
    "DIST-4": "context-parallel GQA", "DIST-5": "uneven shards", "DIST-6": "world-size independence",
    "DIST-7": "no full K/V on a rank",
    "VAR-1": "sliding window", "VAR-2": "window independence", "VAR-3": "window gradients",
    "VAR-4": "logit softcap", "VAR-5": "softcap gradients", "VAR-6": "bias and boolean mask", "VAR-7": "ALiBi",
    "VAR-8": "bad variant arguments",
    "VLEN-1": "each sequence on its own", "VLEN-2": "no leakage", "VLEN-3": "zero-length sequences",
    "VLEN-4": "varlen gradients", "VLEN-5": "bad packed input",
    "DEC-1": "paged decode", "DEC-2": "split-KV merge", "DEC-3": "bad paged input",
    "FP8-1": "fp8 forward", "FP8-2": "bad fp8 input",
}


@dataclass(frozen=True)
class Clause:
    """One SPEC clause: ``id`` like ``ATT-7``, its ``area``, a short ``title`` and the full ``text``."""

    id: str
    area: str
    title: str
    text: str


def parse_spec(text: str) -> dict[str, Clause]:
    """Clauses of a SPEC.md text: lines ``- ID statement`` under ``## AREA — ...`` headings."""
    clauses: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        match = re.match(r"^- ([A-Z][A-Z0-9]*-\d+) (.*)", line)
        if match:
            current = match.group(1)
            clauses[current] = [match.group(2)]
        elif current and line.startswith("  ") and line.strip():
            clauses[current].append(line.strip())
        else:
            current = None
    return {cid: Clause(cid, cid.split("-")[0], TITLES.get(cid, cid), " ".join(parts))
            for cid, parts in clauses.items()}


CLAUSES: dict[str, Clause] = parse_spec(SPEC_PATH.read_text(encoding="utf-8"))

F = TypeVar("F", bound=Callable[..., object])


def clause(clause_id: str) -> Callable[[F], F]:
    """Mark a conformance test as checking ``clause_id`` (which must exist in SPEC.md)."""
    if clause_id not in CLAUSES:
        raise KeyError(f"{clause_id} is not a clause of SPEC.md")

    def mark(fn: F) -> F:
        fn.__attnspec_clause__ = clause_id  # type: ignore[attr-defined]
        return pytest.mark.clause(clause_id)(fn)  # type: ignore[return-value]

    return mark


def clause_of(fn: object) -> str | None:
    """The clause a test function checks, or None."""
    return getattr(fn, "__attnspec_clause__", None)


def tests_by_clause() -> dict[str, list[tuple[str, str]]]:
    """``{clause_id: [(test name, docstring), ...]}`` over every conformance test module."""
    found: dict[str, list[tuple[str, str]]] = {cid: [] for cid in CLAUSES}
    for module_name in MODULES.values():
        module = importlib.import_module(module_name)
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            cid = clause_of(fn)
            if cid and name.startswith("test_"):
                found[cid].append((name, inspect.cleandoc(fn.__doc__ or "")))
    return found
