"""RFC 8693 token exchange at the token endpoint, dispatched by (subject, requested) token type.

One exchange so far: an ID token the broker issued to the authenticated client
(``urn:ietf:params:oauth:token-type:id_token``) for an Identity Assertion JWT Authorization
Grant (``urn:ietf:params:oauth:token-type:id-jag``, draft-ietf-oauth-identity-assertion-authz-grant
§4.3, MCP ext-auth (SEP-990) §4.2): the broker acts as the enterprise IdP of an MCP client and
vouches for its user to an MCP server's authorization server elsewhere
(``external_authorization_servers``), which redeems the ID-JAG with the RFC 7523 jwt-bearer grant.

The ID token must be ours (signature by our key ring, ``iss``, unexpired), for this client
(``aud``), from a grant still active. Before an ID-JAG is issued the user is re-checked upstream
as at a refresh (``GrantService.current_identity``: one shared lookup, a deprovisioned user
ends the grant) and the policy applied to the external MCP server as to ours: the ID-JAG holds
the requested scopes the policy grants (all it grants when none are requested).

Another exchange is one more entry in ``TokenExchange.handlers``, keyed by its pair of token
types; the route only calls :meth:`TokenExchange.exchange`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jose import jwt

from broker.audit import audit
from broker.config.models import BrokerConfig, ExternalAuthorizationServerConfig, ResourceConfig
from broker.oauth.authorize import canonical_resource
from broker.oauth.clients import Client
from broker.oauth.errors import InvalidGrant, InvalidRequest, InvalidScope, InvalidTarget, UnauthorizedClient
from broker.oauth.grants import GrantService
from broker.oauth.id_token import NotOurIdToken, verify_id_token
from broker.oauth.signing import KeyRing
from broker.policy.holder import PolicyHolder
from broker.store.base import Store

# URNs (RFC 8693 §3), not secrets
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105
ID_JAG_TYPE = "urn:ietf:params:oauth:token-type:id-jag"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
ID_JAG_TYP = "oauth-id-jag+jwt"  # the ID-JAG's JOSE header typ (draft §3.1)

TokenTypes = tuple[str, str]  # subject_token_type, requested_token_type


@dataclass(frozen=True)
class ExchangeRequest:
    """The RFC 8693 §2.1 parameters of one request (each at most once: the route's form reader)."""

    subject_token: str
    subject_token_type: str
    requested_token_type: str
    audience: str | None
    resource: str | None
    scopes: list[str] | None  # None: no scope parameter

    @classmethod
    def parse(cls, form: Mapping[str, str]) -> ExchangeRequest:
        subject_token = form.get("subject_token")
        subject_type = form.get("subject_token_type")
        if not subject_token:
            raise InvalidRequest("subject_token is required")
        if not subject_type:
            raise InvalidRequest("subject_token_type is required")
        if "actor_token" in form or "actor_token_type" in form:
            raise InvalidRequest("actor_token is not supported (no delegation)")
        requested = form.get("requested_token_type")
        if not requested and subject_type == ACCESS_TOKEN_TYPE:
            requested = ACCESS_TOKEN_TYPE  # delegated access (broker.delegation): an access token by default
        if not requested:
            # RFC 8693 lets the server choose; an ID-JAG must be asked for by name (draft §4.3).
            raise InvalidRequest("requested_token_type is required")
        scope = form.get("scope")
        scopes = list(dict.fromkeys(scope.split())) if scope is not None and scope.strip() else None
        return cls(subject_token, subject_type, requested, form.get("audience"), form.get("resource"), scopes)


Exchange = Callable[[Client, ExchangeRequest], Awaitable[dict[str, Any]]]


@dataclass
class TokenExchange:
    config: BrokerConfig
    store: Store
    keyring: KeyRing
    policies: PolicyHolder
    grants: GrantService  # the upstream re-check a refresh uses, and ID-token helpers
    handlers: dict[TokenTypes, Exchange] = field(init=False)

    def __post_init__(self) -> None:
        self.handlers = {(ID_TOKEN_TYPE, ID_JAG_TYPE): self._id_jag}

    async def exchange(self, client: Client, form: Mapping[str, str]) -> dict[str, Any]:
        request = ExchangeRequest.parse(form)
        handler = self.handlers.get((request.subject_token_type, request.requested_token_type))
        if handler is None:
            if request.subject_token_type not in {s for s, _ in self.handlers}:
                raise InvalidRequest(f"subject_token_type {request.subject_token_type[:80]!r} is not accepted")
            raise InvalidRequest(
                f"requested_token_type {request.requested_token_type[:80]!r} cannot be issued "
                f"for a subject_token of type {request.subject_token_type[:80]!r}"
            )
        return await handler(client, request)

    # -- ID token -> ID-JAG ------------------------------------------------------------------------
    def _target(
        self, client: Client, request: ExchangeRequest
    ) -> tuple[ExternalAuthorizationServerConfig, ResourceConfig, str]:
        """The external authorization server (``audience``), its MCP server (``resource``) and this
        client's id there."""
        if not request.audience:
            raise InvalidRequest("audience is required: the issuer of the authorization server the ID-JAG is for")
        if not request.resource:
            raise InvalidRequest("resource is required: the MCP server the ID-JAG is for")
        server = next((s for s in self.config.external_authorization_servers if s.issuer == request.audience), None)
        if server is None:
            raise InvalidTarget(
                "The audience is not an authorization server this broker issues ID-JAGs for.",
                detail=f"audience {request.audience[:200]!r} is not configured",
            )
        wanted = {request.resource, canonical_resource(request.resource)}
        resource = next((r for r in server.resources if r.uri in wanted), None)
        if resource is None:
            raise InvalidTarget(
                "The resource is not an MCP server of that authorization server.",
                detail=f"resource {request.resource[:200]!r} is not configured for {server.issuer}",
            )
        their_client_id = server.clients.get(client.client_id)
        if their_client_id is None:
            raise UnauthorizedClient(
                "This client has no client registration at that authorization server.",
                detail=f"client {client.client_id} is not in the clients of {server.issuer}",
            )
        return server, resource, their_client_id

    async def _id_jag(self, client: Client, request: ExchangeRequest) -> dict[str, Any]:
        try:
            claims = verify_id_token(
                self.keyring, request.subject_token, issuer=self.config.issuer, client_id=client.client_id
            )
        except NotOurIdToken as exc:
            raise InvalidGrant(
                "The subject_token is not a valid ID token issued to this client.",
                detail=f"subject_token of {client.client_id} refused: {exc}",
            ) from None
        server, resource, their_client_id = self._target(client, request)
        grant = await self.store.get_grant(claims.grant_id)
        if (
            grant is None
            or grant.status != "active"
            or grant.client_id != client.client_id
            or grant.subject != claims.subject
        ):
            raise InvalidGrant(
                "The sign-in this ID token comes from has ended or was revoked.",
                detail=f"grant {claims.grant_id} of the ID token is {grant.status if grant else 'gone'}",
            )
        identity = await self.grants.current_identity(grant)  # raises InvalidGrant for a deprovisioned user
        policy = self.policies.current
        decision = policy.evaluate(resource, identity)
        scopes = policy.narrow(resource, decision, request.scopes)
        if not scopes:
            audit(
                "access_denied",
                grant_id=grant.grant_id,
                client_id=client.client_id,
                sub=identity.subject,
                audience=server.issuer,
                resource=resource.uri,
                requested=request.scopes,
                reason="no scope for the ID-JAG",
                policy_version=policy.version,
            )
            raise InvalidScope(
                "The user holds none of the requested scopes of this resource."
                if request.scopes is not None
                else "The user holds no scope of this resource.",
                detail=f"{identity.subject} asked {request.scopes} of {resource.id}, policy grants {sorted(decision.scopes)}",
            )
        ttl = self.config.tokens.id_jag_ttl
        token, jti = self._mint(
            subject=grant.subject,
            audience=server.issuer,
            resource=resource.uri,
            client_id=their_client_id,
            scopes=sorted(scopes),
            ttl=ttl,
            email=identity.email,
            auth_time=grant.auth_time,
        )
        audit(
            "assertion_issued",
            grant_id=grant.grant_id,
            client_id=client.client_id,
            sub=grant.subject,
            audience=server.issuer,
            resource=resource.uri,
            scopes=sorted(scopes),
            jti=jti,
            policy_version=policy.version,
        )
        return {
            "issued_token_type": ID_JAG_TYPE,
            "access_token": token,
            "token_type": "N_A",  # RFC 8693 §2.2.1: not an access token
            "scope": " ".join(sorted(scopes)),
            "expires_in": ttl,
        }

    def _mint(
        self,
        *,
        subject: str,
        audience: str,
        resource: str,
        client_id: str,
        scopes: list[str],
        ttl: int,
        email: str | None,
        auth_time: int | None,
    ) -> tuple[str, str]:
        """An ID-JAG (draft §3.1) signed by our current key (published in our JWKS): token, jti."""
        key = self.keyring.current
        issued = int(time.time())
        jti = secrets.token_urlsafe(16)
        claims: dict[str, Any] = {
            "iss": self.config.issuer,
            "sub": subject,
            "aud": audience,
            "resource": resource,
            "client_id": client_id,
            "jti": jti,
            "iat": issued,
            "exp": issued + min(ttl, 300),
            "scope": " ".join(scopes),
        }
        if email:
            claims["email"] = email
        if auth_time is not None:
            claims["auth_time"] = auth_time
        token: str = jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid, "typ": ID_JAG_TYP})
        return token, jti
