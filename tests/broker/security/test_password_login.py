"""Refused password sign-ins all take the failure floor, so the answer's timing does not tell
whether a username exists (the provider-level difference is measured by bench/login_timing.py)."""

from __future__ import annotations

import time

from tests.broker.conftest import BrokerFactory
from tests.broker.flows import Broker, login_form, register

FLOOR = 0.6


def timed_login(broker: Broker, client_id: str, username: str, password: str) -> tuple[float, int, str]:
    """Seconds taken by the login form's POST alone, its status and its page."""
    with broker.client() as browser:
        form = {**login_form(browser, client_id), "username": username, "password": password}
        start = time.monotonic()
        answer = browser.post("/login", data=form)
        return time.monotonic() - start, answer.status_code, answer.text


def test_wrong_password_and_unknown_user_are_answered_alike_at_the_floor(broker_factory: BrokerFactory) -> None:
    with broker_factory(extra=f"login_protection: {{failure_floor: {FLOOR}}}") as b:
        client = register(b)["client_id"]
        wrong = timed_login(b, client, "alice", "not-her-password")
        unknown = timed_login(b, client, "nobody-at-all", "not-a-password")
        for elapsed, status, text in (wrong, unknown):
            assert status == 401
            assert "The username or password is incorrect." in text
            assert elapsed >= FLOOR
        _, status, _ = timed_login(b, client, "alice", "demo-alice")
        assert status == 303  # success is not held back to the floor (nor measured here)


def test_the_floor_has_a_secure_default() -> None:
    from broker.config.models import LoginProtectionConfig

    assert LoginProtectionConfig().failure_floor == 0.25
