"""Larger Redis topologies for the client tests: a real Sentinel and a real three-node Cluster."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from broker.devstack.process import ChildProcess, find_binary, free_port, wait_until
from broker.devstack.redis_server import RedisServer


@dataclass
class SentinelSetup:
    master: RedisServer
    port: int
    child: ChildProcess

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/mymaster"

    def stop(self) -> None:
        self.child.stop()
        self.master.stop()


def start_sentinel(state: Path) -> SentinelSetup:
    master = RedisServer(state, persist=False, name="sentinel-master").start()
    port = free_port()
    conf = state / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {state}\n"
        f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
        f"sentinel auth-pass mymaster {master.password}\n"
    )
    child = ChildProcess(
        "redis-sentinel", [find_binary("redis-server", "redis-server"), str(conf), "--sentinel"], state / "sentinel.log"
    )
    child.start()
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)

    def has_master() -> bool:
        return client.sentinel_get_master_addr_by_name("mymaster") is not None  # type: ignore[no-untyped-call]

    wait_until(has_master, 15, "redis sentinel", child)
    client.close()
    return SentinelSetup(master, port, child)


@dataclass
class ClusterSetup:
    nodes: list[RedisServer] = field(default_factory=list)
    password: str = ""

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(state: Path, size: int = 3) -> ClusterSetup:
    setup = ClusterSetup()
    for index in range(size):
        node = RedisServer(
            state,
            persist=False,
            name=f"cluster-{index}",
            extra_config=(
                "cluster-enabled yes",
                "cluster-config-file nodes.conf",
                "cluster-node-timeout 5000",
                f"cluster-port {free_port()}",  # not port+10000, which may be taken or out of range
            ),
        )
        setup.nodes.append(node)
    setup.password = setup.nodes[0].password
    for node in setup.nodes:
        node.password = setup.password
        node.extra_config = (*node.extra_config, f"masterauth {setup.password}")
        node.start()
    cli = find_binary("redis-cli", "redis-tools")
    subprocess.run(
        [
            cli,
            "-a",
            setup.password,
            "--no-auth-warning",
            "--cluster",
            "create",
            *[f"127.0.0.1:{n.port}" for n in setup.nodes],
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    probe = redis.Redis(host="127.0.0.1", port=setup.nodes[0].port, password=setup.password)
    deadline = time.monotonic() + 30
    while probe.cluster("info").get("cluster_state") != "ok":  # type: ignore[no-untyped-call]
        if time.monotonic() > deadline:
            raise RuntimeError("the Redis cluster did not reach cluster_state:ok")
        time.sleep(0.1)
    probe.close()
    return setup
