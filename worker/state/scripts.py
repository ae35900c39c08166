"""The Lua scripts of worker/state/lua/, read once from the package."""

from __future__ import annotations

from importlib.resources import files


def script(name: str) -> str:
    return files("worker.state").joinpath("lua", name).read_text(encoding="utf-8")
