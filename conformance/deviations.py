"""Known deviations: xfails files of test ids (``*`` and ``?`` wildcards), each with its finding.

``conformance/xfails/<backend>.txt`` holds the built-in backends' deviations from SPEC.md; every run reads
them (``--no-builtin-xfails`` drops them), and ``--xfails-file`` adds a user's own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

#: xfails shipped for the built-in backends (their known deviations, each with its finding), always read
BUILTIN_XFAILS = sorted(Path(__file__).with_name("xfails").glob("*.txt"))




def read_xfails(paths: list[str]) -> dict[str, str]:
    """``{id pattern: reason}`` from xfails files: one id per line (``*`` and ``?`` are wildcards),
    ``# reason`` after it. A file that cannot be read is a usage error."""
    patterns: dict[str, str] = {}
    for p in paths:
        try:
            text = Path(p).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise pytest.UsageError(f"cannot read xfails file {p}: {exc}") from None
        for n, line in enumerate(text.splitlines(), 1):
            text, _, comment = line.partition("#")
            if text.strip():
                patterns[text.strip()] = comment.strip() or f"listed in {p}:{n}"
    return patterns
