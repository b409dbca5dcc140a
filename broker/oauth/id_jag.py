"""Identity Assertion JWT Authorization Grants: the checks an ID-JAG passes before it is redeemed
(draft-ietf-oauth-identity-assertion-authz-grant §3 and §4.4.1, RFC 7521 §5.2, RFC 7523 §3).

Checked here, each refusal an ``invalid_grant`` with the reason kept for the audit log:

* the header: ``typ`` is ``oauth-id-jag+jwt`` (RFC 8725 §3.11), ``alg`` one of the algorithms
  configured for the issuer (asymmetric only: ``none`` and HMAC never verify, so a public key
  can never serve as an HMAC secret), no ``crit`` extension;
* the compact JWS in its canonical spelling, then the signature, by a key of the issuer's JWKS
  whose type fits the algorithm (the shared cache of ``mcp_broker_verifier.jwks``, fetched from
  ``jwks_uri`` or the issuer's discovery document);
* ``iss`` a trusted issuer exactly; ``aud`` this broker's issuer exactly; ``exp`` not passed and
  ``iat`` not in the future (``clock_skew`` allowed either way), ``exp - iat`` at most
  ``max_lifetime``; ``nbf`` when present; ``jti``, ``sub`` and ``client_id`` present.

What the grant itself decides (the client, the resource, single use of ``jti``, the user and the
scopes) is in :mod:`broker.oauth.assertion_grant`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from joserfc import jwk, jwt
from joserfc.errors import BadSignatureError, JoseError

from broker.config.models import TrustedIssuerConfig
from broker.oauth.errors import InvalidGrant, TemporarilyUnavailable
from mcp_broker_verifier.jwks import JwksCache, fetch_key_set, fits
from mcp_broker_verifier.jws import is_canonical_jws
from providers.base import UpstreamUnavailable
from providers.net import deadline, describe, is_loopback_host

TYP = "oauth-id-jag+jwt"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"  # RFC 7523 §2.1
ID_JAG_PROFILE = "urn:ietf:params:oauth:grant-profile:id-jag"  # authorization_grant_profiles_supported
MAX_LENGTH = 16_384  # characters of an assertion; an ID-JAG is a few hundred
MAX_CLAIM = 1_024  # characters of sub, jti, client_id, email


class Refused(InvalidGrant):
    """An ID-JAG that fails a check: ``invalid_grant``, with a short ``reason`` for the audit log."""

    def __init__(self, reason: str, description: str, *, detail: str | None = None) -> None:
        super().__init__(description, detail=detail or description)
        self.reason = reason


@dataclass(frozen=True)
class IdJag:
    """A verified ID-JAG: who issued it (and so what it may say), and its claims."""

    trusted: TrustedIssuerConfig
    claims: Mapping[str, Any]
    subject: str
    client_id: str
    jti: str
    issued_at: int
    expires_at: int
    resources: tuple[str, ...]  # the `resource` claim (one URI, or a list)
    scopes: tuple[str, ...] | None  # the `scope` claim; None when absent

    @property
    def issuer(self) -> str:
        return self.trusted.issuer


def _import_key(entry: Mapping[str, Any]) -> jwk.Key | None:
    try:
        return jwk.import_key(dict(entry))
    except (JoseError, ValueError, TypeError):
        return None  # one malformed key does not hide the others


def _fetchable(url: object) -> str | None:
    """``url`` if the broker may fetch keys from it: https, or http on a loopback host."""
    if not isinstance(url, str) or len(url) > 2000:
        return None
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    return url if parts.scheme == "http" and is_loopback_host(parts.hostname) else None


class IssuerKeys(JwksCache[jwk.Key]):
    """A trusted issuer's signing keys, from ``jwks_uri`` or its discovery document, cached an hour;
    an unknown ``kid`` refetches at most once a minute."""

    def __init__(
        self,
        trusted: TrustedIssuerConfig,
        http: httpx.AsyncClient,
        *,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.trusted = trusted
        self.jwks_uri = trusted.jwks_uri
        self._http = http
        super().__init__(
            self._fetch,
            _import_key,
            failures=(UpstreamUnavailable,),
            max_age=3600,
            min_interval=0,
            empty_interval=1.0,
            refetch_interval=60,
            key_types=("RSA", "EC", "OKP"),  # a symmetric key never verifies an ID-JAG
            deadline=lambda: deadline(timeout, f"keys of {trusted.issuer}"),
            clock=clock,
        )

    async def candidates(self, kid: str | None, alg: str) -> list[jwk.Key]:
        return [published.key for published in await self.lookup(kid, lambda published: fits(published, alg))]

    async def _fetch(self) -> object:
        url = self.jwks_uri or await self._discover()
        try:
            return await fetch_key_set(self._http, url)
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"JWKS {url}: {describe(exc)}") from None
        except ValueError:
            raise UpstreamUnavailable(f"JWKS {url} is not a JSON key set") from None

    def _discovery_urls(self) -> list[str]:
        issuer = self.trusted.issuer.removesuffix("/")
        parts = urlsplit(issuer)
        return [
            f"{issuer}/.well-known/openid-configuration",
            f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{parts.path}",
        ]

    async def _discover(self) -> str:
        """The issuer's ``jwks_uri`` from its OpenID or RFC 8414 metadata (whose ``issuer`` must be it)."""
        problems: list[str] = []
        for url in self._discovery_urls():
            try:
                response = await self._http.get(url, headers={"Accept": "application/json"})
                document = response.json() if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError) as exc:
                problems.append(f"{url}: {describe(exc) if isinstance(exc, httpx.HTTPError) else 'not JSON'}")
                continue
            if not isinstance(document, dict):
                problems.append(f"{url}: HTTP {response.status_code}")
                continue
            if document.get("issuer") != self.trusted.issuer:
                problems.append(f"{url}: names another issuer")
                continue
            jwks_uri = _fetchable(document.get("jwks_uri"))
            if jwks_uri is None:
                problems.append(f"{url}: no https jwks_uri")
                continue
            self.jwks_uri = jwks_uri
            return jwks_uri
        raise UpstreamUnavailable(f"no discovery document for {self.trusted.issuer}: {'; '.join(problems)}")


def _segment(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError, RecursionError):  # RecursionError: JSON nested too deep
        raise Refused(
            "malformed", "The assertion is not a JWT.", detail=f"the assertion's {what} is not JSON"
        ) from None
    if not isinstance(value, dict):
        raise Refused("malformed", "The assertion is not a JWT.", detail=f"the assertion's {what} is not an object")
    return value


def _text(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value or len(value) > MAX_CLAIM:
        raise Refused("claims", f"The assertion has no valid '{name}' claim.")
    return value


def _time(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Refused("claims", f"The assertion has no valid '{name}' claim.")
    return int(value)


def _resources(claims: Mapping[str, Any]) -> tuple[str, ...]:
    value = claims.get("resource")
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise Refused("resource", "The assertion names no resource.")
    return tuple(values[:20])


def _scopes(claims: Mapping[str, Any]) -> tuple[str, ...] | None:
    value = claims.get("scope")
    if value is None:
        return None
    if not isinstance(value, str):
        raise Refused("claims", "The assertion's 'scope' claim is not a space-separated string.")
    return tuple(dict.fromkeys(value.split()))


class IdJagVerifier:
    """Verifies ID-JAGs from the trusted issuers for the authorization server ``audience`` (ours)."""

    def __init__(
        self,
        audience: str,
        trusted: Sequence[TrustedIssuerConfig],
        *,
        http: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.audience = audience
        self._http = http or httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._owns_http = http is None
        self.keys = {t.issuer: IssuerKeys(t, self._http, timeout=timeout) for t in trusted}
        self._clock = clock

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def verify(self, assertion: str) -> IdJag:
        """The verified ID-JAG, or :class:`Refused`; ``TemporarilyUnavailable`` when the issuer's
        keys cannot be had just now."""
        if len(assertion) > MAX_LENGTH or assertion.count(".") != 2:
            raise Refused("malformed", "The assertion is not a JWT.", detail="not three dot-separated segments")
        encoded_header, encoded_payload, _ = assertion.split(".")
        header = _segment(encoded_header, "header")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() != TYP:
            shown = str(typ)[:40] if typ is not None else "none"
            raise Refused("typ", f"The assertion's type must be {TYP}.", detail=f"assertion typ {shown!r}")
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise Refused("alg", "The assertion's header has no algorithm.")
        if "crit" in header:
            raise Refused("crit", "The assertion's header has critical extensions this server does not support.")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Refused("malformed", "The assertion's key id is not a string.")
        issuer = _segment(encoded_payload, "payload").get("iss")
        keys = self.keys.get(issuer) if isinstance(issuer, str) else None
        if keys is None:
            shown = str(issuer)[:200]
            raise Refused("issuer", "The assertion's issuer is not trusted.", detail=f"untrusted issuer {shown!r}")
        trusted = keys.trusted
        if alg not in trusted.algorithms:
            raise Refused(
                "alg",
                f"The assertion's algorithm is not accepted (accepted: {', '.join(trusted.algorithms)}).",
                detail=f"assertion signed with {alg[:20]!r}",
            )
        if not is_canonical_jws(assertion):
            raise Refused("malformed", "The assertion is not a JWT.", detail="not a canonical compact JWS")
        try:
            candidates = await keys.candidates(kid, alg)
        except UpstreamUnavailable as exc:
            raise TemporarilyUnavailable(
                "The assertion's issuer keys cannot be fetched just now.", detail=str(exc)
            ) from None
        claims = self._signed_claims(assertion, candidates, alg, kid)
        return self._check(trusted, claims)

    @staticmethod
    def _signed_claims(assertion: str, keys: Sequence[jwk.Key], alg: str, kid: str | None) -> dict[str, Any]:
        if not keys:
            raise Refused(
                "signature", "The assertion's signature does not verify.", detail=f"no key for kid {str(kid)[:80]!r}"
            )
        for key in keys:
            try:
                return dict(jwt.decode(assertion, key, algorithms=[alg]).claims)
            except BadSignatureError:
                continue
            except (JoseError, ValueError) as exc:
                raise Refused("malformed", "The assertion is not a JWT.", detail=type(exc).__name__) from None
        raise Refused("signature", "The assertion's signature does not verify.")

    def _check(self, trusted: TrustedIssuerConfig, claims: dict[str, Any]) -> IdJag:
        if claims.get("iss") != trusted.issuer:
            raise Refused("issuer", "The assertion's issuer is not trusted.")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if audiences != [self.audience]:
            raise Refused(
                "audience",
                "The assertion is not addressed to this authorization server.",
                detail=f"assertion aud {str(audience)[:200]!r}",
            )
        now = self._clock()
        skew = trusted.clock_skew
        issued, expires = _time(claims, "iat"), _time(claims, "exp")
        if expires + skew < now:
            raise Refused(
                "expired", "The assertion has expired.", detail=f"assertion expired {int(now - expires)} s ago"
            )
        if issued - skew > now:
            raise Refused("iat", "The assertion is issued in the future.", detail=f"iat {int(issued - now)} s ahead")
        if expires <= issued or expires - issued > trusted.max_lifetime:
            raise Refused(
                "lifetime",
                f"The assertion's lifetime must be at most {trusted.max_lifetime} seconds.",
                detail=f"assertion lifetime {expires - issued} s",
            )
        if "nbf" in claims and _time(claims, "nbf") - skew > now:
            raise Refused("nbf", "The assertion is not valid yet.")
        return IdJag(
            trusted=trusted,
            claims=claims,
            subject=_text(claims, "sub"),
            client_id=_text(claims, "client_id"),
            jti=_text(claims, "jti"),
            issued_at=issued,
            expires_at=expires,
            resources=_resources(claims),
            scopes=_scopes(claims),
        )
