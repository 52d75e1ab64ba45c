"""A newcomer's first hour: the README's two commands are what CI runs, the test command finds tox in the
set-up's venv, tox installs torch once, and every link in the documentation resolves inside the repository.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme_commands", ROOT / ".ci" / "readme_commands.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


readme_commands = _readme_commands()


def test_the_two_commands_are_set_up_then_tox() -> None:
    setup, tests = readme_commands.blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert setup.startswith("python3 -m venv .venv && . .venv/bin/activate && ")
    assert setup.endswith("&& attnspec run")
    assert tests == "PIP_CONSTRAINT=.ci/constraints-cpu.txt tox"


def test_the_set_up_installs_tox_for_the_test_command() -> None:
    """``tox: command not found`` after the set-up: the extras it installs must bring tox into the venv."""
    setup, _ = readme_commands.blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    installed = re.search(r"pip install -e '\.\[([a-z,]+)\]'", setup)
    assert installed, setup
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = pyproject[pyproject.index("[project.optional-dependencies]"):]
    extras = dict(re.findall(r"^([a-z]+) = \[(.*?)\]", section[:section.index("\n[", 1)], re.MULTILINE))
    requirements = [r.strip(' "') for extra in installed.group(1).split(",") for r in extras[extra].split(",")]
    assert any(re.match(r"tox\b", r) for r in requirements), requirements


def test_tox_installs_torch_once() -> None:
    """Every env of the default run that installs the package (and so torch) is the same env: ``.tox``
    grew to 5.8 GB when each env reinstalled torch."""
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(ROOT / "tox.ini", encoding="utf-8")
    envs = [e.strip() for e in ini["tox"]["env_list"].split(",")]
    installing = [e for e in envs if ini.get(f"testenv:{e}", "skip_install", fallback="false").strip() != "true"]
    assert len(installing) == 1, installing


def _fake_checkout(tmp_path: Path, setup: str, tests: str) -> Path:
    """A checkout holding the real .ci/ and a README whose two commands are ``setup`` and ``tests``."""
    shutil.copytree(ROOT / ".ci", tmp_path / ".ci", ignore=shutil.ignore_patterns("venv", "__pycache__"))
    (tmp_path / "README.md").write_text(f"# x\n\n## The two commands\n\n```bash\n{setup}\n```\n\ntext\n\n"
                                        f"```bash\n{tests}\n```\n\n## Commands\n\n```bash\necho not-run\n```\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    chromium = bin_dir / "chromium"  # present, so .ci/run installs nothing
    chromium.write_text("#!/bin/sh\n")
    chromium.chmod(chromium.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def _ci_run(tmp_path: Path, bin_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, timeout=60,
                          env=env, stdin=subprocess.DEVNULL)


def test_ci_runs_the_readme_blocks_verbatim_in_one_shell(tmp_path: Path) -> None:
    bin_dir = _fake_checkout(tmp_path, "export SEEN=set-up && echo first > order.txt",
                             'echo "second $SEEN" >> order.txt')
    done = _ci_run(tmp_path, bin_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "order.txt").read_text() == "first\nsecond set-up\n"
    assert "+ README block 1: export SEEN=set-up && echo first > order.txt" in done.stdout
    assert "not-run" not in done.stdout


@pytest.mark.parametrize("setup", ["false", "true && false && echo ran > never.txt", "echo a && exit 3"])
def test_ci_fails_when_the_set_up_fails(tmp_path: Path, setup: str) -> None:
    """A failure anywhere in the set-up chain (where ``set -e`` would look away) fails CI, and the test
    command does not run."""
    bin_dir = _fake_checkout(tmp_path, setup, "echo tests > tests-ran.txt")
    done = _ci_run(tmp_path, bin_dir)
    assert done.returncode != 0
    assert not (tmp_path / "tests-ran.txt").exists() and not (tmp_path / "never.txt").exists()


def test_ci_fails_when_the_tests_fail(tmp_path: Path) -> None:
    bin_dir = _fake_checkout(tmp_path, "true", "exit 7")
    assert _ci_run(tmp_path, bin_dir).returncode == 7


# ------------------------------------------------------------------------------------------------
# Links

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
#: a path written in backticks that starts outside the document's folder
PARENT_PATH = re.compile(r"`(\.\./[^`\s]+)`")


def _markdown_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


def _resolves_inside(document: Path, target: str) -> bool:
    path = (document.parent / target.split("#", 1)[0]).resolve()
    return path.is_relative_to(ROOT) and path.exists()


def test_every_relative_link_resolves_inside_the_repository() -> None:
    """Links and ``../`` paths in the documentation point at files of this repository (the docs pointed at
    ``../shared/SPEC.md``, a folder beside the checkout that a clone does not have)."""
    files = _markdown_files()
    assert ROOT / "README.md" in files and ROOT / "docs" / "benchmarks.md" in files
    broken = []
    for document in files:
        text = document.read_text(encoding="utf-8")
        for match in LINK.finditer(text):
            target = match.group(1) or match.group(2)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL or an anchor in the same page
            if not _resolves_inside(document, target):
                broken.append(f"{document.relative_to(ROOT)}: {target}")
        broken += [f"{document.relative_to(ROOT)}: `{m.group(1)}`" for m in PARENT_PATH.finditer(text)
                   if not _resolves_inside(document, m.group(1))]
    assert not broken, "\n".join(broken)


def test_the_link_check_sees_a_broken_link(tmp_path: Path) -> None:
    document = ROOT / "docs" / "benchmarks.md"
    assert _resolves_inside(document, "../conformance/SPEC.md#att-1")
    assert not _resolves_inside(document, "../../shared/SPEC.md")
    assert not _resolves_inside(document, "missing.md")
    assert LINK.findall("see [x](a/b.md) and ![img](c.png)\n[ref]: d.md") == [("a/b.md", ""), ("", "d.md")]


def test_readme_commands_script_is_plain_python() -> None:
    """CI runs the extractor with the machine's python3 before any venv exists: standard library only."""
    done = subprocess.run([sys.executable, "-I", str(ROOT / ".ci" / "readme_commands.py"), str(ROOT / "README.md")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for block in readme_commands.blocks((ROOT / "README.md").read_text(encoding="utf-8")):
        assert f"\n{block}\n" in done.stdout
