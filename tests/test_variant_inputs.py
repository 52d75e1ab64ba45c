"""The boundary checks of the attention variants (SPEC VAR, VLEN, DEC, FP8): every malformed argument is
refused with InvalidInputError naming the problem, an undeclared variant is refused and reported unsupported,
and well-formed calls give the validated records."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from implementations.base import AttentionCase, Backend, Capabilities, InvalidInputError
from implementations.ops import OPS
from implementations.variants import ATTENTION_VARIANTS, DecodeCase, VarlenCase

F32 = torch.float32
ALL = Capabilities(attention_variants=frozenset(ATTENTION_VARIANTS), backward_dtypes=(F32,), varlen_dtypes=(F32,),
                   varlen_backward_dtypes=(F32,), decode_dtypes=(F32,), fp8_dtypes=(torch.float8_e4m3fn,))
NONE = Capabilities(varlen_dtypes=(F32,))


def qkv(B: int = 2, H: int = 4, Sq: int = 5, Sk: int = 7, D: int = 8) -> tuple[torch.Tensor, ...]:
    return torch.randn(B, H, Sq, D), torch.randn(B, H, Sk, D), torch.randn(B, H, Sk, D)


def attention(caps: Capabilities = ALL, **kwargs: object) -> object:
    return OPS["attention"].validate(caps, *qkv(), **kwargs)


def test_variants_are_recorded() -> None:
    slopes = torch.ones(4)
    inp = attention(window=(3, 0), softcap=30, bias=torch.zeros(5, 7), alibi_slopes=slopes)
    assert inp.variants.window == (3, 0) and inp.variants.softcap == 30.0
    assert inp.variants.names == frozenset(ATTENTION_VARIANTS)
    assert attention().variants.names == frozenset()


@pytest.mark.parametrize("kwargs, message", [
    ({"window": (3, -2)}, "window must be"), ({"window": 3}, "window must be"), ({"window": (1.5, 0)}, "window"),
    ({"softcap": 0.0}, "softcap must be"), ({"softcap": float("inf")}, "softcap"), ({"softcap": True}, "softcap"),
    ({"bias": torch.zeros(5, 6)}, "does not broadcast"), ({"bias": torch.zeros(3, 4, 5, 7)}, "does not broadcast"),
    ({"bias": torch.zeros(5, 7, dtype=torch.int32)}, "bool mask"),
    ({"alibi_slopes": torch.ones(3)}, "alibi_slopes must be float32 \\[Hq\\]"),
    ({"alibi_slopes": torch.ones(4, dtype=torch.float64)}, "alibi_slopes must be float32"),
])
def test_bad_variant_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        attention(**kwargs)


def test_undeclared_variant_is_refused_and_reported() -> None:
    with pytest.raises(InvalidInputError, match="attention variant softcap is not supported"):
        attention(NONE, softcap=5.0)

    class Plain(Backend):
        capabilities = NONE

        def attention(self, *args: object, **kwargs: object) -> None: ...

        def attention_varlen(self, *args: object, **kwargs: object) -> None: ...

    case = AttentionCase(1, 2, 2, 3, 3, 8, F32, "cpu", window=(1, 1), alibi=True)
    assert Plain().not_supported_reasons("attention", case) == [
        "attention variant window not supported (declared: [])", "attention variant alibi not supported (declared: [])"]
    varlen = VarlenCase((3, 0), (3, 2), 2, 2, 8, F32, "cpu", softcap=10.0)
    assert Plain().not_supported_reasons("attention_varlen", varlen) == [
        "attention variant softcap not supported (declared: [])"]
    assert Plain().not_supported_reasons("attention_varlen", dataclasses.replace(varlen, softcap=None)) == []


def packed(lengths_q: list[int], lengths_k: list[int], H: int = 2, D: int = 8) -> tuple:
    cu = [torch.tensor([0, *torch.tensor(n).cumsum(0).tolist()], dtype=torch.int32) for n in (lengths_q, lengths_k)]
    q, k, v = torch.randn(sum(lengths_q), H, D), torch.randn(sum(lengths_k), H, D), torch.randn(sum(lengths_k), H, D)
    return q, k, v, cu[0], cu[1], max(lengths_q), max(lengths_k)


def test_varlen_record_with_a_zero_length_sequence() -> None:
    inp = OPS["attention_varlen"].validate(ALL, *packed([3, 0, 4], [5, 0, 4]), causal="bottom_right", window=(2, 0))
    assert inp.offsets_q == (0, 3, 3, 7) and inp.offsets_k == (0, 5, 5, 9)
    assert inp.sequences[1] == (slice(3, 3), slice(5, 5)) and inp.causal == "bottom_right"


@pytest.mark.parametrize("change, message", [
    (lambda a: (*a[:3], a[3].to(torch.int64), *a[4:]), "cu_seqlens_q must be int32"),
    (lambda a: (*a[:3], torch.tensor([0, 4, 3, 7], dtype=torch.int32), *a[4:]), "non-decreasing"),
    (lambda a: (*a[:3], torch.tensor([0, 3, 3, 6], dtype=torch.int32), *a[4:]), "end at the packed length 7"),
    (lambda a: (*a[:4], torch.tensor([0, 9], dtype=torch.int32), a[5], 9), "has 3 sequences but cu_seqlens_k has 1"),
    (lambda a: (*a[:5], 2, a[6]), "max_seqlen for cu_seqlens_q is 2"),
    (lambda a: (a[0], a[1][:, :2], a[2][:, :2], *a[3:]), "Hq % Hk != 0"),
])
def test_bad_varlen_arguments_are_refused(change, message: str) -> None:  # noqa: ANN001
    args = change(packed([3, 0, 4], [5, 0, 4], H=3))
    with pytest.raises(InvalidInputError, match=message):
        OPS["attention_varlen"].validate(ALL, *args)


def test_varlen_backward_checks_lse_shape() -> None:
    q, k, v, *rest = packed([3, 4], [5, 4])
    out, dout = torch.randn_like(q), torch.randn_like(q)
    inp = OPS["attention_varlen_backward"].validate(ALL, q, k, v, out, torch.zeros(2, 7), dout, *rest)
    assert inp.out is out and inp.offsets_q == (0, 3, 7)
    with pytest.raises(InvalidInputError, match="lse must be float32 or float64 \\[Hq, total_q\\]"):
        OPS["attention_varlen_backward"].validate(ALL, q, k, v, out, torch.zeros(7, 2), dout, *rest)


def paged(kv_lens: list[int], page: int = 4, pages: int = 10, Sq: int = 2) -> tuple:
    q = torch.randn(len(kv_lens), 4, Sq, 8)
    k, v = torch.randn(pages, page, 2, 8), torch.randn(pages, page, 2, 8)
    table = torch.randperm(pages)[: len(kv_lens) * 3].reshape(len(kv_lens), 3).to(torch.int32)
    return q, k, v, table, torch.tensor(kv_lens, dtype=torch.int32)


def test_decode_record() -> None:
    inp = OPS["attention_decode_paged"].validate(ALL, *paged([5, 12]), num_splits=3)
    assert inp.lengths == (5, 12) and inp.page_size == 4 and inp.num_splits == 3


@pytest.mark.parametrize("change, message", [
    (lambda a: (torch.randn(2, 4, 17, 8), *a[1:]), "1 to 16 queries"),
    (lambda a: (*a[:4], torch.tensor([1, 5], dtype=torch.int32)), "kv_lens must be in \\[Sq=2"),
    (lambda a: (*a[:4], torch.tensor([5, 13], dtype=torch.int32)), "max_pages"),
    (lambda a: (*a[:3], a[3].to(torch.int64), a[4]), "must be int32"),
    (lambda a: (*a[:3], torch.full((2, 3), 10, dtype=torch.int32), a[4]), "page index outside \\[0, 10\\)"),
    (lambda a: (a[0], a[1][..., :4], *a[2:]), "shapes differ"),
])
def test_bad_decode_arguments_are_refused(change, message: str) -> None:  # noqa: ANN001
    with pytest.raises(InvalidInputError, match=message):
        OPS["attention_decode_paged"].validate(ALL, *change(paged([5, 12])))


def test_unused_table_entries_are_not_checked() -> None:
    q, k, v, table, lens = paged([4, 5])
    table[0, 1:] = -1  # sequence 0 uses one page: the rest of its row is padding
    assert OPS["attention_decode_paged"].validate(ALL, q, k, v, table, lens).lengths == (4, 5)


def test_fp8_arguments() -> None:
    q, k, v = (x.to(torch.float8_e4m3fn) for x in qkv())
    one = torch.tensor(1.0)
    inp = OPS["attention_fp8"].validate(ALL, q, k, v, one, one, torch.tensor(0.5), causal=True)
    assert inp.causal == "top_left" and float(inp.v_descale) == 0.5
    with pytest.raises(InvalidInputError, match="v_descale must be finite and > 0"):
        OPS["attention_fp8"].validate(ALL, q, k, v, one, one, torch.tensor(0.0))
    with pytest.raises(InvalidInputError, match="q_descale must have 0 dimensions"):
        OPS["attention_fp8"].validate(ALL, q, k, v, torch.ones(1), one, one)
    with pytest.raises(InvalidInputError, match="dtype float32 is not supported"):
        OPS["attention_fp8"].validate(ALL, *qkv(), one, one, one)


def test_case_labels_name_the_variants() -> None:
    case = AttentionCase(1, 2, 2, 3, 3, 8, F32, "cpu", "bottom_right", window=(4, 0), softcap=30.0, bias="mask")
    assert case.label == "B1H2-3x3-D8-causal_br-w4.0-cap30-bias_mask"
    assert DecodeCase((17, 64), 8, 2, 1, 64, 16, F32, "cpu", 4).label == "B2-kv17.64-H8k2-q1-D64-page16-split4"
