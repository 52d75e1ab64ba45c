"""The harness hands backends private copies of their inputs and checks every output against the contract.

Run through the real plugin with the spoiling backends of tests/spoilers.py: each must fail every float32 case
it touches, with a message that names the problem (before these checks, zeroing q, k, v in place passed 264 of
288 quick cases, and float64 gradients or a (1, 1) reduction passed).
"""

from __future__ import annotations

import pytest
import torch

from conformance.trial import copy_exact, output_problems


@pytest.mark.parametrize(("factory", "selection", "message"), [
    ("zero_inputs", "test_forward_matches_oracle", "inputs modified: q, k, v"),
    ("wide_gradients", "test_gradients_match_oracle", "dq: dtype float64, the contract says"),
    ("wide_statistics", "test_row_statistics", "m: dtype float64, the contract says"),
    ("matrix_sum", "test_model_measures", "value: shape (1, 1), the contract says ()"),
    ("numpy_out", "test_lse_natural_log", "out: a numpy.ndarray, the contract says a torch tensor"),
    ("meta_lse", "test_lse_natural_log", "lse: device meta, the contract says cpu"),
])
def test_spoiling_backend_fails_every_case(conformance_run, factory: str, selection: str,  # noqa: ANN001
                                           message: str) -> None:
    code, records, output = conformance_run("conformance", "--quick", "--backend", f"tests.spoilers:{factory}",
                                            "-k", f"{selection} and float32")
    # float32 cases: a float64 result is right for float64 inputs, and NumPy has no bfloat16
    cases = [r for r in records if r.get("kind") == "case" and r["status"] != "unsupported"
             and r["dtype"] == "float32"]
    assert cases, output[-2000:]
    wrong = [(r["id"], r["status"], r.get("reason")) for r in cases
             if r["status"] != "failed" or message not in (r.get("reason") or "")]
    assert not wrong, wrong[:3]
    assert code == 1


def test_copy_keeps_strides() -> None:
    x = torch.randn(2, 5, 3, 4).transpose(1, 2)
    y = copy_exact(x)
    assert y.stride() == x.stride() and torch.equal(x, y) and y.data_ptr() != x.data_ptr()


def test_output_problems_name_each_output() -> None:
    q = torch.zeros(1, 2, 3, 4)
    good = (torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3))
    assert output_problems("attention", {"q": q}, good) == []
    assert output_problems("attention", {"q": q}, good[:1]) == ["attention must return (out, lse), got tuple of 1"]
    bad = (torch.zeros(1, 2, 3, 4, dtype=torch.float64), torch.zeros(1, 2, 3, 1))
    assert output_problems("attention", {"q": q}, bad) == [
        "out: dtype float64, the contract says float32", "lse: shape (1, 2, 3, 1), the contract says (1, 2, 3)"]
    assert output_problems("attention_delta", {"out": q, "dout": q}, torch.zeros(1, 2, 3)) == []
