"""Reading the fields of one JSON record into typed values, noting each field that is wrong (the decoding half
of ``conformance.codec``).

Result files are written by backends and tools the reader does not trust: any field may hold a list, a
string, null, a nested object, a huge number or markup. A reader asks for each field as the type it needs;
a value of another type is left out (None) and named in a problem line, so nothing downstream meets a type it
did not expect. Non-finite numbers are read from the strings ``"nan"``, ``"inf"``, ``"-inf"`` the codec writes
(docs/results-format.md), and from JSON numbers out of float range.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

Record = dict[str, Any]
T = TypeVar("T")

#: the string spellings of non-finite numbers in result files
NON_FINITE = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf, "infinity": math.inf,
              "-infinity": -math.inf}
#: a scalar a workload or metrics value may be
Scalar = float | int | str | bool


def describe(value: object, limit: int = 40) -> str:
    """A short, one-line description of a wrong value for a problem line (its JSON, cut at ``limit``
    characters)."""
    try:
        text = json.dumps(value, allow_nan=True, default=repr)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def as_number(value: object) -> float | None:
    """``value`` as a float: a JSON number (not a bool) or a non-finite spelling; None for anything else or
    for an integer too large for a float."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:
            return None
    if isinstance(value, str):
        return NON_FINITE.get(value.strip().lower())
    return None


def is_finite(value: object) -> bool:
    """A finite int or float (not a bool); an integer too large for a float is not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def parse_time(text: str) -> dt.datetime | None:
    """An ISO-8601 time (``Z`` or an offset; a naive time is taken as UTC), or None."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


@dataclass
class Fields:
    """The fields of one record, read by type; ``problems`` collects a line per wrong field, prefixed with
    ``where`` (e.g. ``line 12``)."""

    record: Record
    where: str
    problems: list[str] = field(default_factory=list)

    def wrong(self, key: str, expected: str) -> None:
        """Note that ``key`` does not hold ``expected``."""
        self.problems.append(f"{self.where}: {key} is {describe(self.record.get(key))}, not {expected}; left out")

    def _scalar(self, key: str, read: Callable[[object], T | None], expected: str) -> T | None:
        """Field ``key`` as ``read`` makes it (None: not ``expected``, which is noted); None when absent or null."""
        value = self.record.get(key)
        if value is None:
            return None
        got = read(value)
        if got is None:
            self.wrong(key, expected)
        return got

    def text(self, key: str) -> str | None:
        """A string field; None when absent or null."""
        return self._scalar(key, lambda v: v if isinstance(v, str) else None, "a string")

    def number(self, key: str) -> float | None:
        """A number field (``"nan"``/``"inf"`` strings included); None when absent or null."""
        return self._scalar(key, as_number, "a number")

    def integer(self, key: str) -> int | None:
        """An integer field (a whole float counts); None when absent or null."""
        return self._scalar(key, lambda v: int(v) if is_finite(v) and float(v).is_integer() else None,
                            "an integer")

    def flag(self, key: str) -> bool | None:
        """A true/false field; None when absent or null."""
        return self._scalar(key, lambda v: v if isinstance(v, bool) else None, "true or false")

    def time(self, key: str) -> dt.datetime | None:
        """An ISO-8601 time field, parsed (:func:`parse_time`); None when absent or not a time."""
        value = self.record.get(key)
        return parse_time(value) if isinstance(value, str) else None

    def strings(self, key: str) -> list[str]:
        """A list of strings (e.g. argv); a value of another type is left out and noted."""
        value = self.record.get(key)
        if value is None:
            return []
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        self.wrong(key, "a list of strings")
        return []

    def _list(self, key: str) -> list[Any]:
        """A list field as it is; empty when absent or null, and when not a list (noted)."""
        value = self.record.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.wrong(key, "a list")
            return []
        return value

    def numbers(self, key: str) -> list[float | None]:
        """A list of numbers (non-finite spellings included), each entry that is not one read as None."""
        return [as_number(v) for v in self._list(key)]

    def number_map(self, key: str) -> dict[str, float]:
        """An object of numbers (e.g. an error per output); entries that are not numbers are left out, noted."""
        kept: dict[str, float] = {}
        for name, value in self.mapping(key).items():
            number = as_number(value)
            if number is None:
                self.problems.append(f"{self.where}: {key}.{describe(name)} is {describe(value)}, not a number; "
                                     "left out")
            else:
                kept[name] = number
        return kept

    def mapping(self, key: str) -> Record:
        """An object field; empty when absent or null."""
        value = self.record.get(key)
        if value is None:
            return {}
        if isinstance(value, dict):
            return value
        self.wrong(key, "an object")
        return {}

    def records(self, key: str) -> list[Record]:
        """A list of objects; entries that are not objects are left out and noted."""
        value = self._list(key)
        kept = [v for v in value if isinstance(v, dict)]
        if len(kept) < len(value):
            self.problems.append(f"{self.where}: {len(value) - len(kept)} entries of {key} are not objects; left out")
        return kept

    def scalars(self, key: str) -> dict[str, Scalar]:
        """An object of scalars (numbers, strings, booleans), e.g. a workload; other entries are left out."""
        kept: dict[str, Scalar] = {}
        for name, value in self.mapping(key).items():
            if isinstance(value, (str, bool)) or is_finite(value):
                kept[name] = value
            else:
                self.problems.append(f"{self.where}: {key}.{describe(name)} is {describe(value)}, not a finite "
                                     "number, string or boolean; left out")
        return kept
