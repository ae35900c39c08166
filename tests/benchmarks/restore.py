"""Recovery from a backup: how fast a running worker replays what a restored Redis lost.

One worker applies BENCH_RESTORE_N placed orders; Redis is backed up (BGSAVE, a copy of
its dump.rdb); the worker applies BENCH_RESTORE_M more orders of the same customers;
then Redis is restored from the copy (SHUTDOWN NOSAVE, the copy put back, restarted on
the same port) while the worker runs, and no order comes after it. Timed from Redis
answering again: until the worker notices (its idle check, every CHECK_STATE_S of
worker/services/checkpoint.py; an order would show it at once), and until its applied
offsets in Redis are back at the topic's end: the M events replayed, per second. The
worker's rate on the same M events the first time, measured the same way in the same
run, is the ratio's base.

An opt-in scenario of run.py (`--only restore`); docs/performance.md, "Recovery from a
backup", has the figures.
"""

from __future__ import annotations

import time
from typing import Any

from common import (
    PARTITIONS,
    POLL_S,
    Config,
    Row,
    Section,
    Stack,
    customer_ids,
    days_ago,
    env_int,
    per_s,
    placed_orders,
    produce_all,
    rate,
    ratio,
    say,
)

from worker.services.checkpoint import CHECK_STATE_S
from worker.state import keys
from worker.state.store import Store


def applied(store: Store, topic: str) -> int:
    """Events of `topic` the state holds: the applied offsets (lowest over the shards)."""
    fields = [keys.applied_field(topic, p) for p in range(PARTITIONS)]
    return sum(offset or 0 for offset, _ in store.applied.read(fields).values())


def wait_applied(store: Store, topic: str, count: int, timeout: float) -> list[tuple[float, int]]:
    """Poll the applied offsets until they add up to `count`; the (time, sum) samples."""
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout
    while True:
        samples.append((time.monotonic(), applied(store, topic)))
        if samples[-1][1] >= count:
            return samples
        if time.monotonic() > deadline:
            raise SystemExit(f"restore: {samples[-1][1]:,} of {count:,} events applied in time")
        time.sleep(POLL_S / 5)


def run(cfg: Config) -> Section:
    n = env_int("BENCH_RESTORE_N", 200_000)
    m = env_int("BENCH_RESTORE_M", 100_000)
    customers = customer_ids("r", max(1, n // 4))
    records = placed_orders(
        n + m, customers, prefix="r", first_ms=days_ago(60), last_ms=days_ago(1)
    )
    with Stack() as stack:
        topics = stack.topics("r")
        store = stack.store()
        produce_all(stack.bootstrap, topics.orders, records[:n])
        worker = stack.worker(topics)
        first = worker.follow(n, cfg.worker_timeout_s)
        wait_applied(store, topics.orders, n, cfg.worker_timeout_s)
        say(f"  first {n:,} events: {first.events_per_s:,.0f} events/s")
        started = time.perf_counter()
        backup = stack.redis_server.backup(stack.logs / "backup.rdb")
        backup_s = time.perf_counter() - started
        backup_bytes = backup.stat().st_size
        produce_all(stack.bootstrap, topics.orders, records[n:])
        applying = wait_applied(store, topics.orders, n + m, cfg.worker_timeout_s)
        say(f"  backup of {n:,} events' state in {backup_s:.2f} s; {m:,} more applied")

        started = time.perf_counter()
        stack.redis_server.restore(backup)
        restore_s = time.perf_counter() - started
        samples = wait_applied(store, topics.orders, n + m, cfg.worker_timeout_s)
        worker.stop()
        log = worker.log_path.read_text(errors="replace")
    if "Redis lost writes while the worker ran" not in log:
        raise SystemExit("restore: the worker did not say that Redis lost writes")
    back = samples[0][0]
    noticed = next(at for at, count in samples if count > n)  # its first record of the replay
    before = max(at for at, count in samples if count <= n)
    done = samples[-1][0]
    replay_s = done - before
    figures: dict[str, Any] = {
        "events_before_backup": n,
        "events_replayed": m,
        "customers": len(customers),
        "backup_seconds": round(backup_s, 3),
        "backup_bytes": backup_bytes,
        "restore_seconds": round(restore_s, 3),
        "check_state_s": CHECK_STATE_S,
        "noticed_after_s": round(noticed - back, 3),
        "replay_seconds": round(replay_s, 3),
        "replayed_per_s": round(rate(m, replay_s), 1),
        "caught_up_after_s": round(done - back, 3),
        "first_pass_per_s": round(first.events_per_s, 1),
        # The same M events the first time (those the worker applied after the produce),
        # through the same applied offsets: the ratio's base.
        "first_time_per_s": round(
            rate(applying[-1][1] - applying[0][1], applying[-1][0] - applying[0][0]), 1
        ),
    }
    figures["replay_over_first_time"] = round(
        figures["replayed_per_s"] / figures["first_time_per_s"], 3
    )
    say(
        f"  restored in {restore_s:.2f} s; replay seen after {figures['noticed_after_s']:.1f} s; "
        f"{m:,} events replayed in {replay_s:.1f} s"
    )
    section = Section("restore", data=figures)
    section.rows = [
        Row(
            f"restore: Redis restored (SHUTDOWN NOSAVE, dump.rdb of {n:,} events over "
            f"{len(customers):,} customers, {figures['backup_bytes'] / 2**20:.1f} MiB) "
            "under a running worker",
            f"{restore_s:.2f} s",
        ),
        Row(
            f"restore: the worker replays the {m:,} events applied since the backup "
            "(no order after the restore: noticed by its idle check)",
            per_s(figures["replayed_per_s"]),
            f"{ratio(figures['replay_over_first_time'])} of the same events the first time "
            f"({per_s(figures['first_time_per_s'])})",
        ),
        Row(
            "restore: from Redis answering again to the state at the topic's end "
            f"(noticed after {figures['noticed_after_s']:.1f} s)",
            f"{figures['caught_up_after_s']:.1f} s",
        ),
    ]
    return section
