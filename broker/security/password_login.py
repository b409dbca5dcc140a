"""Password sign-in, guarded the same way wherever a form takes a password.

The throttle reserves the attempt before the directory is asked (so parallel guesses cannot
outrun the count); a wrong password or unknown user stays counted against the username and the
client IP; and every refused answer takes at least the throttle's ``failure_floor`` seconds
from the start of the attempt. Without the floor, "wrong password" and "unknown user" differ by a
search result's parsing time (``bench/login_timing.py`` measures it), which tells an attacker
whether a username exists; with it, both answer at the floor, and guessing is slower too.
A directory that cannot be reached is answered at once: that is not a guess.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from broker.metrics import LOGINS, UPSTREAM_LATENCY
from broker.security.throttle import LoginThrottle
from broker.upstream_log import log_upstream_failure
from providers.base import Identity, InvalidCredentials, PasswordProvider, ProviderError, UpstreamUnavailable


@dataclass(frozen=True)
class LoginOutcome:
    """Exactly one of: ``identity`` (signed in), ``error`` (refused), ``retry_after`` > 0 (throttled)."""

    identity: Identity | None = None
    error: ProviderError | None = None
    retry_after: int = 0


async def password_login(
    throttle: LoginThrottle,
    provider: PasswordProvider,
    username: str,
    password: str,
    client_ip: str | None,
) -> LoginOutcome:
    verdict = await throttle.reserve(provider.id, username, client_ip)
    if not verdict.allowed:
        return LoginOutcome(retry_after=verdict.retry_after)
    started = time.monotonic()
    try:
        with UPSTREAM_LATENCY.labels(provider.id, "login").time():
            identity = await provider.login(username, password)
    except ProviderError as exc:
        LOGINS.labels(provider.id, type(exc).__name__).inc()
        log_upstream_failure(provider.id, "login", exc)
        await throttle.settle(
            provider.id, username, client_ip, "failed" if isinstance(exc, InvalidCredentials) else "void"
        )
        if not isinstance(exc, UpstreamUnavailable):
            await asyncio.sleep(max(0.0, throttle.failure_floor - (time.monotonic() - started)))
        return LoginOutcome(error=exc)
    except BaseException:
        await throttle.settle(provider.id, username, client_ip, "void")  # cancelled: no answer, no guess
        raise
    await throttle.settle(provider.id, username, client_ip, "succeeded")
    return LoginOutcome(identity=identity)
