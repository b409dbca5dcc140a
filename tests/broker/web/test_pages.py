"""Browser security headers: the consent page's CSP names only plain origins."""

from __future__ import annotations

import pytest

from broker.web.pages import security_headers


def form_action(targets: list[str]) -> str:
    csp = security_headers(targets)["content-security-policy"]
    return csp.split("form-action ")[1]


def test_form_targets_become_origins() -> None:
    assert form_action(["https://App.example.com:8443/cb?x=1", "http://127.0.0.1:5000/callback", "myapp:/cb"]) == (
        "'self' https://app.example.com:8443 http://127.0.0.1:5000 myapp:"
    )
    assert form_action(["http://[::1]:9000/cb"]) == "'self' http://[::1]:9000"


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example; script-src 'unsafe-inline'/cb",
        "https://user:pw@app.example.com/cb",
        "https://app.example.com:99999/cb",
        "https://[x]/cb",
        "java script:alert(1)",
    ],
)
def test_a_crafted_target_adds_nothing_to_the_policy(target: str) -> None:
    assert form_action([target]) == "'self'"
