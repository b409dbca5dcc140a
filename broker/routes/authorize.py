"""``GET /authorize``: validate the request, store it as a pending flow, show the consent page.

The browser flow's later steps are the routes ``consent``, ``login`` and ``callback``; what
happens at each lives in ``broker.oauth.browser_flow``. Every form carries a CSRF token.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from broker.oauth import authorize
from broker.oauth.authorize import RedirectableError, UnredirectedError, UnsafeRequest
from broker.oauth.browser_flow import SignInProvider, error_redirect
from broker.redirect_rules import is_loopback_redirect
from broker.routes import openapi
from broker.routes.deps import SignInStepsDep
from providers.base import EmailDomainHints

_log = structlog.get_logger("mcp_broker.authorize")


def router(base: str) -> APIRouter:
    api = APIRouter(tags=["authorization"])

    @api.get(
        f"{base}/authorize",
        summary="Authorization endpoint (OAuth 2.1 §4.1.1)",
        response_class=HTMLResponse,
        responses=openapi.AUTHORIZE_RESPONSES,
        openapi_extra=openapi.AUTHORIZE,
    )
    async def authorize_endpoint(request: Request, steps: SignInStepsDep) -> Response:
        pages, config, flows = steps.pages, steps.config, steps.flows
        params = parse_qs(request.url.query, keep_blank_values=False)
        try:
            auth, client, resource = await authorize.validate(params, steps.clients, steps.policy)
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
            return pages.redirect(error_redirect(config.issuer, exc.redirect_uri, exc.error, exc.state), status=302)
        flow_id, csrf = await flows.start(auth)
        wanted = set(auth.scopes) if auth.scopes else {s.name for s in resource.scopes}
        redirect = urlsplit(auth.redirect_uri)
        providers = flows.sign_in_providers()
        if not providers:
            return pages.error(request, "Sign-in unavailable", "No identity provider is configured.", status=503)
        response = pages.render(
            "consent.html",
            form_targets=[auth.redirect_uri, *flows.form_origins],
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

    return api


def _provider_for_hint(providers: list[SignInProvider], login_hint: str) -> str:
    """The provider whose email domain matches ``login_hint`` (user@domain), else the first."""
    domain = login_hint.rpartition("@")[2].lower() if "@" in login_hint else ""
    for provider in providers:
        if domain and isinstance(provider, EmailDomainHints) and domain in {d.lower() for d in provider.email_domains}:
            return provider.id
    return providers[0].id
