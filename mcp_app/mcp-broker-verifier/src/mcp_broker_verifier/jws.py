"""The one spelling of a compact JWS that is accepted (RFC 7515 §2, RFC 4648 §5): three non-empty
base64url segments in the URL-safe alphabet, no ``=`` padding, no non-zero unused bits in the
last character. Checked before any signature work, by the verifier and by the broker's own token
checks (``broker.oauth.tokens``); it lives on the verifier's side, which imports nothing from the
broker."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from jose import jwt
from jose.exceptions import JOSEError

_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


def is_canonical_jws(token: str) -> bool:
    """Three non-empty base64url segments, each in its one canonical spelling."""
    segments = token.split(".")
    return len(segments) == 3 and all(_canonical_segment(s) for s in segments)


def unverified_header(token: str) -> dict[str, Any] | None:
    """The JOSE header of ``token`` when it is a canonical compact JWS whose header parses, else
    None. Nothing is verified: the caller checks ``alg``, ``kid`` and ``typ``, then the signature."""
    if not is_canonical_jws(token):
        return None
    try:
        header: dict[str, Any] = jwt.get_unverified_header(token)
    except JOSEError:
        return None
    return header


def _canonical_segment(segment: str) -> bool:
    if not _BASE64URL.fullmatch(segment) or len(segment) % 4 == 1:
        return False
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return False
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == segment  # unused bits were zero
