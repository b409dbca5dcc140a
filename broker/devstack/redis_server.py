"""A private ``redis-server``: loopback only, password-protected, append-only file on."""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import quote

import redis

from broker.devstack.process import ChildProcess, find_binary, free_port, wait_until


class RedisServer:
    def __init__(
        self,
        state_dir: Path,
        *,
        port: int | None = None,
        persist: bool = True,
        extra_config: tuple[str, ...] = (),
        name: str = "redis",
    ) -> None:
        self.state_dir = state_dir
        self.port = port or free_port()
        self.persist = persist
        self.extra_config = extra_config
        self.name = name
        self.password = secrets.token_urlsafe(24)
        self._child: ChildProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/0"

    @property
    def display_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> RedisServer:
        binary = find_binary("redis-server", "redis-server")
        data = self.state_dir / self.name
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        conf = data / "redis.conf"
        conf.touch(mode=0o600)
        conf.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {self.port}",
                    "protected-mode yes",
                    f"requirepass {self.password}",
                    f"dir {data}",
                    f"appendonly {'yes' if self.persist else 'no'}",
                    'save ""',
                    "daemonize no",
                    "loglevel warning",
                    *self.extra_config,
                    "",
                ]
            )
        )
        self._child = ChildProcess("redis-server", [binary, str(conf)], data / "redis.log")
        self._child.start()
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1)
        try:
            wait_until(client.ping, timeout, "redis-server", self._child)
        finally:
            client.close()
        return self

    def stop(self) -> None:
        if self._child is not None:
            self._child.stop()
            self._child = None
