"""The admin API for IT and automation: grants, revocation, consents, sign-in locks, policy version.

Authenticated with the static admin bearer token (``admin.token``); off when it is unset.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from broker.audit import audit
from broker.oauth.errors import AccessDenied, InvalidClient, InvalidRequest
from broker.policy.delegation import DelegationPolicy
from broker.policy.explain import explain, given_identity
from broker.routes import openapi
from broker.routes.deps import (
    ConfigDep,
    GrantsDep,
    PoliciesDep,
    PolicyDep,
    ProvidersDep,
    RevocationDep,
    SignalsDep,
    StoreDep,
    ThrottleDep,
)
from broker.store.records import Grant
from broker.upstream_log import log_upstream_failure
from providers.base import LookupProvider, PasswordProvider, ProviderError


class GrantView(BaseModel):
    grant_id: str
    client_id: str
    subject: str
    username: str
    resource: str
    scopes: list[str]
    status: str
    created_at: float
    last_refresh: float
    expires_at: float


class SignalView(BaseModel):
    source: str = Field(description="`backchannel_logout`, `scim` or `ssf`")
    kind: str = Field(description="What the signal said, in its source's words (`logout`, an event type URI...)")
    signal_id: str | None = Field(default=None, description="Its own id where it has one (a `jti`)")
    received_at: float = Field(description="When it arrived, in seconds since the epoch")
    effect: str = Field(description="`revoke_user`, `revoke_session`, `reapply_policy` or `record_only`")
    subject: str | None = Field(default=None, description="The user it named, when known")
    revoked: list[str] = Field(default_factory=list, description="Grants it revoked")
    narrowed: list[str] = Field(
        default_factory=list, description="Grants whose scopes it narrowed (their earlier access tokens ended)"
    )
    unchanged: list[str] = Field(default_factory=list, description="Grants it looked at and left as they were")
    reason: str | None = None
    note: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class RevokedView(BaseModel):
    revoked: list[str]


class ReloadView(BaseModel):
    attempt: int = Field(description="Counts reload attempts since the broker started")
    at: float = Field(description="When, in seconds since the epoch")
    reason: str = Field(description="`file_changed` or `signal` (SIGHUP)")
    outcome: str = Field(description="`applied`, `rejected` (the previous policy stays) or `unchanged`")
    problems: list[str] = Field(description="Why a rejected file was rejected, each with its path in the file")


class UnlockView(BaseModel):
    unlocked: bool = Field(
        description="Whether the username had failed sign-ins counted (from any address); all are cleared"
    )


class PolicyView(BaseModel):
    version: str
    resources: list[str]
    rules: int
    last_reload: ReloadView | None = Field(description="The latest reload of the policy file; null before any")


async def require_admin(config: ConfigDep, authorization: Annotated[str | None, Header()] = None) -> None:
    expected = config.admin.token
    if expected is None:
        raise AccessDenied("the admin API is disabled (set admin.token)")
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.encode(), expected.get_secret_value().encode()):
        raise InvalidClient("admin authentication failed")


Admin = Annotated[None, Depends(require_admin)]
"""A route taking this answers only to the admin bearer token."""


def _view(grant: Grant) -> GrantView:
    return GrantView(
        grant_id=grant.grant_id,
        client_id=grant.client_id,
        subject=grant.subject,
        username=grant.username,
        resource=grant.resource,
        scopes=grant.scope_list,
        status=grant.status,
        created_at=grant.created_at,
        last_refresh=grant.last_refresh,
        expires_at=grant.expires_at,
    )


def router(base: str) -> APIRouter:
    api = APIRouter(prefix=f"{base}/admin", tags=["admin"])

    @api.get("/policy", summary="The policy in force", **openapi.ADMIN_ROUTE)
    async def policy(_: Admin, policies: PoliciesDep) -> PolicyView:
        last = policies.last_reload
        current = policies.current
        return PolicyView(
            version=current.version,
            resources=sorted(current.by_uri),
            rules=len(current.rules),
            last_reload=None if last is None else ReloadView.model_validate(last, from_attributes=True),
        )

    @api.get("/explain", summary="Which scopes a user gets, and which rules decide", **openapi.ADMIN_ROUTE)
    async def explain_user(
        _: Admin,
        config: ConfigDep,
        providers: ProvidersDep,
        policy: PolicyDep,
        grants: GrantsDep,
        provider: str,
        user: str | None = None,
        groups: str | None = None,
        resource: str | None = None,
    ) -> JSONResponse:
        upstream = providers.get(provider)
        if upstream is None:
            raise InvalidRequest(f"no provider {provider!r}")
        if groups is not None:
            names = frozenset(g.strip() for g in groups.split(",") if g.strip())
            settings = next(p for p in config.providers if p.id == provider)
            who = given_identity(settings, user, names)
        elif user and isinstance(upstream, LookupProvider):
            try:
                who = await grants.groups.apply(await upstream.lookup(user))  # SCIM's groups with groups_source
            except ProviderError as exc:
                log_upstream_failure(provider, "lookup", exc)
                raise InvalidRequest(f"{exc.public} ({type(exc).__name__})") from None
        else:
            raise InvalidRequest("give user= for a provider that can look users up, or groups=a,b")
        delegation = DelegationPolicy(config.delegation.targets, config.delegation.rules)
        return JSONResponse(explain(policy, who, resource, delegation))

    @api.get("/users/{subject}/grants", summary="A user's grants", **openapi.ADMIN_ROUTE)
    async def user_grants(subject: str, _: Admin, store: StoreDep) -> list[GrantView]:
        grants = [await store.get_grant(g) for g in await store.user_grant_ids(subject)]
        return [_view(g) for g in grants if g is not None]

    @api.post("/users/{subject}/revoke", summary="Revoke every grant of a user", **openapi.ADMIN_ROUTE)
    async def revoke_user(subject: str, _: Admin, revocation: RevocationDep) -> RevokedView:
        return RevokedView(revoked=await revocation.revoke_user(subject, reason="admin"))

    @api.delete("/grants/{grant_id}", summary="Revoke one grant", **openapi.ADMIN_ROUTE)
    async def revoke_grant(grant_id: str, _: Admin, store: StoreDep) -> RevokedView:
        grant = await store.get_grant(grant_id)
        if grant is None:
            raise InvalidRequest("no such grant")
        changed = await store.revoke_grant(grant_id, "admin")
        if changed:
            audit("grant_revoked", grant_id=grant_id, sub=grant.subject, reason="admin")
        return RevokedView(revoked=[grant_id] if changed else [])

    @api.get("/signals", summary="A provider's recent upstream signals and what they did", **openapi.ADMIN_ROUTE)
    async def signals(
        _: Admin, providers: ProvidersDep, effects: SignalsDep, provider: str, limit: int = 50
    ) -> list[SignalView]:
        if provider not in providers:
            raise InvalidRequest(f"no provider {provider!r}")
        records = await effects.recent(provider, max(1, min(limit, 200)))
        return [SignalView.model_validate(r) for r in records]

    @api.post(
        "/users/{provider}/{username}/unlock",
        summary="Clear a username's failed sign-ins and lock",
        **openapi.ADMIN_ROUTE,
    )
    async def unlock(
        provider: str, username: str, _: Admin, providers: ProvidersDep, throttle: ThrottleDep
    ) -> UnlockView:
        upstream = providers.get(provider)
        if upstream is None:
            raise InvalidRequest(f"no provider {provider!r}")
        if not isinstance(upstream, PasswordProvider):
            raise InvalidRequest(f"provider {provider!r} does not take passwords, so nothing is locked")
        cleared = await throttle.unlock(provider, username)
        if cleared:
            audit("account_unlocked", provider=provider, username=username[:256], by="admin")
        return UnlockView(unlocked=cleared)

    @api.get("/users/{subject}/consents", summary="A user's remembered consents", **openapi.ADMIN_ROUTE)
    async def consents(subject: str, _: Admin, store: StoreDep) -> JSONResponse:
        found = await store.consents(subject)
        return JSONResponse([{"client_id": c.client_id, "resource": c.resource, **c.to_json()} for c in found])

    @api.delete("/users/{subject}/consents", summary="Forget a remembered consent", **openapi.ADMIN_ROUTE)
    async def forget(subject: str, client_id: str, resource: str, _: Admin, store: StoreDep) -> JSONResponse:
        removed = await store.forget_consent(subject, client_id, resource)
        if removed:
            audit("consent_revoked", sub=subject, client_id=client_id, resource=resource, by="admin")
        return JSONResponse({"removed": removed})

    return api
