"""Refused password sign-ins all take the failure floor, so the answer's timing does not tell
whether a username exists (the provider-level difference is measured by bench/login_timing.py)."""

from __future__ import annotations

import secrets
import time

from structlog.testing import capture_logs

from broker.app import create_app
from broker.config import parse_config
from broker.devstack import RedisServer, Slapd, free_port
from tests.broker.conftest import BrokerFactory
from tests.broker.flows import Broker, broker_yaml, login_form, register
from tests.http import running

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


def test_a_password_with_a_control_character_is_a_wrong_password(broker_factory: BrokerFactory) -> None:
    # ldap3's SASLprep refusal used to be "temporarily unavailable" at once, uncounted.
    protection = f"login_protection: {{failure_floor: {FLOOR}, max_failures_per_user: 2}}"
    with broker_factory(extra=protection) as b:
        client = register(b)["client_id"]
        with capture_logs() as logs:
            for password in ("demo-alice\x00", "demo-\x07alice"):
                elapsed, status, text = timed_login(b, client, "alice", password)
                assert status == 401
                assert "The username or password is incorrect." in text
                assert elapsed >= FLOOR
        failed = [e for e in logs if e["event"] == "login_failed"]
        assert [e["outcome"] for e in failed] == ["InvalidCredentials"] * 2
        assert not [e for e in logs if e["event"] == "upstream_failed"]
        _, status, _ = timed_login(b, client, "alice", "demo-alice")
        assert status == 429  # both were counted: the right password now waits out the lock


def test_a_directory_that_is_down_is_answered_at_once_and_the_log_says_why(
    redis_server: RedisServer, slapd: Slapd
) -> None:
    port, dead = free_port(), f"ldap://127.0.0.1:{free_port()}"
    text = broker_yaml(port, redis_server.url, slapd, prefix=f"t{secrets.token_hex(6)}").replace(slapd.url, dead)
    config = parse_config(text)
    with running(create_app(config), port):
        b = Broker(config.issuer, config)
        client = register(b)["client_id"]
        with capture_logs() as logs:
            elapsed, status, page = timed_login(b, client, "alice", "demo-alice")
        assert status == 503
        assert "temporarily unavailable" in page
        assert elapsed < 1.5  # connect_timeout is 5 s, but a refused connection needs no waiting at all
        [warning] = [e for e in logs if e["event"] == "upstream_failed"]
        assert warning["log_level"] == "warning"
        assert (warning["provider"], warning["operation"], warning["outcome"]) == (
            "demo-ldap",
            "login",
            "UpstreamUnavailable",
        )
        assert dead in warning["reason"]
        assert "refused" in warning["reason"].lower()
        assert "demo-alice" not in repr(logs)
