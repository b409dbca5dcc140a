"""Rendering and browser security: templates, headers, and the two cookies of a sign-in.

* the CSRF cookie, set with the consent page and required (double-submit, compared in
  constant time) with every form post of that sign-in, ``SameSite=Strict``;
* the flow cookie, set only after the user approves, binding the rest of the sign-in (login
  form, upstream callback) to this browser, ``SameSite=Lax`` so it survives the top-level
  redirect back from an upstream identity provider.

With an https issuer both use the ``__Host-`` prefix (Secure, Path=/, no Domain). On a
plain-http loopback issuer (development) browsers refuse ``Secure``, so the prefix is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from email.utils import formatdate
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from broker.redirect_rules import valid_host, valid_scheme
from broker.security.compare import same_secret
from broker.store.keys import digest

_env = Environment(
    loader=PackageLoader("broker.web", "templates"),
    autoescape=select_autoescape(["html"]),
    auto_reload=False,
)
PRODUCT = "mcp-broker"
_PLAIN_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_.-]+\Z")  # what SimpleCookie writes unquoted


def _origin_source(uri: str) -> str | None:
    """The CSP source for a form target, or None for anything that is not a plain origin (a
    crafted host must never add directives to the header)."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not valid_host(parts.hostname) or parts.username or parts.password:
            return None
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
        return f"{scheme}://{host}{f':{port}' if port is not None else ''}"
    return f"{scheme}:" if valid_scheme(scheme) else None


def security_headers(form_targets: Iterable[str] = ()) -> dict[str, str]:
    return dict(_security_headers(tuple(form_targets)))


@lru_cache(maxsize=1024)  # a client's redirect URIs and the providers' origins: few, and asked on every page
def _security_headers(form_targets: tuple[str, ...]) -> dict[str, str]:
    sources = " ".join(dict.fromkeys(s for s in (_origin_source(u) for u in form_targets) if s))
    csp = (
        "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; frame-ancestors 'none'; "
        f"form-action 'self'{' ' + sources if sources else ''}"
    )
    return {
        "content-security-policy": csp,
        "x-frame-options": "DENY",
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cache-control": "no-store",
        "pragma": "no-cache",
    }


class Pages:
    def __init__(self, issuer: str) -> None:
        self.base = urlsplit(issuer).path.rstrip("/")
        self.secure = issuer.startswith("https://")
        prefix = "__Host-" if self.secure else ""
        self.csrf_cookie = f"{prefix}mcpb_csrf"
        self.flow_cookie = f"{prefix}mcpb_flow"
        self.session_cookie = f"{prefix}mcpb_session"

    def render(
        self,
        template: str,
        *,
        status: int = 200,
        form_targets: Iterable[str] = (),
        **context: Any,
    ) -> HTMLResponse:
        html = _env.get_template(template).render(product=PRODUCT, base=self.base, **context)
        return HTMLResponse(html, status_code=status, headers=security_headers(form_targets))

    def error(
        self, request: Request, title: str, message: str, *, status: int = 400, return_url: str | None = None
    ) -> HTMLResponse:
        return self.render(
            "error.html",
            status=status,
            title=title,
            message=message,
            return_url=return_url,
            request_id=getattr(request.state, "request_id", None),
        )

    def csrf_ok(self, request: Request, presented: str | None, expected_hash: str | None = None) -> bool:
        """Double-submit check: the form's token and the CSRF cookie agree (and, for a sign-in
        flow, both match the hash the flow stored). Constant-time throughout."""
        cookie = request.cookies.get(self.csrf_cookie)
        if expected_hash is None:
            expected_hash = digest(cookie) if cookie else None
        return same_secret(presented, expected_hash) and same_secret(cookie, expected_hash)

    def csrf_refused(self, request: Request) -> HTMLResponse:
        return self.error(
            request,
            "Request not accepted",
            "This form was not submitted from this site's sign-in page. Go back to the application and start again.",
            status=403,
        )

    def redirect(self, url: str, *, status: int = 303) -> RedirectResponse:
        response = RedirectResponse(url, status_code=status)
        response.headers.update({"cache-control": "no-store", "referrer-policy": "no-referrer"})
        return response

    def _set(self, response: Response, name: str, value: str, *, same_site: str, max_age: int = 600) -> None:
        """``response.set_cookie`` with these attributes, written the way it writes them
        (attributes in its order) without building a ``SimpleCookie`` (~20 µs a cookie)."""
        if not _PLAIN_COOKIE_VALUE.match(value):
            response.set_cookie(
                name,
                value,
                max_age=max_age,
                path="/",
                secure=self.secure,
                httponly=True,
                samesite=same_site,  # type: ignore[arg-type]
            )
            return
        self._append(response, f"{name}={value}; HttpOnly; Max-Age={max_age}; Path=/; SameSite={same_site}")

    def _append(self, response: Response, cookie: str) -> None:
        response.raw_headers.append((b"set-cookie", f"{cookie}; Secure".encode() if self.secure else cookie.encode()))

    def set_csrf(self, response: Response, value: str) -> None:
        self._set(response, self.csrf_cookie, value, same_site="strict")

    def set_flow(self, response: Response, value: str) -> None:
        self._set(response, self.flow_cookie, value, same_site="lax")

    def set_session(self, response: Response, value: str) -> None:
        self._set(response, self.session_cookie, value, same_site="strict", max_age=1800)

    def clear(self, response: Response, *, session: bool = False) -> None:
        """Forget a sign-in's cookies (and the account session too when ``session``)."""
        names = (self.csrf_cookie, self.flow_cookie) + ((self.session_cookie,) if session else ())
        expires = formatdate(usegmt=True)  # as response.delete_cookie writes it
        for name in names:
            self._append(response, f'{name}=""; expires={expires}; HttpOnly; Max-Age=0; Path=/; SameSite=lax')
