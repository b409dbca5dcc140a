"""One cache of a JSON Web Key Set (RFC 7517 §5), for the verifier and the identity providers.

The set is fetched through the caller's ``fetch`` (its own HTTP client, headers and error
vocabulary; ``fetch_key_set`` is the plain httpx one) and fetched again when

* the keys are older than ``max_age`` since the last good fetch (a key may have been pulled), or
* a lookup finds no key (one may have been rotated in): at most once per ``refetch_interval``,

but never sooner than ``min_interval`` after the previous attempt while some key is known, or
``empty_interval`` while none is, whether that attempt worked or not: tokens naming unknown
keys, or a key set that is down, cannot make the caller hammer the publisher. Concurrent
lookups share one fetch: whoever waited while a fetch was under way takes its outcome. A failed
fetch keeps the keys already known and is remembered (``last_error``); a lookup sees it only
when no known key answers. ``deadline``, when given, bounds the wait for a fetch under way and
this one's (the providers' overall time limit).

Kept are signature keys (``use`` absent or ``sig``, ``key_ops`` absent or with ``verify``),
their private members dropped, filtered by key type, ``alg`` and ``kid`` as the caller asks.
``construct`` turns each into what the caller's JOSE library verifies with, once per fetch
(None: not usable, skipped; one malformed key does not hide the others).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Generic, TypeGuard, TypeVar

import httpx

K = TypeVar("K")

PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_KEY_TYPE = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}  # RFC 7518 §3.1, RFC 8037 §3.1
_CURVE = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521", "EdDSA": "Ed25519", "Ed25519": "Ed25519"}


class NotAKeySet(ValueError):
    """The document has no ``keys`` list."""


@dataclass(frozen=True, slots=True)
class PublishedKey(Generic[K]):
    """One key of the set: as published (public members only), and as ``construct`` made it."""

    kid: str | None
    alg: str | None
    jwk: Mapping[str, Any]
    key: K


def fits(published: PublishedKey[Any], alg: str) -> bool:
    """Whether a published key may verify a signature made with ``alg``: the key names no other
    ``alg``, and its ``kty`` (and ``crv``) are the ones ``alg`` needs."""
    if published.alg is not None and published.alg != alg:
        return False
    if published.jwk.get("kty") != _KEY_TYPE.get(alg[:2]):
        return False
    curve = _CURVE.get(alg)
    return curve is None or published.jwk.get("crv") == curve


def is_key_set(document: object) -> TypeGuard[Mapping[str, Any]]:
    return isinstance(document, Mapping) and isinstance(document.get("keys"), list)


async def fetch_key_set(http: httpx.AsyncClient, url: str, *, request_timeout: float | None = None) -> object:
    """GET ``url`` with ``http``: the JWK set document, or ``httpx.HTTPError`` (an answer other
    than 200 is ``HTTPStatusError``) or ``ValueError`` (not JSON, not a key set).
    ``request_timeout`` (httpx's, per request) None: the client's own."""
    headers = {"Accept": "application/json"}
    if request_timeout is None:
        response = await http.get(url, headers=headers)
    else:
        response = await http.get(url, headers=headers, timeout=request_timeout)
    if response.status_code != 200:
        raise httpx.HTTPStatusError(
            f"JWKS {url} answered HTTP {response.status_code}", request=response.request, response=response
        )
    document = response.json()
    if not is_key_set(document):
        raise NotAKeySet(f"JWKS {url} is not a JWK set")
    return document


class JwksCache(Generic[K]):
    """A JWK set fetched through ``fetch``; ``failures`` are the errors ``fetch`` raises when the
    set cannot be had (kept in ``last_error``, the keys already known staying in use)."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[object]],
        construct: Callable[[Mapping[str, Any]], K | None],
        *,
        failures: tuple[type[Exception], ...],
        max_age: float = 3600.0,
        min_interval: float = 30.0,
        empty_interval: float = 1.0,
        refetch_interval: float = 0.0,
        key_types: Collection[str] | None = None,
        algorithms: Collection[str] | None = None,
        require_kid: bool = False,
        deadline: Callable[[], AbstractAsyncContextManager[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_age = max_age
        self.min_interval = min_interval
        self.empty_interval = empty_interval
        self.refetch_interval = refetch_interval
        self._fetch = fetch
        self._construct = construct
        self._failures: tuple[type[Exception], ...] = (*failures, NotAKeySet)
        self._key_types = key_types
        self._algorithms = algorithms
        self._require_kid = require_kid
        self._deadline = deadline
        self._clock = clock
        self._keys: tuple[PublishedKey[K], ...] = ()
        self._loaded_at: float | None = None  # the last fetch that worked
        self._tried_at: float | None = None  # the last attempt, whatever came of it
        self._missed_at: float | None = None  # the last attempt for a lookup that found nothing
        self._fetches = 0  # attempts finished: a waiter that sees it move takes that outcome
        self._failure: Exception | None = None
        self._lock = asyncio.Lock()
        self.last_error: str | None = None

    @property
    def loaded(self) -> bool:
        return bool(self._keys)

    @property
    def keys(self) -> tuple[PublishedKey[K], ...]:
        return self._keys

    async def lookup(
        self, kid: str | None, where: Callable[[PublishedKey[K]], bool] | None = None
    ) -> list[PublishedKey[K]]:
        """The keys with ``kid`` (every key when None) that ``where`` accepts, fetching the set
        when it is past ``max_age`` or nothing is found and the rate limits allow. Raises the
        fetch's failure only when no known key answers."""
        found = self._match(kid, where)
        if found and not self._expired():
            return found
        seen = self._fetches
        try:
            async with self._bounded(), self._lock:  # one fetch for concurrent lookups
                found = self._match(kid, where)
                if self._fetches == seen:  # no fetch finished while this one waited
                    if self._expired() and self._may_try(miss=False):
                        await self._load(miss=False)
                        found = self._match(kid, where)
                    if not found and self._may_try(miss=True):
                        await self._load(miss=True)
                        found = self._match(kid, where)
                if not found and self._failure is not None:
                    raise self._failure.with_traceback(None)  # the set cannot be had just now
        except self._failures as exc:
            self._failed(exc)  # also a deadline that ran out while waiting or fetching
            if not found:
                raise
        return found

    async def refresh(self) -> None:
        """Fetch the set now, whatever the rate limits say; raise the failure if it cannot be had."""
        async with self._bounded(), self._lock:
            await self._load(miss=False)

    async def refresh_if_due(self) -> None:
        """Fetch the set unless an attempt was made too recently; a failure stays in ``last_error``."""
        seen = self._fetches
        with contextlib.suppress(*self._failures):
            async with self._bounded(), self._lock:
                if self._fetches == seen and self._may_try(miss=False):
                    await self._load(miss=False)

    def _bounded(self) -> AbstractAsyncContextManager[None]:
        return self._deadline() if self._deadline is not None else contextlib.nullcontext()

    def _match(self, kid: str | None, where: Callable[[PublishedKey[K]], bool] | None) -> list[PublishedKey[K]]:
        return [k for k in self._keys if (kid is None or k.kid == kid) and (where is None or where(k))]

    def _expired(self) -> bool:
        return self._loaded_at is None or self._clock() - self._loaded_at >= self.max_age

    def _may_try(self, *, miss: bool) -> bool:
        now = self._clock()
        interval = self.min_interval if self._keys else self.empty_interval
        if self._tried_at is not None and now - self._tried_at < interval:
            return False
        return not (miss and self._missed_at is not None and now - self._missed_at < self.refetch_interval)

    def _failed(self, exc: Exception) -> None:
        self._failure, self.last_error = exc, type(exc).__name__

    async def _load(self, *, miss: bool) -> None:
        self._tried_at = self._clock()  # failures count too: the rate limit holds while the set is down
        if miss:
            self._missed_at = self._tried_at
        try:
            document = await self._fetch()
            if not is_key_set(document):
                raise NotAKeySet("not a JWK set")
            self._keys = tuple(self._published(document["keys"]))
            self._loaded_at = self._clock()
            self._failure = self.last_error = None
        except self._failures as exc:
            self._failed(exc)
            raise
        finally:
            self._fetches += 1

    def _published(self, entries: Iterable[object]) -> Iterable[PublishedKey[K]]:
        for entry in entries:
            if not isinstance(entry, Mapping):
                continue
            ops = entry.get("key_ops", ["verify"])
            if entry.get("use", "sig") != "sig" or not isinstance(ops, list) or "verify" not in ops:
                continue  # an encryption key never verifies a signature
            kid, alg = entry.get("kid"), entry.get("alg")
            if self._key_types is not None and entry.get("kty") not in self._key_types:
                continue
            if self._algorithms is not None and alg not in self._algorithms:
                continue
            if self._require_kid and not isinstance(kid, str):
                continue
            public = {name: value for name, value in entry.items() if name not in PRIVATE_MEMBERS}
            key = self._construct(public)
            if key is not None:
                yield PublishedKey(
                    kid if isinstance(kid, str) else None, alg if isinstance(alg, str) else None, public, key
                )
