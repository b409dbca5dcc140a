"""The records the store keeps, each with its fields and its JSON form in one place.

The JSON written here is what a running Redis already holds (and what the Lua scripts in
:mod:`broker.store.redis_store` read by field name): the field names and value types must not change.
Reading tolerates fields an older broker wrote and nothing reads any more (a grant's
``requested``, ``refresh_count`` and ``revoked_reason``, a code's ``requested``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Self
from urllib.parse import urlsplit

GrantStatus = Literal["active", "revoked"]
ClientAuthMethod = Literal["none", "client_secret_post", "client_secret_basic", "private_key_jwt"]
CLIENT_GRANT_TYPES = ("authorization_code", "refresh_token")


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _opt_float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def loads(raw: bytes | str | None) -> dict[str, Any] | None:
    """A stored JSON object, or None for a missing key."""
    if raw is None:
        return None
    value = json.loads(raw)
    return value if isinstance(value, dict) else None


def dumps(record: Mapping[str, Any]) -> str:
    return json.dumps(record)


@dataclass(frozen=True)
class ClientRegistration:
    """An OAuth client: pre-registered (config), dynamically registered (RFC 7591, the kind the
    store keeps) or a client ID metadata document. ``broker.oauth.clients.Client`` is this."""

    client_id: str
    client_name: str
    redirect_uris: tuple[str, ...]
    application_type: Literal["native", "web"] = "native"
    token_endpoint_auth_method: ClientAuthMethod = "none"  # noqa: S105 - a method name, not a secret
    grant_types: tuple[str, ...] = CLIENT_GRANT_TYPES
    kind: Literal["static", "dynamic", "metadata_document"] = "dynamic"
    secret_hash: str | None = field(default=None, repr=False)
    client_uri: str | None = None
    created_at: int = 0

    @property
    def is_public(self) -> bool:
        return self.token_endpoint_auth_method == "none"  # noqa: S105

    @property
    def verified_domain(self) -> str | None:
        """The domain that vouches for a metadata-document client; None for the others."""
        return urlsplit(self.client_id).hostname if self.kind == "metadata_document" else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            **{**record, "redirect_uris": tuple(record["redirect_uris"]), "grant_types": tuple(record["grant_types"])}
        )


@dataclass(frozen=True, slots=True)
class StoredIdentity:
    """What the store keeps of an upstream identity; ``private`` is the provider's data, sealed
    (None when nothing was kept or no key encryption key is configured)."""

    provider_id: str
    subject: str
    username: str
    email: str | None = None
    display_name: str | None = None
    groups: tuple[str, ...] = ()
    group_names: Mapping[str, str] = field(default_factory=dict)
    username_is_unique: bool = False
    private: str | None = None
    upstream_session: str | None = None  # the provider's session id (OIDC ``sid``), not secret

    def to_json(self) -> dict[str, Any]:
        return {
            "provider_id": self.provider_id,
            "subject": self.subject,
            "username": self.username,
            "email": self.email,
            "display_name": self.display_name,
            "groups": list(self.groups),
            "group_names": dict(self.group_names),
            "username_is_unique": self.username_is_unique,
            "private": self.private,
            **({"upstream_session": self.upstream_session} if self.upstream_session else {}),
        }

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            provider_id=str(record["provider_id"]),
            subject=str(record["subject"]),
            username=str(record["username"]),
            email=_opt_str(record.get("email")),
            display_name=_opt_str(record.get("display_name")),
            groups=tuple(record.get("groups") or ()),
            group_names=dict(record.get("group_names") or {}),
            username_is_unique=record.get("username_is_unique") is True,
            private=_opt_str(record.get("private")),
            upstream_session=_opt_str(record.get("upstream_session")),
        )


@dataclass(frozen=True, slots=True)
class AuthorizationCode:
    """A code waiting for its exchange, kept under its grant id until it is spent or expires."""

    code_hash: str
    client_id: str
    redirect_uri: str
    code_challenge: str
    resource: str
    scopes: tuple[str, ...]
    identity: StoredIdentity
    redirect_uri_given: bool = True
    auth_time: int | None = None
    policy_version: str | None = None
    openid: bool = False  # the authorization request asked for an ID token
    nonce: str | None = None  # its OIDC nonce

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "code_hash": self.code_hash,
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "redirect_uri_given": self.redirect_uri_given,
            "code_challenge": self.code_challenge,
            "resource": self.resource,
            "scopes": list(self.scopes),
            "identity": self.identity.to_json(),
            "auth_time": self.auth_time,
            "policy_version": self.policy_version,
        }
        if self.openid:  # written only when asked for: other codes keep their shape
            record["openid"] = True
            record["nonce"] = self.nonce
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Self:
        auth_time = record.get("auth_time")
        return cls(
            code_hash=str(record["code_hash"]),
            client_id=str(record["client_id"]),
            redirect_uri=str(record["redirect_uri"]),
            redirect_uri_given=record.get("redirect_uri_given", True) is not False,
            code_challenge=str(record["code_challenge"]),
            resource=str(record["resource"]),
            scopes=tuple(record.get("scopes") or ()),
            identity=StoredIdentity.from_json(record["identity"]),
            auth_time=int(auth_time) if isinstance(auth_time, int | float) else None,
            policy_version=_opt_str(record.get("policy_version")),
            openid=record.get("openid") is True,
            nonce=_opt_str(record.get("nonce")),
        )


@dataclass(frozen=True, slots=True)
class Grant:
    """A refresh-token family: what one authorization granted, until it expires or is revoked.

    ``scopes`` is kept space-separated (the refresh script writes it so). ``epoch`` counts the
    times its scopes were narrowed in place (``Store.narrow_grant``); each narrowing ends the access
    tokens issued before it, which carry the grant's :attr:`token_handle` of their epoch."""

    grant_id: str
    subject: str
    expires_at: float
    client_id: str = ""
    username: str = ""
    provider_id: str = ""
    resource: str = ""
    scopes: str = ""
    identity: StoredIdentity | None = None
    created_at: float = 0.0
    last_refresh: float = 0.0
    auth_time: int | None = None
    status: GrantStatus = "active"
    code_hash: str = ""
    policy_version: str | None = None
    revoked_at: float | None = None
    epoch: int = 0

    @property
    def scope_list(self) -> list[str]:
        return self.scopes.split()

    @property
    def token_handle(self) -> str:
        """What this grant's access tokens of the current epoch carry as ``sid``, and what a
        resource server finds in the revoked set once they are ended: the grant id, then
        ``{grant_id}.{epoch}`` after the scopes were narrowed (grant ids hold no dot)."""
        return self.grant_id if self.epoch == 0 else f"{self.grant_id}.{self.epoch}"

    @property
    def active(self) -> bool:
        return self.status == "active"

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "grant_id": self.grant_id,
            "client_id": self.client_id,
            "subject": self.subject,
            "username": self.username,
            "provider_id": self.provider_id,
            "resource": self.resource,
            "scopes": self.scopes,
            "identity": self.identity.to_json() if self.identity is not None else None,
            "created_at": self.created_at,
            "last_refresh": self.last_refresh,
            "auth_time": self.auth_time,
            "expires_at": self.expires_at,
            "status": self.status,
            "code_hash": self.code_hash,
            "policy_version": self.policy_version,
        }
        if self.revoked_at is not None:
            record["revoked_at"] = self.revoked_at
        if self.epoch:
            record["epoch"] = self.epoch
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Self:
        identity = record.get("identity")
        auth_time = record.get("auth_time")
        epoch = record.get("epoch")
        return cls(
            grant_id=str(record["grant_id"]),
            subject=str(record["subject"]),
            expires_at=float(record["expires_at"]),
            client_id=str(record.get("client_id", "")),
            username=str(record.get("username", "")),
            provider_id=str(record.get("provider_id", "")),
            resource=str(record.get("resource", "")),
            scopes=str(record.get("scopes", "")),
            identity=StoredIdentity.from_json(identity) if isinstance(identity, Mapping) else None,
            created_at=_opt_float(record.get("created_at")) or 0.0,
            last_refresh=_opt_float(record.get("last_refresh")) or 0.0,
            auth_time=int(auth_time) if isinstance(auth_time, int | float) else None,
            status="revoked" if record.get("status") == "revoked" else "active",
            code_hash=str(record.get("code_hash", "")),
            policy_version=_opt_str(record.get("policy_version")),
            revoked_at=_opt_float(record.get("revoked_at")),
            epoch=int(epoch) if isinstance(epoch, int | float) else 0,
        )


@dataclass(frozen=True, slots=True)
class RefreshToken:
    """One refresh token of a grant (kept under its hash): active, or rotated at ``rotated_at``.
    ``successor`` is only in records an older broker wrote; it now lives beside the marker for
    the reuse grace window (see :meth:`Store.successor`)."""

    state: Literal["active", "rotated"]
    rotated_at: float = 0.0
    successor: str | None = None

    ACTIVE_JSON = '{"state":"active"}'  # what the scripts write for a fresh token

    @property
    def rotated(self) -> bool:
        return self.state == "rotated"

    def to_json(self) -> dict[str, Any]:
        if self.state == "active":
            return {"state": "active"}
        record: dict[str, Any] = {"state": "rotated", "at": self.rotated_at}
        if self.successor:
            record["successor"] = self.successor
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Self:
        if record.get("state") == "rotated":
            return cls("rotated", _opt_float(record.get("at")) or 0.0, _opt_str(record.get("successor")))
        return cls("active")


@dataclass(frozen=True, slots=True)
class BrowserSession:
    """A signed-in browser on the account page (the cookie holds the token; the store its hash)."""

    subject: str
    username: str
    provider: str
    created_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "username": self.username,
            "provider": self.provider,
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            subject=str(record["subject"]),
            username=str(record.get("username", "")),
            provider=str(record.get("provider", "")),
            created_at=_opt_float(record.get("created_at")) or 0.0,
        )


@dataclass(frozen=True, slots=True)
class Consent:
    """Scopes a user granted one client for one resource, and when."""

    client_id: str
    resource: str
    scopes: tuple[str, ...]
    at: float

    @property
    def hash_field(self) -> str:
        """Its field in the user's consent hash."""
        return f"{self.client_id} {self.resource}"

    def to_json(self) -> dict[str, Any]:
        return {"scopes": list(self.scopes), "at": self.at}

    @classmethod
    def from_json(cls, field_name: str, record: Mapping[str, Any]) -> Self:
        client_id, _, resource = field_name.partition(" ")
        return cls(client_id, resource, tuple(record.get("scopes") or ()), _opt_float(record.get("at")) or 0.0)


@dataclass(frozen=True, slots=True)
class UpstreamLeg:
    """A flow's redirect to an upstream provider: the hash of the ``state`` sent there (absent on
    account sign-ins) and the provider's flow data, sealed when a key encryption key is set."""

    data: dict[str, Any] | str | None
    state_hash: str | None = None

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"data": self.data}
        if self.state_hash is not None:
            record = {"state_hash": self.state_hash, **record}
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Self:
        data = record.get("data")
        return cls(data if isinstance(data, dict | str) else None, _opt_str(record.get("state_hash")))


@dataclass(frozen=True, slots=True)
class PendingFlow:
    """A browser sign-in under way: an authorization request waiting for consent and sign-in
    (``request`` holds it), or an account-page sign-in (``purpose="account"``)."""

    request: Mapping[str, Any] | None = None
    csrf_hash: str | None = None
    approved: bool = False
    created_at: float | None = None
    provider: str | None = None
    binding_hash: str | None = None
    client_id: str | None = None
    upstream: UpstreamLeg | None = None
    purpose: str | None = None

    def approve(self, *, provider: str, binding_hash: str, client_id: str) -> PendingFlow:
        return replace(self, approved=True, provider=provider, binding_hash=binding_hash, client_id=client_id)

    def with_csrf(self, csrf_hash: str) -> PendingFlow:
        return replace(self, csrf_hash=csrf_hash)

    def with_upstream(self, upstream: UpstreamLeg) -> PendingFlow:
        return replace(self, upstream=upstream)

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {}
        if self.purpose is not None:
            record["purpose"] = self.purpose
        if self.request is not None:
            record["request"] = dict(self.request)
        if self.csrf_hash is not None:
            record["csrf_hash"] = self.csrf_hash
        record["approved"] = self.approved
        if self.created_at is not None:
            record["created_at"] = self.created_at
        for name in ("provider", "binding_hash", "client_id"):
            value = getattr(self, name)
            if value is not None:
                record[name] = value
        if self.upstream is not None:
            record["upstream"] = self.upstream.to_json()
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Self:
        request = record.get("request")
        upstream = record.get("upstream")
        return cls(
            request=dict(request) if isinstance(request, Mapping) else None,
            csrf_hash=_opt_str(record.get("csrf_hash")),
            approved=record.get("approved") is True,
            created_at=_opt_float(record.get("created_at")),
            provider=_opt_str(record.get("provider")),
            binding_hash=_opt_str(record.get("binding_hash")),
            client_id=_opt_str(record.get("client_id")),
            upstream=UpstreamLeg.from_json(upstream) if isinstance(upstream, Mapping) else None,
            purpose=_opt_str(record.get("purpose")),
        )
