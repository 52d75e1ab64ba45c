"""The README's two commands as one bash script, so that CI runs exactly what a newcomer reads.

The ```bash blocks of README.md's "The two commands" section are written verbatim, in order, into one
script: they run in one shell (the test block uses the venv the set-up block activated), each is timed,
and the script stops with the status of the first block that fails. No ``set -e``: it would let a failure
inside an ``a && b && c`` block go by unnoticed.

Usage: ``python3 .ci/readme_commands.py [README.md] > script.sh && bash script.sh``
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

SECTION = "## The two commands"
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(readme: str) -> list[str]:
    """The ```bash blocks of the section, stripped, in order; ValueError when the section has none."""
    start = readme.find(SECTION)
    if start < 0:
        raise ValueError(f"the README has no {SECTION!r} section")
    end = readme.find("\n## ", start + len(SECTION))
    found = [block.strip() for block in BLOCK.findall(readme[start:end if end >= 0 else None])]
    if not found:
        raise ValueError(f"the README's {SECTION!r} section has no bash block")
    return found


def script(commands: list[str]) -> str:
    """A bash script running ``commands`` in one shell, in order, stopping at the first that fails."""
    lines = ["set -uo pipefail"]
    for i, command in enumerate(commands, 1):
        lines += [f"printf '%s\\n' {shlex.quote(f'+ README block {i}: {command}')}",
                  "SECONDS=0",
                  command,
                  "status=$?",
                  f'echo "README block {i}: exit status $status after $SECONDS s"',
                  '[ "$status" -eq 0 ] || exit "$status"']
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    readme = Path(argv[0] if argv else "README.md")
    sys.stdout.write(script(blocks(readme.read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
