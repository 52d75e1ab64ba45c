"""The case matrix: fitting cases to declared shape limits, strided layouts, production sizes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from conformance import cases as C
from implementations.base import AttentionCase, Capabilities
from tests.limited_backends import LIMITS, square128


def _case(Sq: int, Sk: int, D: int) -> AttentionCase:
    return AttentionCase(2, 3, 3, Sq, Sk, D, torch.float32, "cpu")


@pytest.mark.parametrize(("Sq", "Sk", "D", "expected"), [
    (17, 33, 64, (128, 128, 64)),
    (1, 239, 59, (128, 128, 64)),
    (16, 65600, 64, (1152, 1152, 64)),  # sqrt(16 * 65600) = 1024.5, rounded up to a multiple of 128
    (1024, 1023, 111, (1024, 1024, 128)),
    (128, 128, 128, (128, 128, 128)),
])
def test_fit_meets_every_declared_limit(Sq: int, Sk: int, D: int, expected: tuple[int, int, int]) -> None:
    caps = Capabilities(**LIMITS)
    fitted = C.fit(_case(Sq, Sk, D), caps)
    assert (fitted.Sq, fitted.Sk, fitted.D) == expected
    backend = square128()
    assert not backend.not_supported_reasons("attention", fitted)


def test_fit_respects_range_multiple_and_maximum() -> None:
    caps = Capabilities(head_dims=(16, 96), head_dim_multiple=16, max_seq_len=300, seq_len_multiple=64,
                        max_batch=1)
    fitted = C.fit(_case(1023, 5, 111), caps)
    assert (fitted.B, fitted.Sq, fitted.Sk, fitted.D) == (1, 256, 64, 96)


def test_reach_adds_fitted_cases_and_says_when_none_fits() -> None:
    backend = square128()
    cases = [_case(17, 33, 64), _case(113, 203, 59)]
    reached, reachable = C.reach(backend, "attention", cases)
    assert reachable and reached[:1] == cases[:1] and len(reached) == 4
    masked = [dataclasses.replace(c, causal="bottom_right") for c in ([_case(239, 1, 64)])]
    reached, reachable = C.reach(backend, "attention", masked, premise=C.has_masked_rows)
    assert reached == masked and not reachable  # a square fit has no fully masked rows


def test_strided_layout_holds_the_same_values() -> None:
    case = _case(5, 7, 8)
    plain = C.attention_inputs(case, 3)
    strided = C.attention_inputs(dataclasses.replace(case, layout="bshd"), 3)
    for a, b in zip(plain, strided):
        assert torch.equal(a, b) and a.is_contiguous() and not b.is_contiguous()
        assert b.transpose(1, 2).is_contiguous()  # storage [B, S, H, D]


def test_every_attention_clause_reaches_a_limited_backend(conformance_run) -> None:  # noqa: ANN001
    """A backend limited to square lengths that are multiples of 128 meets ATT-1..ATT-11 with fitted cases;
    ATT-4, whose cases need Sq > Sk, says that no case fits."""
    code, records, output = conformance_run("conformance/test_attention.py", "--quick", "--backend",
                                            "tests.limited_backends:square128", "--no-builtin-xfails")
    cases = [r for r in records if r.get("kind") == "case"]
    passed = {r["clause"] for r in cases if r["status"] == "passed"}
    bad = [(r["id"], r["status"], r.get("reason")) for r in cases if r["status"] in ("failed", "error")]
    assert not bad, bad
    assert {"ATT-1", "ATT-2", "ATT-3", "ATT-5", "ATT-6", "ATT-8", "ATT-9", "ATT-11"} <= passed, output[-2000:]
    att4 = [r for r in cases if r["clause"] == "ATT-4"]
    assert att4 and all(r["status"] == "unsupported" and "no case of ATT-4 fits the declared limits" in r["reason"]
                        for r in att4)
    assert code == 0


def test_spread_keeps_the_ends_evenly() -> None:
    assert C.spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert C.spread(list(range(3)), 6) == [0, 1, 2]
    assert C.spread(list(range(5)), 1) == [0]


def _collected(*args: str) -> Counter[str]:
    """Test functions collected per name for ``pytest conformance --collect-only ARGS``."""
    done = subprocess.run([sys.executable, "-m", "pytest", "conformance", "--collect-only", "-q",
                           "-p", "no:cacheprovider", *args], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True, timeout=300)
    return Counter(line.split("::")[1].split("[")[0] for line in done.stdout.splitlines() if "::" in line)


def test_an_emulated_backend_meets_a_sample_of_each_clause_unless_every_case() -> None:
    sampled = _collected("--quick", "--backend", "tests.limited_backends:emulated")
    every = _collected("--quick", "--backend", "tests.limited_backends:emulated", "--every-case")
    assert sampled and max(sampled.values()) == C.EMULATED_SAMPLE
    assert every["test_forward_matches_oracle"] > 2 * C.EMULATED_SAMPLE
    assert set(sampled) == set(every)  # every clause still met


def test_a_workspace_kept_from_the_first_large_call_is_not_growth(conformance_run) -> None:  # noqa: ANN001
    """ATT-10 warms each length up before its probe: a 64 MiB workspace allocated once, at the first call of
    S = 4096 and kept, is not counted against the backend (measured at the largest S without the warm-up it
    was above the budget of outputs + a tenth of the score matrix, 26.8 MB)."""
    code, records, output = conformance_run("conformance/test_attention.py", "--quick", "--clause", "ATT-10",
                                            "--backend", "tests.limited_backends:workspace_once")
    cases = [r for r in records if r.get("kind") == "case"]
    assert [r["status"] for r in cases] == ["passed"], output[-2000:]
    assert cases[0]["metrics"]["peak_extra_bytes"][-1] < 1 << 26
    assert code == 0
