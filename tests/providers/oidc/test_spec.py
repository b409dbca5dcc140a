"""Framework-free checks by specification: the configuration, OpenID Connect Discovery 1.0 §4
(metadata), and the parts of OIDC Core §3.1.3 that need no OP (at_hash, key selection)."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
import yaml
from joserfc.jwk import ECKey, OctKey, RSAKey
from pydantic import ValidationError

from providers.base import UpstreamRejected
from providers.oidc.config import OidcProviderConfig
from providers.oidc.discovery import discovery_url, parse_metadata
from providers.oidc.id_token import KeySet, at_hash, unverified_header

ISSUER = "https://op.example.com"


def config(**over: Any) -> OidcProviderConfig:
    values: dict[str, Any] = {"id": "okta", "display_name": "Okta", "issuer": ISSUER, "client_id": "abc"}
    values.update(over)
    return OidcProviderConfig(**values)


def document(**over: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/authorize",
        "token_endpoint": f"{ISSUER}/token",
        "jwks_uri": f"{ISSUER}/keys",
        "response_types_supported": ["code", "id_token"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }
    values.update(over)
    return {k: v for k, v in values.items() if v is not None}


# -- configuration ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "issuer", ["https://example.okta.com", "https://tenant.auth0.com/", "http://127.0.0.1:5556/dex"]
)
def test_the_issuer_is_kept_exactly_as_written(issuer: str) -> None:
    assert config(issuer=issuer).issuer == issuer  # no trailing slash added or removed


@pytest.mark.parametrize(
    ("issuer", "problem"),
    [
        ("http://op.example.com", "must use https"),
        ("not-a-url", "not an absolute"),
        ("https://op.example.com/?tenant=1", "query"),
        ("https://op.example.com/#x", "fragment"),
        ("ftp://op.example.com", "not an absolute"),
    ],
)
def test_unsafe_issuers_are_refused(issuer: str, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        config(issuer=issuer)


def test_scopes_need_openid_and_authorize_params_cannot_override_the_protocol() -> None:
    with pytest.raises(ValidationError, match="openid"):
        config(scopes=["profile"])
    with pytest.raises(ValidationError, match="nonce, state"):
        config(authorize_params={"state": "x", "nonce": "y"})
    assert config(authorize_params={"prompt": "consent"}).authorize_params == {"prompt": "consent"}


def test_the_client_secret_never_prints() -> None:
    assert "s3cret-value" not in repr(config(client_secret="s3cret-value"))


# -- discovery ------------------------------------------------------------------------------
def test_discovery_url() -> None:
    assert discovery_url("https://op.example.com") == "https://op.example.com/.well-known/openid-configuration"
    assert discovery_url("https://op.example.com/t1/") == "https://op.example.com/t1/.well-known/openid-configuration"


def test_a_usable_document() -> None:
    metadata = parse_metadata(document(end_session_endpoint=f"{ISSUER}/logout"), ISSUER)
    assert metadata.token_endpoint == f"{ISSUER}/token"
    assert metadata.end_session_endpoint == f"{ISSUER}/logout"
    assert metadata.userinfo_endpoint is None
    assert not metadata.iss_parameter_supported
    assert parse_metadata(document(), ISSUER).end_session_endpoint is None


@pytest.mark.parametrize(
    ("over", "problem"),
    [
        ({"issuer": ISSUER + "/"}, "differs from the configured issuer"),
        ({"issuer": None}, "differs from the configured issuer"),
        ({"jwks_uri": None}, "no jwks_uri"),
        ({"token_endpoint": "http://op.example.com/token"}, "must use https"),
        ({"authorization_endpoint": 42}, "not a string"),
        ({"response_types_supported": ["id_token"]}, "authorization code"),
        ({"id_token_signing_alg_values_supported": ["HS256", "none"]}, "none is an accepted algorithm"),
        ({"id_token_signing_alg_values_supported": "RS256"}, "not a list"),
    ],
)
def test_unusable_documents(over: dict[str, Any], problem: str) -> None:
    with pytest.raises(UpstreamRejected, match=problem):
        parse_metadata(document(**over), ISSUER)


def test_a_document_that_is_not_an_object() -> None:
    with pytest.raises(UpstreamRejected, match="not a JSON object"):
        parse_metadata(["not", "an", "object"], ISSUER)


def test_only_asymmetric_algorithms_are_kept() -> None:
    metadata = parse_metadata(
        document(id_token_signing_alg_values_supported=["HS256", "RS256", "ES256", "none"]), ISSUER
    )
    assert metadata.id_token_algorithms == ("RS256", "ES256")
    assert parse_metadata(document(id_token_signing_alg_values_supported=None), ISSUER).id_token_algorithms == (
        "RS256",
    )


@pytest.mark.parametrize(
    ("offered", "secret", "method"),
    [
        (None, True, "client_secret_basic"),  # RFC 8414 §2 default
        (["client_secret_post", "client_secret_basic"], True, "client_secret_basic"),
        (["client_secret_post"], True, "client_secret_post"),
        (["client_secret_basic"], False, "none"),
    ],
)
def test_client_authentication_method(offered: list[str] | None, secret: bool, method: str) -> None:
    metadata = parse_metadata(document(token_endpoint_auth_methods_supported=offered), ISSUER)
    assert metadata.client_auth_method(secret) == method


# -- OIDC Core §3.1.3 -------------------------------------------------------------------------
def test_at_hash_matches_the_example_of_oidc_core() -> None:
    # OpenID Connect Core 1.0, Appendix A.3 / A.4
    assert at_hash("jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y", "RS256") == "77QmUPtjPfzWtF2AnpK9RQ"


def test_unverified_header_refuses_what_is_not_a_compact_jws() -> None:
    with pytest.raises(UpstreamRejected, match="compact JWS"):
        unverified_header("a.b.c.d.e")
    with pytest.raises(UpstreamRejected, match="base64url JSON"):
        unverified_header("!!.e30.")
    with pytest.raises(UpstreamRejected, match="no alg"):
        unverified_header("e30.e30.")


async def test_key_selection_by_kid_type_and_curve() -> None:
    rsa = RSAKey.generate_key(2048, parameters={"kid": "r1", "use": "sig"}).as_dict(private=False)
    ec = ECKey.generate_key("P-256", parameters={"kid": "e1", "alg": "ES256"}).as_dict(private=False)
    enc = RSAKey.generate_key(2048, parameters={"kid": "r2", "use": "enc"}).as_dict(private=False)
    secret = OctKey.generate_key(256, parameters={"kid": "o1"}).as_dict(private=True)
    broken = {"kty": "RSA", "kid": "bad", "n": "!!", "e": "AQAB"}
    fetched: list[int] = []

    async def fetch() -> object:
        fetched.append(1)
        return {"keys": [rsa, ec, enc, secret, broken]}

    keys = KeySet(fetch)
    assert len(await keys.candidates("r1", "RS256")) == 1
    assert len(await keys.candidates("r1", "PS256")) == 1  # an RSA key without alg verifies either
    assert await keys.candidates("r1", "ES256") == []  # wrong key type for the algorithm
    assert len(await keys.candidates("e1", "ES256")) == 1
    assert await keys.candidates("e1", "ES384") == []  # wrong curve
    assert len(await keys.candidates(None, "RS256")) == 1  # no kid: every key fit for the algorithm
    assert fetched == [1, 1]  # the first miss ("r1" for ES256) refetched; later misses wait a minute
    for kid in ("r2", "o1", "bad"):  # encryption, symmetric and malformed keys are never used
        assert await keys.candidates(kid, "RS256") == []


def test_the_sample_configuration_in_the_package_docstring_is_valid() -> None:
    import providers.oidc

    doc = providers.oidc.__doc__ or ""
    sample = textwrap.dedent(doc.split("Sample configuration::", 1)[1].split("\n\n", 2)[1])
    item = yaml.safe_load(sample.replace("${OKTA_CLIENT_SECRET}", "from-the-environment"))["providers"][0]
    parsed = OidcProviderConfig(**item)
    assert parsed.use_upstream_refresh
    assert "offline_access" in parsed.scopes
