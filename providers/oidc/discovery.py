"""OpenID Connect Discovery 1.0 §4: the OP's configuration document, read and checked.

The document is fetched from ``{issuer}/.well-known/openid-configuration`` and its ``issuer``
must equal the configured issuer exactly (§4.3), which defeats an OP impersonating another.
Every endpoint must be https (http only on loopback). Only asymmetric ID token signature
algorithms are accepted: an HMAC-signed ID token would be keyed with the client secret, and
``none`` is unsigned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from providers.base import UpstreamRejected
from providers.oidc.config import check_endpoint_url

WELL_KNOWN = "/.well-known/openid-configuration"

ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
    "Ed25519",
)


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + WELL_KNOWN


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    end_session_endpoint: str | None
    id_token_algorithms: tuple[str, ...]
    token_endpoint_auth_methods: tuple[str, ...]
    iss_parameter_supported: bool
    grant_types: tuple[str, ...] = ("authorization_code", "implicit")  # RFC 8414 §2's default

    def client_auth_method(self, has_secret: bool) -> str:
        """How to authenticate at the token endpoint (RFC 8414 §2: basic when unspecified)."""
        if not has_secret:
            return "none"
        offered = self.token_endpoint_auth_methods or ("client_secret_basic",)
        if "client_secret_basic" in offered or "client_secret_post" not in offered:
            return "client_secret_basic"
        return "client_secret_post"


def parse_metadata(document: object, issuer: str) -> ProviderMetadata:
    """Check the discovery document against ``issuer``; raise UpstreamRejected when unusable."""
    if not isinstance(document, Mapping):
        raise UpstreamRejected("the discovery document is not a JSON object")
    if document.get("issuer") != issuer:
        raise UpstreamRejected(
            f"discovery issuer {str(document.get('issuer'))[:200]!r} differs from the configured issuer {issuer!r}"
        )

    def endpoint(name: str) -> str | None:
        value = document.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise UpstreamRejected(f"discovery {name} is not a string")
        try:
            return check_endpoint_url(value, what=name)
        except ValueError as exc:
            raise UpstreamRejected(str(exc)) from None

    def required(name: str) -> str:
        value = endpoint(name)
        if value is None:
            raise UpstreamRejected(f"the discovery document has no {name}")
        return value

    response_types = _strings(document, "response_types_supported")
    if response_types and "code" not in response_types:
        raise UpstreamRejected("the OP does not offer the authorization code flow (response_type code)")
    offered = _strings(document, "id_token_signing_alg_values_supported") or ("RS256",)
    algorithms = tuple(a for a in offered if a in ASYMMETRIC_ALGORITHMS)
    if not algorithms:
        raise UpstreamRejected(f"the OP signs ID tokens only with {list(offered)}; none is an accepted algorithm")
    return ProviderMetadata(
        issuer=issuer,
        authorization_endpoint=required("authorization_endpoint"),
        token_endpoint=required("token_endpoint"),
        jwks_uri=required("jwks_uri"),
        userinfo_endpoint=endpoint("userinfo_endpoint"),
        end_session_endpoint=endpoint("end_session_endpoint"),
        id_token_algorithms=algorithms,
        token_endpoint_auth_methods=_strings(document, "token_endpoint_auth_methods_supported"),
        iss_parameter_supported=document.get("authorization_response_iss_parameter_supported") is True,
        grant_types=_strings(document, "grant_types_supported") or ("authorization_code", "implicit"),
    )


def _strings(document: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = document.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UpstreamRejected(f"discovery {name} is not a list of strings")
    return tuple(value)
