"""The store conformance suite: what every backend of :class:`broker.store.base.Store` must do.

Each check takes a fresh store (its own key space) and exercises one part of the protocol through
the protocol alone, concurrency cases included: the atomicity rules in the protocol's docstrings
are asserted here, for whatever backend runs them (``test_conformance.py`` runs them on Redis
standalone, Sentinel and Cluster).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from broker.store import records
from broker.store.base import AttemptStart, AttemptState, LocksReached, LoginOutcome, RecheckClaim, Store

Check = Callable[[Store], Awaitable[None]]
IDENTITY = records.StoredIdentity(provider_id="ldap", subject="alice-sub", username="alice", groups=("readers",))


def new_id() -> str:
    return secrets.token_hex(8)


def a_grant(grant_id: str, subject: str = "alice-sub", lifetime: float = 600, **fields: object) -> records.Grant:
    now = time.time()
    return records.Grant(
        grant_id=grant_id,
        subject=subject,
        expires_at=now + lifetime,
        client_id="client-1",
        username="alice",
        provider_id="ldap",
        resource="https://mcp.example.com",
        scopes="notes:read notes:write",
        identity=IDENTITY,
        created_at=now,
        last_refresh=now,
        code_hash=str(fields.get("code_hash", "")),
    )


def a_code(code_hash: str, client_id: str = "client-1") -> records.AuthorizationCode:
    return records.AuthorizationCode(
        code_hash=code_hash,
        client_id=client_id,
        redirect_uri="http://127.0.0.1:9000/cb",
        code_challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        resource="https://mcp.example.com",
        scopes=("notes:read",),
        identity=IDENTITY,
        auth_time=int(time.time()),
        policy_version="v1",
    )


async def rotate(
    store: Store, grant_id: str, old: str, new: str, successor: str = "", *, successor_ttl: int = 60, epoch: int = 0
) -> tuple[str, str]:
    result = await store.rotate_refresh(
        grant_id,
        old,
        new,
        successor=successor or f"answer-{new}",
        new_ttl=600,
        rotated_ttl=600,
        successor_ttl=successor_ttl,
        scopes="notes:read",
        epoch=epoch,
    )
    return result.outcome, result.successor


# -- clients -------------------------------------------------------------------------------------
async def clients(store: Store) -> None:
    client = records.ClientRegistration(
        client_id="c1",
        client_name="One",
        redirect_uris=("http://127.0.0.1/cb",),
        token_endpoint_auth_method="client_secret_post",
        secret_hash="h",
        created_at=int(time.time()),
    )
    assert await store.get_client("c1") is None
    await store.save_client(client, 600)
    assert await store.get_client("c1") == client
    assert await store.get_client("c1", touch_ttl=900) == client
    await store.save_client(replace(client, client_name="renamed"), 600)
    assert (await store.get_client("c1") or client).client_name == "renamed"


# -- flows ---------------------------------------------------------------------------------------
async def flows(store: Store) -> None:
    flow = records.PendingFlow(request={"client_id": "c1", "scopes": ["a"]}, csrf_hash="h", created_at=time.time())
    await store.save_flow("f", flow, 600)
    assert await store.get_flow("f") == flow
    approved = flow.approve(provider="ldap", binding_hash="b", client_id="c1")
    assert await store.update_flow("f", approved)
    assert await store.get_flow("f") == approved
    assert await store.take_flow("f") == approved
    assert await store.get_flow("f") is None
    assert not await store.update_flow("f", approved)  # taken: never recreated
    assert await store.get_flow("f") is None
    assert await store.take_flow("f") is None


async def flows_are_taken_once(store: Store) -> None:
    await store.save_flow("f", records.PendingFlow(approved=True, provider="ldap"), 600)
    taken = await asyncio.gather(*(store.take_flow("f") for _ in range(10)))
    assert [t for t in taken if t is not None] == [records.PendingFlow(approved=True, provider="ldap")]


async def flows_end_with_a_code(store: Store) -> None:
    """Spending a flow stores its code and remembers the consent in the same call, and only for
    the one caller that spent it: of ten racing, one wins and only its code is kept."""
    await store.save_flow("f", records.PendingFlow(approved=True, provider="ldap"), 600)
    grant_ids = [new_id() for _ in range(10)]
    consent = records.Consent("client-1", "https://mcp.example/", ("read",), 1000.0)
    spent = await asyncio.gather(
        *(
            store.spend_flow("f", grant_id=g, code=a_code(f"h-{g}"), code_ttl=60, subject="alice-sub", consent=consent)
            for g in grant_ids
        )
    )
    assert sorted(spent) == [False] * 9 + [True]
    assert await store.get_flow("f") is None
    winner = grant_ids[spent.index(True)]
    for g in grant_ids:
        taken = await store.take_code(g, f"h-{g}", "client-1")
        assert taken.outcome == ("ok" if g == winner else "missing")
    assert await store.consents("alice-sub") == [consent]
    assert not await store.spend_flow(
        "never-was", grant_id=new_id(), code=a_code("x"), code_ttl=60, subject="bob-sub", consent=consent
    )
    assert await store.consents("bob-sub") == []  # nothing stored for a flow that was gone


async def flow_attempts(store: Store) -> None:
    await store.save_flow("f", records.PendingFlow(), 600)
    counts = await asyncio.gather(*(store.count_flow_attempt("f") for _ in range(12)))
    assert sorted(counts) == list(range(1, 13))
    await store.take_flow("f")
    assert await store.count_flow_attempt("f") == 0  # the flow is gone: nothing counted
    assert await store.count_flow_attempt("never-was") == 0


async def upstream_pointers(store: Store) -> None:
    state = secrets.token_urlsafe(32)
    await store.save_flow(
        "f", records.PendingFlow(upstream=records.UpstreamLeg(data={"nonce": "n"}, state_hash="x")), 600
    )
    await store.save_upstream_pointer(state, "f", 600)
    assert await store.get_upstream_pointer(state) == "f"
    assert await store.get_upstream_pointer(state) == "f"  # looking does not spend it
    assert await store.get_upstream_pointer("another-state") is None
    taken = await asyncio.gather(*(store.take_upstream_pointer(state) for _ in range(10)))
    assert [t for t in taken if t is not None] == ["f"]  # single use
    assert await store.get_upstream_pointer(state) is None
    assert (await store.get_flow("f") or records.PendingFlow()).upstream == records.UpstreamLeg(
        data={"nonce": "n"}, state_hash="x"
    )


# -- codes ---------------------------------------------------------------------------------------
async def codes(store: Store) -> None:
    grant_id = new_id()
    code = a_code("hash-1")
    await store.save_code(grant_id, code, 60)
    refused = await store.take_code(grant_id, "hash-1", "thief")
    assert (refused.outcome, refused.code) == ("wrong_client", None)
    taken = await store.take_code(grant_id, "hash-1", "client-1")
    assert (taken.outcome, taken.code) == ("ok", code)
    assert (await store.take_code(grant_id, "hash-1", "client-1")).outcome == "missing"  # no grant yet
    await store.create_grant(a_grant(grant_id, code_hash="hash-1"), "r1", 600, 600)
    assert (await store.take_code(grant_id, "hash-1", "client-1")).outcome == "replayed"
    assert (await store.take_code(grant_id, "other-hash", "client-1")).outcome == "missing"


async def a_wrong_secret_burns_the_code(store: Store) -> None:
    grant_id = new_id()
    await store.save_code(grant_id, a_code("right"), 60)
    assert (await store.take_code(grant_id, "wrong", "client-1")).outcome == "missing"
    assert (await store.take_code(grant_id, "right", "client-1")).outcome == "missing"


async def concurrent_code_exchange(store: Store) -> None:
    grant_id = new_id()
    await store.save_code(grant_id, a_code("h"), 60)
    results = await asyncio.gather(*(store.take_code(grant_id, "h", "client-1") for _ in range(12)))
    outcomes = sorted(r.outcome for r in results)
    assert outcomes == ["missing"] * 11 + ["ok"]  # exactly one exchange


# -- grants and refresh tokens -------------------------------------------------------------------
async def grants(store: Store) -> None:
    grant_id = new_id()
    grant = a_grant(grant_id, subject=f"user-{grant_id}")
    assert await store.get_grant(grant_id) is None
    await store.create_grant(grant, "r1", 600, 600)
    assert await store.get_grant(grant_id) == grant
    assert await store.get_refresh(grant_id, "r1") == records.RefreshToken("active")
    assert await store.get_refresh(grant_id, "nope") is None
    assert await store.get_grant_and_refresh(grant_id, "r1") == (grant, records.RefreshToken("active"))
    assert await store.get_grant_and_refresh(new_id(), "r1") == (None, None)
    other = new_id()
    await store.create_grant(a_grant(other, subject=f"user-{grant_id}", lifetime=60), "r2", 60, 60)
    assert sorted(await store.user_grant_ids(f"user-{grant_id}")) == sorted([grant_id, other])
    assert await store.user_grant_ids("nobody") == []


async def rotation(store: Store) -> None:
    grant_id = new_id()
    await store.create_grant(a_grant(grant_id), "r1", 600, 600)
    before = time.time()
    assert await rotate(store, grant_id, "r1", "r2", "sealed-2") == ("ok", "")
    grant = await store.get_grant(grant_id)
    assert grant is not None
    assert grant.scopes == "notes:read"  # written in the same step
    assert grant.identity == IDENTITY  # kept when no fresh identity is given
    assert grant.last_refresh >= before - 0.01  # written in the same step (Lua keeps 14 digits)
    marker = await store.get_refresh(grant_id, "r1")
    assert marker is not None
    assert marker.rotated
    assert marker.rotated_at > 0
    assert await store.get_refresh(grant_id, "r2") == records.RefreshToken("active")
    assert await store.get_successor(grant_id, "r1") == "sealed-2"
    assert await rotate(store, grant_id, "r1", "r3") == ("rotated", "sealed-2")  # a retry: the same answer
    assert await rotate(store, grant_id, "unknown", "r4") == ("unknown", "")
    assert await rotate(store, new_id(), "r1", "r4") == ("nogrant", "")
    fresh = records.StoredIdentity(provider_id="ldap", subject="alice-sub", username="alice", groups=("writers",))
    result = await store.rotate_refresh(
        grant_id, "r2", "r5", successor="s5", new_ttl=600, rotated_ttl=600, scopes="notes:read", identity=fresh
    )
    assert result.outcome == "ok"
    assert (await store.get_grant(grant_id) or a_grant("x")).identity == fresh
    for old, new, later in (("r5", "r6", 2), ("r6", "r7", 5)):  # narrower scopes, then the same again
        result = await store.rotate_refresh(
            grant_id, old, new, successor="s", new_ttl=600, rotated_ttl=600, scopes="", now=before + later
        )
        assert result.outcome == "ok"
        read, token = await store.get_grant_and_refresh(grant_id, new)
        assert read is not None
        assert token == records.RefreshToken("active")
        assert (read.scopes, read.identity) == ("", fresh)  # scopes written, identity kept
        assert read.last_refresh == (await store.get_grant(grant_id) or a_grant("x")).last_refresh
        assert abs(read.last_refresh - (before + later)) < 0.01  # Redis's Lua keeps 14 digits


async def concurrent_rotation(store: Store) -> None:
    """Of ten concurrent rotations of one token exactly one wins; every other gets the winner's
    answer. Once the successor's short life is over a retry still learns it lost (``rotated``),
    with no answer: the caller treats that as reuse."""
    grant_id = new_id()
    await store.create_grant(a_grant(grant_id), "r1", 600, 600)
    results = await asyncio.gather(
        *(rotate(store, grant_id, "r1", f"n{i}", f"sealed-{i}", successor_ttl=3) for i in range(10))
    )
    winners = [i for i, (outcome, _) in enumerate(results) if outcome == "ok"]
    assert len(winners) == 1
    answer = f"sealed-{winners[0]}"
    assert sorted(results) == sorted([("ok", "")] + [("rotated", answer)] * 9)
    assert [i for i in range(10) if await store.get_refresh(grant_id, f"n{i}") is not None] == winners
    await asyncio.sleep(4.2)  # the successor lived three seconds (one could pass under load before the reads)
    assert await rotate(store, grant_id, "r1", "late") == ("rotated", "")
    assert await store.get_successor(grant_id, "r1") is None


async def revocation(store: Store) -> None:
    grant_id = new_id()
    await store.create_grant(a_grant(grant_id), "r1", 600, 600)
    assert await store.revoke_grant(grant_id, "test")
    assert not await store.revoke_grant(grant_id, "test")  # once
    grant = await store.get_grant(grant_id)
    assert grant is not None
    assert grant.status == "revoked"
    assert grant.revoked_at is not None
    assert grant_id in await store.revoked()
    assert await rotate(store, grant_id, "r1", "r2") == ("revoked", "")  # stays revoked
    assert not await store.revoke_grant(new_id(), "test")  # unknown: nothing was active


async def narrowing(store: Store) -> None:
    """A grant narrowed in place: scopes written, epoch moved on, the old token handle ended and
    announced, cached downstream tokens dropped; a rotation minted from the old epoch writes
    nothing; revoking later ends the current handle."""
    grant_id = new_id()
    await store.create_grant(a_grant(grant_id), "r1", 600, 600)
    assert await store.put_downstream_token(grant_id, "slot", "sealed", 60)
    until = time.time() + 360
    assert await store.narrow_grant(grant_id, "notes:read", epoch=0, tokens_expire_at=until, reason="test") == "ok"
    grant = await store.get_grant(grant_id)
    assert grant is not None
    assert grant.active
    assert (grant.scopes, grant.epoch, grant.token_handle) == ("notes:read", 1, f"{grant_id}.1")
    assert grant_id in await store.revoked()
    assert f"{grant_id}.1" not in await store.revoked()
    assert await store.get_downstream_token(grant_id, "slot") is None
    assert await store.narrow_grant(grant_id, "", epoch=0, tokens_expire_at=until, reason="test") == "stale"
    assert await rotate(store, grant_id, "r1", "r2", epoch=0) == ("stale", "")
    assert not (await store.get_refresh(grant_id, "r1") or records.RefreshToken("rotated")).rotated  # nothing written
    assert await rotate(store, grant_id, "r1", "r2", epoch=1) == ("ok", "")
    assert (await store.get_grant(grant_id) or a_grant("x")).epoch == 1  # a rotation keeps the epoch
    assert await store.revoke_grant(grant_id, "test")
    assert f"{grant_id}.1" in await store.revoked()
    assert await store.narrow_grant(grant_id, "", epoch=1, tokens_expire_at=until, reason="test") == "inactive"
    assert await store.narrow_grant(new_id(), "", epoch=0, tokens_expire_at=until, reason="test") == "inactive"


async def narrow_during_rotate(store: Store) -> None:
    """A narrowing racing a rotation of the old epoch: whichever lands first, the grant ends with
    the narrowing's scopes at epoch 1, and the old handle ended."""
    for _ in range(5):
        grant_id = new_id()
        await store.create_grant(a_grant(grant_id), "r1", 600, 600)
        (outcome, _), narrowed = await asyncio.gather(
            rotate(store, grant_id, "r1", "r2"),
            store.narrow_grant(grant_id, "notes:write", epoch=0, tokens_expire_at=time.time() + 60, reason="test"),
        )
        assert outcome in ("ok", "stale")
        assert narrowed == "ok"
        grant = await store.get_grant(grant_id)
        assert grant is not None
        assert (grant.scopes, grant.epoch) == ("notes:write", 1)
        assert grant_id in await store.revoked()


async def revoke_during_rotate(store: Store) -> None:
    """A revocation racing a rotation: whichever lands first, the grant ends revoked and in the
    revoked set, and no token of it rotates afterwards."""
    for _ in range(5):
        grant_id = new_id()
        await store.create_grant(a_grant(grant_id), "r1", 600, 600)
        (outcome, _), changed = await asyncio.gather(
            rotate(store, grant_id, "r1", "r2"), store.revoke_grant(grant_id, "test")
        )
        assert outcome in ("ok", "revoked")
        assert changed
        assert (await store.get_grant(grant_id) or a_grant("x")).status == "revoked"
        assert grant_id in await store.revoked()
        assert await rotate(store, grant_id, "r2", "r3") == ("revoked", "")
        assert await rotate(store, grant_id, "r1", "r4") == ("revoked", "")


async def absolute_lifetime_end(store: Store) -> None:
    """At the end of its absolute lifetime a grant and its tokens are gone: nothing refreshes,
    and the user's index no longer lists it."""
    grant_id = new_id()
    subject = f"user-{grant_id}"
    # Three seconds, not one: a loaded machine (four test workers on two cores, a Cluster) can
    # take a second between the write and the first read.
    await store.create_grant(a_grant(grant_id, subject=subject, lifetime=3), "r1", 3, 3)
    assert await store.user_grant_ids(subject) == [grant_id]
    await asyncio.sleep(4.2)
    assert await store.get_grant(grant_id) is None
    assert await store.get_refresh(grant_id, "r1") is None
    assert await rotate(store, grant_id, "r1", "r2") == ("nogrant", "")
    assert await store.user_grant_ids(subject) == []


async def lock_ownership(store: Store) -> None:
    grant_id = new_id()
    holders = await asyncio.gather(*(store.lock_grant(grant_id, 10) for _ in range(8)))
    owners = [h for h in holders if h is not None]
    assert len(owners) == 1  # one holder at a time
    await store.unlock_grant(grant_id, "not-the-holder")
    assert await store.lock_grant(grant_id, 10) is None  # only the holder frees it
    await store.unlock_grant(grant_id, owners[0])
    slow = await store.lock_grant(grant_id, 0.1)
    assert slow is not None
    await asyncio.sleep(0.3)  # the slow holder's lock runs out while it still works
    current = await store.lock_grant(grant_id, 10)
    assert current is not None
    await store.unlock_grant(grant_id, slow)  # ... and it frees "its" lock late
    assert await store.lock_grant(grant_id, 10) is None  # the current holder's lock stands
    await store.unlock_grant(grant_id, current)
    assert await store.lock_grant(grant_id, 10) is not None


# -- sessions and consents -----------------------------------------------------------------------
async def sessions(store: Store) -> None:
    token = secrets.token_urlsafe(32)
    session = records.BrowserSession(subject="alice-sub", username="alice", provider="ldap", created_at=time.time())
    assert await store.get_session(token) is None
    await store.save_session(token, session, 600)
    assert await store.get_session(token) == session
    assert await store.get_session(secrets.token_urlsafe(32)) is None
    await store.end_session(token)
    assert await store.get_session(token) is None


async def consents(store: Store) -> None:
    subject = f"user-{new_id()}"
    assert await store.consents(subject) == []
    await store.remember_consent(subject, "c2", "https://b.example", ["x"])
    await store.remember_consent(subject, "c1", "https://a.example", ["notes:read"])
    await store.remember_consent(subject, "c1", "https://a.example", ["notes:read", "notes:write"])  # replaces
    found = await store.consents(subject)
    assert [(c.client_id, c.resource, c.scopes) for c in found] == [
        ("c1", "https://a.example", ("notes:read", "notes:write")),
        ("c2", "https://b.example", ("x",)),
    ]
    assert all(isinstance(c, records.Consent) and c.at > 0 for c in found)
    assert await store.forget_consent(subject, "c1", "https://a.example")
    assert not await store.forget_consent(subject, "c1", "https://a.example")
    assert [c.client_id for c in await store.consents(subject)] == ["c2"]


# -- the signing key ring ------------------------------------------------------------------------
async def signing_key_ring(store: Store) -> None:
    assert await store.signing_keys() == []
    one = {"kid": "k1", "alg": "ES256", "activate_at": 1.0, "key": "sealed-1"}
    two = {"kid": "k2", "alg": "ES256", "activate_at": 2.0, "key": "sealed-2"}
    await store.save_signing_key("k1", one)
    await store.save_signing_key("k2", two)
    assert sorted(await store.signing_keys(), key=lambda r: str(r["kid"])) == [one, two]
    await store.drop_signing_keys(["k1"])
    await store.drop_signing_keys([])
    assert await store.signing_keys() == [two]
    assert not await store.signing_keys_locked()
    holders = await asyncio.gather(*(store.lock_signing_keys(30) for _ in range(6)))
    owners = [h for h in holders if h is not None]
    assert len(owners) == 1  # one replica creates keys at a time
    assert await store.signing_keys_locked()
    await store.unlock_signing_keys("not-the-holder")
    assert await store.signing_keys_locked()  # only the holder frees it
    await store.unlock_signing_keys(owners[0])
    assert not await store.signing_keys_locked()


# -- throttling and rate limits ------------------------------------------------------------------
async def login_attempts(store: Store) -> None:
    """Parallel attempts cannot all pass one check: of ten at once with a limit of three, three
    start; three failures lock the pair (reported once) but not the same username elsewhere."""
    user = f"bob-{new_id()}"

    async def start(source: str) -> str:
        started = await store.start_login_attempt(
            "ldap", user, source, pair_limit=3, account_limit=12, address_limit=1000, in_flight_ttl=60
        )
        return started.state

    states = await asyncio.gather(*(start("10.0.0.1") for _ in range(10)))
    assert sorted(states) == ["busy"] * 7 + ["started"] * 3
    reached = [
        await store.finish_login_attempt("ldap", user, "10.0.0.1", "failed", window=60, pair_limit=3, account_limit=12)
        for _ in range(3)
    ]
    assert [(r.pair, r.account) for r in reached] == [(False, False), (False, False), (True, False)]
    locked = await store.start_login_attempt(
        "ldap", user.upper(), "10.0.0.1", pair_limit=3, account_limit=12, address_limit=1000, in_flight_ttl=60
    )
    assert locked.state == "locked"  # usernames compare case-insensitively
    assert 1 <= locked.retry_after <= 60
    assert await start("10.0.0.2") == "started"  # the pair is locked, not the account
    await store.finish_login_attempt("ldap", user, "10.0.0.2", "cleared", window=60, pair_limit=3, account_limit=12)
    assert await store.clear_login_failures("ldap", user)
    assert await start("10.0.0.1") == "started"
    assert not await store.clear_login_failures("ldap", f"nobody-{new_id()}")


async def address_attempts(store: Store) -> None:
    """The address counts attempts across usernames in the same step: two in flight at a limit
    of two make a third busy, two failures lock the address for every username."""
    address = f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250)}-{new_id()}"
    users = [f"u{i}-{new_id()}" for i in range(4)]

    async def start(user: str) -> AttemptStart:
        return await store.start_login_attempt(
            "ldap", user, address, pair_limit=100, account_limit=100, address_limit=2, in_flight_ttl=60
        )

    async def finish(user: str, outcome: LoginOutcome) -> None:
        await store.finish_login_attempt("ldap", user, address, outcome, window=60, pair_limit=100, account_limit=100)

    first, second = await start(users[0]), await start(users[1])
    assert (first.state, second.state) == ("started", "started")
    assert (await start(users[2])).state == "busy"
    await finish(users[0], "void")  # a void attempt frees its place and counts nothing
    assert (await start(users[2])).state == "started"
    await finish(users[2], "cleared")  # nor does a success
    await finish(users[1], "failed")
    assert (await start(users[3])).state == "started"
    await finish(users[3], "failed")
    locked = await start(users[0])
    assert locked.state == "locked"
    assert 1 <= locked.retry_after <= 60
    # Without an address only the username's counts apply.
    free = await store.start_login_attempt(
        "ldap", users[0], None, pair_limit=100, account_limit=100, address_limit=2, in_flight_ttl=60
    )
    assert free.state == "started"


async def login_attempts_start_everywhere_or_nowhere(store: Store) -> None:
    """A refused attempt takes no place in any count: not in the address's when the username is
    locked, not in the username's when the address is locked."""
    address, elsewhere = (f"10.{i}.{secrets.randbelow(250)}.{secrets.randbelow(250)}-{new_id()}" for i in (1, 2))
    bob, carol, dave = (f"{name}-{new_id()}" for name in ("bob", "carol", "dave"))

    async def start(user: str, source: str = address, account_limit: int = 4) -> AttemptState:
        limits = {"pair_limit": 1, "account_limit": account_limit, "address_limit": 2}
        return (await store.start_login_attempt("ldap", user, source, in_flight_ttl=60, **limits)).state

    async def fail(user: str) -> LocksReached:
        return await store.finish_login_attempt(
            "ldap", user, address, "failed", window=60, pair_limit=1, account_limit=4
        )

    assert await start(bob) == "started"
    assert (await fail(bob)).pair  # bob's pair is locked; the address has one failure of two
    assert [await start(bob) for _ in range(3)] == ["locked"] * 3
    assert await start(carol) == "started"  # bob's refused attempts hold no place at the address
    await fail(carol)  # the address is locked now
    assert [await start(dave) for _ in range(3)] == ["locked"] * 3
    assert await start(dave, elsewhere, account_limit=1) == "started"  # and none in dave's account


async def request_counts(store: Store) -> None:
    subject = f"10.0.0.{new_id()}"
    hits = await asyncio.gather(*(store.count_request("reg", subject, window=30) for _ in range(5)))
    assert sorted(h.count for h in hits) == [1, 2, 3, 4, 5]
    assert all(1 <= h.retry_after <= 30 for h in hits)
    assert (await store.count_request("other", subject, window=30)).count == 1  # each limit counts alone


# -- shared upstream re-checks -------------------------------------------------------------------
async def rechecks(store: Store) -> None:
    """One lookup lock across callers; only its holder keeps an answer; an answer older than the
    caller's ``not_before`` is not given; no good answer drops the kept one; a forgotten answer's
    lookup in progress keeps nothing."""
    subject = f"user-{new_id()}"
    identity = replace(IDENTITY, subject=subject)
    claims = await asyncio.gather(
        *(store.claim_recheck("ldap", subject, not_before=0.0, lock_seconds=10) for _ in range(8))
    )
    holders = [c.lock for c in claims if c.lock is not None]
    assert len(holders) == 1
    assert all(c.identity is None for c in claims)
    assert not await store.finish_recheck("ldap", subject, "not-the-holder", identity, checked_at=100.5, ttl=600)
    assert await store.claim_recheck("ldap", subject, not_before=0.0, lock_seconds=10) == RecheckClaim()  # held
    assert await store.finish_recheck("ldap", subject, holders[0], identity, checked_at=100.5, ttl=600)
    kept = await store.claim_recheck("ldap", subject, not_before=100.5, lock_seconds=10)
    assert (kept.identity, kept.checked_at, kept.lock) == (identity, 100.5, None)
    assert 0 < kept.expires_in <= 600
    other = await store.claim_recheck("corp", subject, not_before=0.0, lock_seconds=10)
    assert other.identity is None
    assert other.lock is not None

    newer = await store.claim_recheck("ldap", subject, not_before=101.0, lock_seconds=10)
    assert newer.identity is None
    assert newer.lock is not None
    assert not await store.finish_recheck("ldap", subject, newer.lock, None)  # user gone: answer dropped
    dropped = await store.claim_recheck("ldap", subject, not_before=0.0, lock_seconds=10)
    assert dropped.identity is None
    assert dropped.lock is not None
    await store.forget_recheck("ldap", subject)  # an administrator revokes the user mid-lookup
    assert not await store.finish_recheck("ldap", subject, dropped.lock, identity, checked_at=200.0, ttl=600)
    after = await store.claim_recheck("ldap", subject, not_before=0.0, lock_seconds=0.1)
    assert after.identity is None
    assert after.lock is not None

    await asyncio.sleep(0.3)  # the slow holder's lock runs out while it still looks up
    current = await store.claim_recheck("ldap", subject, not_before=0.0, lock_seconds=10)
    assert current.lock is not None
    assert not await store.finish_recheck("ldap", subject, after.lock, identity, checked_at=300.0, ttl=600)
    assert await store.finish_recheck("ldap", subject, current.lock, identity, checked_at=300.0, ttl=0.2)
    await asyncio.sleep(0.5)  # kept for its ttl only
    gone = await store.claim_recheck("ldap", subject, not_before=0.0, lock_seconds=10)
    assert gone.identity is None
    assert gone.lock is not None


# -- redeemed identity assertions ------------------------------------------------------------------
async def assertion_jtis(store: Store) -> None:
    """A ``jti`` is spent once per issuer, by exactly one of concurrent claims, and its record ends
    at the assertion's expiry."""
    jti = f"jti-{new_id()}"
    claims = await asyncio.gather(
        *(store.claim_assertion_jti("https://idp.example", jti, time.time() + 600) for _ in range(10))
    )
    assert sorted(claims) == [False] * 9 + [True]
    assert not await store.claim_assertion_jti("https://idp.example", jti, time.time() + 600)
    assert await store.claim_assertion_jti("https://other-idp.example", jti, time.time() + 600)  # per issuer
    await store.release_assertion_jti("https://idp.example", jti)  # its handling failed: a retry is handled
    assert await store.claim_assertion_jti("https://idp.example", jti, time.time() + 600)
    assert not await store.claim_assertion_jti("https://other-idp.example", jti, time.time() + 600)
    short = f"jti-{new_id()}"
    assert await store.claim_assertion_jti("https://idp.example", short, time.time() + 1)
    assert not await store.claim_assertion_jti("https://idp.example", short, time.time() + 1)
    await asyncio.sleep(2.2)  # past its expiry the record is gone (the assertion's exp refuses it then)
    assert await store.claim_assertion_jti("https://idp.example", short, time.time() + 1)


async def upstream_vault(store: Store) -> None:
    grant_id = new_id()
    assert not await store.put_upstream_tokens(grant_id, "sealed-0", 60)  # no grant: nothing kept
    assert await store.get_upstream_tokens(grant_id) is None
    sealed_identity = replace(IDENTITY, private="sealed-private")
    await store.create_grant(replace(a_grant(grant_id), identity=sealed_identity), "r1", 600, 600)
    assert await store.put_upstream_tokens(grant_id, "sealed-1", 600)
    assert await store.put_upstream_tokens(grant_id, "sealed-2", 600)  # replaces
    assert await store.get_upstream_tokens(grant_id) == "sealed-2"
    other = new_id()
    await store.create_grant(a_grant(other), "r1", 600, 600)
    assert await store.get_upstream_tokens(other) is None  # per grant
    # Revocation drops the vault and the identity's sealed private part in the step that marks it;
    # a write racing it finds the grant revoked and keeps nothing.
    await asyncio.gather(store.revoke_grant(grant_id, "test"), store.put_upstream_tokens(grant_id, "late", 600))
    assert await store.get_upstream_tokens(grant_id) is None
    grant = await store.get_grant(grant_id)
    assert grant is not None
    assert grant.identity is not None
    assert grant.identity.private is None
    assert grant.identity.username == "alice"
    assert not await store.put_upstream_tokens(grant_id, "sealed-3", 600)
    # Gone at its own ttl, and never past the grant's expiry.
    await store.put_upstream_tokens(other, "sealed-4", 0.2)
    short = new_id()
    await store.create_grant(a_grant(short, lifetime=1), "r1", 1, 1)
    assert await store.put_upstream_tokens(short, "sealed-5", 600)
    await asyncio.sleep(1.2)
    assert await store.get_upstream_tokens(other) is None
    assert await store.get_upstream_tokens(short) is None


async def downstream_tokens(store: Store) -> None:
    grant_id = new_id()
    assert not await store.put_downstream_token(grant_id, "tickets", "sealed-0", 60)  # no grant: nothing kept
    assert await store.get_downstream_token(grant_id, "tickets") is None
    await store.create_grant(a_grant(grant_id), "r1", 600, 600)
    assert await store.put_downstream_token(grant_id, "tickets", "sealed-1", 600)
    assert await store.put_downstream_token(grant_id, "tickets", "sealed-2", 600)  # replaces
    assert await store.put_downstream_token(grant_id, "graph", "sealed-3", 0.3)
    assert await store.get_downstream_token(grant_id, "tickets") == "sealed-2"
    assert await store.get_downstream_token(grant_id, "graph") == "sealed-3"  # per slot
    assert await store.put_upstream_tokens(grant_id, "vault", 600)
    other = new_id()
    await store.create_grant(a_grant(other), "r1", 600, 600)
    assert await store.get_downstream_token(other, "tickets") is None  # per grant
    # Revocation drops every cached token (and the vault) in the step that marks the grant; a
    # write racing it finds the grant revoked and keeps nothing.
    await asyncio.gather(
        store.revoke_grant(grant_id, "test"), store.put_downstream_token(grant_id, "late", "sealed-4", 600)
    )
    for slot in ("tickets", "graph", "late"):
        assert await store.get_downstream_token(grant_id, slot) is None
    assert await store.get_upstream_tokens(grant_id) is None
    assert not await store.put_downstream_token(grant_id, "tickets", "sealed-5", 600)
    # Never past the grant's own expiry.
    short = new_id()
    await store.create_grant(a_grant(short, lifetime=1), "r1", 1, 1)
    assert await store.put_downstream_token(short, "tickets", "sealed-6", 600)
    await asyncio.sleep(1.2)
    assert await store.get_downstream_token(short, "tickets") is None


async def grant_indexes(store: Store) -> None:
    """A grant is found by its provider and username (case-insensitively) and, when its identity
    names an upstream session, by that session; each index ends with the grant."""
    user = f"Dana-{new_id()}"
    session = f"sid-{new_id()}"
    plain, in_session, short = new_id(), new_id(), new_id()
    identity = replace(IDENTITY, username=user)
    await store.create_grant(replace(a_grant(plain), username=user, identity=identity), "r1", 60, 60)
    await store.create_grant(
        replace(a_grant(in_session), username=user, identity=replace(identity, upstream_session=session)), "r2", 60, 60
    )
    # Three seconds, not one: on a loaded machine (a Cluster, four test workers on two cores) the
    # reads below could come after a one-second grant had already expired.
    short_grant = replace(a_grant(short, lifetime=3), identity=replace(IDENTITY, upstream_session=session))
    await store.create_grant(short_grant, "r3", 3, 3)
    assert sorted(await store.username_grant_ids("ldap", user.upper())) == sorted([plain, in_session])
    assert await store.username_grant_ids("other-provider", user) == []
    assert sorted(await store.session_grant_ids("ldap", session)) == sorted([in_session, short])
    assert await store.session_grant_ids("other-provider", session) == []
    grant = await store.get_grant(in_session)
    assert grant is not None
    assert grant.identity is not None
    assert grant.identity.upstream_session == session
    await asyncio.sleep(max(0.0, short_grant.expires_at - time.time()) + 0.2)  # the short grant has expired ...
    # ... and no index names it any more
    assert await store.session_grant_ids("ldap", session) == [in_session]


async def signal_records(store: Store) -> None:
    """A provider's recent signals, newest first, bounded, per provider; concurrent records all
    land and the bound holds."""
    provider = f"p-{new_id()}"
    assert await store.recent_signals(provider, 10) == []
    await asyncio.gather(*(store.record_signal(provider, {"n": n, "kind": "logout"}, keep=5) for n in range(12)))
    kept = await store.recent_signals(provider, 10)
    assert len(kept) == 5
    await store.record_signal(provider, {"n": 99, "detail": {"sid": "s"}}, keep=5)
    newest = await store.recent_signals(provider, 2)
    assert [r["n"] for r in newest] == [99, kept[0]["n"]]
    assert newest[0]["detail"] == {"sid": "s"}
    assert await store.recent_signals(f"other-{provider}", 10) == []


async def scim_resources(store: Store) -> None:
    """A SCIM tenant's resources: create once, replace only what exists, an indexed value held by
    one resource at a time (of concurrent claims exactly one wins), a change made from a record no
    longer stored refused (stale), old index entries dropped with a replace or a delete, tenants
    and kinds apart."""
    tenant = f"t-{new_id()}"
    assert await store.save_scim_resource(tenant, "Users", "u1", {"v": 1}, {"username": "alice"}, create=True) == "ok"
    assert await store.save_scim_resource(tenant, "Users", "u1", {"v": 9}, {}, create=True) == "conflict"
    assert (
        await store.save_scim_resource(tenant, "Users", "u2", {"v": 2}, {"username": "alice"}, create=True)
        == "conflict"
    )
    assert await store.get_scim_resource(tenant, "Users", "u2") is None
    assert await store.save_scim_resource(tenant, "Users", "gone", {}, {}, create=False) == "missing"
    assert await store.get_scim_resource(tenant, "Users", "u1") == {"v": 1}
    assert await store.find_scim_resource(tenant, "Users", "username", "alice") == "u1"
    # A replace moves the index: the old value is free again.
    assert await store.save_scim_resource(tenant, "Users", "u1", {"v": 3}, {"username": "alicia"}, create=False) == "ok"
    assert await store.find_scim_resource(tenant, "Users", "username", "alice") is None
    assert await store.find_scim_resource(tenant, "Users", "username", "alicia") == "u1"
    outcomes = await asyncio.gather(
        *(
            store.save_scim_resource(tenant, "Users", f"c{n}", {"n": n}, {"username": "bob"}, create=True)
            for n in range(8)
        )
    )
    assert sorted(outcomes) == ["conflict"] * 7 + ["ok"]
    listed = await store.list_scim_resources(tenant, "Users")
    assert [i for i, _ in listed] == sorted(i for i, _ in listed)
    assert len(listed) == 2
    assert await store.list_scim_resources(tenant, "Groups") == []
    assert await store.list_scim_resources(f"other-{tenant}", "Users") == []
    # Read-modify-write: of concurrent writes made from one record exactly one wins.
    read = await store.get_scim_resource(tenant, "Users", "u1")
    assert read is not None
    writes = await asyncio.gather(
        *(
            store.save_scim_resource(
                tenant, "Users", "u1", {"v": n}, {"username": "alicia"}, create=False, expected=read
            )
            for n in range(6)
        )
    )
    assert sorted(writes) == ["ok"] + ["stale"] * 5
    assert await store.save_scim_resource(tenant, "Users", "u1", {"v": 0}, {}, create=False, expected=read) == "stale"
    assert await store.delete_scim_resource(tenant, "Users", "u1")
    assert not await store.delete_scim_resource(tenant, "Users", "u1")
    assert await store.find_scim_resource(tenant, "Users", "username", "alicia") is None
    assert await store.get_scim_resource(tenant, "Users", "u1") is None


CHECKS: dict[str, Check] = {
    check.__name__: check
    for check in (
        clients,
        flows,
        flows_are_taken_once,
        flows_end_with_a_code,
        flow_attempts,
        upstream_pointers,
        codes,
        a_wrong_secret_burns_the_code,
        concurrent_code_exchange,
        grants,
        rotation,
        concurrent_rotation,
        revocation,
        narrowing,
        narrow_during_rotate,
        revoke_during_rotate,
        absolute_lifetime_end,
        lock_ownership,
        sessions,
        consents,
        signing_key_ring,
        login_attempts,
        address_attempts,
        login_attempts_start_everywhere_or_nowhere,
        request_counts,
        rechecks,
        assertion_jtis,
        upstream_vault,
        downstream_tokens,
        grant_indexes,
        signal_records,
        scim_resources,
    )
}
