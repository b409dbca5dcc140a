"""ID token validation, OpenID Connect Core 1.0 §3.1.3.7 (and §12.2 for a refreshed ID token).

Checked here: a signature by a key of the OP's JWKS, with an algorithm the OP announced and
that is asymmetric (the header's ``alg`` is matched against that list, never trusted); ``iss``
equal to the issuer; ``aud`` containing the client id, and with several audiences an ``azp``
equal to the client id; ``exp``, ``iat`` (and ``nbf`` if present) within a minute of leeway;
the ``nonce`` of the login; ``sub`` present; ``at_hash`` when the token carries one.

The key set is cached for an hour (the shared cache of ``mcp_broker_verifier.jwks``). A key id
that is not in the cache triggers a refetch (the OP has rotated its keys), at most once per
``refetch_interval`` so that tokens naming unknown keys cannot make the broker hammer the OP,
and a failed fetch is not retried for a second; concurrent misses share one fetch. That fetch, and
the wait for it, is bounded by ``timeout`` (the provider's ``http_timeout``): an OP that hangs
is UpstreamUnavailable when the time is up, and keys already known stay usable meanwhile.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

from joserfc import jwk, jwt
from joserfc.errors import BadSignatureError, ClaimError, ExpiredTokenError, JoseError

from mcp_broker_verifier.jwks import JwksCache, fits, is_key_set
from providers.base import UpstreamRejected, UpstreamUnavailable
from providers.net import deadline

LEEWAY = 60
_ACCEPTED_TYP = {"jwt", "application/jwt"}


def _import_key(entry: Mapping[str, Any]) -> jwk.Key | None:
    try:
        return jwk.import_key(dict(entry))
    except (JoseError, ValueError, TypeError):
        return None  # one malformed key does not hide the others


class KeySet(JwksCache[jwk.Key]):
    """The OP's signing keys (its JWKS), fetched through ``fetch`` and cached (the shared cache
    of ``mcp_broker_verifier.jwks``)."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[object]],
        *,
        max_age: float = 3600,
        refetch_interval: float = 60,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 10.0,
    ) -> None:
        self.timeout = timeout

        async def key_set() -> object:
            document = await fetch()
            if not is_key_set(document):
                raise UpstreamRejected("the JWKS document has no keys list")
            return document

        super().__init__(
            key_set,
            _import_key,
            failures=(UpstreamUnavailable, UpstreamRejected),
            max_age=max_age,
            min_interval=0,  # the first miss after a load may refetch at once; later ones wait
            empty_interval=1.0,
            refetch_interval=refetch_interval,
            key_types=("RSA", "EC", "OKP"),  # symmetric or unknown key types never verify an ID token
            # One deadline covers the wait for a fetch already under way and this one's.
            deadline=lambda: deadline(timeout, "JWKS"),
            clock=clock,
        )

    async def candidates(self, kid: str | None, alg: str) -> list[jwk.Key]:
        """Keys that may have signed a token with this header: by ``kid``, else every key fit for ``alg``."""
        return [published.key for published in await self.lookup(kid, lambda published: fits(published, alg))]


def unverified_header(raw: str) -> dict[str, Any]:
    """The JOSE header of a compact JWS, parsed but not trusted."""
    parts = raw.split(".")
    if len(parts) != 3:
        raise UpstreamRejected("the ID token is not a compact JWS (encrypted ID tokens are not supported)")
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except ValueError:
        raise UpstreamRejected("the ID token header is not base64url JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
        raise UpstreamRejected("the ID token header has no alg")
    return header


def at_hash(access_token: str, alg: str) -> str:
    """OIDC Core §3.1.3.6: left half of the access token's hash, with the signature's hash function."""
    if alg in ("EdDSA", "Ed25519"):
        digest = hashlib.sha512(access_token.encode("ascii")).digest()
    else:
        digest = hashlib.new(f"sha{alg[2:]}", access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode("ascii")


async def signed_claims(
    raw: str, keys: KeySet, *, algorithms: Sequence[str], accepted_typ: Collection[str], what: str = "ID token"
) -> tuple[dict[str, Any], str]:
    """The claims and ``alg`` of ``raw``, a JWT from the OP (``what``: an ID or a logout token),
    before any claim check: its header's ``alg`` one of ``algorithms`` (the header is never trusted
    alone), ``typ`` absent or in ``accepted_typ``, ``kid`` absent or a string, and its signature by
    a key of ``keys`` for that ``kid`` and ``alg``."""
    header = unverified_header(raw)
    alg = header["alg"]
    if alg not in algorithms:
        raise UpstreamRejected(f"{what} signed with {alg[:20]!r}; accepted: {', '.join(algorithms)}")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in accepted_typ):
        article = "an" if what[0] in "AEIOU" else "a"
        raise UpstreamRejected(f"token of type {str(typ)[:40]!r} is not {article} {what}")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise UpstreamRejected(f"the {what} header has a non-string kid")
    candidates = await keys.candidates(kid, alg)
    if not candidates:
        raise UpstreamRejected(f"no key of the OP's JWKS matches the {what} (kid {str(kid)[:80]!r}, {alg})")
    return IdTokenVerifier._signed_claims(raw, candidates, alg, what), alg


class OpJwtVerifier:
    """What the checks of a JWT the OP issued to ``client_id`` start from (ID tokens, logout
    tokens): the issuer, our client id, the OP's key set, and the clock with its leeway."""

    def __init__(
        self,
        issuer: str,
        client_id: str,
        keys: KeySet,
        *,
        leeway: int = LEEWAY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self.keys = keys
        self.leeway = leeway
        self._clock = clock


class IdTokenVerifier(OpJwtVerifier):
    """Verifies ID tokens issued by ``issuer`` to ``client_id``."""

    async def verify(
        self,
        raw: str,
        *,
        algorithms: Sequence[str],
        nonce: str | None,
        access_token: str | None = None,
    ) -> dict[str, Any]:
        """The verified claims; ``nonce`` None skips the nonce check (a refreshed ID token)."""
        claims, alg = await signed_claims(raw, self.keys, algorithms=algorithms, accepted_typ=_ACCEPTED_TYP)
        self._check(claims, nonce)
        if access_token is not None and "at_hash" in claims:
            expected = at_hash(access_token, alg)
            if not isinstance(claims["at_hash"], str) or not hmac.compare_digest(claims["at_hash"], expected):
                raise UpstreamRejected("the ID token's at_hash does not match the access token")
        return claims

    @staticmethod
    def _signed_claims(raw: str, keys: Sequence[jwk.Key], alg: str, what: str = "ID token") -> dict[str, Any]:
        for key in keys:
            try:
                return dict(jwt.decode(raw, key, algorithms=[alg]).claims)
            except BadSignatureError:
                continue
            except (JoseError, ValueError) as exc:
                raise UpstreamRejected(f"{what} rejected: {type(exc).__name__}") from None
        raise UpstreamRejected(f"the {what} signature does not verify")

    def _check(self, claims: dict[str, Any], nonce: str | None) -> None:
        registry = jwt.JWTClaimsRegistry(
            now=int(self._clock()),
            leeway=self.leeway,
            iss={"essential": True, "value": self.issuer},
            sub={"essential": True},
            aud={"essential": True, "value": self.client_id},
            exp={"essential": True},
            iat={"essential": True},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise UpstreamRejected("the ID token has expired") from None
        except ClaimError as exc:
            raise UpstreamRejected(f"ID token claim {exc.claim!r} refused: {exc.description}") from None
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        azp = claims.get("azp")
        if (len(audiences) > 1 or azp is not None) and azp != self.client_id:
            raise UpstreamRejected(f"ID token azp {str(azp)[:80]!r} is not this client (audiences {len(audiences)})")
        if nonce is not None:
            presented = claims.get("nonce")
            if not isinstance(presented, str) or not hmac.compare_digest(presented, nonce):
                raise UpstreamRejected("the ID token nonce does not match this sign-in")
