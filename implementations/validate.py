"""Boundary checks shared by every backend (SPEC ATT-11, KD-8).

Each function raises :class:`~implementations.base.InvalidInputError` with a message that names the
problem, or returns the normalised arguments. Backends call them first thing in each operation.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from implementations.base import (
    Capabilities,
    CausalVariant,
    InvalidInputError,
    dtype_name,
    resolve_causal,
)
from implementations.variants import Variants


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidInputError(message)


def _check_tensor(name: str, x: object, ndim: int) -> torch.Tensor:
    _require(isinstance(x, torch.Tensor), f"{name} must be a torch.Tensor, got {type(x).__name__}")
    assert isinstance(x, torch.Tensor)
    _require(x.dim() == ndim, f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    return x


def _check_device(caps: Capabilities, tensors: dict[str, torch.Tensor]) -> None:
    devices = {n: t.device for n, t in tensors.items()}
    first = next(iter(devices.values()))
    for n, d in devices.items():
        _require(d == first, f"device mismatch: {n} is on {d} but {next(iter(devices))} is on {first}")
    _require(first.type in caps.devices, f"device {first.type} is not supported (supported: {list(caps.devices)})")


def _check_dtype(op: str, dtypes: tuple[torch.dtype, ...], tensors: dict[str, torch.Tensor]) -> torch.dtype:
    first_name, first = next(iter(tensors.items()))
    for n, t in tensors.items():
        _require(t.dtype == first.dtype, f"dtype mismatch: {n} is {dtype_name(t.dtype)} but {first_name} is "
                 f"{dtype_name(first.dtype)}")
    _require(first.dtype in dtypes, f"{op}: dtype {dtype_name(first.dtype)} is not supported (supported: "
             f"{[dtype_name(d) for d in dtypes]})")
    return first.dtype


def attention_args(caps: Capabilities, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                   causal: bool | str | None, scale: float | None, tiles: tuple[int, int] | None = None,
                   backward: bool = False, contiguous: bool = False) -> tuple[CausalVariant | None, float]:
    """Check Q, K, V against SPEC shapes and ``caps``; return the causal variant and the scale.

    ``contiguous=True`` for backends that need contiguous inputs (they say so rather than read wrong memory).
    """
    for n, x in (("q", q), ("k", k), ("v", v)):
        _check_tensor(n, x, 4)
    B, Hq, Sq, D = q.shape
    _require(k.shape == v.shape, f"k and v shapes differ: k {tuple(k.shape)}, v {tuple(v.shape)}")
    Bk, Hk, Sk, Dk = k.shape
    _require(Bk == B, f"batch mismatch: q has B={B}, k/v have B={Bk}")
    _require(Dk == D, f"head dim mismatch: q has D={D}, k/v have D={Dk}")
    _require(min(B, Hq, Hk, Sq, Sk, D) > 0, f"empty dimension in q {tuple(q.shape)} or k {tuple(k.shape)}")
    _require(Hq % Hk == 0, f"Hq % Hk != 0: q has {Hq} heads, k/v have {Hk}; query heads must split evenly "
             "over KV heads")
    _require(Hk == Hq or caps.gqa, f"GQA/MQA (Hk={Hk} < Hq={Hq}) is not supported by this backend")
    _check_device(caps, {"q": q, "k": k, "v": v})
    _check_dtype("attention_backward" if backward else "attention",
                 caps.backward_dtypes if backward else caps.dtypes, {"q": q, "k": k, "v": v})
    lo, hi = caps.head_dims
    _require(lo <= D <= hi and D % caps.head_dim_multiple == 0,
             f"head dim D={D} is not supported (supported: {lo}..{hi}"
             + (f", multiple of {caps.head_dim_multiple})" if caps.head_dim_multiple > 1 else ")"))
    _require(not caps.head_dim_set or D in caps.head_dim_set,
             f"head dim D={D} is not supported (supported: {list(caps.head_dim_set)})")
    if caps.max_seq_len is not None:
        _require(max(Sq, Sk) <= caps.max_seq_len,
                 f"sequence length {max(Sq, Sk)} exceeds the supported maximum {caps.max_seq_len}")
    _require(Sq % caps.seq_len_multiple == 0 and Sk % caps.seq_len_multiple == 0,
             f"sequence lengths Sq={Sq}, Sk={Sk} must be multiples of {caps.seq_len_multiple}")
    _require(not caps.equal_seq_lens or Sq == Sk, f"sequence lengths must be equal, got Sq={Sq}, Sk={Sk}")
    _require(caps.max_batch is None or B <= caps.max_batch,
             f"batch B={B} exceeds the supported maximum {caps.max_batch}")
    if contiguous or caps.contiguous_only:
        for n, x in (("q", q), ("k", k), ("v", v)):
            _require(x.is_contiguous(), f"{n} must be contiguous (got strides {x.stride()})")
    if tiles is not None:
        _require(tuple(tiles) in caps.tiles, f"tile sizes {tuple(tiles)} are not supported (supported: "
                 f"{[tuple(t) for t in caps.tiles]})")
    return resolve_causal(causal, caps), scale_arg(scale, D)


def scale_arg(scale: float | None, D: int) -> float:
    """``scale``, a finite number; ``1/sqrt(D)`` when None."""
    if scale is None:
        return 1.0 / math.sqrt(D)
    _require(isinstance(scale, int | float) and math.isfinite(scale), f"scale must be a finite number, got {scale!r}")
    return float(scale)


def backward_args(caps: Capabilities, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor, dout: torch.Tensor, *, causal: bool | str | None, scale: float | None,
                  tiles: tuple[int, int] | None = None, contiguous: bool = False) -> tuple[CausalVariant | None, float]:
    """:func:`attention_args` for backward, plus the shapes of ``out``, ``lse`` and ``dout``."""
    resolved = attention_args(caps, q, k, v, causal=causal, scale=scale, tiles=tiles, backward=True,
                              contiguous=contiguous)
    for n, x in (("out", out), ("dout", dout)):
        _check_tensor(n, x, 4)
        _require(x.shape == q.shape, f"{n} shape {tuple(x.shape)} differs from q {tuple(q.shape)}")
        _require(x.device == q.device, f"device mismatch: {n} is on {x.device} but q is on {q.device}")
    _check_dtype("attention_backward", caps.backward_dtypes, {"q": q, "out": out, "dout": dout})
    _check_tensor("lse", lse, 3)
    _require(lse.shape == q.shape[:3], f"lse shape {tuple(lse.shape)} must be [B, Hq, Sq] = {tuple(q.shape[:3])}")
    _require(lse.device == q.device, f"device mismatch: lse is on {lse.device} but q is on {q.device}")
    _require(lse.dtype in (torch.float32, torch.float64),
             f"lse must be float32 or float64, got {dtype_name(lse.dtype)}")
    return resolved


def delta_args(caps: Capabilities, out: torch.Tensor, dout: torch.Tensor) -> None:
    """Boundary check of ``attention_delta``: ``out`` and ``dout`` both ``[B, Hq, Sq, D]``, same dtype and device."""
    _check_tensor("out", out, 4)
    _check_tensor("dout", dout, 4)
    _require(out.shape == dout.shape, f"shape mismatch: out {tuple(out.shape)} vs dout {tuple(dout.shape)}")
    _check_device(caps, {"out": out, "dout": dout})
    _check_dtype("attention_delta", caps.backward_dtypes, {"out": out, "dout": dout})


def merge_args(caps: Capabilities, m1: torch.Tensor, l1: torch.Tensor, m2: torch.Tensor, l2: torch.Tensor) -> None:
    """Boundary check of ``softmax_merge``: four tensors of one shape, dtype and device."""
    tensors = {"m1": m1, "l1": l1, "m2": m2, "l2": l2}
    for n, x in tensors.items():
        _require(isinstance(x, torch.Tensor), f"{n} must be a torch.Tensor, got {type(x).__name__}")
    for n, x in tensors.items():
        _require(x.shape == m1.shape, f"shape mismatch: {n} is {tuple(x.shape)} but m1 is {tuple(m1.shape)}")
    _check_device(caps, tensors)
    _check_dtype("softmax_merge", caps.stats_dtypes, tensors)


def rows_arg(caps: Capabilities, op: str, x: torch.Tensor) -> torch.Tensor:
    """The input of softmax_stats (``[rows, cols]``), reduce_sum or prefix_sum (``[n]``)."""
    ndim, dtypes = {"softmax_stats": (2, caps.stats_dtypes), "reduce_sum": (1, caps.reduce_dtypes),
                    "prefix_sum": (1, caps.reduce_dtypes)}[op]
    _check_tensor("x", x, ndim)
    _require(x.numel() > 0, f"x is empty (shape {tuple(x.shape)})")
    _check_device(caps, {"x": x})
    _check_dtype(op, dtypes, {"x": x})
    return x


def kd_args(
    caps: Capabilities,
    s: torch.Tensor,
    t: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    labels: torch.Tensor | None,
    ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]:
    """Check KD-loss inputs (KD-8); ``[B, L, V]`` logits are flattened to ``[N, V]`` rows (KD-1).

    Returns ``(s, t, labels, alpha)`` with ``alpha`` forced to 1 when there are no labels (KD-1).
    """
    for n, x in (("s", s), ("t", t)):
        _require(isinstance(x, torch.Tensor), f"{n} must be a torch.Tensor, got {type(x).__name__}")
        _require(x.dim() >= 2, f"{n} must be [N, V] or [..., V] logits, got shape {tuple(x.shape)}")
    _require(s.shape == t.shape, f"shape mismatch: student logits {tuple(s.shape)} vs teacher {tuple(t.shape)}")
    _require(s.numel() > 0, f"empty logits {tuple(s.shape)}")
    _require(isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0,
             f"temperature must be a finite number > 0, got {temperature!r}")
    _require(isinstance(alpha, int | float) and 0.0 <= alpha <= 1.0, f"alpha must be in [0, 1], got {alpha!r}")
    _check_device(caps, {"s": s, "t": t})
    _check_dtype("kd_loss", caps.kd_dtypes, {"s": s, "t": t})
    V = s.shape[-1]
    s2, t2 = s.reshape(-1, V), t.reshape(-1, V)
    if labels is None:
        return s2, t2, None, 1.0
    _require(isinstance(labels, torch.Tensor), f"labels must be a torch.Tensor, got {type(labels).__name__}")
    _require(labels.shape == s.shape[:-1], f"labels shape {tuple(labels.shape)} must be the logits' leading "
             f"shape {tuple(s.shape[:-1])}")
    _require(not labels.dtype.is_floating_point and labels.dtype != torch.bool,
             f"labels must be integers, got {dtype_name(labels.dtype)}")
    _require(labels.device == s.device, f"device mismatch: labels on {labels.device} but logits on {s.device}")
    flat = labels.reshape(-1)
    bad = (flat != ignore_index) & ((flat < 0) | (flat >= V))
    if bool(bad.any()):
        first = int(flat[bad][0])
        raise InvalidInputError(f"label {first} is out of range [0, {V}) and is not ignore_index={ignore_index}")
    return s2, t2, flat, float(alpha)


# -- attention variants (SPEC VAR, VLEN, DEC, FP8) ------------------------------------------------------------


def variant_args(caps: Capabilities, scores_shape: tuple[int, int, int, int], device: torch.device, *,
                 window: tuple[int, int] | None = None, softcap: float | None = None,
                 bias: torch.Tensor | None = None, alibi_slopes: torch.Tensor | None = None) -> Variants:
    """Check the variant arguments against ``caps.attention_variants`` and the ``[B, Hq, Sq, Sk]`` score shape.

    ``window`` two integers >= -1; ``softcap`` a finite number > 0; ``bias`` a float or bool tensor
    broadcastable to the scores; ``alibi_slopes`` float32 ``[Hq]``; tensors on the inputs' device.
    """
    variants = Variants(_window_arg(window), _softcap_arg(softcap), bias, alibi_slopes)
    undeclared = sorted(variants.names - caps.attention_variants)
    _require(not undeclared, f"attention variant {', '.join(undeclared)} is not supported (supported: "
             f"{sorted(caps.attention_variants)})")
    if bias is not None:
        _require(isinstance(bias, torch.Tensor), f"bias must be a torch.Tensor, got {type(bias).__name__}")
        _require(bias.dtype == torch.bool or bias.dtype.is_floating_point,
                 f"bias must be a float tensor or a bool mask, got {dtype_name(bias.dtype)}")
        _require(bias.dim() <= 4 and all(b in (1, s) for b, s in zip(bias.shape[::-1], scores_shape[::-1])),
                 f"bias shape {tuple(bias.shape)} does not broadcast to [B, Hq, Sq, Sk] = {scores_shape}")
        _require(bias.device == device, f"device mismatch: bias is on {bias.device} but q is on {device}")
    if alibi_slopes is not None:
        _check_tensor("alibi_slopes", alibi_slopes, 1)
        _require(alibi_slopes.shape[0] == scores_shape[1] and alibi_slopes.dtype == torch.float32,
                 f"alibi_slopes must be float32 [Hq] = [{scores_shape[1]}], got {dtype_name(alibi_slopes.dtype)} "
                 f"{tuple(alibi_slopes.shape)}")
        _require(alibi_slopes.device == device,
                 f"device mismatch: alibi_slopes is on {alibi_slopes.device} but q is on {device}")
    return variants


def _window_arg(window: object) -> tuple[int, int] | None:
    if window is None:
        return None
    _require(isinstance(window, tuple | list) and len(window) == 2
             and all(isinstance(w, int) and not isinstance(w, bool) and w >= -1 for w in window),
             f"window must be (left, right), two integers >= -1 (-1: unbounded), got {window!r}")
    return int(window[0]), int(window[1])  # type: ignore[index]


def _softcap_arg(softcap: object) -> float | None:
    if softcap is None:
        return None
    _require(isinstance(softcap, int | float) and not isinstance(softcap, bool) and math.isfinite(softcap)
             and softcap > 0, f"softcap must be a finite number > 0, got {softcap!r}")
    return float(softcap)  # type: ignore[arg-type]


def cu_seqlens_arg(name: str, cu: torch.Tensor, total: int, max_seqlen: int, device: torch.device) -> torch.Tensor:
    """``cu_seqlens``: int32 ``[num_seqs + 1]``, from 0, non-decreasing, ending at ``total``; no sequence longer
    than ``max_seqlen``. Returns it on the CPU (the lengths are read on the host)."""
    _check_tensor(name, cu, 1)
    _require(cu.dtype == torch.int32, f"{name} must be int32, got {dtype_name(cu.dtype)}")
    _require(cu.device == device, f"device mismatch: {name} is on {cu.device} but q is on {device}")
    _require(cu.shape[0] >= 2, f"{name} must hold num_seqs + 1 >= 2 offsets, got {cu.shape[0]}")
    host = cu.cpu()
    lengths = host[1:] - host[:-1]
    _require(int(host[0]) == 0 and int(host[-1]) == total,
             f"{name} must start at 0 and end at the packed length {total}, got {int(host[0])}..{int(host[-1])}")
    _require(bool((lengths >= 0).all()), f"{name} must be non-decreasing (a sequence length is negative)")
    _require(isinstance(max_seqlen, int) and int(lengths.max()) <= max_seqlen,
             f"max_seqlen for {name} is {max_seqlen!r}, but a sequence has length {int(lengths.max())}")
    return host


def packed_args(caps: Capabilities, op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                dtypes: tuple[torch.dtype, ...]) -> None:
    """Packed ``q [total_q, Hq, D]``, ``k, v [total_k, Hk, D]`` of the varlen operations (SPEC VLEN)."""
    for n, x in (("q", q), ("k", k), ("v", v)):
        _check_tensor(n, x, 3)
    _require(k.shape == v.shape, f"k and v shapes differ: k {tuple(k.shape)}, v {tuple(v.shape)}")
    _require(q.shape[2] == k.shape[2], f"head dim mismatch: q has D={q.shape[2]}, k/v have D={k.shape[2]}")
    _head_args(caps, q.shape[1], k.shape[1], q.shape[2])
    _check_device(caps, {"q": q, "k": k, "v": v})
    _check_dtype(op, dtypes, {"q": q, "k": k, "v": v})


def _head_args(caps: Capabilities, Hq: int, Hk: int, D: int) -> None:
    """Heads and head dim of the variant operations: ``Hq % Hk == 0``, GQA declared, D declared."""
    _require(min(Hq, Hk, D) > 0, f"empty dimension: Hq={Hq}, Hk={Hk}, D={D}")
    _require(Hq % Hk == 0, f"Hq % Hk != 0: q has {Hq} heads, k/v have {Hk}")
    _require(Hk == Hq or caps.gqa, f"GQA/MQA (Hk={Hk} < Hq={Hq}) is not supported by this backend")
    lo, hi = caps.head_dims
    _require(lo <= D <= hi and D % caps.head_dim_multiple == 0 and (not caps.head_dim_set or D in caps.head_dim_set),
             f"head dim D={D} is not supported (supported: {lo}..{hi}, multiple of {caps.head_dim_multiple}"
             + (f", one of {list(caps.head_dim_set)})" if caps.head_dim_set else ")"))


def decode_args(caps: Capabilities, q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor,
                block_table: torch.Tensor, kv_lens: torch.Tensor, num_splits: int | None) -> torch.Tensor:
    """Paged decode (SPEC DEC): ``q [B, Hq, Sq <= 16, D]``, pages ``[num_pages, page_size, Hk, D]``, an int32
    ``block_table [B, max_pages]`` of page indices in range, int32 ``kv_lens [B]`` with
    ``Sq <= kv_lens[b] <= max_pages · page_size``. Returns ``kv_lens`` on the CPU."""
    _check_tensor("q", q, 4)
    for n, x in (("k_pages", k_pages), ("v_pages", v_pages)):
        _check_tensor(n, x, 4)
    _require(k_pages.shape == v_pages.shape, f"k_pages and v_pages shapes differ: {tuple(k_pages.shape)}, "
             f"{tuple(v_pages.shape)}")
    B, Hq, Sq, D = q.shape
    num_pages, page_size, Hk, Dk = k_pages.shape
    _require(Dk == D, f"head dim mismatch: q has D={D}, the pages have D={Dk}")
    _require(1 <= Sq <= 16, f"decode takes 1 to 16 queries per sequence, got Sq={Sq}")
    _require(B > 0 and num_pages > 0 and page_size > 0, f"empty q {tuple(q.shape)} or pages {tuple(k_pages.shape)}")
    _head_args(caps, Hq, Hk, D)
    _check_device(caps, {"q": q, "k_pages": k_pages, "v_pages": v_pages, "block_table": block_table,
                         "kv_lens": kv_lens})
    _check_dtype("attention_decode_paged", caps.decode_dtypes, {"q": q, "k_pages": k_pages, "v_pages": v_pages})
    _check_tensor("block_table", block_table, 2)
    _check_tensor("kv_lens", kv_lens, 1)
    _require(block_table.dtype == torch.int32 and kv_lens.dtype == torch.int32,
             f"block_table and kv_lens must be int32, got {dtype_name(block_table.dtype)}, {dtype_name(kv_lens.dtype)}")
    _require(block_table.shape[0] == B and kv_lens.shape[0] == B,
             f"block_table {tuple(block_table.shape)} and kv_lens {tuple(kv_lens.shape)} must have B={B} rows")
    lens = kv_lens.cpu()
    _require(bool((lens >= Sq).all()) and int(lens.max()) <= block_table.shape[1] * page_size,
             f"kv_lens must be in [Sq={Sq}, max_pages · page_size = {block_table.shape[1] * page_size}], got "
             f"{lens.tolist()}")
    used = torch.arange(block_table.shape[1])[None, :] < ((lens + page_size - 1) // page_size)[:, None]
    pages = block_table.cpu()[used]
    _require(bool(((pages >= 0) & (pages < num_pages)).all()),
             f"block_table holds a page index outside [0, {num_pages}) among the pages kv_lens uses")
    _require(num_splits is None or (isinstance(num_splits, int) and num_splits >= 1),
             f"num_splits must be None or a positive integer, got {num_splits!r}")
    return lens


def fp8_args(caps: Capabilities, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             descales: dict[str, torch.Tensor], causal: bool | str | None,
             scale: float | None) -> tuple[CausalVariant | None, float]:
    """fp8 forward (SPEC FP8): the shapes of :func:`attention_args` (dtypes from ``caps.fp8_dtypes``) and
    three float32 0-dim descale factors, finite and > 0, on the inputs' device."""
    fp8_caps = dataclasses.replace(caps, dtypes=caps.fp8_dtypes)
    resolved = attention_args(fp8_caps, q, k, v, causal=causal, scale=scale)
    for n, x in descales.items():
        _check_tensor(n, x, 0)
        _require(x.dtype == torch.float32, f"{n} must be float32, got {dtype_name(x.dtype)}")
        _require(x.device == q.device, f"device mismatch: {n} is on {x.device} but q is on {q.device}")
        _require(math.isfinite(float(x)) and float(x) > 0, f"{n} must be finite and > 0, got {float(x)}")
    return resolved
