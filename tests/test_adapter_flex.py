"""The ``flex`` adapter (implementations/flex.py): listed, run through the CLI on the CPU, unavailable with a
reason where torch has no FlexAttention, and compiled for every shape on CUDA."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from implementations import flex
from implementations.base import BackendUnavailable
from tests.adapters import listing
from tests.test_runner import attnspec, cases


def test_listed_available_on_the_cpu_eagerly() -> None:
    status, text = listing()["flex"]
    assert status == "available"
    assert "eager" in text


def test_quick_conformance_through_the_cli(tmp_path: Path) -> None:
    """Both causal alignments pass ATT-3 on the CPU; the backward is unsupported there with torch's reason."""
    results = tmp_path / "flex.jsonl"
    done = attnspec("conformance", "--quick", "--backend", "flex", "--clause", "ATT-3", "--clause", "GRAD-1",
                    "--results", str(results), timeout=600)
    found = cases(results)
    att3 = {i: r for i, r in found.items() if r["clause"] == "ATT-3"}
    assert done.returncode == 0, done.stdout[-2000:]
    assert att3 and all(r["status"] == "passed" for r in att3.values())
    assert any("causal_tl" in i for i in att3) and any("causal_br" in i for i in att3)
    grad = [r for r in found.values() if r["clause"] == "GRAD-1"]
    assert grad and all(r["status"] == "unsupported" and "attention_backward" in r["reason"] for r in grad)


@pytest.mark.parametrize("offset", [0, 3, -4])
def test_mask_mod_is_the_causal_alignment(offset: int) -> None:
    """ATT-3's ``j <= i + offset`` is what the block mask's mask_mod says, for every (i, j)."""
    i, j = torch.arange(7).view(-1, 1), torch.arange(9).view(1, -1)
    visible = flex.causal_mask_mod(offset)(None, None, i, j)
    assert torch.equal(visible, torch.ones(7, 9, dtype=torch.bool).tril(offset))


def test_unavailable_with_a_reason_without_flex_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.nn.attention.flex_attention", None)
    with pytest.raises(BackendUnavailable, match="has no torch.nn.attention.flex_attention"):
        flex.backends()


def test_compiled_backend_raises_dynamo_recompile_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA every shape is compiled: dynamo's limit (default 8) would otherwise send later shapes to eager."""
    import torch._dynamo

    config = torch._dynamo.config
    names = [n for n in ("recompile_limit", "cache_size_limit") if hasattr(config, n)]
    for name in names:
        monkeypatch.setattr(config, name, 8)
    backend = flex.FlexBackend("cuda")
    assert names and all(getattr(config, n) >= flex.RECOMPILE_LIMIT for n in names)
    assert backend.capabilities.devices == ("cuda",) and backend.capabilities.backward_dtypes
