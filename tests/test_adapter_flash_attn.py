"""The ``flash-attn`` adapter (implementations/flashattn.py): CUDA only; on this machine listed
unavailable with its reason,
and each reason it can give (package missing, no GPU, an import failing against torch) said by its factory."""

from __future__ import annotations

import pytest

from implementations import flashattn
from tests.adapters import assert_gpu_only_reasons, assert_listed_unavailable


def test_listed_unavailable_with_its_reason() -> None:
    assert_listed_unavailable("flash-attn")


def test_factory_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    assert_gpu_only_reasons(monkeypatch, flashattn.backends, "flash-attn", "2.7.4")


def test_refuses_a_release_with_the_top_left_causal_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """flash-attn before 2.1 aligned its causal mask top-left for Sq != Sk: not what the adapter declares."""
    import importlib.metadata

    from implementations.base import BackendUnavailable

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.0.9")
    with pytest.raises(BackendUnavailable, match="older than 2.1"):
        flashattn.backends()
