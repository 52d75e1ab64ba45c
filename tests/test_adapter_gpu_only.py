"""The CUDA-only adapters ``flash-attn`` (implementations/flashattn.py), ``xformers``
(implementations/xformers_fmha.py) and ``flashinfer`` (implementations/flashinfer_prefill.py): on this machine
each is listed unavailable with its reason, and each reason it can give (package missing, no GPU, an import
failing against torch) is said by its factory."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from implementations import flashattn, flashinfer_prefill, xformers_fmha
from tests.adapters import assert_gpu_only_reasons, assert_listed_unavailable

#: (backend name, its factory, the distribution it wraps, a release the factory accepts)
ADAPTERS: list[tuple[str, Callable[[], object], str, str]] = [
    ("flash-attn", flashattn.backends, "flash-attn", "2.7.4"),
    ("xformers", xformers_fmha.backends, "xformers", "0.0.35"),
    ("flashinfer", flashinfer_prefill.backends, "flashinfer-python", "0.7.4"),
]


@pytest.mark.parametrize("name", [a[0] for a in ADAPTERS])
def test_listed_unavailable_with_its_reason(name: str) -> None:
    assert_listed_unavailable(name)


@pytest.mark.parametrize(("name", "factory", "distribution", "version"), ADAPTERS, ids=[a[0] for a in ADAPTERS])
def test_factory_reasons(monkeypatch: pytest.MonkeyPatch, name: str, factory: Callable[[], object],
                         distribution: str, version: str) -> None:
    assert_gpu_only_reasons(monkeypatch, factory, distribution, version)


def test_flash_attn_refuses_a_release_with_the_top_left_causal_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """flash-attn before 2.1 aligned its causal mask top-left for Sq != Sk: not what the adapter declares."""
    import importlib.metadata

    from implementations.base import BackendUnavailable

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.0.9")
    with pytest.raises(BackendUnavailable, match="older than 2.1"):
        flashattn.backends()
