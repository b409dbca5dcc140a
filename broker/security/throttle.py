"""Brute-force protection for password sign-in, counted in the shared store with a lockout window.

Failures are counted three ways (the model of Keycloak's brute-force detection, temporary
lockout):

* per username **and** client address (the *pair*): the usual lock, at ``per_user`` failures.
  Someone guessing from one address locks the username for that address only, so a stranger
  cannot lock a colleague out of their account from elsewhere;
* per username from every address together (the *account*): a higher limit, ``per_account``,
  that locks the username for every address, so guessing spread over many addresses still
  stops;
* per client address across usernames: ``per_ip``.

A locked username is refused before the directory is asked, whether or not the account exists,
so the lock reveals nothing. A success clears its pair's failures only: the account's count
runs out with its window, so each success of the real user does not hand guessers elsewhere a
fresh allowance. An admin clears a username's counts at once (:meth:`LoginThrottle.unlock`).

Each count also tracks the attempts in flight, and an attempt may start only while failures
plus attempts in flight stay under the limit (one atomic step per slot): parallel guesses
cannot all slip past a check made before any of them failed. An attempt that would exceed it
waits a moment for those in flight to finish (so a user signing in from several clients at once
is not refused) and is refused only if the lock is reached or the wait runs out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from broker.audit import audit
from broker.store.base import AttemptStart, LoginOutcome, Store

Outcome = Literal["failed", "succeeded", "void"]
IN_FLIGHT_TTL = 60  # seconds an attempt counts as in flight if its process dies before settling
WAIT = 5.0  # seconds an attempt waits for others in flight before it is refused
ACCOUNT_FACTOR = 4  # the account limit, when not configured: this many times the pair limit
_USER_OUTCOME: dict[Outcome, LoginOutcome] = {"failed": "failed", "succeeded": "cleared", "void": "void"}


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0


class LoginThrottle:
    def __init__(
        self,
        store: Store,
        *,
        per_user: int,
        per_ip: int,
        window: int,
        failure_floor: float,
        per_account: int | None = None,
    ) -> None:
        self.failure_floor = failure_floor  # see broker.security.password_login
        self.store = store
        self.per_user = per_user
        self.per_account = per_account if per_account is not None else ACCOUNT_FACTOR * per_user
        self.per_ip = per_ip
        self.window = window

    @staticmethod
    async def _begin(start: Callable[[], Awaitable[AttemptStart]]) -> Verdict:
        deadline = time.monotonic() + WAIT
        while True:
            started = await start()
            if started.state == "started":
                return Verdict(True)
            if started.state == "locked":
                return Verdict(False, started.retry_after)
            if time.monotonic() >= deadline:
                return Verdict(False, 1)
            await asyncio.sleep(0.05)

    async def reserve(self, provider_id: str, username: str, ip: str | None) -> Verdict:
        """Start one attempt in the username's counts (its pair with this address and the
        account) and the IP's, or say how long the lock lasts. Every allowed reservation must
        be settled."""
        return await self._begin(
            lambda: self.store.start_login_attempt(
                provider_id,
                username,
                ip,
                pair_limit=self.per_user,
                account_limit=self.per_account,
                address_limit=self.per_ip,
                in_flight_ttl=IN_FLIGHT_TTL,
            )
        )

    async def settle(self, provider_id: str, username: str, ip: str | None, outcome: Outcome) -> None:
        reached = await self.store.finish_login_attempt(
            provider_id,
            username,
            ip,
            _USER_OUTCOME[outcome],
            window=self.window,
            pair_limit=self.per_user,
            account_limit=self.per_account,
        )
        for scope, hit in (("pair", reached.pair), ("global", reached.account)):
            if hit:
                audit(
                    "account_locked",
                    provider=provider_id,
                    username=username[:256],
                    scope=scope,
                    client_ip=ip if scope == "pair" else None,
                    seconds=self.window,
                )

    async def unlock(self, provider_id: str, username: str) -> bool:
        """Clear a username's failures, for every address and for the account (attempts in
        flight settle as usual). True if there were any."""
        return await self.store.clear_login_failures(provider_id, username)
