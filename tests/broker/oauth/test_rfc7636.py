"""PKCE (RFC 7636), S256 only."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from broker.oauth.pkce import s256, valid_challenge, verify
from tests.broker.flows import Broker, authorize_params, exchange, login, pkce_pair, register


def test_rfc7636_appendix_b_vector() -> None:
    assert s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


@pytest.mark.parametrize(
    ("challenge", "method"),
    [
        (None, None),
        (None, "S256"),
        ("E9Melhoa2OwvFrEMTJguCQaoWm1FpLZ3SIj3jE8qYYs", "plain"),
        ("E9Melhoa2OwvFrEMTJguCQaoWm1FpLZ3SIj3jE8qYYs", None),
        ("short", "S256"),
    ],
)
def test_bad_challenges(challenge: str | None, method: str | None) -> None:
    assert valid_challenge(challenge, method or "plain") is not None


def test_verifier_syntax() -> None:
    assert not verify("too-short", s256("too-short"))
    assert not verify(None, "x")
    assert not verify("a" * 129, s256("a" * 129))


def _authorize_error(broker: Broker, **over: str | None) -> dict[str, str]:
    client = register(broker)
    _, challenge = pkce_pair()
    response = httpx.get(f"{broker.base}/authorize", params=authorize_params(client["client_id"], challenge, **over))
    assert response.status_code == 302, response.text
    return {k: v[0] for k, v in parse_qs(urlsplit(response.headers["location"]).query).items()}


def test_plain_method_is_refused(broker: Broker) -> None:
    verifier, _ = pkce_pair()
    error = _authorize_error(broker, code_challenge=verifier, code_challenge_method="plain")
    assert error["error"] == "invalid_request"
    assert "S256" in error["error_description"]


def test_missing_challenge_is_refused(broker: Broker) -> None:
    error = _authorize_error(broker, code_challenge=None, code_challenge_method=None)
    assert error["error"] == "invalid_request"
    assert "PKCE" in error["error_description"]


def test_missing_method_means_plain_and_is_refused(broker: Broker) -> None:
    assert _authorize_error(broker, code_challenge_method=None)["error"] == "invalid_request"


def test_wrong_verifier_at_the_token_endpoint(broker: Broker) -> None:
    client = register(broker)
    auth = login(broker, client["client_id"])
    wrong, _ = pkce_pair()
    response = exchange(broker, client["client_id"], auth, code_verifier=wrong)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    # The code is spent by the failed attempt: the right verifier no longer helps.
    assert exchange(broker, client["client_id"], auth).json()["error"] == "invalid_grant"


def test_missing_verifier(broker: Broker) -> None:
    client = register(broker)
    auth = login(broker, client["client_id"])
    response = exchange(broker, client["client_id"], auth, code_verifier=None)
    assert response.json()["error"] == "invalid_grant"
