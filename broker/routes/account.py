"""Self-service "connected apps": a signed-in user sees the MCP clients holding grants for
them and disconnects any of them.

Sign-in here uses the same providers as the authorization flow and starts a short browser
session (30 minutes, server-side in Redis, ``__Host-`` cookie). Forms carry the CSRF token.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from broker.audit import audit
from broker.config.delegation import EntraTargetConfig, OidcTargetConfig
from broker.config.models import BrokerConfig
from broker.metrics import LOGINS
from broker.oauth.browser_flow import DELEGATION_PURPOSE, BrowserFlow, Unavailable
from broker.routes.deps import (
    ClientsDep,
    ConfigDep,
    FlowsDep,
    PagesDep,
    PolicyDep,
    ProvidersDep,
    StoreDep,
    ThrottleDep,
)
from broker.routes.forms import read_page_form
from broker.security.password_login import password_login
from broker.store.base import Store
from broker.store.records import BrowserSession
from broker.web.pages import Pages
from providers.base import (
    FormOrigins,
    Identity,
    PasswordProvider,
    Provider,
    RedirectProvider,
    UpstreamUnavailable,
)

SESSION_TTL = 1800


async def _session(store: Store, pages: Pages, request: Request) -> BrowserSession | None:
    token = request.cookies.get(pages.session_cookie)
    if not token or len(token) > 100:
        return None
    return await store.get_session(token)


def _providers(providers: Mapping[str, Provider]) -> list[Any]:
    return [p for p in providers.values() if isinstance(p, PasswordProvider | RedirectProvider)]


def _login_page(
    pages: Pages,
    upstreams: Mapping[str, Provider],
    *,
    error: str | None = None,
    username: str = "",
    chosen: str = "",
    status: int = 200,
) -> Response:
    providers = _providers(upstreams)
    csrf = secrets.token_urlsafe(24)
    response = pages.render(
        "account_login.html",
        status=status,
        form_targets=[o for p in providers if isinstance(p, FormOrigins) for o in p.origins],
        csrf=csrf,
        providers=providers,
        chosen=chosen or (providers[0].id if providers else ""),
        has_password=any(isinstance(p, PasswordProvider) for p in providers),
        error=error,
        username=username,
    )
    pages.set_csrf(response, csrf)
    return response


async def start_session(store: Store, pages: Pages, config: BrokerConfig, identity: Identity) -> Response:
    token = secrets.token_urlsafe(32)
    await store.save_session(
        token,
        BrowserSession(
            subject=identity.subject,
            username=identity.username,
            provider=identity.provider_id,
            created_at=time.time(),
        ),
        SESSION_TTL,
    )
    audit(
        "login_succeeded",
        provider=identity.provider_id,
        sub=identity.subject,
        username=identity.username,
        purpose="connected_apps",
    )
    response = pages.redirect(f"{config.issuer}/account")
    pages.set_session(response, token)
    return response


async def _to_provider(
    request: Request, pages: Pages, flows: BrowserFlow, provider: RedirectProvider, purpose: str = "account"
) -> Response:
    """Start an account-page sign-in at ``provider`` (bound to this browser), or say it is unavailable."""
    started = await flows.account_sign_in(provider, purpose=purpose)
    if isinstance(started, Unavailable):
        return pages.error(request, "Sign-in unavailable", started.public, status=503)
    assert started.binding is not None
    response = pages.redirect(started.url)
    pages.set_flow(response, started.binding)
    return response


def _when(timestamp: float) -> tuple[str, str]:
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC"), moment.isoformat()


def router(base: str) -> APIRouter:
    api = APIRouter(prefix=f"{base}/account", tags=["account"], include_in_schema=False)

    @api.get("")
    async def account(
        request: Request,
        pages: PagesDep,
        store: StoreDep,
        clients: ClientsDep,
        policy: PolicyDep,
        providers: ProvidersDep,
    ) -> Response:
        session = await _session(store, pages, request)
        if session is None:
            return _login_page(pages, providers)
        grants = []
        for grant_id in await store.user_grant_ids(session.subject):
            grant = await store.get_grant(grant_id)
            if grant is None or not grant.active:
                continue
            client = await clients.get(grant.client_id)
            resource = policy.resource_for(grant.resource)
            last, last_iso = _when(grant.last_refresh)
            grants.append(
                {
                    "grant_id": grant_id,
                    "client_name": client.client_name if client else grant.client_id,
                    "resource_name": resource.name if resource else grant.resource,
                    "scopes": grant.scope_list,
                    "last_used": last,
                    "last_used_iso": last_iso,
                }
            )
        csrf = secrets.token_urlsafe(24)
        response = pages.render(
            "account.html",
            username=session.username,
            grants=grants,
            csrf=csrf,
            notice=(request.query_params.get("notice") == "disconnected" and "Disconnected.") or None,
        )
        pages.set_csrf(response, csrf)
        return response

    @api.post("/login")
    async def login(
        request: Request,
        pages: PagesDep,
        store: StoreDep,
        config: ConfigDep,
        providers: ProvidersDep,
        flows: FlowsDep,
        throttle: ThrottleDep,
    ) -> Response:
        form = await read_page_form(request, pages)
        if not isinstance(form, dict):
            return form
        if not pages.csrf_ok(request, form.get("csrf")):
            return pages.csrf_refused(request)
        provider = providers.get(form.get("provider", ""))
        if isinstance(provider, PasswordProvider):
            username = form.get("username", "").strip()
            ip = request.client.host if request.client else None
            outcome = await password_login(throttle, provider, username, form.get("password", ""), ip)
            if outcome.retry_after:
                return _login_page(
                    pages,
                    providers,
                    error="Too many failed sign-in attempts. Try again later.",
                    username=username,
                    chosen=provider.id,
                    status=429,
                )
            if outcome.error is not None:
                audit(
                    "login_failed",
                    provider=provider.id,
                    username=username[:256],
                    outcome=type(outcome.error).__name__,
                    purpose="connected_apps",
                    client_ip=ip,
                )
                status = 503 if isinstance(outcome.error, UpstreamUnavailable) else 401
                return _login_page(
                    pages, providers, error=outcome.error.public, username=username, chosen=provider.id, status=status
                )
            assert outcome.identity is not None
            identity = outcome.identity
            LOGINS.labels(provider.id, "success").inc()
            return await start_session(store, pages, config, identity)
        if isinstance(provider, RedirectProvider):
            return await _to_provider(request, pages, flows, provider)
        return _login_page(pages, providers, error="Choose one of the sign-in options offered.", status=400)

    @api.get("/delegation/{target_id}")
    async def delegation(
        request: Request, target_id: str, pages: PagesDep, config: ConfigDep, providers: ProvidersDep, flows: FlowsDep
    ) -> Response:
        """A delegation target's ``interaction_uri`` (docs/delegation.md): sign in again at the
        target's provider; the callback keeps the new upstream session for the user's grants."""
        target = next((t for t in config.delegation.targets if t.id == target_id), None)
        provider = providers.get(target.provider) if isinstance(target, EntraTargetConfig | OidcTargetConfig) else None
        if target is None or not isinstance(provider, RedirectProvider):
            return pages.error(request, "Not found", "There is no such connection to renew.", status=404)
        return await _to_provider(request, pages, flows, provider, purpose=DELEGATION_PURPOSE + target.id)

    @api.post("/revoke")
    async def revoke(
        request: Request, pages: PagesDep, store: StoreDep, config: ConfigDep, providers: ProvidersDep
    ) -> Response:
        session = await _session(store, pages, request)
        form = await read_page_form(request, pages)
        if not isinstance(form, dict):
            return form
        if session is None:
            return _login_page(pages, providers, status=401)
        if not pages.csrf_ok(request, form.get("csrf")):
            return pages.csrf_refused(request)
        grant_id = form.get("grant", "")
        grant = await store.get_grant(grant_id) if len(grant_id) <= 64 else None
        if grant is None or grant.subject != session.subject:  # only one's own grants
            return pages.error(request, "Not found", "That connection does not exist or is not yours.", status=404)
        if await store.revoke_grant(grant_id, "user_disconnected"):
            audit(
                "grant_revoked",
                grant_id=grant_id,
                sub=session.subject,
                client_id=grant.client_id,
                reason="user_disconnected",
            )
        return pages.redirect(f"{config.issuer}/account?notice=disconnected")

    @api.post("/logout")
    async def logout(request: Request, pages: PagesDep, store: StoreDep, config: ConfigDep) -> Response:
        form = await read_page_form(request, pages)
        if not isinstance(form, dict):
            return form
        if not pages.csrf_ok(request, form.get("csrf")):
            return pages.csrf_refused(request)
        token = request.cookies.get(pages.session_cookie)
        if token:
            await store.end_session(token)
        response = pages.redirect(f"{config.issuer}/account")
        pages.clear(response, session=True)
        return response

    return api
