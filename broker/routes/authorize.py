"""The browser side of the flow: authorize → consent → login (form or upstream redirect) → code.

Confused-deputy rules (MCP security best practices): the user approves this client, redirect
host, MCP server and scopes before anything goes upstream; the flow cookie and the upstream
``state`` exist only after approval; every form carries a CSRF token; ``state`` upstream is
single-use and lives ten minutes.
"""

from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from broker.audit import audit
from broker.metrics import LOGINS, UPSTREAM_LATENCY
from broker.oauth import authorize
from broker.oauth.authorize import (
    AuthorizationRequest,
    RedirectableError,
    UnredirectedError,
    UnsafeRequest,
    may_redirect_errors,
    redirect_with,
)
from broker.oauth.clients import Client
from broker.oauth.errors import OAuthError
from broker.redirect_rules import is_loopback_redirect
from broker.routes import openapi
from broker.routes.forms import read_page_form
from broker.security.password_login import password_login
from broker.state import BrokerState, get_state
from broker.store.keys import digest
from broker.store.records import PendingFlow, UpstreamLeg
from broker.upstream_log import log_upstream_failure
from broker.web.pages import same_secret
from providers.base import (
    EmailDomainHints,
    FormOrigins,
    Identity,
    PasswordProvider,
    ProviderError,
    RedirectProvider,
    UpstreamUnavailable,
)

FLOW_TTL = 600
MAX_LOGIN_ATTEMPTS = 5
_log = structlog.get_logger("mcp_broker.authorize")

EXPIRED = (
    "Sign-in expired",
    "This sign-in took too long or was already completed. Return to the application and start again.",
)


def _error_redirect(state: BrokerState, redirect_uri: str, error: OAuthError, client_state: str | None) -> str:
    return redirect_with(
        redirect_uri,
        {
            "error": error.error,
            "error_description": error.description,
            "state": client_state,
            "iss": state.config.issuer,
        },
    )


async def _load(state: BrokerState, flow_id: str | None) -> tuple[PendingFlow, AuthorizationRequest, Client] | None:
    if not flow_id or len(flow_id) > 64:
        return None
    flow = await state.store.get_flow(flow_id)
    if flow is None:
        return None
    if flow.request is None:  # an account-page sign-in, not an authorization request
        return None
    request = AuthorizationRequest(**flow.request)
    client = await state.clients.get(request.client_id)
    if client is None:
        return None
    return flow, request, client


def router(base: str) -> APIRouter:
    api = APIRouter(tags=["authorization"])

    @api.get(
        f"{base}/authorize",
        summary="Authorization endpoint (OAuth 2.1 §4.1.1)",
        response_class=HTMLResponse,
        responses=openapi.AUTHORIZE_RESPONSES,
        openapi_extra=openapi.AUTHORIZE,
    )
    async def authorize_endpoint(request: Request) -> Response:
        state = get_state(request)
        pages = state.pages
        params = parse_qs(request.url.query, keep_blank_values=False)
        try:
            auth, client, resource = await authorize.validate(params, state.clients, state.policy)
        except UnredirectedError as exc:
            _log.info(
                "authorize_error_not_redirected",
                client_id=exc.client_id,
                error=exc.error.error,
                detail=exc.error.detail,
            )
            return pages.error(request, exc.title, exc.message)
        except UnsafeRequest as exc:
            _log.info("authorize_refused", reason=exc.message)
            return pages.error(request, exc.title, exc.message)
        except RedirectableError as exc:
            _log.info("authorize_error", error=exc.error.error, detail=exc.error.detail)
            return pages.redirect(_error_redirect(state, exc.redirect_uri, exc.error, exc.state), status=302)
        flow_id = secrets.token_urlsafe(24)
        csrf = secrets.token_urlsafe(24)
        await state.store.save_flow(
            flow_id,
            PendingFlow(request=auth.to_record(), csrf_hash=digest(csrf), approved=False, created_at=time.time()),
            FLOW_TTL,
        )
        wanted = set(auth.scopes) if auth.scopes else {s.name for s in resource.scopes}
        redirect = urlsplit(auth.redirect_uri)
        providers = [p for p in state.providers.values() if isinstance(p, PasswordProvider | RedirectProvider)]
        if not providers:
            return pages.error(request, "Sign-in unavailable", "No identity provider is configured.", status=503)
        response = pages.render(
            "consent.html",
            form_targets=[auth.redirect_uri, *_provider_origins(providers)],
            flow_id=flow_id,
            csrf=csrf,
            client_name=client.client_name,
            kind=client.kind,
            verified_domain=client.verified_domain,
            redirect_host=redirect.hostname or f"{redirect.scheme}:",
            redirect_is_local=is_loopback_redirect(auth.redirect_uri) or redirect.scheme not in ("http", "https"),
            resource_name=resource.name,
            resource_uri=resource.uri,
            scopes=[s for s in resource.scopes if s.name in wanted],
            providers=providers,
            chosen=_provider_for_hint(providers, params.get("login_hint", [""])[0]),
        )
        pages.set_csrf(response, csrf)
        return response

    @api.post(f"{base}/consent", summary="Consent decision", include_in_schema=False)
    async def consent(request: Request) -> Response:
        state = get_state(request)
        pages = state.pages
        form = await read_page_form(request, pages)
        if not isinstance(form, dict):
            return form
        loaded = await _load(state, form.get("flow"))
        if loaded is None:
            return pages.error(request, *EXPIRED)
        flow, auth, client = loaded
        if not pages.csrf_ok(request, form.get("csrf"), flow.csrf_hash):
            _log.warning("csrf_check_failed", client_id=client.client_id)
            return pages.csrf_refused(request)
        if flow.approved:
            return pages.error(request, *EXPIRED)
        if form.get("decision") != "approve":
            await state.store.take_flow(form["flow"])
            audit("consent_denied", client_id=client.client_id, resource=auth.resource)
            denied = _access_denied("the user denied the request")
            response: Response
            if may_redirect_errors(client, auth.redirect_uri, state.config.registration.cimd_trusted_domains):
                response = pages.redirect(_error_redirect(state, auth.redirect_uri, denied, auth.state))
            else:  # nobody vouches for this address: no redirect before sign-in (RFC 9700 §4.11.2)
                _log.info("authorize_error_not_redirected", client_id=client.client_id, error=denied.error)
                resource = state.policy.resource_for(auth.resource)
                response = pages.error(
                    request,
                    "Access denied",
                    f"You denied the request: the application was not given access to "
                    f"{resource.name if resource else 'your account'}. You can close this page.",
                    status=200,
                )
            pages.clear(response)
            return response
        provider = state.providers.get(form.get("provider", ""))
        if not isinstance(provider, PasswordProvider | RedirectProvider):
            return pages.error(request, "Invalid request", "Choose one of the sign-in options offered.")
        binding = secrets.token_urlsafe(24)
        flow = flow.approve(provider=provider.id, binding_hash=digest(binding), client_id=client.client_id)
        audit(
            "consent_granted",
            client_id=client.client_id,
            resource=auth.resource,
            scopes=auth.scopes,
            provider=provider.id,
            stage="before_login",
        )
        if isinstance(provider, PasswordProvider):
            if not await state.store.update_flow(form["flow"], flow):
                return pages.error(request, *EXPIRED)
            response = pages.redirect(f"{state.config.issuer}/login?flow={form['flow']}")
        else:
            upstream_state = secrets.token_urlsafe(32)
            callback = f"{state.config.issuer}/callback/{provider.id}"
            try:
                url, flow_data = await provider.login_url(callback, upstream_state)
            except ProviderError as exc:
                _log.warning("upstream_login_url_failed", provider=provider.id, error=str(exc))
                log_upstream_failure(provider.id, "login_url", exc)
                return pages.error(request, "Sign-in unavailable", exc.public, status=503)
            flow = flow.with_upstream(
                UpstreamLeg(
                    state_hash=digest(upstream_state), data=state.grants.seal_flow_data(form["flow"], flow_data)
                )
            )
            if not await state.store.update_flow(form["flow"], flow):
                return pages.error(request, *EXPIRED)
            await state.store.save_upstream_pointer(upstream_state, form["flow"], FLOW_TTL)
            response = pages.redirect(url)
        pages.set_flow(response, binding)
        return response

    @api.get(f"{base}/login", summary="Password sign-in form", include_in_schema=False)
    async def login_form(request: Request) -> Response:
        state = get_state(request)
        checked = await _approved_flow(state, request, request.query_params.get("flow"))
        if isinstance(checked, Response):
            return checked
        flow, auth, client, provider = checked
        csrf = secrets.token_urlsafe(24)
        flow = flow.with_csrf(digest(csrf))
        if not await state.store.update_flow(request.query_params["flow"], flow):
            return state.pages.error(request, *EXPIRED)
        response = _login_page(state, request.query_params["flow"], csrf, auth, client, provider)
        state.pages.set_csrf(response, csrf)
        return response

    @api.post(f"{base}/login", summary="Password sign-in", include_in_schema=False)
    async def login(request: Request) -> Response:
        state = get_state(request)
        pages = state.pages
        form = await read_page_form(request, pages)
        if not isinstance(form, dict):
            return form
        checked = await _approved_flow(state, request, form.get("flow"))
        if isinstance(checked, Response):
            return checked
        flow, auth, client, provider = checked
        if not pages.csrf_ok(request, form.get("csrf"), flow.csrf_hash):
            return pages.csrf_refused(request)
        if not isinstance(provider, PasswordProvider):
            return pages.error(request, "Invalid request", "This sign-in option does not take a password.")
        username = form.get("username", "").strip()
        password = form.get("password", "")
        client_ip = request.client.host if request.client else None
        outcome = await password_login(state.throttle, provider, username, password, client_ip)
        if outcome.retry_after:
            audit(
                "login_failed",
                provider=provider.id,
                username=username[:256],
                client_id=client.client_id,
                outcome="Throttled",
                client_ip=client_ip,
            )
            minutes = max(1, (outcome.retry_after + 59) // 60)
            return _login_page(
                state,
                form["flow"],
                form["csrf"],
                auth,
                client,
                provider,
                username=username,
                status=429,
                error=f"Too many failed sign-in attempts. Try again in {minutes} minute{'s' if minutes > 1 else ''}.",
            )
        if outcome.error is not None:
            exc = outcome.error
            # One atomic count: parallel posts on one flow cannot each read the same number.
            attempts = await state.store.count_flow_attempt(form["flow"])
            audit(
                "login_failed",
                provider=provider.id,
                username=username[:256],
                client_id=client.client_id,
                outcome=type(exc).__name__,
                attempt=attempts,
                client_ip=client_ip,
            )
            if attempts == 0:  # the flow expired meanwhile
                return pages.error(request, *EXPIRED)
            if attempts >= MAX_LOGIN_ATTEMPTS:
                await state.store.take_flow(form["flow"])
                return pages.error(
                    request,
                    "Too many attempts",
                    "Too many failed sign-in attempts. Return to the application and start again.",
                    status=429,
                )
            return _login_page(
                state,
                form["flow"],
                form["csrf"],
                auth,
                client,
                provider,
                error=exc.public,
                username=username,
                status=503 if isinstance(exc, UpstreamUnavailable) else 401,
            )
        assert outcome.identity is not None
        identity = outcome.identity
        return await _finish(state, request, form["flow"], auth, client, identity)

    @api.get(f"{base}/callback/{{provider_id}}", summary="Upstream identity provider callback", include_in_schema=False)
    async def callback(request: Request, provider_id: str) -> Response:
        state = get_state(request)
        pages = state.pages
        upstream_state = request.query_params.get("state")
        if not upstream_state:
            return pages.error(request, *EXPIRED)
        flow_id = await state.store.get_upstream_pointer(upstream_state)
        if flow_id is None:
            return pages.error(request, *EXPIRED)
        pending = await state.store.get_flow(flow_id)
        # The browser that approved must be the one coming back; only then is the state spent,
        # so a replayed callback URL without the cookie cannot spoil the real sign-in.
        if pending is None or not same_secret(request.cookies.get(pages.flow_cookie), pending.binding_hash):
            return pages.error(request, *EXPIRED)
        if await state.store.take_upstream_pointer(upstream_state) is None:  # single use
            return pages.error(request, *EXPIRED)
        if pending.purpose == "account":
            return await _account_callback(state, request, flow_id, pending, provider_id)
        checked = await _approved_flow(state, request, flow_id)
        if isinstance(checked, Response):
            return checked
        flow, auth, client, provider = checked
        if provider.id != provider_id or not isinstance(provider, RedirectProvider):
            return pages.error(request, *EXPIRED)
        if "error" in request.query_params:
            await state.store.take_flow(flow_id)
            audit(
                "login_failed",
                provider=provider.id,
                client_id=client.client_id,
                outcome="UpstreamError",
                upstream_error=request.query_params.get("error", "")[:100],
            )
            return pages.error(
                request,
                "Sign-in was not completed",
                "The identity provider did not complete the sign-in. Return to the application and try again.",
                # Not signed in: a way back only to an address someone vouches for (RFC 9700 §4.11.2).
                return_url=_error_redirect(
                    state, auth.redirect_uri, _access_denied("the sign-in was not completed upstream"), auth.state
                )
                if may_redirect_errors(client, auth.redirect_uri, state.config.registration.cimd_trusted_domains)
                else None,
            )
        try:
            with UPSTREAM_LATENCY.labels(provider.id, "callback").time():
                identity = await provider.handle_callback(
                    f"{state.config.issuer}/callback/{provider.id}",
                    dict(request.query_params),
                    state.grants.open_flow_data(flow_id, flow.upstream.data if flow.upstream else None),
                )
        except ProviderError as exc:
            await state.store.take_flow(flow_id)
            LOGINS.labels(provider.id, type(exc).__name__).inc()
            audit("login_failed", provider=provider.id, client_id=client.client_id, outcome=type(exc).__name__)
            _log.warning("upstream_callback_failed", provider=provider.id, error=str(exc))
            log_upstream_failure(provider.id, "callback", exc)
            return pages.error(
                request, "Sign-in failed", exc.public, status=502 if isinstance(exc, UpstreamUnavailable) else 400
            )
        return await _finish(state, request, flow_id, auth, client, identity)

    return api


async def _account_callback(
    state: BrokerState, request: Request, flow_id: str, flow: PendingFlow, provider_id: str
) -> Response:
    from broker.routes.account import start_session

    provider = state.providers.get(flow.provider or "")
    await state.store.take_flow(flow_id)
    if provider is None or provider_id != flow.provider or not isinstance(provider, RedirectProvider):
        return state.pages.error(request, *EXPIRED)
    data = flow.upstream.data if flow.upstream else None
    try:
        with UPSTREAM_LATENCY.labels(provider.id, "callback").time():
            identity = await provider.handle_callback(
                f"{state.config.issuer}/callback/{provider.id}",
                dict(request.query_params),
                state.grants.open_flow_data(flow_id, data),
            )
    except ProviderError as exc:
        LOGINS.labels(provider.id, type(exc).__name__).inc()
        log_upstream_failure(provider.id, "callback", exc)
        return state.pages.error(
            request, "Sign-in failed", exc.public, status=502 if isinstance(exc, UpstreamUnavailable) else 400
        )
    LOGINS.labels(provider.id, "success").inc()
    return await start_session(state, identity)


def _access_denied(description: str = "the user is not allowed to use this resource") -> OAuthError:
    from broker.oauth.errors import AccessDenied

    return AccessDenied(description)


def _provider_for_hint(providers: list[PasswordProvider | RedirectProvider], login_hint: str) -> str:
    """The provider whose email domain matches ``login_hint`` (user@domain), else the first."""
    domain = login_hint.rpartition("@")[2].lower() if "@" in login_hint else ""
    for provider in providers:
        if domain and isinstance(provider, EmailDomainHints) and domain in {d.lower() for d in provider.email_domains}:
            return provider.id
    return providers[0].id


def _provider_origins(providers: list[PasswordProvider | RedirectProvider]) -> list[str]:
    return [o for p in providers if isinstance(p, FormOrigins) for o in p.origins]


def _login_page(
    state: BrokerState,
    flow_id: str,
    csrf: str,
    auth: AuthorizationRequest,
    client: Client,
    provider: Any,
    *,
    error: str | None = None,
    username: str = "",
    status: int = 200,
) -> Response:
    resource = state.policy.resource_for(auth.resource)
    return state.pages.render(
        "login.html",
        status=status,
        form_targets=[auth.redirect_uri],
        flow_id=flow_id,
        csrf=csrf,
        client_name=client.client_name,
        resource_name=resource.name if resource else auth.resource,
        provider_name=provider.display_name,
        error=error,
        username=username,
    )


async def _approved_flow(
    state: BrokerState, request: Request, flow_id: str | None
) -> tuple[PendingFlow, AuthorizationRequest, Client, Any] | Response:
    loaded = await _load(state, flow_id)
    if loaded is None:
        return state.pages.error(request, *EXPIRED)
    flow, auth, client = loaded
    if not flow.approved or not same_secret(request.cookies.get(state.pages.flow_cookie), flow.binding_hash):
        _log.warning("flow_binding_failed", client_id=client.client_id)
        return state.pages.error(request, *EXPIRED)
    provider = state.providers.get(flow.provider or "")
    if provider is None:
        return state.pages.error(request, *EXPIRED)
    return flow, auth, client, provider


async def _finish(
    state: BrokerState, request: Request, flow_id: str, auth: AuthorizationRequest, client: Client, identity: Identity
) -> Response:
    pages = state.pages
    if await state.store.take_flow(flow_id) is None:  # single use, even if two tabs race
        return pages.error(request, *EXPIRED)
    resource = state.policy.resource_for(auth.resource)
    if resource is None:
        return pages.error(request, *EXPIRED)
    LOGINS.labels(identity.provider_id, "success").inc()
    audit(
        "login_succeeded",
        provider=identity.provider_id,
        sub=identity.subject,
        username=identity.username,
        client_id=client.client_id,
        groups=len(identity.groups),
    )
    decision = state.policy.evaluate(resource, identity)
    scopes = state.policy.narrow(resource, decision, auth.scopes)
    if not scopes:
        audit(
            "access_denied",
            sub=identity.subject,
            client_id=client.client_id,
            resource=resource.uri,
            requested=auth.scopes,
            policy_version=state.policy.version,
            denied_by=decision.denied_by or None,
        )
        response = pages.render(
            "no_access.html",
            status=403,
            resource_name=resource.name,
            username=identity.username,
            groups=state.policy.hint_groups(resource, identity.provider_id),
            return_url=_error_redirect(state, auth.redirect_uri, _access_denied(), auth.state),
        )
        pages.clear(response)
        return response
    grant_id, code = await state.grants.issue_code(
        client_id=client.client_id,
        redirect_uri=auth.redirect_uri,
        redirect_uri_given=auth.redirect_uri_given,
        code_challenge=auth.code_challenge,
        resource=resource.uri,
        scopes=sorted(scopes),
        identity=identity,
    )
    await state.store.remember_consent(identity.subject, client.client_id, resource.uri, sorted(scopes))
    audit(
        "code_issued",
        grant_id=grant_id,
        client_id=client.client_id,
        sub=identity.subject,
        resource=resource.uri,
        scopes=sorted(scopes),
        granted_by={s: decision.granted_by.get(s, []) for s in sorted(scopes)},
        policy_version=state.policy.version,
    )
    done = pages.redirect(
        redirect_with(auth.redirect_uri, {"code": code, "state": auth.state, "iss": state.config.issuer})
    )
    pages.clear(done)
    return done
