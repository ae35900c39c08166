"""Configuration (docs/configuration.md): defaults, every RFM_ variable, one-line errors,
secrets."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from worker.config import Settings, load_settings, mask_url
from worker.embedded import free_port
from worker.errors import ConfigError

PASSWORD = "s3cr3t-Pa55"  # must never be shown anywhere

# docs/configuration.md, as the environment spells it; None = unset.
CONTRACT_DEFAULTS: dict[str, str | None] = {
    "RFM_KAFKA_BOOTSTRAP": "localhost:9092",
    "RFM_KAFKA_GROUP": "rfm-worker",
    "RFM_KAFKA_CONFIG": "{}",
    "RFM_ORDERS_TOPIC": "orders",
    "RFM_ACTIONS_TOPIC": "rfm.actions",
    "RFM_DLQ_TOPIC": "orders.dlq",
    "RFM_REDIS_URL": "redis://localhost:6379/0",
    "RFM_REDIS_CLUSTER": "false",
    "RFM_PROFILES": None,
    "RFM_CLOCK": "wall",
    "RFM_SWEEP_INTERVAL": "60",
    "RFM_HTTP_PORT": "9400",
    "RFM_HTTP_HOST": "0.0.0.0",
    "RFM_HTTP_TOKEN": None,
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RFM_* variable of the machine running the suite leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("RFM_"):
            monkeypatch.delenv(name)


def clean_environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RFM_")}
    env.update(extra)
    return env


# -- defaults and reading -------------------------------------------------------------------


def test_defaults_match_the_contract() -> None:
    s = load_settings()
    assert s.kafka_bootstrap == CONTRACT_DEFAULTS["RFM_KAFKA_BOOTSTRAP"]
    assert s.kafka_group == CONTRACT_DEFAULTS["RFM_KAFKA_GROUP"]
    assert s.kafka_properties() == {}
    assert s.orders_topic == "orders"
    assert s.actions_topic == "rfm.actions"
    assert s.dlq_topic == "orders.dlq"
    assert s.redis_url.get_secret_value() == "redis://localhost:6379/0"
    assert s.redis_cluster is False
    assert s.profiles is None
    assert s.clock == "wall"
    assert s.sweep_interval == 60
    assert s.http_port == 9400
    assert s.http_host == CONTRACT_DEFAULTS["RFM_HTTP_HOST"]
    assert s.http_token is None  # no token: /v1/* is served without authentication


def test_describe_of_the_defaults_shows_every_setting() -> None:
    shown = load_settings().describe()
    assert shown == {
        "kafka_bootstrap": "localhost:9092",
        "kafka_group": "rfm-worker",
        "kafka_config": {},
        "orders_topic": "orders",
        "actions_topic": "rfm.actions",
        "dlq_topic": "orders.dlq",
        "redis_url": "redis://localhost:6379/0",
        "redis_cluster": False,
        "redis_allow_eviction": False,
        "profiles": None,
        "clock": "wall",
        "log_level": "info",
        "sweep_interval": 60,
        "http_port": 9400,
        "http_host": "0.0.0.0",
        "http_token": None,
        "processes": 1,
        "state_format": None,
        "erasure_key": None,
    }


def test_every_variable_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.toml"
    values = {
        "RFM_KAFKA_BOOTSTRAP": "k1:9093,k2:9093",
        "RFM_KAFKA_GROUP": "group-x",
        "RFM_KAFKA_CONFIG": '{"session.timeout.ms": 6000, "security.protocol": "SASL_SSL"}',
        "RFM_ORDERS_TOPIC": "in-topic",
        "RFM_ACTIONS_TOPIC": "out-topic",
        "RFM_DLQ_TOPIC": "dead-topic",
        "RFM_REDIS_URL": "rediss://cache.example:6380/2",
        "RFM_REDIS_CLUSTER": "true",
        "RFM_REDIS_ALLOW_EVICTION": "yes",
        "RFM_PROFILES": str(profiles),
        "RFM_CLOCK": "event",
        "RFM_LOG_LEVEL": "warning",
        "RFM_SWEEP_INTERVAL": "2.5",
        "RFM_HTTP_PORT": "9555",
        "RFM_HTTP_HOST": "127.0.0.1",
        "RFM_HTTP_TOKEN": PASSWORD,
        "RFM_PROCESSES": "3",
        "RFM_STATE_FORMAT": "1",
    }
    # The documented variables, plus the worker's own safety override, process count and
    # the state format held during a rolling upgrade.
    assert set(values) == {
        *CONTRACT_DEFAULTS,
        "RFM_REDIS_ALLOW_EVICTION",
        "RFM_LOG_LEVEL",
        "RFM_PROCESSES",
        "RFM_STATE_FORMAT",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert s.kafka_bootstrap == "k1:9093,k2:9093"
    assert s.kafka_group == "group-x"
    # librdkafka properties are strings
    assert s.kafka_properties() == {"session.timeout.ms": "6000", "security.protocol": "SASL_SSL"}
    assert s.orders_topic == "in-topic"
    assert s.actions_topic == "out-topic"
    assert s.dlq_topic == "dead-topic"
    assert s.redis_url.get_secret_value() == "rediss://cache.example:6380/2"
    assert s.redis_cluster is True
    assert s.redis_allow_eviction is True
    assert s.profiles == str(profiles)
    assert s.clock == "event"
    assert s.log_level == "warning"
    assert s.sweep_interval == 2.5
    assert s.processes == 3
    assert s.state_format == 1
    assert s.http_port == 9555
    assert s.http_host == "127.0.0.1"
    assert s.http_token is not None
    assert s.http_token.get_secret_value() == PASSWORD


@pytest.mark.parametrize("value", ["0", "3", "two"])
def test_a_state_format_this_release_cannot_write_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("RFM_STATE_FORMAT", value)
    with pytest.raises(ConfigError, match="RFM_STATE_FORMAT"):
        load_settings()


@pytest.mark.parametrize("url", ["redis://h:1/0", "rediss://u:p@h:2/1", "unix:///tmp/redis.sock"])
def test_accepted_redis_urls(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("RFM_REDIS_URL", url)
    assert load_settings().redis_url.get_secret_value() == url


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "127.0.0.1", "::", "::1", "10.1.2.3", "localhost", "rfm.internal."]
)
def test_accepted_http_hosts(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.setenv("RFM_HTTP_HOST", host)
    assert load_settings().http_host == host


@pytest.mark.parametrize(
    "bootstrap",
    [
        "localhost:9092",
        "localhost",  # librdkafka's default port, 9092
        "k1:9093,k2:9093",
        "10.0.0.1:9092, 10.0.0.2:9092",
        "kafka_1:9092",  # Docker service names have underscores
        "kafka.acme.internal:9092",
        "SASL_SSL://broker:9094,ssl://other:9093",
        "[::1]:9092",
        "[fe80::1%eth0]:9092",
        "127.0.0.1:65535",
    ],
)
def test_accepted_kafka_bootstraps(monkeypatch: pytest.MonkeyPatch, bootstrap: str) -> None:
    monkeypatch.setenv("RFM_KAFKA_BOOTSTRAP", bootstrap)
    assert load_settings().kafka_bootstrap == bootstrap


@pytest.mark.parametrize(
    "token", ["t", "s3cr3t-Pa55", "abc.DEF_123~+/==", "x" * 512, "!#$%&'()*,:;<>?@[]^`{|}"]
)
def test_accepted_http_tokens(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    monkeypatch.setenv("RFM_HTTP_TOKEN", token)
    s = load_settings()
    assert s.http_token is not None
    assert s.http_token.get_secret_value() == token


# -- invalid values: one line naming the variable ---------------------------------------------


INVALID = [
    ("RFM_HTTP_PORT", "abc"),
    ("RFM_HTTP_PORT", "70000"),
    ("RFM_HTTP_PORT", "-1"),
    ("RFM_KAFKA_CONFIG", '{"sasl.password": "' + PASSWORD),  # not JSON (cut short)
    ("RFM_KAFKA_CONFIG", "not json"),
    ("RFM_KAFKA_CONFIG", '["sasl.password", "' + PASSWORD + '"]'),  # JSON, not an object
    ("RFM_KAFKA_CONFIG", '"a string"'),
    ("RFM_KAFKA_CONFIG", "null"),
    ("RFM_CLOCK", "other"),
    ("RFM_REDIS_URL", f"http://user:{PASSWORD}@cache:6379/0"),
    ("RFM_REDIS_URL", "localhost:6379"),
    ("RFM_REDIS_URL", f"redis://user:{PASSWORD}/x@cache:6379/0"),  # unencoded '/' in password
    ("RFM_REDIS_CLUSTER", "maybe"),
    ("RFM_SWEEP_INTERVAL", "soon"),
    ("RFM_SWEEP_INTERVAL", "0"),
    ("RFM_KAFKA_BOOTSTRAP", ""),
    ("RFM_KAFKA_BOOTSTRAP", " , "),
    ("RFM_KAFKA_BOOTSTRAP", "localhost:notaport"),
    ("RFM_KAFKA_BOOTSTRAP", "localhost:"),
    ("RFM_KAFKA_BOOTSTRAP", "localhost:0"),
    ("RFM_KAFKA_BOOTSTRAP", "k1:9092,k2:70000"),
    ("RFM_KAFKA_BOOTSTRAP", "::1:9092"),  # IPv6 needs brackets
    ("RFM_KAFKA_BOOTSTRAP", "http://kafka:9092"),
    ("RFM_KAFKA_BOOTSTRAP", "kafka 9092"),
    ("RFM_HTTP_TOKEN", ""),  # empty is an error, not "authentication disabled"
    ("RFM_HTTP_TOKEN", f"two {PASSWORD}"),  # a header cannot carry inner spaces intact
    ("RFM_HTTP_TOKEN", f" {PASSWORD}"),
    ("RFM_HTTP_TOKEN", f"{PASSWORD}\n"),
    ("RFM_HTTP_TOKEN", f"{PASSWORD}\t"),
    ("RFM_HTTP_TOKEN", f"{PASSWORD}é"),
    ("RFM_HTTP_HOST", ""),
    ("RFM_HTTP_HOST", " "),
    ("RFM_HTTP_HOST", "http://0.0.0.0"),
    ("RFM_HTTP_HOST", "0.0.0.0:9400"),
    ("RFM_HTTP_HOST", "[::1]"),
    ("RFM_HTTP_HOST", "two words"),
    ("RFM_HTTP_HOST", "-bad.example"),
    ("RFM_HTTP_HOST", "a..b"),
    ("RFM_HTTP_HOST", "x" * 64),
]


@pytest.mark.parametrize(("name", "value"), INVALID)
def test_invalid_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    text = str(info.value)
    assert name in text
    assert "\n" not in text
    assert text.strip() == text and text
    assert PASSWORD not in text
    assert "Traceback" not in text


def test_an_empty_http_token_says_so_and_how_to_disable_authentication(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RFM_HTTP_TOKEN", "")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == (
        "invalid RFM_HTTP_TOKEN: is empty; unset it to serve /v1/* without authentication, "
        "or set it to the bearer token clients must send"
    )


def test_the_first_invalid_variable_is_named_even_with_others_valid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RFM_KAFKA_GROUP", "fine")
    monkeypatch.setenv("RFM_CLOCK", "sometimes")
    with pytest.raises(ConfigError, match="RFM_CLOCK"):
        load_settings()


# -- unknown variables: a warning naming them ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "line"),
    [
        (
            "RFM_CLOKC",
            "RFM_CLOKC is not a setting of rfm-worker: ignored (did you mean RFM_CLOCK?)",
        ),
        (
            "RFM_HTTP_PROT",
            "RFM_HTTP_PROT is not a setting of rfm-worker: ignored (did you mean RFM_HTTP_PORT?)",
        ),
        (
            "rfm_profile",  # read whatever the case, so checked whatever the case
            "rfm_profile is not a setting of rfm-worker: ignored (did you mean RFM_PROFILES?)",
        ),
        ("RFM_SOMETHING_ELSE", "RFM_SOMETHING_ELSE is not a setting of rfm-worker: ignored"),
    ],
)
def test_an_unknown_variable_is_a_warning_naming_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, name: str, line: str
) -> None:
    monkeypatch.setenv(name, "event")
    with caplog.at_level(logging.WARNING, logger="worker.config"):
        assert load_settings().clock == "wall"  # ignored: the default stays
    assert [r.getMessage() for r in caplog.records] == [line]
    assert caplog.records[0].levelno == logging.WARNING


def test_known_variables_and_the_suites_own_give_no_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    values = {
        **{name: value or "x" for name, value in CONTRACT_DEFAULTS.items()},
        "RFM_REDIS_ALLOW_EVICTION": "false",
        "RFM_LOG_LEVEL": "info",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RFM_CLOCK")
    monkeypatch.setenv("rfm_clock", "wall")  # any case
    monkeypatch.setenv("RFM_TEST_BROKER", "tansu")  # read by the suite
    monkeypatch.setenv("RFM_KAFKA_CACHE", "/tmp/kafka-jars")  # read by worker/embedded
    with caplog.at_level(logging.WARNING, logger="worker.config"):
        load_settings()
    assert caplog.records == []


def test_cli_warns_of_an_unknown_variable_at_start() -> None:
    env = clean_environ(RFM_CLOKC="event", RFM_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    proc = run_cli(env, "customer", "x")
    assert proc.returncode == 2  # Redis is not there; the warning came first
    first, last = proc.stderr.decode().splitlines()
    warning = json.loads(first)  # a log line (JSON lines when not on a terminal)
    assert (warning["level"], warning["msg"]) == (
        "warning",
        "RFM_CLOKC is not a setting of rfm-worker: ignored (did you mean RFM_CLOCK?)",
    )
    assert last.startswith("rfm-worker: Redis at ")


# -- secrets ------------------------------------------------------------------------------------

SECRET_PROPERTIES = [
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "ssl.truststore.password",
    "sasl.oauthbearer.client.secret",
    "ssl.key.pem",
]


def secret_env(monkeypatch: pytest.MonkeyPatch) -> Settings:
    config = {prop: f"{PASSWORD}-{i}" for i, prop in enumerate(SECRET_PROPERTIES)}
    config |= {
        "sasl.username": "alice",
        "security.protocol": "SASL_SSL",
        "session.timeout.ms": "6000",
    }
    monkeypatch.setenv("RFM_KAFKA_CONFIG", json.dumps(config))
    monkeypatch.setenv("RFM_REDIS_URL", f"rediss://worker:{PASSWORD}@cache.example:6380/3")
    return load_settings()


def test_describe_masks_redis_password_and_secret_kafka_properties(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = secret_env(monkeypatch)
    shown = s.describe()
    assert PASSWORD not in json.dumps(shown)
    assert PASSWORD not in str(shown)
    # masked, not dropped: the operator still sees where it connects and as whom
    assert shown["redis_url"] == "rediss://worker:***@cache.example:6380/3"
    kafka = shown["kafka_config"]
    assert isinstance(kafka, dict)
    assert set(kafka) == {
        *SECRET_PROPERTIES,
        "sasl.username",
        "security.protocol",
        "session.timeout.ms",
    }
    for prop in SECRET_PROPERTIES:
        assert kafka[prop] != f"{PASSWORD}-{SECRET_PROPERTIES.index(prop)}"
    assert kafka["sasl.username"] == "alice"
    assert kafka["security.protocol"] == "SASL_SSL"
    assert kafka["session.timeout.ms"] == "6000"
    # the clients still get the real values
    assert s.kafka_properties()["sasl.password"] == f"{PASSWORD}-0"


def test_repr_and_str_of_settings_show_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    s = secret_env(monkeypatch)
    for text in (repr(s), str(s), f"{s!r}", repr(s.model_dump())):
        assert PASSWORD not in text


def test_http_token_is_masked_everywhere_settings_are_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RFM_HTTP_TOKEN", PASSWORD)
    s = load_settings()
    shown = s.describe()
    assert shown["http_token"] == "***"  # masked, not dropped: the operator sees it is set
    for text in (json.dumps(shown), str(shown), repr(s), str(s), repr(s.model_dump())):
        assert PASSWORD not in text
    assert s.http_token is not None
    assert s.http_token.get_secret_value() == PASSWORD


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        (f"redis://:{PASSWORD}@cache:6379/0", "redis://:***@cache:6379/0"),
        (f"redis://default:{PASSWORD}@cache", "redis://default:***@cache"),
        (f"redis://u:{PASSWORD}@[::1]:6379/0", "redis://u:***@[::1]:6379/0"),
        (
            f"redis://cache:6379/0?password={PASSWORD}&db=1",
            "redis://cache:6379/0?password=***&db=1",
        ),
        ("redis://user@cache:6379", "redis://user@cache:6379"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


# -- end to end: the command line ------------------------------------------------------------


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )


def assert_one_clean_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 2, (out, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert PASSWORD not in out + err
    return lines[0]


def test_cli_with_unreachable_redis_is_one_line_without_the_password() -> None:
    port = free_port()  # closed: nothing listens there
    env = clean_environ(RFM_REDIS_URL=f"redis://worker:{PASSWORD}@127.0.0.1:{port}/0")
    line = assert_one_clean_line(run_cli(env, "customer", "x"))
    assert "redis" in line.lower()


def test_cli_with_invalid_port_is_one_line_naming_the_variable() -> None:
    env = clean_environ(
        RFM_HTTP_PORT="abc",
        RFM_REDIS_URL=f"redis://worker:{PASSWORD}@127.0.0.1:{free_port()}/0",
    )
    line = assert_one_clean_line(run_cli(env, "customer", "x"))
    assert "RFM_HTTP_PORT" in line


def test_cli_with_empty_http_token_is_one_line_naming_the_variable() -> None:
    env = clean_environ(RFM_HTTP_TOKEN="")
    line = assert_one_clean_line(run_cli(env, "customer", "x"))
    assert line.startswith("rfm-worker: configuration error: invalid RFM_HTTP_TOKEN: is empty")


def test_cli_with_invalid_http_token_is_one_line_without_the_token() -> None:
    env = clean_environ(RFM_HTTP_TOKEN=f"{PASSWORD} {PASSWORD}")
    line = assert_one_clean_line(run_cli(env, "customer", "x"))
    assert "RFM_HTTP_TOKEN" in line


def test_cli_with_invalid_http_host_is_one_line_naming_the_variable() -> None:
    env = clean_environ(RFM_HTTP_HOST="http://0.0.0.0:9400")
    line = assert_one_clean_line(run_cli(env, "customer", "x"))
    assert "RFM_HTTP_HOST" in line


def test_cli_with_a_bootstrap_port_that_is_not_a_number_is_a_configuration_error() -> None:
    """librdkafka would take it and retry it forever; the start says it in one line."""
    env = clean_environ(RFM_KAFKA_BOOTSTRAP="localhost:notaport")
    line = assert_one_clean_line(run_cli(env, "sweep", "--once"))
    assert line == (
        "rfm-worker: configuration error: invalid RFM_KAFKA_BOOTSTRAP: 'localhost:notaport' "
        "is not host:port with a port from 1 to 65535 (IPv6 in brackets: [::1]:9092); "
        "expected a comma-separated list such as kafka-1:9092,kafka-2:9092"
    )


def test_cli_with_bad_kafka_config_is_one_line_without_the_secret() -> None:
    env = clean_environ(RFM_KAFKA_CONFIG='{"sasl.password": "' + PASSWORD)
    line = assert_one_clean_line(run_cli(env, "export"))
    assert "RFM_KAFKA_CONFIG" in line


def test_run_with_http_port_in_use_is_one_line(redis_server, redis_client) -> None:
    # (redis_client: the suite's Redis emptied, so no state format a test recorded before
    # this one stops the worker first)
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            **os.environ,
            "RFM_HTTP_PORT": str(port),
            "RFM_REDIS_URL": redis_server.url,
            "RFM_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        }
        proc = subprocess.run(
            [sys.executable, "-m", "worker", "run"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rfm-worker:")]
    assert errors == [
        f"rfm-worker: configuration error: RFM_HTTP_PORT={port}: Address already in use"
    ]
    assert "Traceback" not in proc.stderr


def run_worker(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    "host",
    [
        "no-such-host.invalid",  # does not resolve (RFC 6761)
        "192.0.2.1",  # TEST-NET-1: not an address of this machine
    ],
)
def test_run_with_an_http_host_it_cannot_bind_is_one_line(
    redis_server, redis_client, host: str
) -> None:
    # (redis_client: emptied, see test_run_with_http_port_in_use_is_one_line)
    env = {
        **clean_environ(),
        "RFM_HTTP_HOST": host,
        "RFM_HTTP_PORT": "0",
        "RFM_REDIS_URL": redis_server.url,
        "RFM_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    }
    proc = run_worker(env)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rfm-worker:")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"rfm-worker: configuration error: RFM_HTTP_HOST={host}: ")
    assert "Traceback" not in proc.stderr


def test_run_logs_its_settings_without_the_http_token(redis_server, redis_client) -> None:
    # (redis_client: emptied, see test_run_with_http_port_in_use_is_one_line)
    with socket.socket() as busy:  # the port in use makes `run` stop right after its start log
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            **clean_environ(),
            "RFM_HTTP_HOST": "127.0.0.1",
            "RFM_HTTP_PORT": str(port),
            "RFM_HTTP_TOKEN": PASSWORD,
            "RFM_REDIS_URL": redis_server.url,
            "RFM_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        }
        proc = run_worker(env)
    assert proc.returncode == 2
    assert "'http_token': '***'" in proc.stderr  # the start line shows the settings
    assert "'http_host': '127.0.0.1'" in proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr


def test_the_erasure_key_is_masked_and_at_least_16_characters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RFM_ERASURE_KEY", "a-secret-of-enough-length")
    s = load_settings()
    assert s.erasure_secret == b"a-secret-of-enough-length"
    assert s.describe()["erasure_key"] == "***"
    monkeypatch.setenv("RFM_ERASURE_KEY", "short")
    with pytest.raises(ConfigError, match="RFM_ERASURE_KEY"):
        load_settings()
