"""The ``flashinfer`` adapter (implementations/flashinfer_prefill.py): CUDA only; on this machine listed
unavailable with its reason,
and each reason it can give (package missing, no GPU, an import failing against torch) said by its factory."""

from __future__ import annotations

import pytest

from implementations import flashinfer_prefill
from tests.adapters import assert_gpu_only_reasons, assert_listed_unavailable


def test_listed_unavailable_with_its_reason() -> None:
    assert_listed_unavailable("flashinfer")


def test_factory_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    assert_gpu_only_reasons(monkeypatch, flashinfer_prefill.backends, "flashinfer-python", "0.7.4")
