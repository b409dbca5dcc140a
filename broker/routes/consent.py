"""``POST /consent``: the user's decision on the consent page (thin: ``BrowserFlow`` decides)."""

from __future__ import annotations

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import Response

from broker.oauth.browser_flow import Denied, Expired, Redirect, Unavailable
from broker.routes.deps import SignInStepsDep
from broker.routes.flow_pages import EXPIRED
from broker.routes.forms import read_page_form

_log = structlog.get_logger("mcp_broker.authorize")


def router(base: str) -> APIRouter:
    api = APIRouter(tags=["authorization"])

    @api.post(f"{base}/consent", summary="Consent decision", include_in_schema=False)
    async def consent(request: Request, steps: SignInStepsDep) -> Response:
        pages, flows = steps.pages, steps.flows
        form = await read_page_form(request, pages)
        if not isinstance(form, dict):
            return form
        loaded = await flows.load(form.get("flow"))
        if loaded is None:
            return pages.error(request, *EXPIRED)
        if loaded.flow.approved:  # decided already (and its CSRF token is the password form's now)
            return pages.error(request, *EXPIRED)
        if not pages.csrf_ok(request, form.get("csrf"), loaded.flow.csrf_hash):
            _log.warning("csrf_check_failed", client_id=loaded.client.client_id)
            return pages.csrf_refused(request)
        response: Response
        if form.get("decision") != "approve":
            denied: Denied = await flows.deny(loaded)
            if denied.redirect is not None:
                response = pages.redirect(denied.redirect)
            else:
                response = pages.error(
                    request,
                    "Access denied",
                    f"You denied the request: the application was not given access to "
                    f"{'your account' if denied.resource_name is None else denied.resource_name}. You can close this page.",
                    status=200,
                )
            pages.clear(response)
            return response
        provider = flows.sign_in_provider(form.get("provider", ""))
        if provider is None:
            return pages.error(request, "Invalid request", "Choose one of the sign-in options offered.")
        outcome = await flows.consent(loaded, provider)
        if isinstance(outcome, Expired):
            return pages.error(request, *EXPIRED)
        if isinstance(outcome, Unavailable):
            return pages.error(request, "Sign-in unavailable", outcome.public, status=503)
        assert isinstance(outcome, Redirect)
        assert outcome.binding is not None
        response = pages.redirect(outcome.url)
        pages.set_flow(response, outcome.binding)
        if outcome.csrf is not None:
            pages.set_csrf(response, outcome.csrf)
        return response

    return api
