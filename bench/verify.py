"""Microseconds per access-token verification in mcp_app's verifier: cold (signature) and warm (cache).

Keys come from a real KeyRing in a private redis-server started for the run.
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

import httpx
import redis.asyncio as aioredis
from jose import jwt

from broker.devstack import RedisServer
from broker.oauth.signing import KeyRing, new_kek
from broker.store.keys import Keys
from mcp_app.verifier import BrokerTokenVerifier, JwksCache

ISSUER, RESOURCE = "https://auth.example.com", "https://mcp.example.com/mcp"


async def main(iterations: int, algorithm: str) -> None:
    with tempfile.TemporaryDirectory() as state:
        server = RedisServer(Path(state), persist=False).start()
        try:
            client = aioredis.Redis.from_url(server.url)
            ring = KeyRing(client, Keys(), kek=new_kek(), algorithm=algorithm)  # type: ignore[arg-type]
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
            await client.aclose()
        finally:
            server.stop()
    for name, sample in (("cold (signature check)", cold), ("warm (cache hit)", warm)):
        q = statistics.quantiles(sample, n=100)
        print(
            f"{algorithm} {name:<24} median {statistics.median(sample):8.1f} us   p99 {q[98]:8.1f} us   n={len(sample)}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--algorithm", choices=["ES256", "RS256"], default="ES256")
    args = parser.parse_args()
    asyncio.run(main(args.iterations, args.algorithm))
