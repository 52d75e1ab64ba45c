"""How the report writes numbers: significant digits, milliseconds, bytes; ``—`` where a value is missing."""

from __future__ import annotations

import math

from conformance.fields import is_finite


def fmt_num(value: float | int | None, digits: int = 3) -> str:
    """A number with ``digits`` significant digits; ``—`` for None, ``NaN``/``inf``/``-inf`` spelled out."""
    if value is None:
        return "—"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def fmt_ms(seconds: float | None) -> str:
    """Seconds shown as milliseconds."""
    return fmt_num(seconds * 1e3) if is_finite(seconds) else "—"


def fmt_bytes(n: float | None) -> str:
    """A byte count in B, KiB, MiB or GiB."""
    if not is_finite(n):
        return "—"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:g} B"


def fmt_value(value: object) -> str:
    """A metrics value: a number with 3 significant digits, anything else as its text."""
    return fmt_num(value) if is_finite(value) else str(value)
