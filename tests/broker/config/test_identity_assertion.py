"""identity_assertion.trusted_issuers: what a trusted ID-JAG issuer may be configured as, and the
mistakes refused at load with their paths."""

from __future__ import annotations

import pytest

from broker.config import ConfigError, parse_config
from broker.oauth.assertion_grant import AssertionGrant
from broker.oauth.id_jag import IdJagVerifier
from providers.registry import open_provider
from tests.broker.config.test_loader import ENV, VALID


def with_issuers(block: str) -> str:
    return VALID + "identity_assertion:\n  trusted_issuers:\n" + block


OKTA = """
    - issuer: https://example.okta.com
      provider: corp-ldap
      subject_claim: email
      resources: [notes]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env=ENV)
    return [str(p) for p in caught.value.problems]


def test_a_trusted_issuer_loads_with_its_defaults() -> None:
    config = parse_config(with_issuers(OKTA), env=ENV)
    [trusted] = config.identity_assertion.trusted_issuers
    assert trusted.issuer == "https://example.okta.com"
    assert trusted.jwks_uri is None  # from discovery
    assert trusted.algorithms == ["RS256", "ES256"]
    assert trusted.subject_claim == "email"
    assert trusted.groups_claim is None
    assert (trusted.max_lifetime, trusted.clock_skew) == (300, 30)
    assert parse_config(VALID, env=ENV).identity_assertion.trusted_issuers == []


def test_unknown_provider_and_resource_ids_are_refused_with_their_paths() -> None:
    found = problems(
        with_issuers("""
    - issuer: https://idp.example.com
      provider: nowhere
      resources: [notes, nothing]
""")
    )
    assert found == [
        "identity_assertion.trusted_issuers[0].provider: no provider has id 'nowhere'",
        "identity_assertion.trusted_issuers[0].resources[1]: no resource has id 'nothing'",
    ]


def test_own_issuer_twice_listed_and_unsafe_settings_are_refused() -> None:
    found = problems(
        with_issuers(
            OKTA
            + OKTA
            + """
    - issuer: https://auth.example.com
      provider: corp-ldap
      resources: [notes]
"""
        )
    )
    assert "identity_assertion.trusted_issuers[1].issuer: " in found[0]
    assert "more than once" in found[0]
    assert found[1].startswith("identity_assertion.trusted_issuers[2].issuer: is this broker's own issuer")
    for setting, where in [
        ("algorithms: [HS256]", "algorithms[0]"),
        ("algorithms: [none]", "algorithms[0]"),
        ("algorithms: []", "algorithms"),
        ("jwks_uri: http://idp.example.com/keys", "jwks_uri"),
        ("subject_claim: preferred_username", "subject_claim"),
        ("max_lifetime: 2h", "max_lifetime"),
        ("resources: []", "resources"),
    ]:
        text = with_issuers(f"""
    - issuer: https://idp.example.com
      provider: corp-ldap
      resources: [notes]
      {setting}
""")
        assert [p.split(":")[0] for p in problems(text)] == [f"identity_assertion.trusted_issuers[0].{where}"], setting


def test_a_provider_that_cannot_look_users_up_needs_a_groups_claim() -> None:
    okta_oidc = OKTA.replace("provider: corp-ldap", "provider: okta")
    config = parse_config(with_issuers(okta_oidc), env=ENV)
    providers = {p.id: open_provider(p) for p in config.providers}
    verifier = IdJagVerifier(config.issuer, config.identity_assertion.trusted_issuers)
    with pytest.raises(ValueError, match="cannot look users up; set groups_claim"):
        AssertionGrant(config, None, None, None, providers, None, verifier)  # type: ignore[arg-type]
    trusting = parse_config(with_issuers(okta_oidc + "      groups_claim: groups\n"), env=ENV)
    assert AssertionGrant(trusting, None, None, None, providers, None, verifier).enabled  # type: ignore[arg-type]
