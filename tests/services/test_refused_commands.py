"""A Redis that refuses a command the worker needs (an ACL user without it): named in one
line before the first event at start, and waited out without a half-written commit while
running (docs/operations.md, Least privilege)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.conftest import Deployment
from tests.factories import generate
from tests.fixtures import (
    assert_changes_consistent,
    assert_state_matches,
    converged,
    fetch,
    records_of,
)
from tests.reference import expected_now
from worker.state.store import Store


@pytest.fixture
def acl_user(deployment: Deployment, redis_client: redis.Redis) -> Iterator[str]:
    """An ACL user with every command on rfm:* keys; the deployment's workers log in as it."""
    name = f"worker-{uuid.uuid4().hex[:8]}"
    redis_client.acl_setuser(
        name, enabled=True, passwords=["+secret"], keys=["rfm:*"], commands=["+@all"]
    )
    url = deployment.redis_server.url.replace("redis://", f"redis://{name}:secret@")
    deployment.extra_env["RFM_REDIS_URL"] = url
    yield name
    redis_client.acl_deluser(name)


def test_a_command_refused_at_start_is_named_in_one_line_and_nothing_is_consumed(
    deployment: Deployment, redis_client: redis.Redis, acl_user: str
) -> None:
    redis_client.acl_setuser(acl_user, enabled=True, commands=["-evalsha"])
    deployment.produce(records_of(generate(20, seed=31)))
    worker = deployment.worker()
    assert worker.proc is not None
    assert worker.proc.wait(30) == 2  # "fix the configuration"
    errors = [line for line in worker.log().splitlines() if line.startswith("rfm-worker:")]
    assert len(errors) == 1, worker.log()
    assert "EVALSHA" in errors[0] and f"ACL SETUSER {acl_user} +evalsha" in errors[0]
    assert "Traceback" not in worker.log()
    assert "assigned partitions" not in worker.log()  # never joined: nothing consumed
    assert list(redis_client.scan_iter(match=b"rfm:{*}:c:*")) == []


def test_a_command_refused_while_running_stalls_the_worker_and_the_grant_resumes_it(
    deployment: Deployment, redis_client: redis.Redis, store: Store, acl_user: str
) -> None:
    """XADD taken away mid-stream: no commit runs halfway (every state written has its
    change in the outbox), /readyz says what is refused, and once granted again every
    change is published and the state is exact."""
    events = generate(200, seed=32)
    records = records_of(events)
    half = len(records) // 2
    worker = deployment.worker()
    deployment.produce(records[:half])
    deployment.read(deployment.actions, until=lambda m: len(m) >= 50, timeout=60)

    redis_client.acl_setuser(acl_user, enabled=True, commands=["-xadd"])
    deployment.produce(records[half:])
    deadline = time.monotonic() + 30
    status, body = fetch(deployment.http_port, "/readyz")
    while b"refuses" not in body and time.monotonic() < deadline:
        time.sleep(0.3)
        status, body = fetch(deployment.http_port, "/readyz")
    assert status == 503 and b"xadd" in body.lower(), body
    assert fetch(deployment.http_port, "/healthz")[0] == 200  # waiting, not dead
    stalled = {k: redis_client.get(k) for k in redis_client.scan_iter(match=b"rfm:{*}:c:*")}
    time.sleep(2)  # still refused: nothing more written meanwhile
    assert {k: redis_client.get(k) for k in stalled} == stalled

    redis_client.acl_setuser(acl_user, enabled=True, commands=["+xadd"])
    expected = expected_now(events)
    actions = deployment.read(deployment.actions, until=converged(expected), timeout=90)
    assert_changes_consistent(actions)
    assert_state_matches(store, expected)
    assert worker.log().count("Redis refuses a command") == 1
    assert "Traceback" not in worker.log()
    assert fetch(deployment.http_port, "/readyz")[0] == 200
    assert worker.stop() == 0
