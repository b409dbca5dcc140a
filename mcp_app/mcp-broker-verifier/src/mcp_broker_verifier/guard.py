"""DNS-rebinding protection in front of everything, authentication included.

The MCP SDK checks ``Host`` and ``Origin`` inside the transport, after the bearer check, so a
rebound page would first learn that the server wants a token. This guard answers a foreign
``Host`` with 421 and a foreign ``Origin`` with 403 before anything else runs.
"""

from __future__ import annotations

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send


class HostOriginGuard:
    """Probes (``/healthz``, ``/readyz``) are exempt: the kubelet calls them by pod address."""

    exempt = frozenset({"/healthz", "/readyz"})

    def __init__(self, app: ASGIApp, *, allowed_hosts: list[str], allowed_origins: list[str]) -> None:
        self.app = app
        self.hosts = frozenset(h.lower() for h in allowed_hosts)
        self.origins = frozenset(o.lower() for o in allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.exempt:
            host = origin = None
            for name, value in scope["headers"]:
                if name == b"host":
                    host = value.decode("latin-1").lower()
                elif name == b"origin":
                    origin = value.decode("latin-1").lower()
            if host not in self.hosts:
                await PlainTextResponse("Misdirected request: unknown Host", status_code=421)(scope, receive, send)
                return
            if origin is not None and origin not in self.origins:
                await PlainTextResponse("Forbidden: cross-origin request", status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)
