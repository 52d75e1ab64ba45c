"""The operations' definitions: backends never import an operation's oracle (a bug must not hide in both the
oracle and a kernel), every compared value has one tolerance multiplier, every benchmark operation is defined
once. (The layers are held by tests/test_source_layout.py.)
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from conformance import tolerance
from implementations.ops import BENCH_OPS, OPS

ROOT = Path(__file__).resolve().parent.parent
#: what the oracles are made of: names a backend must not reach
ORACLE_NAMES = {"oracle", "naive", "materialised", "visibility", "exact"}


def _modules(package: str) -> Iterator[Path]:
    yield from (p for p in (ROOT / package).rglob("*.py") if ".venv" not in p.parts)


def _imported(path: Path) -> Iterator[tuple[str, str | None]]:
    """``(module, name)`` of every import in ``path``, at any depth (``name`` None for ``import module``)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield from ((node.module, alias.name) for alias in node.names)


def _backend_modules() -> Iterator[Path]:
    return (p for p in _modules("implementations") if "ops" not in p.relative_to(ROOT).parts)


#: the modules of implementations/ops a backend may import: the package (OPS, the inputs records,
#: ``implementation``), the OpSpec record and the workload records; every other module holds oracle code
CONTRACT_MODULES = {"__init__", "spec", "workload"}


def oracle_modules() -> set[str]:
    """Every module of implementations/ops that holds an oracle or its shared code (an operation's module,
    ``exact``, ``variant_logits``)."""
    return {f"implementations.ops.{p.stem}" for p in (ROOT / "implementations" / "ops").glob("*.py")
            if p.stem not in CONTRACT_MODULES}


def oracle_imports(path: Path) -> list[str]:
    """The imports in ``path`` that reach an oracle module or an oracle function."""
    forbidden = oracle_modules()
    found = []
    for module, name in _imported(path):
        full = f"{module}.{name}" if name else module
        if full in forbidden or module in forbidden or name in ORACLE_NAMES:
            found.append(full)
    return found


def test_the_oracle_modules_include_every_operation_and_the_shared_oracle_code() -> None:
    assert {f"implementations.ops.{name}" for name in OPS} | {"implementations.ops.exact",
                                                             "implementations.ops.variant_logits"} \
        <= oracle_modules()


def test_a_backend_importing_shared_oracle_code_is_found(tmp_path: Path) -> None:
    bad = tmp_path / "bad_backend.py"
    bad.write_text("from implementations.ops.variant_logits import capped_logits\n"
                   "from implementations.ops import exact\n"
                   "from implementations.ops import implementation, AttentionInputs\n")
    assert oracle_imports(bad) == ["implementations.ops.variant_logits.capped_logits",
                                   "implementations.ops.exact"]


def test_backends_import_no_oracle() -> None:
    """Backends take the inputs records and ``implementation`` from ``implementations.ops``; never an
    operation's module (which holds its oracle), the oracles' shared modules, or an oracle function."""
    found = [f"{path.relative_to(ROOT)}: {full}" for path in _backend_modules() for full in oracle_imports(path)]
    assert found == []


def test_yardsticks_in_the_operations_modules_call_no_oracle() -> None:
    """The baselines an operation's module defines (Backend subclasses) use none of its oracle's names."""
    found, yardsticks = [], []
    for path in (ROOT / "implementations" / "ops").glob("*.py"):
        tree = ast.parse(path.read_text())
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                    and any(isinstance(b, ast.Name) and b.id == "Backend" for b in n.bases)):
            used = {n.id for n in ast.walk(cls) if isinstance(n, ast.Name)}
            found += [f"{path.name}: {cls.name} uses {name}" for name in used & ORACLE_NAMES]
            yardsticks.append(cls.name)
    assert found == [] and sorted(yardsticks) == ["TorchCompileKD", "TorchEagerStats", "TorchSum"]


def test_every_compared_value_has_one_multiplier() -> None:
    assert tolerance.MULTIPLIERS == {name: m for spec in OPS.values() for name, m in spec.multipliers.items()}
    assert {tolerance.MULTIPLIERS[n] for n in ("dq", "dk", "dv", "ds")} == {3.0}
    with pytest.raises(KeyError):
        tolerance.compare("no such value", torch.zeros(1), torch.zeros(1), None)


def test_two_operations_cannot_disagree_on_a_multiplier(monkeypatch: pytest.MonkeyPatch) -> None:
    stats = OPS["softmax_stats"]
    clash = dataclasses.replace(stats, name="clash", multipliers={"l": 3.0})
    monkeypatch.setattr(tolerance, "OPS", {**OPS, "clash": clash})
    with pytest.raises(ValueError, match="'l' the multiplier 3.0"):
        tolerance.operation_multipliers()


def test_every_operation_with_an_oracle_has_its_naive_form() -> None:
    for spec in OPS.values():
        assert (spec.oracle is None) == (spec.naive is None), spec.name


def test_each_benchmark_operation_is_defined_once_with_a_baseline_per_device() -> None:
    benches = [b for spec in OPS.values() for b in spec.benchmarks]
    assert len(benches) == len(BENCH_OPS) == len({b.name for b in benches})
    for bench in BENCH_OPS.values():
        assert {b.device for b in bench.baselines} == {"cpu", "cuda"}, bench.name
        assert set(bench.calls) <= set(OPS), bench.name
        assert (bench.flops is None) != (bench.min_bytes is None), bench.name
