"""Faults injected into a real client: the process that holds it "dies" after a number of commands."""

from __future__ import annotations

from typing import Any

import pytest


def die_after(monkeypatch: pytest.MonkeyPatch, client: Any, commands: int) -> None:
    """From its ``commands + 1``-th command on, ``client`` raises ConnectionError, as if the
    process sending them had died there: what it sent before reached Redis, nothing after does."""
    real = client.execute_command
    sent = 0

    async def crashing(*args: Any, **options: Any) -> Any:
        nonlocal sent
        sent += 1
        if sent > commands:
            raise ConnectionError("the broker died here")
        return await real(*args, **options)

    monkeypatch.setattr(client, "execute_command", crashing)
