"""``GET /callback/{provider_id}``: an upstream identity provider sends the browser back, for an
authorization request or an account-page sign-in (thin: ``BrowserFlow`` exchanges it)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from broker.oauth.browser_flow import AccountSignedIn, SessionRenewed, SignInFailed, UpstreamDeclined
from broker.routes.account import start_session
from broker.routes.deps import ConfigDep, FlowsDep, PagesDep, StoreDep
from broker.routes.flow_pages import finished


def router(base: str) -> APIRouter:
    api = APIRouter(tags=["authorization"])

    @api.get(f"{base}/callback/{{provider_id}}", summary="Upstream identity provider callback", include_in_schema=False)
    async def callback(
        request: Request, provider_id: str, pages: PagesDep, flows: FlowsDep, store: StoreDep, config: ConfigDep
    ) -> Response:
        outcome = await flows.callback(provider_id, dict(request.query_params), request.cookies.get(pages.flow_cookie))
        if isinstance(outcome, AccountSignedIn):
            return await start_session(store, pages, config, outcome.identity)
        if isinstance(outcome, SessionRenewed):
            return pages.error(
                request,
                "Signed in again",
                f"{outcome.identity.username}, your applications can use your account again "
                f"({outcome.grants} connected). Return to your application and try again.",
                status=200,
            )
        if isinstance(outcome, UpstreamDeclined):
            return pages.error(
                request,
                "Sign-in was not completed",
                "The identity provider did not complete the sign-in. Return to the application and try again.",
                return_url=outcome.return_url,
            )
        if isinstance(outcome, SignInFailed):
            return pages.error(request, "Sign-in failed", outcome.public, status=outcome.status)
        return finished(pages, request, outcome)

    return api
