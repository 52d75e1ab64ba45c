"""The terminal consoles of the command lines: text printed as text."""

from __future__ import annotations

from rich.console import Console


def text_console(**options: object) -> Console:
    """A rich console that reads no markup, emoji or highlighting from what it prints: backend names,
    reasons, install hints (``pip install 'attnspec[liger]'``), test ids and paths appear as written.
    ``options`` go to :class:`~rich.console.Console` (``stderr``, ``width``)."""
    return Console(markup=False, emoji=False, highlight=False, **options)
