"""Boundary checks shared by every backend (SPEC ATT-11, KD-8).

Each function raises :class:`~implementations.base.InvalidInputError` with a message that names the
problem, or returns the normalised arguments. Backends call them first thing in each operation.
"""

from __future__ import annotations

import math

import torch

from implementations.base import (
    Capabilities,
    CausalVariant,
    InvalidInputError,
    dtype_name,
    resolve_causal,
)


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


def attention_args(
    caps: Capabilities,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool | str | None,
    scale: float | None,
    tiles: tuple[int, int] | None = None,
    backward: bool = False,
    contiguous: bool = False,
) -> tuple[CausalVariant | None, float]:
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
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    _require(isinstance(scale, int | float) and math.isfinite(scale), f"scale must be a finite number, got {scale!r}")
    return resolve_causal(causal, caps), float(scale)


def backward_args(
    caps: Capabilities,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dout: torch.Tensor,
    *,
    causal: bool | str | None,
    scale: float | None,
    tiles: tuple[int, int] | None = None,
    contiguous: bool = False,
) -> tuple[CausalVariant | None, float]:
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
