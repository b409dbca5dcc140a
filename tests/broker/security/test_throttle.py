"""Brute-force protection: failures per username and per IP, counted in Redis, with a lockout."""

from __future__ import annotations

import httpx

from tests.broker.conftest import BrokerFactory
from tests.broker.flows import Broker, login_form, register


def attempt(broker: Broker, client_id: str, username: str, password: str) -> httpx.Response:
    with broker.client() as browser:
        fields = login_form(browser, client_id)
        return browser.post("/login", data={**fields, "username": username, "password": password})


def test_a_username_is_locked_after_repeated_failures(broker_factory: BrokerFactory) -> None:
    with broker_factory(
        extra="login_protection: {max_failures_per_user: 3, max_failures_per_ip: 100, window: 60}"
    ) as b:
        client = register(b)["client_id"]
        assert [attempt(b, client, "bob", "wrong").status_code for _ in range(3)] == [401, 401, 401]
        locked = attempt(b, client, "bob", "demo-bob")  # the right password no longer helps
        assert locked.status_code == 429
        assert "Try again in 1 minute" in locked.text
        assert attempt(b, client, "BOB", "demo-bob").status_code == 429  # case does not dodge the lock
        assert attempt(b, client, "alice", "demo-alice").status_code == 303  # others are unaffected
        # Unknown users are locked the same way, so the lock reveals nothing.
        for _ in range(3):
            attempt(b, client, "nobody", "x")
        assert attempt(b, client, "nobody", "x").status_code == 429


def test_an_ip_is_locked_after_failures_across_usernames(broker_factory: BrokerFactory) -> None:
    with broker_factory(
        extra="login_protection: {max_failures_per_user: 100, max_failures_per_ip: 4, window: 60}"
    ) as b:
        client = register(b)["client_id"]
        for name in ("u1", "u2", "u3", "u4"):
            assert attempt(b, client, name, "wrong").status_code == 401
        assert attempt(b, client, "alice", "demo-alice").status_code == 429


def test_success_clears_the_username_counter(broker_factory: BrokerFactory) -> None:
    with broker_factory(
        extra="login_protection: {max_failures_per_user: 3, max_failures_per_ip: 100, window: 60}"
    ) as b:
        client = register(b)["client_id"]
        for _ in range(2):
            attempt(b, client, "bob", "wrong")
        assert attempt(b, client, "bob", "demo-bob").status_code == 303
        for _ in range(2):
            assert attempt(b, client, "bob", "wrong").status_code == 401
        assert attempt(b, client, "bob", "demo-bob").status_code == 303


def _parallel_logins(b: Broker, client: str, username: str, password: str, n: int) -> list[int]:
    """``n`` sign-in pages made ready one by one, then all posted at once: their statuses."""
    from concurrent.futures import ThreadPoolExecutor

    forms, browsers = [], []
    try:
        for _ in range(n):
            browser = b.client()
            browsers.append(browser)
            forms.append({**login_form(browser, client), "username": username, "password": password})
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(lambda i: browsers[i].post("/login", data=forms[i]).status_code, range(n)))
    finally:
        for browser in browsers:
            browser.close()


def test_parallel_guesses_cannot_outrun_the_count(broker_factory: BrokerFactory) -> None:
    """Ten wrong passwords for one user at once: the lock admits exactly its limit of them."""
    with broker_factory(
        extra="login_protection: {max_failures_per_user: 3, max_failures_per_ip: 100, window: 60}"
    ) as b:
        client = register(b)["client_id"]
        assert sorted(_parallel_logins(b, client, "bob", "wrong", 10)) == [401] * 3 + [429] * 7


def test_parallel_sign_ins_of_one_user_are_not_refused(broker_factory: BrokerFactory) -> None:
    """Someone signing in from several clients at once waits a moment rather than being locked out."""
    with broker_factory(
        extra="login_protection: {max_failures_per_user: 2, max_failures_per_ip: 100, window: 60}"
    ) as b:
        client = register(b)["client_id"]
        assert _parallel_logins(b, client, "alice", "demo-alice", 8) == [303] * 8
