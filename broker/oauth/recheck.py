"""The refresh-time upstream re-check, shared (``tokens.upstream_recheck_interval``).

At every refresh the user is looked up again upstream and the policy re-applied. The answer of
one lookup serves more than one refresh:

* **Single flight, in a process**: concurrent refreshes of one user (provider id + subject) wait
  on one lookup, an asyncio task they all await (shielded: a caller that goes away does not
  cancel it for the others). With an interval of 0 that is all that is shared: a refresh waits
  for a lookup that was under way when it arrived, or starts one.
* **Kept in Redis for the interval, for every worker and replica** (interval > 0): the answer is
  stored (``Store.claim_recheck`` / ``finish_recheck``) under the user for the interval counted
  from the lookup's start. One process at a time holds the user's lookup lock; the others poll
  briefly for its answer and, after ``WAIT_SECONDS``, look up themselves.
* **A small in-process memo** of answers read or made here, for at most ``MEMO_SECONDS`` and never
  past the stored answer's expiry: a hit costs no Redis round trip (``bench/recheck.py``: 0.7 µs
  of CPU against 167 µs for the answer read from Redis), and an answer Redis dropped (user gone,
  admin revocation) stops serving this process within those seconds.

Nothing is kept as good that was not: a lookup finding the user gone or disabled drops the kept
answer (and its error reaches every waiter); an answer older than a grant's sign-in is never
used for that grant (the sign-in saw newer data). The kept copy holds what the policy reads
(groups, names, username) and no provider-private data; it goes through the same sealing helpers
as the identities grants keep.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

from broker.metrics import UPSTREAM_LATENCY
from broker.store.base import Store
from broker.store.records import StoredIdentity
from providers.base import AccountDisabled, Identity, InvalidCredentials, RefreshProvider

WAIT_SECONDS = 5.0  # the longest a refresh waits on another's lookup before looking up itself
MEMO_SIZE = 10_000  # users; beyond it the memo is emptied (it only saves Redis round trips)
MEMO_SECONDS = 5.0  # the longest this process reuses an answer without asking Redis again
_POLL_FIRST, _POLL_MOST = 0.002, 0.05  # seconds between polls for another process's answer

User = tuple[str, str]  # provider id, subject


@dataclass(frozen=True)
class Checked:
    """An upstream answer: the identity, when its lookup began (epoch seconds), and whether this
    call's own lookup made it (only then may the caller's grant store it, private data included)."""

    identity: Identity
    checked_at: float
    looked_up: bool


class Rechecks:
    def __init__(
        self,
        store: Store,
        interval: Callable[[], int],
        seal: Callable[[Identity], StoredIdentity],
        unseal: Callable[[StoredIdentity], Identity],
    ) -> None:
        self.store = store
        self.interval = interval
        self.seal = seal
        self.unseal = unseal
        self._running: dict[User, asyncio.Task[Checked]] = {}
        self._memo: dict[User, tuple[float, Checked]] = {}  # expiry (monotonic), answer

    def recent(self, provider_id: str, subject: str, not_before: float) -> Checked | None:
        """An answer this process holds for the user, still within the interval and from a
        lookup begun at or after ``not_before``; None otherwise (no I/O)."""
        hit = self._memo.get((provider_id, subject))
        if hit is None or not self.interval():
            return None
        expires, checked = hit
        if time.monotonic() >= expires or checked.checked_at < not_before:
            return None
        return checked

    async def check(self, provider: RefreshProvider, identity: Identity, not_before: float) -> Checked:
        """The user's upstream answer for a refresh of a grant signed in at ``not_before``. Raises
        what ``provider.refresh`` raises (InvalidCredentials, AccountDisabled, ProviderError)."""
        user = (identity.provider_id, identity.subject)
        recent = self.recent(*user, not_before)
        if recent is not None:
            return recent
        running = self._running.get(user)
        if running is not None:
            try:
                joined = await asyncio.wait_for(asyncio.shield(running), WAIT_SECONDS)
            except TimeoutError:
                joined = None
            if joined is not None and joined.checked_at >= not_before:
                return dataclasses.replace(joined, looked_up=False)
            return await self._lookup(provider, identity, None)  # slow, or older than this sign-in
        task = asyncio.ensure_future(self._shared(provider, identity, not_before))
        self._running[user] = task
        task.add_done_callback(lambda done: self._finished(user, done))
        return await asyncio.shield(task)

    def _finished(self, user: User, task: asyncio.Task[Checked]) -> None:
        if self._running.get(user) is task:
            del self._running[user]
        if not task.cancelled():
            task.exception()  # retrieved here: waiters may all have gone

    async def _shared(self, provider: RefreshProvider, identity: Identity, not_before: float) -> Checked:
        if not self.interval():
            return await self._lookup(provider, identity, None)
        user = (identity.provider_id, identity.subject)
        deadline = time.monotonic() + WAIT_SECONDS
        pause = _POLL_FIRST
        while True:
            claim = await self.store.claim_recheck(*user, not_before=not_before, lock_seconds=WAIT_SECONDS)
            if claim.identity is not None:
                checked = Checked(self.unseal(claim.identity), claim.checked_at, False)
                self._remember(user, checked, claim.expires_in)
                return checked
            if claim.lock is not None or time.monotonic() + pause > deadline:
                return await self._lookup(provider, identity, claim.lock)
            await asyncio.sleep(pause)  # another process is looking the user up
            pause = min(pause * 2, _POLL_MOST)

    async def _lookup(self, provider: RefreshProvider, identity: Identity, lock: str | None) -> Checked:
        """Ask upstream; keep a good answer in Redis when holding the user's lock, and here."""
        user = (identity.provider_id, identity.subject)
        started, began = time.time(), time.monotonic()
        try:
            with UPSTREAM_LATENCY.labels(identity.provider_id, "refresh").time():
                fresh = await provider.refresh(identity)
        except (InvalidCredentials, AccountDisabled):
            self._memo.pop(user, None)
            await self.store.finish_recheck(*user, lock, None)  # nothing kept as good, anywhere
            raise
        except Exception:
            if lock is not None:
                await self.store.finish_recheck(*user, lock, None)
            raise
        checked = Checked(fresh, started, True)
        interval = self.interval()
        left = interval - (time.monotonic() - began)
        if interval and left > 0:
            if lock is not None:
                kept = self.seal(dataclasses.replace(fresh, private={}))  # only what the policy reads
                await self.store.finish_recheck(*user, lock, kept, checked_at=started, ttl=left)
            self._remember(user, checked, left)
        elif lock is not None:
            await self.store.finish_recheck(*user, lock, None)
        return checked

    def _remember(self, user: User, checked: Checked, seconds: float) -> None:
        if len(self._memo) >= MEMO_SIZE:
            now = time.monotonic()
            self._memo = {u: hit for u, hit in self._memo.items() if hit[0] > now}
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
        expires = time.monotonic() + min(seconds, MEMO_SECONDS)
        self._memo[user] = (expires, dataclasses.replace(checked, looked_up=False))
