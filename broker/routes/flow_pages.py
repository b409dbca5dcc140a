"""Pages shared by the browser flow's routes: the expired page and the end of a sign-in."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from broker.oauth.browser_flow import Expired, Finished, NoAccess
from broker.web.pages import Pages

EXPIRED = (
    "Sign-in expired",
    "This sign-in took too long or was already completed. Return to the application and start again.",
)


def finished(pages: Pages, request: Request, outcome: Finished) -> Response:
    """The code redirect, the no-access page or the expired page; the flow cookies are cleared
    on the first two."""
    if isinstance(outcome, Expired):
        return pages.error(request, *EXPIRED)
    response: Response
    if isinstance(outcome, NoAccess):
        response = pages.render(
            "no_access.html",
            status=403,
            resource_name=outcome.resource_name,
            username=outcome.username,
            groups=outcome.groups,
            return_url=outcome.return_url,
        )
    else:
        response = pages.redirect(outcome.url)
    pages.clear(response)
    return response
