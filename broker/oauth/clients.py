"""OAuth clients: pre-registered (config), dynamically registered (RFC 7591) and client ID
metadata documents (URL client ids). One :class:`Client` model for all three."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any, Literal
from urllib.parse import urlsplit

from broker import redirect_rules as redirects
from broker.config.models import RegistrationConfig
from broker.display import hidden_character
from broker.oauth.client_assertion import verify_client_assertion
from broker.oauth.errors import InvalidClient, InvalidClientMetadata, InvalidRedirectUri
from broker.store.base import Store
from broker.store.records import CLIENT_GRANT_TYPES, ClientAuthMethod, ClientRegistration
from providers.net import is_loopback_host

AuthMethod = ClientAuthMethod
AUTH_METHODS: tuple[AuthMethod, ...] = ("none", "client_secret_post", "client_secret_basic")
GRANT_TYPES = CLIENT_GRANT_TYPES
Client = ClientRegistration  # one model for all three kinds; its fields and JSON live with the records
CLIENT_CACHE_SECONDS = 30.0
# RFC 7591 §2: human-readable strings, and the URLs a client may give for its pages and logo.
TEXT_FIELDS = ("client_name", "software_id", "software_version")
PAGE_URI_FIELDS = ("client_uri", "logo_uri", "policy_uri", "tos_uri")


def hash_secret(secret: str) -> str:
    # Client secrets are 256-bit random values, so a fast hash is as strong as a slow one.
    return hashlib.sha256(secret.encode()).hexdigest()


def check_secret(client: Client, presented: str | None) -> bool:
    if client.secret_hash is None or not presented:
        return False
    return hmac.compare_digest(hash_secret(presented), client.secret_hash)


def authenticate(client: Client, method: str, secret: str | None) -> None:
    """Check the client's credentials as presented at the token endpoint; raise InvalidClient."""
    if client.is_public:
        if secret is not None:
            raise InvalidClient(detail=f"public client {client.client_id} sent a secret")
        return
    if method == "none":
        raise InvalidClient(detail=f"confidential client {client.client_id} did not authenticate")
    if not check_secret(client, secret):
        raise InvalidClient(detail=f"bad secret for client {client.client_id}")


def _application_type(metadata: dict[str, Any], uris: list[str]) -> Literal["native", "web"]:
    declared = metadata.get("application_type")
    if declared in ("native", "web"):
        return declared  # type: ignore[no-any-return]
    if declared is not None:
        raise InvalidClientMetadata("application_type must be 'native' or 'web'")
    # Clients older than MCP 2026-07-28 omit it: infer from the redirect URIs.
    native = all(redirects.is_loopback_redirect(u) or redirects.is_private_use_scheme(u) for u in uris)
    return "native" if native else "web"


def _text_problem(metadata: dict[str, Any]) -> str | None:
    """Why a human-readable field would not read as what it is (see :mod:`broker.display`), or None."""
    contacts = metadata.get("contacts")
    values = [(f, metadata.get(f)) for f in TEXT_FIELDS]
    values += [("contacts", c) for c in contacts] if isinstance(contacts, list) else []
    for field_name, value in values:
        hidden = hidden_character(value) if isinstance(value, str) else None
        if hidden:
            return f"{field_name} must not contain control, invisible or bidirectional formatting characters ({hidden})"
    return None


def page_uri_problem(field_name: str, value: object) -> str | None:
    """None if ``value`` may be a client's page or logo URL: https, or http on a loopback host."""
    message = f"{field_name} must be an https URL (http only on a loopback host)"
    if not isinstance(value, str) or not value or len(value) > 2000:
        return message
    if hidden_character(value) or any(char.isspace() for char in value):
        return f"{field_name} must not contain spaces or control characters"
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        return message
    if parts.username is not None or parts.password is not None:
        return f"{field_name} must not contain credentials"
    if parts.scheme == "https" and redirects.valid_host(parts.hostname):
        return None
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return None
    return message


def validate_metadata(
    metadata: dict[str, Any], *, allowed_hosts: list[str] | None = None
) -> tuple[list[str], Literal["native", "web"], AuthMethod, tuple[str, ...], str]:
    """Check RFC 7591 client metadata; return (redirect_uris, application_type, auth method, grants, name)."""
    uris = metadata.get("redirect_uris")
    if not isinstance(uris, list) or not uris or len(uris) > 20:
        raise InvalidRedirectUri("redirect_uris must be a non-empty list")
    app_type = _application_type(metadata, uris)
    for uri in uris:
        problem = redirects.registration_problem(uri, app_type)
        if problem:
            raise InvalidRedirectUri(problem)
        host = urlsplit(uri).hostname
        if allowed_hosts and uri.startswith("https:") and host not in allowed_hosts:
            raise InvalidRedirectUri(f"redirect host {host!r} is not allowed to register")
    method = metadata.get("token_endpoint_auth_method", "client_secret_basic")
    if method not in AUTH_METHODS:
        raise InvalidClientMetadata(f"token_endpoint_auth_method must be one of {', '.join(AUTH_METHODS)}")
    grants = metadata.get("grant_types", ["authorization_code"])
    if not isinstance(grants, list) or not grants or any(g not in GRANT_TYPES for g in grants):
        raise InvalidClientMetadata("grant_types may hold only authorization_code and refresh_token")
    if "authorization_code" not in grants:
        raise InvalidClientMetadata("grant_types must include authorization_code")
    responses = metadata.get("response_types", ["code"])
    if responses != ["code"]:
        raise InvalidClientMetadata("response_types must be ['code']")
    name = metadata.get("client_name", "Unnamed client")
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise InvalidClientMetadata("client_name must be a string of at most 100 characters")
    problem = _text_problem(metadata) or next(
        (p for f in PAGE_URI_FIELDS if metadata.get(f) is not None and (p := page_uri_problem(f, metadata[f]))), None
    )
    if problem:
        raise InvalidClientMetadata(problem)
    return uris, app_type, method, tuple(dict.fromkeys(grants)), name.strip()


class ClientRegistry:
    def __init__(
        self, config: RegistrationConfig, store: Store, metadata_documents: Any = None, *, issuer: str | None = None
    ) -> None:
        """``issuer``: the audience of ``private_key_jwt`` assertions (without it they are refused)."""
        self.config = config
        self.issuer = issuer
        self.store = store
        self.documents = metadata_documents
        self.static = {
            c.client_id: Client(
                client_id=c.client_id,
                client_name=c.client_name,
                redirect_uris=tuple(c.redirect_uris),
                application_type=c.application_type,
                token_endpoint_auth_method=(
                    "client_secret_basic" if c.client_secret else "private_key_jwt" if c.jwks else "none"
                ),
                kind="static",
                secret_hash=hash_secret(c.client_secret.get_secret_value()) if c.client_secret else None,
            )
            for c in config.static_clients
        }
        self._recent: dict[str, tuple[float, Client]] = {}
        self.jwks = {c.client_id: c.jwks for c in config.static_clients if c.jwks is not None}

    async def get(self, client_id: str | None) -> Client | None:
        if not client_id or len(client_id) > 2000:
            return None
        if client_id in self.static:
            return self.static[client_id]
        if client_id.startswith("https://"):
            if self.documents is None or not self.config.client_metadata_documents:
                return None
            client: Client | None = await self.documents.get(client_id)
            return client
        cached = self._recent.get(client_id)
        if cached is not None and time.monotonic() - cached[0] < CLIENT_CACHE_SECONDS:
            return cached[1]
        # Registrations never change, so a few seconds of caching is safe; the idle TTL is
        # refreshed on every miss, which is often enough for a lifetime measured in days.
        client = await self.store.get_client(client_id, touch_ttl=self.config.registration_idle_ttl)
        if client is None:
            return None
        if len(self._recent) >= 10_000:
            self._recent.clear()
        self._recent[client_id] = (time.monotonic(), client)
        return client

    async def authenticate_assertion(self, client: Client, assertion: str, endpoint: str) -> None:
        """``private_key_jwt`` (RFC 7523 §2.2): raise InvalidClient unless ``assertion`` is a fresh
        one of ``client``, signed by a key of its configured ``jwks``, addressed to our issuer or
        to the URL of ``endpoint`` (``token``, ``revoke``, ``introspect``)."""
        jwks = self.jwks.get(client.client_id)
        if jwks is None or self.issuer is None or client.token_endpoint_auth_method != "private_key_jwt":  # noqa: S105
            raise InvalidClient(detail=f"client {client.client_id[:100]!r} has no keys for private_key_jwt")
        audiences = {self.issuer, f"{self.issuer}/{endpoint}"}
        await verify_client_assertion(
            assertion, client_id=client.client_id, jwks=jwks, audiences=audiences, store=self.store
        )

    async def register(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """RFC 7591 §3: validate, store (secret hashed), answer with the secret once."""
        uris, app_type, method, grants, name = validate_metadata(
            metadata, allowed_hosts=self.config.dynamic_registration_allowed_redirect_hosts or None
        )
        client_id = secrets.token_urlsafe(24)
        secret = secrets.token_urlsafe(32) if method != "none" else None
        now = int(time.time())
        client_uri = metadata.get("client_uri") if isinstance(metadata.get("client_uri"), str) else None
        client = Client(
            client_id=client_id,
            client_name=name,
            redirect_uris=tuple(uris),
            application_type=app_type,
            token_endpoint_auth_method=method,
            grant_types=grants,
            kind="dynamic",
            secret_hash=hash_secret(secret) if secret else None,
            client_uri=client_uri,
            created_at=now,
        )
        await self.store.save_client(client, self.config.registration_idle_ttl)
        response: dict[str, Any] = {
            "client_id": client_id,
            "client_id_issued_at": now,
            "client_name": name,
            "redirect_uris": uris,
            "application_type": app_type,
            "grant_types": list(grants),
            "response_types": ["code"],
            "token_endpoint_auth_method": method,
        }
        if client_uri:
            response["client_uri"] = client_uri
        if secret:
            response["client_secret"] = secret
            response["client_secret_expires_at"] = 0
        return response
