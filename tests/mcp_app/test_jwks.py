"""The shared JWKS cache (mcp_broker_verifier.jwks) against a real key set endpoint on loopback
that counts its fetches: refetch on an unknown kid, the rate limits under bursts and failures,
one fetch for concurrent lookups, the old keys kept through a failure, expiry after max_age,
the deadline, and which published keys are kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_broker_verifier.jwks import JwksCache, NotAKeySet, PublishedKey, fetch_key_set, fits
from tests.clock import Clock
from tests.http import running


def rsa(kid: str | None, **over: Any) -> dict[str, Any]:
    key = {"kty": "RSA", "kid": kid, "n": f"modulus-{kid}", "e": "AQAB", "use": "sig"}
    key.update(over)
    return {k: v for k, v in key.items() if v is not None}


class Publisher:
    """A JWKS endpoint: what it publishes, how it answers, how slowly, and how often it was asked."""

    def __init__(self) -> None:
        self.url = ""
        self.reset()

    def reset(self) -> None:
        self.keys: list[object] = [rsa("a")]
        self.status = 200
        self.body: object = None  # None: {"keys": self.keys}
        self.delay = 0.0
        self.fetches = 0

    async def jwks(self, _: Request) -> Response:
        self.fetches += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return Response("down", status_code=self.status)
        return JSONResponse(self.body if self.body is not None else {"keys": self.keys})


@pytest.fixture(scope="module")
def server() -> Iterator[Publisher]:
    publisher = Publisher()
    with running(Starlette(routes=[Route("/jwks", publisher.jwks)])) as base:
        publisher.url = f"{base}/jwks"
        yield publisher


@pytest.fixture
def publisher(server: Publisher) -> Publisher:
    server.reset()
    return server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


@pytest.fixture
def clock() -> Clock:
    return Clock()


Make = Callable[..., JwksCache[str]]


@pytest.fixture
def make(publisher: Publisher, http: httpx.AsyncClient, clock: Clock) -> Make:
    """Caches of key ids on ``publisher``: ``construct`` gives each key's ``kid`` (its ``kty``
    when it has none); the rate limits and ages of the verifier unless told otherwise."""

    def cache(**over: Any) -> JwksCache[str]:
        options: dict[str, Any] = {"failures": (httpx.HTTPError, ValueError), "min_interval": 30.0, "clock": clock}
        return JwksCache(
            lambda: fetch_key_set(http, publisher.url), lambda jwk: str(jwk.get("kid", jwk["kty"])), **(options | over)
        )

    return cache


async def kids(keys: JwksCache[str], kid: str | None) -> list[str]:
    return [published.key for published in await keys.lookup(kid)]


async def test_an_unknown_kid_refetches_once_when_the_rate_limit_allows(
    publisher: Publisher, make: Make, clock: Clock
) -> None:
    keys = make()
    assert await kids(keys, "a") == ["a"]
    assert await kids(keys, "a") == ["a"]
    assert publisher.fetches == 1

    publisher.keys = [rsa("a"), rsa("b")]  # "b" rotated in
    assert await kids(keys, "b") == []  # fetched 0 s ago: not yet
    assert publisher.fetches == 1
    clock.now += 30
    assert await kids(keys, "b") == ["b"]
    assert await kids(keys, "a") == ["a"]
    assert publisher.fetches == 2


async def test_a_burst_of_unknown_kids_costs_one_fetch_per_interval(
    publisher: Publisher, make: Make, clock: Clock
) -> None:
    keys = make()
    assert await kids(keys, "a") == ["a"]
    for _ in range(3):
        clock.now += 30
        results = await asyncio.gather(*(kids(keys, f"forged-{n}") for n in range(50)))
        assert results == [[]] * 50
        results = await asyncio.gather(*(kids(keys, f"forged-{n}") for n in range(50)))
        assert results == [[]] * 50
    assert publisher.fetches == 1 + 3


async def test_a_miss_refetch_interval_of_its_own(publisher: Publisher, make: Make, clock: Clock) -> None:
    # The OIDC provider's setting: the first miss after a load refetches at once, later ones wait.
    keys = make(min_interval=0, refetch_interval=60)
    assert await kids(keys, "a") == ["a"]
    assert await kids(keys, "b") == []
    assert publisher.fetches == 2
    clock.now += 59
    assert await kids(keys, "b") == []
    assert publisher.fetches == 2
    clock.now += 1
    publisher.keys = [rsa("b")]
    assert await kids(keys, "b") == ["b"]
    assert publisher.fetches == 3


async def test_concurrent_lookups_share_one_fetch(publisher: Publisher, make: Make) -> None:
    publisher.delay = 0.3
    # No rate limit at all: only the shared fetch keeps this at one request.
    keys = make(min_interval=0, empty_interval=0)
    results = await asyncio.gather(*(kids(keys, "a") for _ in range(20)), *(kids(keys, "x") for _ in range(20)))
    assert results == [["a"]] * 20 + [[]] * 20
    assert publisher.fetches == 1


async def test_a_failed_fetch_keeps_the_old_keys_and_is_remembered(
    publisher: Publisher, make: Make, clock: Clock
) -> None:
    keys = make()
    assert await kids(keys, "a") == ["a"]
    publisher.status = 503
    clock.now += 3600  # past max_age: due for a fetch, which fails
    assert await kids(keys, "a") == ["a"]  # the known key stays usable
    assert (keys.last_error, publisher.fetches, keys.loaded) == ("HTTPStatusError", 2, True)
    with pytest.raises(httpx.HTTPStatusError, match="HTTP 503"):
        await keys.lookup("b")  # no known key answers: the failure, not a silent "no such key"
    assert publisher.fetches == 2  # and no new attempt within the interval

    publisher.status = 200
    clock.now += 30
    assert await kids(keys, "a") == ["a"]
    assert (keys.last_error, publisher.fetches) == (None, 3)


async def test_a_failing_set_is_asked_at_most_once_per_empty_interval(
    publisher: Publisher, make: Make, clock: Clock
) -> None:
    keys = make(empty_interval=1.0)
    publisher.body = {"keys": "not a list"}
    for _ in range(5):
        with pytest.raises(NotAKeySet):
            await keys.lookup("a")
    assert (publisher.fetches, keys.last_error, keys.loaded) == (1, "NotAKeySet", False)
    publisher.body = None
    clock.now += 1
    assert await kids(keys, "a") == ["a"]
    assert publisher.fetches == 2


async def test_keys_past_max_age_are_fetched_again_and_a_pulled_key_stops_working(
    publisher: Publisher, make: Make, clock: Clock
) -> None:
    keys = make(max_age=600)
    assert await kids(keys, "a") == ["a"]
    publisher.keys = [rsa("b")]  # "a" pulled
    clock.now += 599
    assert await kids(keys, "a") == ["a"]  # within max_age: no fetch
    assert publisher.fetches == 1
    clock.now += 1
    assert await kids(keys, "a") == []
    assert await kids(keys, "b") == ["b"]
    assert publisher.fetches == 2


async def test_refresh_if_due_is_rate_limited_and_keeps_errors(publisher: Publisher, make: Make, clock: Clock) -> None:
    keys = make()
    publisher.status = 500
    await keys.refresh_if_due()
    await keys.refresh_if_due()
    assert (publisher.fetches, keys.loaded, keys.last_error) == (1, False, "HTTPStatusError")
    publisher.status = 200
    clock.now += 1
    await keys.refresh_if_due()
    assert (publisher.fetches, keys.loaded, keys.last_error) == (2, True, None)


class TimedOut(Exception):
    pass


def deadline(seconds: float) -> AbstractAsyncContextManager[None]:
    @asynccontextmanager
    async def bounded() -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(seconds):
                yield
        except TimeoutError:
            raise TimedOut(f"JWKS timed out after {seconds:g} s") from None

    return bounded()


async def test_the_deadline_bounds_the_fetch_and_the_wait_and_known_keys_survive_it(
    publisher: Publisher, make: Make, clock: Clock
) -> None:
    keys = make(failures=(httpx.HTTPError, ValueError, TimedOut), deadline=lambda: deadline(0.3))
    assert await kids(keys, "a") == ["a"]
    publisher.delay = 3
    clock.now += 3600
    started = asyncio.get_running_loop().time()
    results = await asyncio.gather(kids(keys, "a"), keys.lookup("b"), return_exceptions=True)
    assert asyncio.get_running_loop().time() - started < 2
    assert results[0] == ["a"]  # stale but known: still usable while the set hangs
    assert isinstance(results[1], TimedOut)
    assert keys.last_error == "TimedOut"
    assert publisher.fetches == 2  # the waiter did not start a second fetch


async def test_which_keys_are_kept_and_each_is_constructed_once_per_fetch(
    publisher: Publisher, http: httpx.AsyncClient
) -> None:
    publisher.keys = [
        rsa("sig", alg="RS256", d="private", p="private"),
        rsa("nouse", use=None, alg="RS256"),
        rsa("enc", use="enc", alg="RS256"),
        rsa("wrap", key_ops=["wrapKey"], alg="RS256"),
        rsa("ops", key_ops="verify", alg="RS256"),  # key_ops must be a list
        rsa(None, alg="RS256"),
        rsa("es", alg="ES256", kty="EC"),
        rsa("hs", alg="HS256", kty="oct", k="secret"),
        rsa("broken", alg="RS256"),
        "not an object",
    ]
    built: list[Mapping[str, Any]] = []

    def construct(jwk: Mapping[str, Any]) -> str | None:
        built.append(jwk)
        return None if jwk.get("kid") == "broken" else str(jwk.get("kid"))

    def make(**over: Any) -> JwksCache[str]:
        return JwksCache(lambda: fetch_key_set(http, publisher.url), construct, failures=(httpx.HTTPError,), **over)

    every = make()
    assert [k.key for k in await every.lookup(None)] == ["sig", "nouse", "None", "es", "hs"]
    assert [k.kid for k in every.keys] == ["sig", "nouse", None, "es", "hs"]
    assert all(not {"d", "p", "k"} & set(k.jwk) for k in every.keys)  # private members dropped
    assert len(built) == 6  # "broken" was built and dropped; lookups build nothing
    for kid in ("sig", "es", "hs"):
        await every.lookup(kid)
    assert len(built) == 6

    strict = make(key_types=("RSA", "EC"), algorithms=("RS256", "ES256"), require_kid=True)
    assert [k.key for k in await strict.lookup(None)] == ["sig", "nouse", "es"]
    assert [k.key for k in await strict.lookup("es", lambda k: k.alg == "ES256")] == ["es"]


@pytest.mark.parametrize(
    ("jwk", "alg", "expected"),
    [
        ({"kty": "RSA"}, "RS256", True),
        ({"kty": "RSA"}, "PS384", True),  # a key that names no alg verifies any its type fits
        ({"kty": "RSA", "alg": "RS256"}, "PS256", False),
        ({"kty": "RSA"}, "ES256", False),
        ({"kty": "EC", "crv": "P-256"}, "ES256", True),
        ({"kty": "EC", "crv": "P-256"}, "ES384", False),  # the wrong curve
        ({"kty": "OKP", "crv": "Ed25519"}, "EdDSA", True),
        ({"kty": "oct"}, "HS256", False),
    ],
)
def test_which_key_fits_which_algorithm(jwk: dict[str, Any], alg: str, expected: bool) -> None:
    assert fits(PublishedKey("k", jwk.get("alg"), jwk, object()), alg) is expected
