"""Why an upstream failed, told to the operator: one ``upstream_failed`` warning per failure.

The audit event ``login_failed outcome=UpstreamUnavailable`` says that a sign-in failed; this
says why (``StartTLS failed: ... certificate verify failed``, ``Connection refused``, ``timed
out``), at warning level, so an operator can alert on it. Only failures of the upstream itself
(``UpstreamUnavailable``, ``UpstreamRejected``) are logged here: a wrong password is the user's.
The reason is the provider's own message, which names the server and what went wrong and never
carries a password; it still passes the log's redaction like every other field.
"""

from __future__ import annotations

import structlog

from providers.base import ProviderError, UpstreamRejected, UpstreamUnavailable

_log = structlog.get_logger("mcp_broker.upstream")


def log_upstream_failure(provider_id: str, operation: str, exc: ProviderError) -> None:
    """Log ``upstream_failed`` (``provider``, ``operation``, ``outcome``, ``reason``) when ``exc``
    is the upstream's failure; do nothing for the user's (a wrong password, a disabled account)."""
    if isinstance(exc, UpstreamUnavailable | UpstreamRejected):
        _log.warning(
            "upstream_failed",
            provider=provider_id,
            operation=operation,
            outcome=type(exc).__name__,
            reason=str(exc)[:1000],
        )
