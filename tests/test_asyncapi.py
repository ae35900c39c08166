"""schemas/asyncapi.json, the AsyncAPI 3.0 document of the worker's topics: what it says
of headers and topics is what the worker does, and the official parser (@asyncapi/parser,
a Node package) accepts it with every $ref resolved.

The parser is installed with npm into ~/.cache/rfm-worker on first use (about 10 s, then
nothing); without node and npm (.ci/run installs Debian's) that test skips, saying why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from worker.commands import asyncapi, schemas
from worker.config import Settings
from worker.kafka.dead_letters import dlq_headers, without_value
from worker.kafka.relay import TRIGGERS_HEADER, triggers_header
from worker.rules.events import Rejection

PARSER_VERSION = "3.6.6"  # @asyncapi/parser; a new version gets a new cache folder
NPM_INSTALL = ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"]
VALIDATE = Path(__file__).with_name("asyncapi_validate.mjs")
ERROR, WARNING = 0, 1  # diagnostic severities that fail the document


def document() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(asyncapi.render())
    return doc


class FakeMessage:
    """The methods of confluent_kafka.Message that dead-lettering reads."""

    def topic(self) -> str:
        return "orders"

    def partition(self) -> int:
        return 1

    def offset(self) -> int:
        return 2

    def key(self) -> bytes:
        return b"alice"

    def value(self) -> bytes:
        return b"{"

    def headers(self) -> list[tuple[str, bytes | None]]:
        return [("traceparent", b"00-1"), ("rfm.error.class", b"spoofed")]

    def error(self) -> None:
        return None


# -- what the document says is what the worker does ------------------------------------------


def test_dead_letter_headers_are_the_ones_the_worker_writes() -> None:
    headers = document()["components"]["messages"]["deadLetter"]["headers"]
    written = [n for n, _ in dlq_headers(FakeMessage(), Rejection("invalid_json", "x"))]
    assert written[0] == "traceparent"  # the original headers, then the worker's own
    assert set(headers["required"]) == set(written[1:])
    dropped = without_value((b"alice", b"{", dlq_headers(FakeMessage(), Rejection("x", "y"))))
    assert set(headers["properties"]) == {n for n, _ in dropped[2] or []}
    assert headers["additionalProperties"] is True


def test_the_triggers_header_pattern_takes_what_the_relay_writes() -> None:
    messages = document()["components"]["messages"]
    for kind in ("rfmChanged", "rfmOverdue"):
        header = messages[kind]["headers"]["properties"][TRIGGERS_HEADER]
        pattern = re.compile(header["pattern"])
        for names in ([], ["winback_offer"], ["a.b-c_1", "vip", "x" * 64]):
            [(_, value)] = triggers_header(names)
            assert value is not None and pattern.search(value.decode())
        assert not pattern.search("a,,b") and not pattern.search("x" * 65)


def test_topics_are_the_settings_defaults_and_payloads_the_schema_files() -> None:
    doc = document()
    addresses = {name: channel["address"] for name, channel in doc["channels"].items()}
    assert addresses == {
        "orders": Settings.model_fields["orders_topic"].default,
        "actions": Settings.model_fields["actions_topic"].default,
        "deadLetters": Settings.model_fields["dlq_topic"].default,
    }
    refs = {name: m["payload"].get("$ref") for name, m in doc["components"]["messages"].items()}
    assert refs == {
        "orderEvent": "order-event.json",
        "customerErased": "customer-erased.json",
        "rfmChanged": "rfm-changed.json",
        "rfmOverdue": "rfm-overdue.json",
        "rfmErased": "rfm-erased.json",
        "deadLetter": None,  # the original bytes, whatever they are
    }
    assert set(filter(None, refs.values())) <= set(schemas.SCHEMAS)


# -- the official parser ----------------------------------------------------------------------


def parser_modules() -> Path:
    """The node_modules folder holding @asyncapi/parser, installed there on first use."""
    absent = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if absent:
        pytest.skip(
            f"{' and '.join(absent)} not on PATH (Debian: apt-get install nodejs npm; "
            ".ci/run does): the AsyncAPI document is checked by the tests above only"
        )
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rfm-worker"
    home = base / f"asyncapi-parser-{PARSER_VERSION}"
    if not (home / "node_modules" / "@asyncapi" / "parser" / "package.json").exists():
        base.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=base, prefix=".asyncapi-parser-"))
        try:
            npm = subprocess.run(
                [*NPM_INSTALL, "--prefix", str(staging), f"@asyncapi/parser@{PARSER_VERSION}"],
                capture_output=True,
                text=True,
                timeout=90,  # within the test's own timeout (pyproject.toml)
            )
            failure = npm.stderr.strip()[-300:] if npm.returncode else None
        except subprocess.TimeoutExpired:
            failure = "no answer from the registry in 90 s"
        if failure is not None:
            shutil.rmtree(staging, ignore_errors=True)
            pytest.skip(f"npm could not install @asyncapi/parser@{PARSER_VERSION}: {failure}")
        try:
            staging.rename(home)  # whole or not at all, should a test run stop midway
        except OSError:  # another run installed it meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    return home / "node_modules"


def test_the_official_parser_accepts_the_document(tmp_path: Path) -> None:
    modules = parser_modules()
    schemas.write(tmp_path)  # the document and the schemas it references, side by side
    result = subprocess.run(
        ["node", str(VALIDATE), str(modules), str(tmp_path / asyncapi.FILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    *diagnostics, summary = [json.loads(line) for line in result.stdout.splitlines()]
    # Information (severity 2) stays allowed: "3.1.0 is the latest version", for one.
    assert [d for d in diagnostics if d["severity"] in (ERROR, WARNING)] == []
    assert summary["parsed"] is True
    fields = summary["messages"]
    assert set(fields) == {
        "orderEvent",
        "customerErased",
        "rfmChanged",
        "rfmOverdue",
        "rfmErased",
        "deadLetter",
    }
    assert {"event_id", "occurred_at"} <= set(fields["orderEvent"])
    assert {"change_id", "previous", "current", "triggers"} <= set(fields["rfmChanged"])
    assert {"change_id", "silent_days", "triggers"} <= set(fields["rfmOverdue"])
