"""The configuration loader: every problem at once, each with its path in the file."""

from __future__ import annotations

from importlib import resources

import pytest

from broker.config import ConfigError, parse_config
from broker.config.types import parse_duration

VALID = """
issuer: https://auth.example.com
redis:
  url: redis+sentinel://sentinel-0:26379,sentinel-1:26379/mymaster
  password: ${REDIS_PASSWORD}
signing:
  key_encryption_key: ${KEK}
tokens:
  access_token_ttl: 5m
  refresh_token_absolute_ttl: 30d
providers:
  - id: corp-ldap
    type: ldap
    display_name: Corporate directory
    urls: [ldaps://ldap.example.com]
    bind_dn: cn=svc,dc=example,dc=com
    bind_password: ${LDAP_PASSWORD}
    user_base_dn: ou=people,dc=example,dc=com
  - id: entra
    type: entra
    display_name: Contoso
    tenant_id: 00000000-0000-0000-0000-000000000001
    client_id: 00000000-0000-0000-0000-000000000002
    client_secret: ${ENTRA_SECRET}
  - id: okta
    type: oidc
    display_name: Okta
    issuer: https://example.okta.com
    client_id: abc
resources:
  - id: notes
    uri: https://mcp.example.com/mcp
    name: Notes
    scopes:
      - {name: "notes:read", description: Read}
      - {name: "notes:write", description: Write, implies: ["notes:read"]}
mappings:
  - id: readers
    resource: notes
    provider: corp-ldap
    groups: [mcp-readers]
    scopes: ["notes:read"]
"""

ENV = {"REDIS_PASSWORD": "r-secret", "KEK": "k" * 43, "LDAP_PASSWORD": "l-secret", "ENTRA_SECRET": "e-secret"}


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env=ENV if env is None else env)
    return [str(p) for p in caught.value.problems]


def test_valid_file_loads_with_secrets_from_the_environment() -> None:
    config = parse_config(VALID, env=ENV)
    assert config.tokens.access_token_ttl == 300
    assert config.tokens.refresh_token_absolute_ttl == 30 * 86400
    assert [p.type for p in config.providers] == ["ldap", "entra", "oidc"]
    assert config.redis.password is not None
    assert config.redis.password.get_secret_value() == "r-secret"
    # Secrets never print.
    assert "r-secret" not in repr(config)
    assert "l-secret" not in str(config.providers[0])


def test_three_mistakes_are_all_reported_with_their_paths() -> None:
    text = VALID.replace("issuer: https://example.okta.com", "issuer: not-a-url")
    text = text.replace("access_token_ttl: 5m", "access_token_ttl: soon")
    text = text.replace("    urls: [ldaps://ldap.example.com]", "    urls: [http://ldap.example.com]")
    found = problems(text)
    assert len(found) == 3, found
    assert any(p.startswith("providers[2].issuer:") for p in found)
    assert any(p.startswith("tokens.access_token_ttl:") for p in found)
    assert any(p.startswith("providers[0].urls:") and "ldap://" in p for p in found)


def test_unknown_keys_are_errors_not_silently_ignored() -> None:
    found = problems(VALID.replace("  access_token_ttl: 5m", "  acess_token_ttl: 5m"))
    assert found == ["tokens.acess_token_ttl: unknown key (check the spelling; see docs/configuration.md)"]


def test_missing_environment_variable_is_named() -> None:
    env = {k: v for k, v in ENV.items() if k != "LDAP_PASSWORD"}
    assert problems(VALID, env) == ["providers[0].bind_password: environment variable LDAP_PASSWORD is not set"]


def test_interpolation_default_and_escape() -> None:
    text = VALID.replace("${KEK}", "${NO_SUCH_VAR:-" + "d" * 43 + "}").replace("name: Notes", "name: Costs $$5")
    config = parse_config(text, env=ENV)
    assert config.resources[0].name == "Costs $5"
    assert config.signing.key_encryption_key is not None
    assert config.signing.key_encryption_key.get_secret_value() == "d" * 43


def test_unknown_provider_type() -> None:
    found = problems(VALID.replace("type: oidc", "type: saml"))
    assert found == ["providers[2]: unknown provider type 'saml'; expected ldap, entra or oidc"]


def test_a_provider_without_a_type_is_told_the_types() -> None:
    found = problems(VALID.replace("    type: oidc\n", ""))
    assert found == ["providers[2]: a provider needs a 'type': ldap, entra or oidc"]


def test_upstream_refresh_needs_a_key_encryption_key() -> None:
    text = VALID.replace("    client_id: abc\n", "    client_id: abc\n    use_upstream_refresh: true\n", 1)
    assert parse_config(text, env=ENV).providers[2].upstream_refresh_setting == "use_upstream_refresh"
    found = problems(text.replace("signing:\n  key_encryption_key: ${KEK}\n", ""))
    assert found == [
        "providers[2].use_upstream_refresh: needs signing.key_encryption_key: "
        "upstream refresh tokens are kept only encrypted"
    ]


def test_entra_needs_exactly_one_credential() -> None:
    found = problems(VALID.replace("    client_secret: ${ENTRA_SECRET}\n", ""))
    assert found == ["providers[1]: set exactly one of client_secret or client_certificate_file"]


@pytest.mark.parametrize(
    ("issuer", "reason"),
    [
        ("http://auth.example.com", "https"),
        ("https://auth.example.com/", "must not end with '/'"),
        ("https://auth.example.com?x=1", "query"),
        ("https://Auth.Example.com", "lower-case"),
    ],
)
def test_issuer_rules(issuer: str, reason: str) -> None:
    found = problems(VALID.replace("issuer: https://auth.example.com", f"issuer: {issuer}"))
    assert len(found) == 1
    assert found[0].startswith("issuer:")
    assert reason in found[0]


@pytest.mark.parametrize("issuer", ["http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:9000/broker"])
def test_plain_http_issuer_allowed_on_loopback(issuer: str) -> None:
    assert (
        parse_config(VALID.replace("issuer: https://auth.example.com", f"issuer: {issuer}"), env=ENV).issuer == issuer
    )


def test_cross_references_are_checked() -> None:
    text = VALID.replace("provider: corp-ldap", "provider: nope").replace('scopes: ["notes:read"]\n', 'scopes: ["x"]\n')
    text = text.replace('implies: ["notes:read"]', 'implies: ["notes:admin"]')
    text = text.replace("  - id: okta", "  - id: entra")
    found = problems(text)
    assert "providers[1].id: 'entra' is used more than once" in found
    assert "providers[2].id: 'entra' is used more than once" in found
    assert "mappings[0].provider: no provider has id 'nope'" in found
    assert "mappings[0].scopes: 'x' is not a scope of resource 'notes'" in found
    assert "resources[0].scopes[1].implies: 'notes:admin' is not a scope of resource 'notes'" in found


def test_static_clients_follow_the_redirect_rules_of_registration() -> None:
    text = VALID.replace(
        "resources:\n",
        "registration:\n  static_clients:\n    - client_id: agent\n      client_name: Agent\n"
        "      redirect_uris: ['http://agent.corp.example.com/cb', 'javascript:alert(1)', 'http://127.0.0.1/cb']\n"
        "resources:\n",
        1,
    )
    found = problems(text)
    assert any(p.startswith("registration.static_clients[0].redirect_uris[0]: ") and "plain http" in p for p in found)
    assert any(p.startswith("registration.static_clients[0].redirect_uris[1]: ") for p in found)
    assert not any("redirect_uris[2]" in p for p in found)  # loopback http for a native client is fine


def test_key_overlap_must_cover_the_access_token_lifetime() -> None:
    text = VALID.replace("  key_encryption_key: ${KEK}\n", "  key_encryption_key: ${KEK}\n  key_overlap: 60\n")
    assert any(
        p.startswith("signing.key_overlap: must be at least tokens.access_token_ttl (300 s)") for p in problems(text)
    )


def test_bad_redis_url() -> None:
    found = problems(VALID.replace("redis+sentinel://sentinel-0:26379,sentinel-1:26379/mymaster", "memcached://x"))
    assert len(found) == 1
    assert found[0].startswith("redis.url: unsupported Redis URL scheme 'memcached'")


def test_yaml_syntax_error_has_a_line_number() -> None:
    found = problems("issuer: [unclosed\n")
    assert len(found) == 1
    assert found[0].startswith("line ")
    assert "not valid YAML" in found[0]


def test_not_a_mapping() -> None:
    assert problems("- a\n- b\n") == ["the file must be a mapping of sections (issuer:, redis:, ...)"]


def test_the_dev_template_is_valid() -> None:
    template = resources.files("broker.devstack").joinpath("dev-config.yaml").read_text()
    env = {
        "MCPB_DEV_BROKER_PORT": "8000",
        "MCPB_DEV_MCP_PORT": "8001",
        "MCPB_DEV_REDIS_URL": "redis://127.0.0.1:6379/0",
        "MCPB_DEV_KEK": "k" * 43,
        "MCPB_DEV_ADMIN_TOKEN": "t" * 43,
        "MCPB_DEV_NOTES_SERVER_SECRET": "n" * 43,
        "MCPB_DEV_LDAP_URL": "ldap://127.0.0.1:389",
        "MCPB_DEV_LDAP_BIND_DN": "cn=x",
        "MCPB_DEV_LDAP_BIND_PASSWORD": "pw",
    }
    config = parse_config(template, env=env)
    assert config.resources[0].uri == "http://127.0.0.1:8001/mcp"
    assert {m.id for m in config.mappings} == {"readers-read", "writers-write"}


@pytest.mark.parametrize(("text", "seconds"), [(300, 300), ("300", 300), ("5m", 300), ("12h", 43200), ("30d", 2592000)])
def test_durations(text: object, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "-5", 0, True, 1.5, "5w"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
