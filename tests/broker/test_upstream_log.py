"""Why an upstream failed reaches the operator as one ``upstream_failed`` warning (issue 10 §1)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from broker.app import create_app
from broker.config import parse_config
from broker.devstack import RedisServer, Slapd, free_port
from broker.upstream_log import log_upstream_failure
from providers.base import AccountDisabled, InvalidCredentials, ProviderError, UpstreamRejected, UpstreamUnavailable
from tests.broker.flows import Broker, broker_yaml, refresh, tokens_for
from tests.http import running


@pytest.mark.parametrize("error", [UpstreamUnavailable, UpstreamRejected])
def test_an_upstream_failure_is_a_warning_with_its_reason(error: type[ProviderError]) -> None:
    with capture_logs() as logs:
        log_upstream_failure("corp", "login", error("ldap://dir:389: StartTLS failed: certificate verify failed"))
    assert logs == [
        {
            "event": "upstream_failed",
            "log_level": "warning",
            "provider": "corp",
            "operation": "login",
            "outcome": error.__name__,
            "reason": "ldap://dir:389: StartTLS failed: certificate verify failed",
        }
    ]


@pytest.mark.parametrize("error", [InvalidCredentials, AccountDisabled])
def test_the_users_own_failure_is_not_an_upstream_failure(error: type[ProviderError]) -> None:
    with capture_logs() as logs:
        log_upstream_failure("corp", "login", error("wrong password for 'alice'"))
    assert logs == []


def test_a_refresh_whose_directory_went_away_says_why(redis_server: RedisServer, tmp_path: Path) -> None:
    directory = Slapd(tmp_path).start()
    port = free_port()
    try:
        config = parse_config(broker_yaml(port, redis_server.url, directory, prefix=f"t{secrets.token_hex(6)}"))
        with running(create_app(config), port):
            broker = Broker(config.issuer, config)
            client, tokens = tokens_for(broker)
            directory.stop()
            with capture_logs() as logs:
                answer = refresh(broker, client["client_id"], tokens["refresh_token"])
            assert answer.status_code == 503, answer.text
            [warning] = [e for e in logs if e["event"] == "upstream_failed"]
            assert (warning["log_level"], warning["provider"], warning["operation"]) == (
                "warning",
                "demo-ldap",
                "refresh",
            )
            assert directory.url in warning["reason"]
    finally:
        directory.stop()
