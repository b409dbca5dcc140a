"""OAuth error responses (RFC 6749 §4.1.2.1 and §5.2, RFC 7591 §3.2.2, RFC 8707 §2, RFC 6750 §3.1).

One class per error code, each with its HTTP status. ``description`` is what the client is
told (generic); ``detail`` is what the log gets. Rendered in one place (``broker.routes.errors``).
"""

from __future__ import annotations

from typing import ClassVar


class OAuthError(Exception):
    error: ClassVar[str] = "server_error"
    status: ClassVar[int] = 400
    default_description: ClassVar[str] = "The request could not be processed."

    def __init__(self, description: str | None = None, *, detail: str | None = None) -> None:
        self.description = description or self.default_description
        self.detail = detail or self.description
        super().__init__(self.detail)

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


class InvalidRequest(OAuthError):
    error = "invalid_request"
    default_description = "The request is missing a parameter or is malformed."


class InvalidClient(OAuthError):
    error = "invalid_client"
    status = 401
    default_description = "Client authentication failed."


class InvalidGrant(OAuthError):
    error = "invalid_grant"
    default_description = "The authorization grant is invalid, expired or revoked."


class UnauthorizedClient(OAuthError):
    error = "unauthorized_client"
    default_description = "This client may not use this grant type."


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"
    default_description = "The grant type is not supported."


class UnsupportedResponseType(OAuthError):
    error = "unsupported_response_type"
    default_description = "Only the authorization code flow (response_type=code) is supported."


class InvalidScope(OAuthError):
    error = "invalid_scope"
    default_description = "The requested scope is invalid or exceeds what was granted."


class InvalidTarget(OAuthError):
    error = "invalid_target"
    default_description = "The requested resource is not a protected resource of this server."


class AccessDenied(OAuthError):
    error = "access_denied"
    status = 403
    default_description = "The request was denied."


class ServerError(OAuthError):
    error = "server_error"
    status = 500
    default_description = "The authorization server encountered an internal error."


class TemporarilyUnavailable(OAuthError):
    error = "temporarily_unavailable"
    status = 503
    default_description = "The authorization server is temporarily unavailable."


class TooManyRequests(TemporarilyUnavailable):
    """A per-client limit was reached: HTTP 429 with ``Retry-After`` (RFC 6585 §4)."""

    status = 429
    default_description = "Too many requests; try again later."

    def __init__(self, description: str | None = None, *, retry_after: int, detail: str | None = None) -> None:
        super().__init__(description, detail=detail)
        self.retry_after = retry_after


class InvalidRedirectUri(OAuthError):
    error = "invalid_redirect_uri"
    default_description = "A redirect URI is not allowed."


class InvalidClientMetadata(OAuthError):
    error = "invalid_client_metadata"
    default_description = "The client metadata is invalid."


class UnsupportedTokenType(OAuthError):
    error = "unsupported_token_type"
    default_description = "The token type is not supported."
