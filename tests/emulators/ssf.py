"""A Shared Signals (OpenID SSF 1.0) transmitter emulator for tests: signs Security Event Tokens
(RFC 8417, header ``typ: secevent+jwt``) with its own ES256 or RS256 key, and serves over HTTP on
127.0.0.1::

    transmitter = SsfTransmitter(audience=broker_issuer)
    with transmitter.serve():                          # transmitter.issuer: http://127.0.0.1:<port>
        token = transmitter.sign(CAEP + "session-revoked", sub_id={"format": "email", "email": "a@x"})
        transmitter.push(f"{broker}/ssf/push/okta", token, PUSH_TOKEN)      # RFC 8935
        transmitter.enqueue(token)                     # waits for the receiver's poll (RFC 8936)

Served:

* ``GET /.well-known/ssf-configuration``: ``issuer``, ``jwks_uri``, ``delivery_methods_supported``.
* ``GET /jwks``: the public signing key.
* ``POST /poll``: RFC 8936 with ``Authorization: Bearer <poll_token>``; the request's ``ack``
  removes those SETs from the queue and ``setErrs`` records the receiver's refusals (also removed);
  the answer is ``{"sets": {jti: SET}, "moreAvailable": bool}`` with up to ``maxEvents`` of the
  queued SETs (returned at once: ``returnImmediately`` is how the broker polls). ``poll_status``
  makes it fail (e.g. 503) to test backoff.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx
from joserfc import jwk, jws
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.devstack import free_port
from tests.http import running

CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
RISC = "https://schemas.openid.net/secevent/risc/event-type/"
POLL_TOKEN = "poll-" + "p" * 40


class SsfTransmitter:
    def __init__(self, audience: str, *, alg: str = "ES256", poll_token: str = POLL_TOKEN) -> None:
        self.audience = audience
        self.alg = alg
        self.key = new_key(alg)
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.poll_token = poll_token
        self.queue: OrderedDict[str, str] = OrderedDict()
        self.enqueued_at: dict[str, float] = {}  # perf_counter when each SET was queued
        self.acked: list[str] = []
        self.set_errs: dict[str, Any] = {}
        self.polls: list[dict[str, Any]] = []
        self.poll_status = 200
        self._lock = threading.Lock()

    # -- SETs ------------------------------------------------------------------------------------
    def sign(
        self,
        event_type: str,
        event: Mapping[str, Any] | None = None,
        *,
        sub_id: Mapping[str, Any] | None = None,
        header: Mapping[str, Any] | None = None,
        key: jwk.Key | None = None,
        **claims: Any,
    ) -> str:
        """A SET with one event; ``claims`` override or add (``None`` removes one)."""
        body: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "iat": int(time.time()),
            "jti": secrets.token_hex(12),
            "events": {event_type: dict(event or {})},
        }
        if sub_id is not None:
            body["sub_id"] = dict(sub_id)
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        protected = {"alg": self.alg, "typ": "secevent+jwt", "kid": self.key.kid, **(header or {})}
        protected = {k: v for k, v in protected.items() if v is not None}
        return jws.serialize_compact(
            protected, json.dumps(body).encode(), key or self.key, algorithms=[protected["alg"]]
        )

    @staticmethod
    def unsigned(claims: Mapping[str, Any]) -> str:
        def part(value: Mapping[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

        return f"{part({'alg': 'none', 'typ': 'secevent+jwt'})}.{part(claims)}."

    @staticmethod
    def jti_of(token: str) -> str:
        payload = token.split(".")[1]
        jti: str = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]
        return jti

    # -- delivery --------------------------------------------------------------------------------
    def push(
        self, url: str, token: str, authorization: str | None, *, content_type: str = "application/secevent+jwt"
    ) -> httpx.Response:
        headers = {"content-type": content_type, "accept": "application/json"}
        if authorization is not None:
            headers["authorization"] = f"Bearer {authorization}"
        return httpx.post(url, content=token, headers=headers, timeout=10)

    def enqueue(self, token: str) -> str:
        jti = self.jti_of(token)
        with self._lock:
            self.queue[jti] = token
            self.enqueued_at[jti] = time.perf_counter()
        return jti

    # -- the server ------------------------------------------------------------------------------
    @contextmanager
    def serve(self) -> Iterator[str]:
        app = Starlette(
            routes=[
                Route("/.well-known/ssf-configuration", self._configuration),
                Route("/jwks", self._jwks),
                Route("/poll", self._poll, methods=["POST"]),
            ]
        )
        with running(app, self.port) as base:
            yield base

    async def _configuration(self, request: Request) -> Response:
        return JSONResponse(
            {
                "spec_version": "1_0",
                "issuer": self.issuer,
                "jwks_uri": f"{self.issuer}/jwks",
                "delivery_methods_supported": [
                    "urn:ietf:rfc:8935",
                    "urn:ietf:rfc:8936",
                ],
            }
        )

    async def _jwks(self, request: Request) -> Response:
        return JSONResponse({"keys": [self.key.as_dict(private=False)]})

    async def _poll(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.poll_token}":
            return JSONResponse({"err": "authentication_failed"}, status_code=401)
        if self.poll_status != 200:
            return Response(status_code=self.poll_status)
        body = await request.json()
        with self._lock:
            self.polls.append(body)
            for jti in body.get("ack", []):
                if self.queue.pop(jti, None) is not None:
                    self.acked.append(jti)
            for jti, error in body.get("setErrs", {}).items():
                if self.queue.pop(jti, None) is not None:
                    self.set_errs[jti] = error
            wanted = int(body.get("maxEvents", 100))
            sets = dict(list(self.queue.items())[:wanted])
            more = len(self.queue) > len(sets)
        return JSONResponse({"sets": sets, "moreAvailable": more})


def new_key(alg: str) -> jwk.Key:
    if alg.startswith("ES"):
        key: jwk.Key = jwk.ECKey.generate_key("P-256", parameters={"kid": secrets.token_hex(4), "alg": alg})
    else:
        key = jwk.RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(4), "alg": alg})
    return key
