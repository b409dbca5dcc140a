"""A test enterprise IdP that signs ID-JAGs with real keys (ES256 and RS256) and publishes them over
loopback HTTP: each tenant path is an issuer of its own, with an OpenID discovery document and a
JWKS (``/{tenant}/.well-known/openid-configuration``, ``/{tenant}/jwks``)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from broker.oauth.id_jag import TYP
from tests.http import running


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class JagIssuer:
    """The IdP at ``base``; ``issuer(tenant)`` is one of its issuers."""

    base: str
    ec: ECKey = field(default_factory=lambda: ECKey.generate_key("P-256", parameters={"kid": "ec-1", "alg": "ES256"}))
    rsa: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "alg": "RS256"}))
    jwks_fetches: int = 0

    def issuer(self, tenant: str = "corp") -> str:
        return f"{self.base}/{tenant}"

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.ec.as_dict(private=False), self.rsa.as_dict(private=False)]}

    def claims(self, audience: str, client_id: str, resource: str, /, **over: Any) -> dict[str, Any]:
        """An ID-JAG's claims for alice, valid for five minutes; ``over`` replaces (None removes)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer(),
            "sub": "alice",
            "aud": audience,
            "client_id": client_id,
            "resource": resource,
            "scope": "notes:read notes:write",
            "jti": secrets.token_urlsafe(16),
            "iat": now,
            "exp": now + 300,
            "email": "alice@demo.local",
        }
        claims.update(over)
        return {k: v for k, v in claims.items() if v is not None}

    def sign(self, claims: dict[str, Any], *, alg: str = "ES256", **header: Any) -> str:
        """A signed ID-JAG; ``header`` adds or replaces header members (None removes ``typ``)."""
        key = self.ec if alg.startswith("ES") else self.rsa
        fields: dict[str, Any] = {"alg": alg, "typ": TYP, "kid": key.kid, **header}
        return jwt.encode({k: v for k, v in fields.items() if v is not None}, claims, key, algorithms=[alg])

    def unsigned(self, claims: dict[str, Any]) -> str:
        """``alg: none``: no signature at all."""
        header = b64url(json.dumps({"alg": "none", "typ": TYP}).encode())
        return f"{header}.{b64url(json.dumps(claims).encode())}."

    def hs256_with_public_key(self, claims: dict[str, Any]) -> str:
        """The algorithm-confusion attack: HMAC with the issuer's RSA public key as the secret."""
        secret = self.rsa.as_pem(private=False)
        header = b64url(json.dumps({"alg": "HS256", "typ": TYP, "kid": self.rsa.kid}).encode())
        signing_input = f"{header}.{b64url(json.dumps(claims).encode())}"
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(signature)}"

    def app(self) -> Starlette:
        async def discovery(request: Request) -> JSONResponse:
            issuer = self.issuer(request.path_params["tenant"])
            return JSONResponse({"issuer": issuer, "jwks_uri": f"{issuer}/jwks"})

        async def jwks(request: Request) -> JSONResponse:
            self.jwks_fetches += 1
            return JSONResponse(self.jwks())

        return Starlette(
            routes=[
                Route("/{tenant}/.well-known/openid-configuration", discovery),
                Route("/{tenant}/jwks", jwks),
            ]
        )


@contextmanager
def jag_issuer() -> Iterator[JagIssuer]:
    idp = JagIssuer(base="")
    with running(idp.app()) as base:
        idp.base = base
        yield idp
