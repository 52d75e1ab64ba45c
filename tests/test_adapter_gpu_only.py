"""The CUDA-only adapters ``flash-attn`` (implementations/flashattn.py), ``xformers``
(implementations/xformers_fmha.py) and ``flashinfer`` (implementations/flashinfer_prefill.py): on this machine
each is listed unavailable with its reason, and each reason it can give (package missing, no GPU, an import
failing against torch, xFormers' kernels not loading) is said by its factory."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch

from implementations import flashattn, flashinfer_prefill, xformers_fmha
from tests.adapters import assert_gpu_only_reasons, assert_listed_unavailable, parse_listing
from tests.test_runner import attnspec

STUB_FACTORY = "tests.xformers_without_kernels:factory"

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


def test_xformers_whose_kernels_do_not_load_is_listed_unavailable() -> None:
    """An xFormers wheel built for another torch imports but has no operator for any call: ``attnspec
    backends`` lists it unavailable, quoting the NotImplementedError and xFormers' "built for" warning."""
    done = attnspec("backends", env={"COLUMNS": "600", "ATTNSPEC_BACKENDS": STUB_FACTORY})
    assert done.returncode == 0, done.stderr
    status, reason = parse_listing(done.stdout)[STUB_FACTORY]
    assert status == "unavailable"
    assert "xformers 0.0.35 has no usable kernel" in reason, reason
    assert "NotImplementedError: No operator found for `memory_efficient_attention_forward`" in reason, reason
    assert "built for: PyTorch 2.10.0+cu128 with CUDA 1208 (you have 2.11.0+cu130)" in reason, reason
    assert "cutlassF-pt" not in reason, reason


def test_xformers_probe_passes_when_an_operator_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe refuses only a NotImplementedError: a forward that runs leaves the backend available."""
    calls: list[torch.Tensor] = []
    monkeypatch.setattr(xformers_fmha, "probe_input", lambda: torch.zeros(1, 1, 1, 8, dtype=torch.bfloat16))
    xformers_fmha.require_kernels(SimpleNamespace(memory_efficient_attention_forward=lambda q, k, v: calls.append(q)),
                                  "xformers 0.0.35", [])
    assert len(calls) == 1
