"""The ``flex`` adapter (implementations/flex.py): listed, run through the CLI on the CPU, unavailable with a
reason where torch has no FlexAttention, and compiled for every shape on CUDA."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from implementations import flex
from implementations.base import BackendUnavailable, causal_offset
from implementations.reference import ReferenceBackend
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
    import torch.nn.attention

    # both the module table and the package attribute: once any test imported the submodule, `from package
    # import name` finds the attribute without consulting sys.modules
    monkeypatch.setitem(sys.modules, "torch.nn.attention.flex_attention", None)
    monkeypatch.delattr(torch.nn.attention, "flex_attention", raising=False)
    with pytest.raises(BackendUnavailable, match="has no torch.nn.attention.flex_attention"):
        flex.backends()


def test_compiled_backend_raises_dynamo_recompile_limit() -> None:
    """On CUDA every shape is compiled: dynamo's limit (default 8) would otherwise send later shapes to eager."""
    import torch._dynamo

    config = torch._dynamo.config
    names = [n for n in ("recompile_limit", "cache_size_limit") if hasattr(config, n)]
    with config.patch({n: 8 for n in names}):  # restores the process's settings afterwards
        backend = flex.FlexBackend("cuda")
        assert names and all(getattr(config, n) >= flex.RECOMPILE_LIMIT for n in names)
    assert backend.capabilities.devices == ("cuda",) and backend.capabilities.backward_dtypes


@pytest.mark.parametrize(("Sq", "Sk"), [(37, 53), (53, 37)])
@pytest.mark.parametrize(("causal", "window", "softcap", "alibi"), [
    (None, (5, 3), None, False), ("top_left", (4, -1), 2.5, False), ("bottom_right", (-1, 0), None, True),
    (None, None, 1.5, True), ("bottom_right", (6, 2), 2.0, True)])
def test_variants_match_the_reference(Sq: int, Sk: int, causal: str | None, window: tuple[int, int] | None,
                                      softcap: float | None, alibi: bool) -> None:
    """window / softcap / ALiBi through flex's mask_mod and score_mod equal the float64 reference backend (GQA,
    Sq != Sk both ways, rows with no visible key included: lse -inf in the same places)."""
    g = torch.Generator().manual_seed(Sq * Sk)
    q = torch.randn(2, 4, Sq, 24, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 2, Sk, 24, generator=g, dtype=torch.float64) for _ in range(2))
    kwargs = {"causal": causal, "window": window, "softcap": softcap, "scale": 0.3,
              "alibi_slopes": torch.rand(4, generator=g) if alibi else None}
    out, lse = flex.backends().attention(q, k, v, **kwargs)
    want_out, want_lse = ReferenceBackend().attention(q, k, v, **kwargs)
    visible = torch.isfinite(want_lse)
    assert torch.equal(torch.isfinite(lse), visible)
    assert torch.allclose(out, want_out, atol=1e-12) and torch.allclose(lse[visible], want_lse[visible], atol=1e-12)


def test_varlen_through_the_cli(tmp_path: Path) -> None:
    """VLEN-1 passes on the CPU with the document mask (one flex call over the packed tokens); the varlen
    backward is unsupported there, as flex has no CPU backward."""
    results = tmp_path / "flex.jsonl"
    done = attnspec("conformance", "--quick", "--every-case", "--backend", "flex", "--clause", "VLEN-1",
                    "--clause", "VLEN-4", "--results", str(results), timeout=600)
    found = list(cases(results).values())
    assert done.returncode == 0, done.stdout[-2000:]
    vlen1 = [r for r in found if r["clause"] == "VLEN-1"]
    assert vlen1 and all(r["status"] == "passed" for r in vlen1)
    vlen4 = [r for r in found if r["clause"] == "VLEN-4"]
    assert vlen4 and all(r["status"] == "unsupported" and "attention_varlen_backward" in r["reason"] for r in vlen4)


@pytest.mark.parametrize(("causal", "window"), [(None, None), ("top_left", None), ("bottom_right", (2, 1))])
def test_document_mask_is_each_sequence_on_its_own(causal: str | None, window: tuple[int, int] | None) -> None:
    """The document mask_mod over the packed tokens is block diagonal, each block the sequence's own dense rule
    (its own ``Sk_b - Sq_b``), zero-length sequences included."""
    offsets_q, offsets_k = (0, 3, 3, 8, 12), (0, 5, 7, 7, 10)
    i, j = torch.arange(offsets_q[-1]).view(-1, 1), torch.arange(offsets_k[-1]).view(1, -1)
    got = flex.document_mask_mod(offsets_q, offsets_k, causal, window, torch.device("cpu"))(None, None, i, j)
    want = torch.zeros(offsets_q[-1], offsets_k[-1], dtype=torch.bool)
    for b in range(len(offsets_q) - 1):
        Sq, Sk = offsets_q[b + 1] - offsets_q[b], offsets_k[b + 1] - offsets_k[b]
        rule = flex.visibility_mask_mod(causal_offset(causal, Sq, Sk), window, Sk - Sq)
        block = rule(None, None, torch.arange(Sq).view(-1, 1), torch.arange(Sk).view(1, -1))
        want[offsets_q[b]:offsets_q[b + 1], offsets_k[b]:offsets_k[b + 1]] = block
    assert torch.equal(got, want)
