"""The policy in force, and its safe replacement when the policy file changes.

A Kubernetes ConfigMap update (a symlink swap) or SIGHUP triggers a reload. The new file is
validated completely before it replaces the old policy in one assignment; a file that fails
validation is rejected and logged, and the previous policy stays in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from broker.audit import audit
from broker.config.loader import ConfigError, load_policy_file
from broker.config.models import BrokerConfig
from broker.policy.evaluate import Policy

_log = structlog.get_logger("mcp_broker.policy")


@dataclass(frozen=True)
class ReloadAttempt:
    """The outcome of the latest reload attempt, for IT asking "did my change take effect?"."""

    attempt: int
    at: float
    reason: str
    outcome: Literal["applied", "rejected", "unchanged"]
    problems: tuple[str, ...] = ()


class PolicyHolder:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.current = Policy(config.resources, config.mappings, config.external_resources)
        self.path = Path(config.policy_file) if config.policy_file else None
        self._digest = self._read_digest()
        self._wake = asyncio.Event()
        self.last_reload: ReloadAttempt | None = None

    def _record(self, reason: str, outcome: Literal["applied", "rejected", "unchanged"], problems: list[str]) -> None:
        attempt = self.last_reload.attempt + 1 if self.last_reload else 1
        self.last_reload = ReloadAttempt(attempt, time.time(), reason, outcome, tuple(problems))

    def _read_digest(self) -> str | None:
        if self.path is None:
            return None
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    def reload(self, *, reason: str) -> bool:
        """Load the policy file again; True if a new policy is now in force."""
        if self.path is None:
            return False
        try:
            resources, mappings = load_policy_file(self.path, self.config)
        except ConfigError as exc:
            problems = [str(p) for p in exc.problems]
            self._record(reason, "rejected", problems)
            _log.error(
                "policy_reload_rejected",
                file=str(self.path),
                reason=reason,
                problems=problems,
                policy_version=self.current.version,
            )
            return False
        candidate = Policy(resources, mappings, self.config.external_resources)
        if candidate.version == self.current.version:
            self._record(reason, "unchanged", [])
            return False
        previous, self.current = self.current, candidate
        self._record(reason, "applied", [])
        audit(
            "mapping_reloaded",
            file=str(self.path),
            reason=reason,
            policy_version=candidate.version,
            previous_version=previous.version,
            rules=len(mappings),
            resources=len(resources),
        )
        return True

    def request_reload(self) -> None:
        self._wake.set()

    async def watch(self, interval: float = 2.0) -> None:
        """Poll the file's content (robust to ConfigMap symlink swaps) and react to SIGHUP."""
        if self.path is None:
            return
        loop = asyncio.get_running_loop()
        # Not in the main thread (tests) or no signals here: polling still works.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
                reason = "signal"
            except TimeoutError:
                reason = "file_changed"
            self._wake.clear()
            digest = self._read_digest()
            if reason == "signal" or (digest is not None and digest != self._digest):
                self._digest = digest
                try:
                    self.reload(reason=reason)
                except Exception as exc:  # whatever goes wrong, the watch goes on and says so
                    self._record(reason, "rejected", [f"{type(exc).__name__}: {exc}"])
                    _log.error("policy_reload_failed", file=str(self.path), reason=reason, error=repr(exc))
