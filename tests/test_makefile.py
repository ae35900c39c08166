"""The Makefile (docs/development.md): what `make demo` and `make test` print on first use."""

from __future__ import annotations

import itertools
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# What setuptools' editable wheel warns on every editable install (its first lines; the
# box of asterisks follows), through Python's warnings in the build backend's process.
SETUPTOOLS_NOTICE = (
    "Editable installation.\n!!\n\n        ****\n        Please be careful with folders in "
    "your working directory with the same\n        name as your package as they may take "
    "precedence during imports.\n"
)


def _install_command() -> list[str]:
    """The Makefile's `pip install -e` line, as make would run it (make -n: printed only)."""
    if shutil.which("make") is None:
        pytest.skip("no make on PATH")
    recipe = subprocess.run(
        ["make", "-n", "-B", ".venv/.installed"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    [line] = [line for line in recipe.splitlines() if "pip install" in line and " -e " in line]
    return shlex.split(line)


def test_the_editable_install_hides_setuptools_notice_and_nothing_else() -> None:
    command = _install_command()
    assignments = dict(
        word.split("=", 1)
        for word in itertools.takewhile(lambda w: re.fullmatch(r"[A-Z_]+=.*", w), command)
    )
    assert "PYTHONWARNINGS" in assignments, command
    # The same environment for a Python that warns as setuptools does, and otherwise too.
    emit = (
        "import warnings\n"
        "class BuildBackendWarning(UserWarning): pass\n"
        f"warnings.warn({SETUPTOOLS_NOTICE!r}, BuildBackendWarning)\n"
        "warnings.warn('another warning', UserWarning)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", emit],
        env={"PYTHONWARNINGS": assignments["PYTHONWARNINGS"]},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "Editable installation" not in done.stderr
    assert "Please be careful" not in done.stderr
    assert "UserWarning: another warning" in done.stderr  # only that notice is filtered
    assert "Invalid -W option" not in done.stderr
