"""PKCE (RFC 7636), S256 only: ``plain`` is refused, as OAuth 2.1 and the MCP specification ask."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")  # RFC 7636 §4.1
_CHALLENGE = re.compile(r"^[A-Za-z0-9\-_]{43}$")  # base64url(SHA-256), no padding

METHODS = ("S256",)


def valid_challenge(challenge: str | None, method: str | None) -> str | None:
    """None if the pair is acceptable, else why not."""
    if not challenge:
        return "code_challenge is required (PKCE)"
    if method != "S256":
        return "code_challenge_method must be S256"
    if not _CHALLENGE.match(challenge):
        return "code_challenge is not a base64url SHA-256 value"
    return None


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def verify(verifier: str | None, challenge: str) -> bool:
    if not verifier or not _VERIFIER.match(verifier):
        return False
    return hmac.compare_digest(s256(verifier), challenge)
