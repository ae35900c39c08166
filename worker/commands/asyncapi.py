"""The AsyncAPI 3.0 document of the worker's three topics (schemas/asyncapi.json): the
orders (and erasure requests) it reads, the rfm.changed, rfm.overdue and rfm.erased
records it writes, its dead letters.

Written and checked by `rfm-worker schemas` with the JSON Schemas it references (relative
$refs to the files beside it); the topic names and their defaults come from the settings,
the header names from the modules that write them (docs/records-and-triggers.md).
"""

from __future__ import annotations

from typing import Any

import orjson

from worker import __version__
from worker.config import Settings
from worker.kafka.dead_letters import MAX_KEPT_KEY
from worker.kafka.relay import TRIGGERS_HEADER

FILE = "asyncapi.json"
KAFKA_BINDINGS = "0.5.0"
DOCS = "docs/records-and-triggers.md"
# A profile's trigger names (worker/rules/profile_specs.py TriggerSpec), comma-separated.
_TRIGGER_NAME = "[A-Za-z0-9_.-]{1,64}"

Json = dict[str, Any]

# The headers worker/kafka/dead_letters.py adds to a dead letter (tests/test_asyncapi.py
# holds them to what it writes): name -> (description, always present).
DLQ_HEADERS: dict[str, tuple[str, bool]] = {
    "rfm.error.class": (
        f"Why the record was refused: one of the classes of {DOCS}#dead-letters "
        "(invalid_json, missing_field, invalid_amount, ..., internal_error).",
        True,
    ),
    "rfm.error.reason": ("The reason in words (at most 500 characters).", True),
    "rfm.source.topic": ("The topic the record was read from.", True),
    "rfm.source.partition": ("Its partition, in decimal.", True),
    "rfm.source.offset": ("Its offset, in decimal.", True),
    "rfm.error.value_dropped": (
        "Present only on a copy too large for the dead-letter topic: sent without the "
        "original value and headers (and without a key over "
        f"{MAX_KEPT_KEY} bytes); read the record at the rfm.source.* offset.",
        False,
    ),
}


def _setting(name: str) -> str:
    default = Settings.model_fields[name].default
    assert isinstance(default, str)
    return default


def _topic(setting: str, title: str, description: str, messages: list[str]) -> Json:
    address = _setting(setting)
    variable = f"RFM_{setting.upper()}"
    return {
        "address": address,
        "title": title,
        "description": f"{description} The topic is `{variable}` (default `{address}`).",
        "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in messages},
        "bindings": {"kafka": {"topic": address, "bindingVersion": KAFKA_BINDINGS}},
    }


def _kafka_key(description: str, *, nullable: bool = False) -> Json:
    key: Json = {"type": ["string", "null"] if nullable else "string"}
    return {"bindings": {"kafka": {"key": {**key, "description": description}}}}


def _channels() -> Json:
    return {
        "orders": _topic(
            "orders_topic",
            "Order events (in)",
            "Upstream services publish one JSON order event per record; the worker reads "
            "them (its consumer group is `RFM_KAFKA_GROUP`).",
            ["orderEvent", "customerErased"],
        ),
        "actions": _topic(
            "actions_topic",
            "RFM changes (out)",
            "The worker publishes, at least once and in order per customer, an rfm.changed "
            "record for each move of a customer's scores or segment and an rfm.overdue "
            "record for a customer late against their own rhythm, an rfm.erased record once "
            "per erased customer (docs/personal-data.md): tell them apart by "
            "`type`, deduplicate on `change_id`.",
            ["rfmChanged", "rfmOverdue", "rfmErased"],
        ),
        "deadLetters": _topic(
            "dlq_topic",
            "Dead letters (out)",
            "Each order record the worker refuses, copied with its key, value and headers "
            "plus why and where it came from; its offset is done only once the copy is "
            "acknowledged.",
            ["deadLetter"],
        ),
    }


def _operation(action: str, channel: str, summary: str, messages: list[str]) -> Json:
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "summary": summary,
        "messages": [{"$ref": f"#/channels/{channel}/messages/{m}"} for m in messages],
    }


def _operations() -> Json:
    receive = _operation(
        "receive",
        "orders",
        "Read order events and erasure requests.",
        ["orderEvent", "customerErased"],
    )
    group = _setting("kafka_group")
    receive["bindings"] = {
        "kafka": {
            "groupId": {
                "type": "string",
                "default": group,
                "description": f"`RFM_KAFKA_GROUP` (default `{group}`).",
            },
            "bindingVersion": KAFKA_BINDINGS,
        }
    }
    return {
        "readOrders": receive,
        "publishChanges": _operation(
            "send",
            "actions",
            "Publish rfm.changed, rfm.overdue and rfm.erased records.",
            ["rfmChanged", "rfmOverdue", "rfmErased"],
        ),
        "publishDeadLetters": _operation(
            "send", "deadLetters", "Copy refused order records.", ["deadLetter"]
        ),
    }


def _triggers_headers() -> Json:
    return {
        "type": "object",
        "required": [TRIGGERS_HEADER],
        "properties": {
            TRIGGERS_HEADER: {
                "type": "string",
                "pattern": f"^({_TRIGGER_NAME}(,{_TRIGGER_NAME})*)?$",
                "description": "The record's `triggers`, comma-separated (empty when none): "
                "a consumer skips the records that fire nothing without parsing them.",
            }
        },
    }


def _dlq_headers() -> Json:
    return {
        "type": "object",
        "description": "The original record's headers (except any named rfm.error.* or "
        "rfm.source.*, which are the worker's own), then these.",
        "required": [name for name, (_, always) in DLQ_HEADERS.items() if always],
        "properties": {
            name: {"type": "string", "description": text} for name, (text, _) in DLQ_HEADERS.items()
        },
        "additionalProperties": True,
    }


def _record(name: str, title: str, schema: str, headers: Json) -> Json:
    return {
        "name": name,
        "title": title,
        "contentType": "application/json",
        "headers": headers,
        "payload": {"$ref": schema},
        **_kafka_key("The customer id."),
    }


def _messages() -> Json:
    order = {
        "name": "order_event",
        "title": "Order event",
        "summary": "order_placed, order_refunded, order_cancelled or customer_erased, UTF-8 JSON.",
        "contentType": "application/json",
        "payload": {"$ref": "order-event.json"},
        **_kafka_key("The customer id is recommended (any key is accepted).", nullable=True),
    }
    dead = {
        "name": "dead_letter",
        "title": "Dead letter",
        "summary": "A refused order record, as it was read, with the reason.",
        "headers": _dlq_headers(),
        "payload": {
            "description": "The original value, byte for byte (not necessarily JSON, "
            "nor UTF-8; null for a tombstone or under rfm.error.value_dropped)."
        },
        **_kafka_key(
            "The original key (null if it had none, or over "
            f"{MAX_KEPT_KEY} bytes under rfm.error.value_dropped).",
            nullable=True,
        ),
    }
    return {
        "orderEvent": order,
        "customerErased": {
            "name": "customer_erased",
            "title": "Erasure request",
            "summary": "Forget a customer (rfm-worker forget), UTF-8 JSON.",
            "contentType": "application/json",
            "payload": {"$ref": "customer-erased.json"},
            **_kafka_key("The customer id, as its orders' key.", nullable=True),
        },
        "rfmChanged": _record("rfm.changed", "RFM change", "rfm-changed.json", _triggers_headers()),
        "rfmOverdue": _record(
            "rfm.overdue", "Customer overdue", "rfm-overdue.json", _triggers_headers()
        ),
        "rfmErased": _record(
            "rfm.erased", "Customer erased", "rfm-erased.json", _triggers_headers()
        ),
        "deadLetter": dead,
    }


def document() -> Json:
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "rfm-worker topics",
            "version": __version__,
            "description": "The Kafka topics of rfm-worker: what it reads, what it writes "
            f"({DOCS}). Payloads are the JSON Schemas beside this file.",
        },
        "defaultContentType": "application/json",
        "channels": _channels(),
        "operations": _operations(),
        "components": {"messages": _messages()},
    }


def render() -> bytes:
    return orjson.dumps(document(), option=orjson.OPT_INDENT_2) + b"\n"
