"""The bare reference endpoint bench/compare.py measures the broker against.

``POST /token`` with ``grant_type=refresh_token``: FastAPI parses the form, ONE ``EVALSHA`` checks
the presented refresh token against its family record in Redis and rotates it atomically (a
token that is not the family's current one revokes the family, as rotation with reuse detection
does), and ONE ES256 signature makes an RFC 9068 JWT access token. Nothing else: no client
registry, no policy, no logging, no middleware. It is the floor of what a refresh grant costs in
this stack (Python, FastAPI, uvicorn with uvloop and httptools, redis-py with hiredis).

Run by bench/compare.py: ``python bench/reference_app.py PORT WORKERS`` with ``REFERENCE_REDIS_URL``
and ``REFERENCE_SIGNING_KEY`` (a PEM EC P-256 private key) in the environment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import sys
import time
from typing import Annotated, Any

import redis
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from fastapi import FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.asyncio import Redis

ISSUER = "http://127.0.0.1/reference"
RESOURCE = "http://127.0.0.1:8001/mcp"
FAMILY_TTL = 14 * 86400
ACCESS_TTL = 600
PREFIX = "reference:rt:"

# KEYS[1] the family; ARGV: presented token hash, successor hash, client id, TTL seconds.
# {1, sub, scope} after a rotation; {0} for an unknown family, a reused token or another client.
ROTATE = """
local rec = redis.call('HMGET', KEYS[1], 'current', 'client', 'sub', 'scope')
if not rec[1] then return {0} end
if rec[1] ~= ARGV[1] or rec[2] ~= ARGV[3] then
  redis.call('DEL', KEYS[1])
  return {0}
end
redis.call('HSET', KEYS[1], 'current', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {1, rec[3], rec[4]}
"""
NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(family: str) -> str:
    return f"rt.{family}.{secrets.token_urlsafe(32)}"


def seed(redis_url: str, count: int, client_id: str) -> list[str]:
    """``count`` refresh-token families, each with its first token (what a code exchange gives)."""
    client = redis.Redis.from_url(redis_url)
    tokens = []
    try:
        with client.pipeline(transaction=False) as pipe:
            for n in range(count):
                family = secrets.token_urlsafe(16)
                token = new_token(family)
                pipe.hset(
                    PREFIX + family,
                    mapping={"current": _digest(token), "client": client_id, "sub": f"user{n}", "scope": "notes:read"},
                )
                pipe.expire(PREFIX + family, FAMILY_TTL)
                tokens.append(token)
            pipe.execute()
    finally:
        client.close()
    return tokens


def create_app() -> FastAPI:
    key = serialization.load_pem_private_key(os.environ["REFERENCE_SIGNING_KEY"].encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    header = _b64(json.dumps({"alg": "ES256", "typ": "at+jwt", "kid": "reference"}).encode())
    store = Redis.from_url(os.environ["REFERENCE_REDIS_URL"])
    rotate = store.register_script(ROTATE)
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    def sign(claims: dict[str, Any]) -> str:
        signing_input = f"{header}.{_b64(json.dumps(claims, separators=(',', ':')).encode())}"
        r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def refused(description: str) -> JSONResponse:
        return JSONResponse({"error": "invalid_grant", "error_description": description}, 400, NO_STORE)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid_request"}, 400, NO_STORE)  # RFC 6749 §5.2, not FastAPI's 422

    @app.post("/token")
    async def token(
        grant_type: Annotated[str, Form()],
        client_id: Annotated[str, Form()],
        refresh_token: Annotated[str, Form()],
    ) -> JSONResponse:
        if grant_type != "refresh_token":
            return JSONResponse({"error": "unsupported_grant_type"}, 400, NO_STORE)
        parts = refresh_token.split(".")
        if len(parts) != 3 or parts[0] != "rt":
            return refused("malformed refresh token")
        successor = new_token(parts[1])
        answer = await rotate(
            keys=[PREFIX + parts[1]], args=[_digest(refresh_token), _digest(successor), client_id, FAMILY_TTL]
        )
        if not answer or answer[0] != 1:
            return refused("refresh token unknown, reused or not this client's")
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": answer[1].decode(),
            "aud": RESOURCE,
            "client_id": client_id,
            "scope": answer[2].decode(),
            "iat": now,
            "exp": now + ACCESS_TTL,
            "jti": secrets.token_urlsafe(16),
        }
        body = {
            "access_token": sign(claims),
            "token_type": "Bearer",
            "expires_in": ACCESS_TTL,
            "refresh_token": successor,
            "scope": claims["scope"],
        }
        return JSONResponse(body, headers=NO_STORE)

    return app


if __name__ == "__main__":
    import uvicorn

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    uvicorn.run(
        "reference_app:create_app",
        factory=True,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        workers=int(sys.argv[2]),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        server_header=False,
    )
