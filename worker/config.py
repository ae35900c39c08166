"""Configuration: the only module that reads the environment (prefix RFM_,
docs/configuration.md)."""

from __future__ import annotations

import difflib
import ipaddress
import json
import logging
import os
import re
from collections.abc import Mapping
from typing import Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.errors import ConfigError
from worker.rules.state_format import FORMAT as STATE_FORMAT

logger = logging.getLogger(__name__)

# librdkafka properties whose values are secrets: masked wherever settings are shown.
_SECRET_HINTS = ("password", "secret", "key", "token", "jaas", "oauthbearer")
# RFM_HTTP_HOST: an IP address or a host name (RFC 1123 labels), never a URL or host:port.
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")
# RFM_HTTP_TOKEN: what an Authorization header can carry intact (visible ASCII, no space).
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")
# RFM_KAFKA_BOOTSTRAP entries as librdkafka reads them: an optional security protocol
# (SASL_SSL://), a host (a name, an IPv4 address, or an IPv6 one in brackets), an optional
# port (librdkafka's default: 9092).
_BROKER = re.compile(
    r"(?:(?i:plaintext|ssl|sasl_plaintext|sasl_ssl)://)?"
    r"(?P<host>\[[0-9A-Fa-f:.%\w]+\]|[^\s:/\[\],]+)(?::(?P<port>[0-9]+))?",
    re.ASCII,
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RFM_", frozen=True, extra="ignore")

    kafka_bootstrap: str = Field(default="localhost:9092", min_length=1)
    kafka_group: str = Field(default="rfm-worker", min_length=1)
    kafka_config: SecretStr = SecretStr("{}")
    orders_topic: str = Field(default="orders", min_length=1)
    actions_topic: str = Field(default="rfm.actions", min_length=1)
    dlq_topic: str = Field(default="orders.dlq", min_length=1)
    redis_url: SecretStr = SecretStr("redis://localhost:6379/0")
    redis_cluster: bool = False
    redis_allow_eviction: bool = False
    profiles: str | None = None
    clock: Literal["wall", "event"] = "wall"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    sweep_interval: float = Field(default=60, gt=0)
    http_port: int = Field(default=9400, ge=0, le=65535)
    http_host: str = "0.0.0.0"  # noqa: S104  (the documented default: every interface)
    http_token: SecretStr | None = None
    processes: int = Field(default=1, ge=1, le=64)  # `run`: consuming processes (supervisor.py)
    # the newest state format to write (a rollback kept possible; docs/operations.md
    # "Upgrading"); unset: the newest that every running worker reads
    state_format: int | None = Field(default=None, ge=1, le=STATE_FORMAT)
    # keys the erasure tombstones (docs/personal-data.md); unset: erasures are refused
    erasure_key: SecretStr | None = Field(default=None, min_length=16)

    @property
    def erasure_secret(self) -> bytes | None:
        """RFM_ERASURE_KEY as the HMAC key, None when unset."""
        return None if self.erasure_key is None else self.erasure_key.get_secret_value().encode()

    @field_validator("kafka_bootstrap")
    @classmethod
    def _broker_list(cls, value: str) -> str:
        entries = [entry.strip() for entry in value.split(",")]
        if not any(entries):
            raise ValueError("names no broker: expected host:port, e.g. kafka-1:9092")
        for entry in filter(None, entries):
            match = _BROKER.fullmatch(entry)
            if match is None or not 0 < int(match["port"] or 9092) < 65536:
                # librdkafka would take it and retry it forever, saying only that it fails
                raise ValueError(
                    f"{entry!r} is not host:port with a port from 1 to 65535 (IPv6 in "
                    "brackets: [::1]:9092); expected a comma-separated list such as "
                    "kafka-1:9092,kafka-2:9092"
                )
        return value

    @field_validator("kafka_config")
    @classmethod
    def _json_object(cls, value: SecretStr) -> SecretStr:
        try:
            parsed = json.loads(value.get_secret_value())
        except json.JSONDecodeError as exc:
            raise ValueError(f"must be a JSON object: {exc.msg}") from None
        if not isinstance(parsed, dict):
            raise ValueError("must be a JSON object of librdkafka properties")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr) -> SecretStr:
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        try:
            parts.port  # noqa: B018  (raises on a bad port)
        except ValueError:
            # never echo the value: an unencoded '/' or '#' in the password ends up here
            raise ValueError(
                "has an invalid host or port (percent-encode special characters of the password)"
            ) from None
        return value

    @field_validator("http_host")
    @classmethod
    def _bind_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if len(value) > 253 or not _HOST_NAME.fullmatch(value):
                raise ValueError(
                    "must be an IP address or a host name to bind to "
                    "(e.g. 0.0.0.0, 127.0.0.1, ::, localhost), without scheme or port"
                ) from None
        return value

    @field_validator("http_token")
    @classmethod
    def _bearer_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        token = value.get_secret_value()
        # never echo the value: the messages describe it only
        if not token:
            raise ValueError(
                "is empty; unset it to serve /v1/* without authentication, "
                "or set it to the bearer token clients must send"
            )
        if not _TOKEN_CHARS.fullmatch(token):
            raise ValueError(
                "must be visible ASCII characters without spaces "
                "(what an Authorization: Bearer header can carry)"
            )
        return value

    def kafka_properties(self) -> dict[str, str]:
        """Extra librdkafka properties for every client (SASL/SSL, timeouts)."""
        extra = json.loads(self.kafka_config.get_secret_value())
        return {str(k): str(v) for k, v in extra.items()}

    def describe(self) -> dict[str, object]:
        """The settings with every secret masked: safe to log."""
        shown: dict[str, object] = self.model_dump(
            exclude={"kafka_config", "redis_url", "http_token", "erasure_key"}
        )
        shown["redis_url"] = mask_url(self.redis_url.get_secret_value())
        shown["http_token"] = None if self.http_token is None else "***"
        shown["erasure_key"] = None if self.erasure_key is None else "***"
        shown["kafka_config"] = {
            k: "***" if any(h in k.lower() for h in _SECRET_HINTS) else v
            for k, v in self.kafka_properties().items()
        }
        return shown


def mask_url(url: str) -> str:
    """The URL with its password (userinfo or a `password=` parameter) replaced by ***."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    query = "&".join(
        f"{name}=***" if unquote(name).lower() == "password" else item
        for item in parts.query.split("&")
        for name in [item.partition("=")[0]]
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


# RFM_* variables read by other parts than the worker (docs/configuration.md): known, not
# settings. The test suite's broker, and where Apache Kafka's jars are kept.
OTHER_VARIABLES = frozenset({"RFM_TEST_BROKER", "RFM_KAFKA_CACHE"})


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A line per RFM_* variable nothing reads (a typo is otherwise silently ignored: the
    setting keeps its default), naming the closest known one when one is close."""
    known = sorted({f"RFM_{name.upper()}" for name in Settings.model_fields} | OTHER_VARIABLES)
    lines = []
    for name in sorted(environ):
        upper = name.upper()  # the settings are read whatever the case
        if not upper.startswith("RFM_") or upper in known:
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close else ""
        lines.append(f"{name} is not a setting of rfm-worker: ignored{hint}")
    return lines


def load_settings() -> Settings:
    """Read RFM_* once; invalid values raise ConfigError with one clear line; an unknown
    RFM_* variable is a warning."""
    try:
        settings = Settings()
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        name = "RFM_" + "_".join(str(p) for p in err["loc"]).upper()
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"invalid {name}: {msg}") from None
    if settings.log_level != "error":  # said before the command applies RFM_LOG_LEVEL
        for line in unknown_variables(os.environ):
            logger.warning("%s", line)
    return settings
