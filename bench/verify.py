"""Microseconds per access-token verification in mcp_app's verifier: cold (signature) and warm (cache).

Keys come from a real KeyRing in a private redis-server started for the run. Last, the whole
per-request cost of mcp_app's ``BearerGuard`` (header, warm verification, body read for the tool
name, scope check, auth context) around an ASGI app that answers at once, against that app alone:
what authentication adds to every MCP request, with the network and the MCP SDK left out.
Run: .venv/bin/python bench/verify.py [--iterations N]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from jose import jwt

from broker.devstack import RedisServer
from broker.oauth.signing import KeyRing, new_kek
from broker.store.keys import Keys
from broker.store.redis_store import RedisStore
from mcp_broker_verifier.verifier import BrokerTokenVerifier, JwksCache

ISSUER, RESOURCE = "https://auth.example.com", "https://mcp.example.com/mcp"


async def main(iterations: int, algorithm: str) -> None:
    with tempfile.TemporaryDirectory() as state:
        server = RedisServer(Path(state), persist=False).start()
        try:
            client = aioredis.Redis.from_url(server.url)
            ring = KeyRing(RedisStore(client, Keys()), kek=new_kek(), algorithm=algorithm)  # type: ignore[arg-type]
            await ring.refresh()
            jwks = ring.jwks()
            async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200, json=jwks))) as h:
                verifier = BrokerTokenVerifier(issuer=ISSUER, resource=RESOURCE, jwks=JwksCache("https://x", h))
                now = int(time.time())
                key = ring.current
                tokens = [
                    jwt.encode(
                        {
                            "iss": ISSUER,
                            "aud": RESOURCE,
                            "sub": f"u{i}",
                            "client_id": "c",
                            "scope": "notes:read",
                            "iat": now,
                            "exp": now + 300,
                            "jti": secrets.token_hex(8),
                        },
                        key.private,
                        algorithm=key.alg,
                        headers={"kid": key.kid, "typ": "at+jwt"},
                    )
                    for i in range(iterations)
                ]
                cold = []
                for token in tokens:
                    start = time.perf_counter()
                    assert await verifier.verify_token(token) is not None
                    cold.append((time.perf_counter() - start) * 1e6)
                warm = []
                for _ in range(5):
                    for token in tokens:
                        start = time.perf_counter()
                        await verifier.verify_token(token)
                        warm.append((time.perf_counter() - start) * 1e6)
                guard = await guard_cost(verifier, tokens[0], iterations * 5)
            await client.aclose()
        finally:
            server.stop()
    for name, sample in (("cold (signature check)", cold), ("warm (cache hit)", warm)):
        q = statistics.quantiles(sample, n=100)
        print(
            f"{algorithm} {name:<24} median {statistics.median(sample):8.1f} us   p99 {q[98]:8.1f} us   n={len(sample)}"
        )
    plain, guarded = guard
    print(
        f"BearerGuard per request (in-process ASGI, warm token): {guarded:.1f} us against {plain:.1f} us for the"
        f" app alone, so authentication adds {guarded - plain:.1f} us"
    )


async def guard_cost(verifier: BrokerTokenVerifier, token: str, n: int) -> tuple[float, float]:
    """Median microseconds per request through the app alone and through BearerGuard."""
    from mcp_broker_verifier.auth import BearerGuard

    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}'

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    guard = BearerGuard(
        app,
        verifier=verifier,
        path="/mcp",
        resource_metadata_url=f"{RESOURCE}/.well-known",
        scopes_supported=["notes:read"],
        tool_scopes={"echo": "notes:read"},
    )

    async def one(target: Any, headers: list[tuple[bytes, bytes]]) -> float:
        scope = {"type": "http", "method": "POST", "path": "/mcp", "headers": headers}
        statuses: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        start = time.perf_counter()
        await target(scope, receive, send)
        elapsed = (time.perf_counter() - start) * 1e6
        assert statuses == [200], statuses
        return elapsed

    plain_headers = [(b"content-type", b"application/json")]
    auth_headers = [*plain_headers, (b"authorization", f"Bearer {token}".encode())]
    for _ in range(500):  # warm-up
        await one(app, plain_headers)
        await one(guard, auth_headers)
    plain = [await one(app, plain_headers) for _ in range(n)]
    guarded = [await one(guard, auth_headers) for _ in range(n)]
    return statistics.median(plain), statistics.median(guarded)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--algorithm", choices=["ES256", "RS256"], default="ES256")
    args = parser.parse_args()
    asyncio.run(main(args.iterations, args.algorithm))
