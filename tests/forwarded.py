"""What a uvicorn configuration lets a caller claim with ``X-Forwarded-*``: a real server, a real request."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import uvicorn
from starlette.types import Receive, Scope, Send

from broker.devstack.process import free_port
from tests.http import serving

CLAIMED = {"x-forwarded-for": "203.0.113.9", "x-forwarded-proto": "https"}


async def _echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer with the client address and scheme the server hands to the app."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = json.dumps({"client": scope["client"][0], "scheme": scope["scheme"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def seen_by_the_app(make_config: Callable[[Callable[..., object], int], uvicorn.Config]) -> dict[str, str]:
    """Serve the echo app with ``make_config(app, port)`` on 127.0.0.1; ask it with forged headers."""
    port = free_port()
    with serving(make_config(_echo, port)):
        answer: dict[str, str] = httpx.get(f"http://127.0.0.1:{port}/", headers=CLAIMED).json()
    return answer
