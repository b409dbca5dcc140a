"""``GET/POST /login``: the password sign-in form of an approved flow (thin: ``BrowserFlow``
checks the password, counts failures and finishes with a code)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from broker.oauth.browser_flow import Approved, PasswordRefused, Throttled, TooManyAttempts
from broker.policy import Policy
from broker.routes.deps import SignInStepsDep
from broker.routes.flow_pages import EXPIRED, finished
from broker.routes.forms import read_page_form
from broker.web.pages import Pages


def router(base: str) -> APIRouter:
    api = APIRouter(tags=["authorization"])

    @api.get(f"{base}/login", summary="Password sign-in form", include_in_schema=False)
    async def login_form(request: Request, steps: SignInStepsDep) -> Response:
        pages, policy, flows = steps.pages, steps.policy, steps.flows
        approved = await flows.approved(request.query_params.get("flow"), request.cookies.get(pages.flow_cookie))
        if approved is None:
            return pages.error(request, *EXPIRED)
        token = await flows.login_form_csrf(approved, request.cookies.get(pages.csrf_cookie))
        if token is None:
            return pages.error(request, *EXPIRED)
        csrf, new = token
        response = _login_page(pages, policy, approved, csrf)
        if new:
            pages.set_csrf(response, csrf)
        return response

    @api.post(f"{base}/login", summary="Password sign-in", include_in_schema=False)
    async def login(request: Request, steps: SignInStepsDep) -> Response:
        pages, policy, flows = steps.pages, steps.policy, steps.flows
        form = await read_page_form(request, pages)
        if not isinstance(form, dict):
            return form
        approved = await flows.approved(form.get("flow"), request.cookies.get(pages.flow_cookie))
        if approved is None:
            return pages.error(request, *EXPIRED)
        if not pages.csrf_ok(request, form.get("csrf"), approved.flow.csrf_hash):
            return pages.csrf_refused(request)
        provider = flows.password_provider(approved.provider)
        if provider is None:
            return pages.error(request, "Invalid request", "This sign-in option does not take a password.")
        username = form.get("username", "").strip()
        client_ip = request.client.host if request.client else None
        outcome = await flows.password(approved, provider, username, form.get("password", ""), client_ip)
        if isinstance(outcome, Throttled):
            minutes = outcome.minutes
            return _login_page(
                pages,
                policy,
                approved,
                form["csrf"],
                username=username,
                status=429,
                error=f"Too many failed sign-in attempts. Try again in {minutes} minute{'s' if minutes > 1 else ''}.",
            )
        if isinstance(outcome, TooManyAttempts):
            return pages.error(
                request,
                "Too many attempts",
                "Too many failed sign-in attempts. Return to the application and start again.",
                status=429,
            )
        if isinstance(outcome, PasswordRefused):
            return _login_page(
                pages, policy, approved, form["csrf"], error=outcome.public, username=username, status=outcome.status
            )
        return finished(pages, request, outcome)

    return api


def _login_page(
    pages: Pages,
    policy: Policy,
    approved: Approved,
    csrf: str,
    *,
    error: str | None = None,
    username: str = "",
    status: int = 200,
) -> Response:
    auth = approved.auth
    resource = policy.resource_for(auth.resource)
    return pages.render(
        "login.html",
        status=status,
        form_targets=[auth.redirect_uri],
        flow_id=approved.flow_id,
        csrf=csrf,
        client_name=approved.client.client_name,
        resource_name=resource.name if resource else auth.resource,
        provider_name=approved.provider.display_name,
        error=error,
        username=username,
    )
