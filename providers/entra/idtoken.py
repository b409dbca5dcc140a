"""ID token validation (OpenID Connect Core 1.0 §3.1.3.7) for Entra ID tokens.

MSAL decodes the ID token and compares the nonce but checks no signature, issuer or audience
(MSAL for Python issue #911), so everything is checked here: an RS256 signature by a key of
the tenant's JWKS, the issuer of an allowed tenant (v2.0 ``https://{host}/{tid}/v2.0``; v1.0
``https://sts.windows.net/{tid}/`` only when configured), ``aud`` = client id, ``exp`` /
``nbf`` / ``iat`` with two minutes of leeway, and the nonce (MSAL sends the SHA-256 hex of the
flow's nonce, so that is what the token carries).

Signing keys are cached for a day (the shared cache of ``mcp_broker_verifier.jwks``). A token
signed with a key id not in the cache triggers a refetch, at most once per ``refetch_interval``
so forged key ids cannot make the broker hammer Entra; concurrent misses share one fetch. That
fetch, and the wait for it, is bounded by ``timeout`` (the provider's).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx
from jose import jwk, jwt
from jose.backends.base import Key
from jose.exceptions import ExpiredSignatureError, JOSEError, JWTClaimsError, JWTError

from mcp_broker_verifier import jwks
from providers.base import UpstreamRejected, UpstreamUnavailable
from providers.net import deadline, describe

ALGORITHM = "RS256"
LEEWAY = 120
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def nonce_hash(nonce: str) -> str:
    """What MSAL puts in the authorization request (and Entra in the ID token) for ``nonce``."""
    return hashlib.sha256(nonce.encode("ascii")).hexdigest()


class JwksCache(jwks.JwksCache[Key]):
    """The tenant's signing keys published at ``url``, by key id (the shared cache of
    ``mcp_broker_verifier.jwks``, with RSA keys built once per fetch)."""

    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        *,
        max_age: float = 86400,
        refetch_interval: float = 30,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self._http = http
        super().__init__(
            self._fetch,
            _rsa_key,
            failures=(UpstreamUnavailable,),
            max_age=max_age,
            min_interval=refetch_interval,
            empty_interval=refetch_interval,
            key_types=("RSA",),
            require_kid=True,
            # One deadline covers the wait for a fetch already under way and this one.
            deadline=lambda: deadline(timeout, f"JWKS {url}"),
            clock=clock,
        )

    async def key(self, kid: str) -> Key | None:
        """The key with ``kid``, fetching the key set when stale or when ``kid`` is new; a known
        key stays usable while Entra is down."""
        found = await self.lookup(kid)
        return found[0].key if found else None

    async def _fetch(self) -> object:
        try:
            return await jwks.fetch_key_set(self._http, self.url)
        except httpx.HTTPStatusError as exc:
            raise UpstreamUnavailable(f"JWKS {self.url} answered HTTP {exc.response.status_code}") from None
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"JWKS {self.url} unreachable: {describe(exc)}") from None
        except ValueError:
            raise UpstreamUnavailable(f"JWKS {self.url} is not a JSON key set") from None


def _rsa_key(entry: Mapping[str, Any]) -> Key | None:
    try:
        return jwk.construct(dict(entry), ALGORITHM)
    except (JOSEError, ValueError, TypeError):
        return None  # one malformed key does not take the others down


class IdTokenVerifier:
    """Checks an ID token from the token endpoint and returns its claims."""

    def __init__(
        self,
        *,
        client_id: str,
        authority_host: str,
        tenants: Iterable[str],
        jwks: JwksCache,
        v1_issuer_host: str | None = None,
    ) -> None:
        self.client_id = client_id
        self.authority_host = authority_host.rstrip("/")
        self.tenants = frozenset(t.lower() for t in tenants)
        self.jwks = jwks
        self.v1_issuer_host = v1_issuer_host.rstrip("/") if v1_issuer_host else None

    def issuers(self, tid: str) -> tuple[str, ...]:
        v2 = f"{self.authority_host}/{tid}/v2.0"
        return (v2, f"{self.v1_issuer_host}/{tid}/") if self.v1_issuer_host else (v2,)

    async def verify(self, id_token: str, *, nonce: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(id_token)
            unverified = jwt.get_unverified_claims(id_token)
        except JWTError:
            raise UpstreamRejected("ID token is not a JWS compact token") from None
        if header.get("alg") != ALGORITHM:
            raise UpstreamRejected(f"ID token signed with {str(header.get('alg'))[:16]!r}, only RS256 is accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise UpstreamRejected("ID token header has no key id")
        tid = unverified.get("tid")
        if not isinstance(tid, str) or not _GUID.match(tid):
            raise UpstreamRejected("ID token has no tenant id (tid)")
        if tid.lower() not in self.tenants:
            raise UpstreamRejected(f"ID token from tenant {tid}, which is not allowed")
        key = await self.jwks.key(kid)
        if key is None:
            raise UpstreamRejected(f"ID token signed with unknown key id {kid[:64]!r}")
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key,
                algorithms=[ALGORITHM],
                audience=self.client_id,
                issuer=self.issuers(tid),
                options={
                    "verify_at_hash": False,  # the access token is for Graph, not checked here
                    "require_aud": True,
                    "require_iss": True,
                    "require_exp": True,
                    "require_iat": True,
                    "leeway": LEEWAY,
                },
            )
        except ExpiredSignatureError:
            raise UpstreamRejected("ID token expired") from None
        except JWTClaimsError as exc:
            raise UpstreamRejected(f"ID token refused: {str(exc)[:120]}") from None
        except JWTError as exc:
            raise UpstreamRejected(f"ID token signature invalid: {str(exc)[:120]}") from None
        if claims.get("tid") != tid:
            raise UpstreamRejected("ID token tenant changed between decoding and verification")
        if not hmac.compare_digest(str(claims.get("nonce", "")), nonce_hash(nonce)):
            raise UpstreamRejected("ID token nonce does not match the sign-in request")
        if not isinstance(claims.get("oid"), str) or not claims["oid"]:
            raise UpstreamRejected("ID token has no object id (oid)")
        return claims
