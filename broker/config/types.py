"""Small value types shared by the configuration models."""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator

from providers.net import is_loopback_host

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")


def parse_duration(value: object) -> int:
    """Seconds from ``300``, ``"300"``, ``"5m"``, ``"12h"`` or ``"30d"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 300, '5m', '12h' or '30d'")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = int(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise ValueError("expected a duration such as 300, '5m', '12h' or '30d'")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


Duration = Annotated[int, BeforeValidator(parse_duration)]
"""A positive number of seconds, written as an integer or with a unit (s, m, h, d)."""


def check_public_url(url: str, *, what: str) -> str:
    """An absolute https URL (http only on loopback), no fragment, no query, no trailing slash."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"{what} must be an absolute https URL")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ValueError(f"{what} must use https (plain http is allowed only on a loopback address)")
    if parts.query or parts.fragment:
        raise ValueError(f"{what} must not have a query or fragment")
    if url.endswith("/"):
        raise ValueError(f"{what} must not end with '/': clients compare it as an exact string")
    if parts.netloc != parts.netloc.lower():
        raise ValueError(f"{what} must be written with a lower-case host")
    return url


def check_foreign_issuer(issuer: str) -> str:
    """Another party's issuer identifier (an IdP, a transmitter, an external authorization server):
    an https URL kept exactly as written, a trailing '/' too, since tokens carry it that way."""
    check_public_url(issuer.removesuffix("/"), what="issuer")
    return issuer


ForeignIssuer = Annotated[str, AfterValidator(check_foreign_issuer)]
"""An issuer identifier of another party, compared with `iss`/`aud` as an exact string."""
