"""Redirect URI rules: what may be registered (RFC 8252 for native apps, HTTPS for web apps)
and how a presented URI is matched (exact, except the port of a loopback redirect, RFC 8252 §7.3).

Outside ``broker.oauth`` because the configuration loader checks statically registered clients
by the same rules, and ``broker.config`` sits below ``broker.oauth`` (which reads its models)."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, urlsplit

from providers.net import is_loopback_host

_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*$")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_DNS_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")
_FORBIDDEN_SCHEMES = frozenset({"javascript", "data", "file", "vbscript", "about", "blob", "ftp", "ws", "wss"})


def valid_scheme(scheme: str) -> bool:
    """An RFC 3986 scheme name (lower case, as urlsplit gives it)."""
    return bool(_SCHEME.match(scheme))


def valid_host(host: str | None) -> bool:
    """A DNS name or an IP address: nothing that could break out of a header (a CSP source) or a URL."""
    if not host:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_DNS_NAME.match(host))


def _split(uri: object) -> SplitResult | None:
    if not isinstance(uri, str):
        return None
    try:
        parts = urlsplit(uri)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        return None
    return parts


def is_loopback_redirect(uri: str) -> bool:
    parts = _split(uri)
    return bool(parts and parts.scheme == "http" and is_loopback_host(parts.hostname))


def is_private_use_scheme(uri: str) -> bool:
    parts = _split(uri)
    return bool(parts and parts.scheme not in ("http", "https") and _SCHEME.match(parts.scheme))


def registration_problem(uri: object, application_type: str) -> str | None:
    """None if ``uri`` may be registered by a client of ``application_type``, else why not."""
    if not isinstance(uri, str) or not uri or len(uri) > 2000:
        return "redirect URIs must be non-empty strings"
    parts = _split(uri)
    if parts is None or not parts.scheme:
        return f"{uri!r} is not an absolute URI"
    if parts.fragment or "#" in uri:
        return f"{uri!r} must not contain a fragment"
    if "*" in uri:
        return f"{uri!r}: wildcards are not allowed"
    scheme = parts.scheme.lower()
    if scheme == "https":
        if not valid_host(parts.hostname):
            return f"{uri!r} has no valid host name"
        if parts.username or parts.password:
            return f"{uri!r} must not contain credentials"
        return None
    if scheme == "http":
        if is_loopback_host(parts.hostname):
            return None if application_type == "native" else f"{uri!r}: loopback redirects are for native clients"
        return f"{uri!r}: plain http is allowed only for loopback redirects"
    if scheme in _FORBIDDEN_SCHEMES or not _SCHEME.match(scheme):
        return f"{uri!r}: scheme {scheme!r} is not allowed"
    if application_type != "native":
        return f"{uri!r}: private-use URI schemes are for native clients"
    return None


def matches(registered: str, presented: str) -> bool:
    """Exact string match; for a registered http loopback URI, any port (RFC 8252 §7.3)."""
    if registered == presented:
        return True
    if not is_loopback_redirect(registered):
        return False
    a, b = _split(registered), _split(presented)
    if a is None or b is None:
        return False
    return (a.scheme, a.hostname, a.path, a.query, a.fragment, a.username, a.password) == (
        b.scheme,
        b.hostname,
        b.path,
        b.query,
        b.fragment,
        b.username,
        b.password,
    ) and "@" not in b.netloc


def find_match(registered: list[str] | tuple[str, ...], presented: str) -> str | None:
    return next((r for r in registered if matches(r, presented)), None)
