"""Earlier releases of rfm-worker, built from the project's own git history, to run beside
this one (tests/services/test_rolling_upgrade.py).

A release is installed once into its own environment under ~/.cache/rfm-worker/releases/:
its source exported with `git archive`, a virtual environment whose `worker` package is
that source. The dependencies are the ones this suite runs with (a release whose declared
dependencies differ from this checkout's gets its own, installed with pip).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Release:
    version: str
    commit: str  # the commit of the project's history that is this release


# The release before this one: the state format 1, no record of the format in the roster.
PREVIOUS = Release("0.1.0", "6349d52a0b622aeefd965b7a5ca3c82179b068b0")


def _git(*args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, check=False)


def _dependencies(pyproject: bytes) -> list[str]:
    import tomllib

    return list(tomllib.loads(pyproject.decode())["project"]["dependencies"])


def installed(release: Release) -> Path:
    """The python of `release`'s own environment (built on first use; run it in the
    directory `source(python)`); the test is skipped, saying why, where the project's git
    history is not at hand."""
    if shutil.which("git") is None or _git("rev-parse", "--git-dir").returncode != 0:
        pytest.skip("a previous release is built from the project's git history: none here")
    if _git("cat-file", "-e", f"{release.commit}^{{commit}}").returncode != 0:
        pytest.skip(f"commit {release.commit[:12]} ({release.version}) is not in this history")
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    home = base / "rfm-worker" / "releases" / f"{release.version}-{release.commit[:12]}"
    python = home / "env" / "bin" / "python"
    if python.exists() and _whole(home):
        return python
    shutil.rmtree(home, ignore_errors=True)
    home.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{home.name}-", dir=home.parent))
    archive = _git("archive", "--format=tar", release.commit)
    assert archive.returncode == 0, archive.stderr.decode()
    with tempfile.TemporaryFile() as tar:
        tar.write(archive.stdout)
        tar.seek(0)
        with tarfile.open(fileobj=tar) as files:
            files.extractall(building / "src", filter="data")
    subprocess.run([sys.executable, "-m", "venv", str(building / "env")], check=True)
    env = str(building / "env")
    own = sysconfig.get_paths(vars={"base": env, "platbase": env})
    same = _dependencies((building / "src" / "pyproject.toml").read_bytes()) == _dependencies(
        (ROOT / "pyproject.toml").read_bytes()
    )
    if same:  # its source first, then this suite's dependencies (the same list)
        paths = [home / "src", Path(sysconfig.get_paths()["purelib"])]  # where they will be
        (Path(own["purelib"]) / "rfm-release.pth").write_text("".join(f"{p}\n" for p in paths))
    else:
        pip = [str(building / "env" / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, str(building / "src")], check=True)
    try:
        building.rename(home)  # whole or not at all: a run killed midway builds it again
    except OSError:  # another test process built it at the same time: theirs is as good
        if not python.exists():
            raise
        shutil.rmtree(building, ignore_errors=True)
    return python


def _whole(home: Path) -> bool:
    """Whether a built release still finds what it was built with: an environment that
    borrows a suite's dependencies (`rfm-release.pth`) lists that suite's site-packages,
    gone when the checkout that built it was deleted (a CI clone): then it is built again."""
    for pth in (home / "env").glob("lib/python*/site-packages/rfm-release.pth"):
        if not all(Path(line).is_dir() for line in pth.read_text().splitlines() if line):
            return False
    return True


def source(python: Path) -> Path:
    """The release's source: the directory to run its python in (the current directory
    comes first on sys.path, and this checkout's `worker` must not shadow the release's)."""
    return python.parent.parent.parent / "src"
