"""Audit events: one structured log event per security-relevant action.

Each event is a JSON line with ``audit: true`` and an ``event`` from :data:`EVENTS`, so a log
pipeline can route them apart. Secrets never reach here; the redaction processor in
:mod:`broker.log` is the second line of defence.
"""

from __future__ import annotations

from typing import Any, Literal

import structlog

AuditEvent = Literal[
    "client_registered",
    "registration_throttled",
    "consent_granted",
    "consent_denied",
    "consent_revoked",
    "login_succeeded",
    "login_failed",
    "account_locked",
    "account_unlocked",
    "code_issued",
    "code_replayed",
    "token_issued",
    "token_refreshed",
    "refresh_reuse_detected",
    "token_revoked",
    "grant_revoked",
    "mapping_reloaded",
    "access_denied",
    "assertion_redeemed",  # an ID-JAG from a trusted IdP redeemed for an access token (jwt-bearer)
    "assertion_replayed",
    "assertion_refused",
    "assertion_issued",  # an ID-JAG for an external MCP authorization server (token exchange)
    "token_exchanged",  # delegated access: an MCP server got a downstream token as the user (RFC 8693)
    "token_exchange_refused",
    "signal_received",  # an upstream signal (SCIM, back-channel logout, Shared Signals) arrived valid
    "signal_applied",  # ...and what it did (revoke_user, revoke_session, reapply_policy, record_only)
    "signal_refused",  # an upstream signal refused before any effect (bad signature, replay...)
    "grant_narrowed",  # a signal took scopes from a live grant; its earlier access tokens ended
]

_log = structlog.get_logger("mcp_broker.audit")


def audit(event: AuditEvent, **fields: Any) -> None:
    # bind() is what the lazy proxy's __getattr__ does for .info, without first failing the
    # ordinary attribute look-up (an AttributeError raised and caught: about 0.6 us a line).
    _log.bind().info(event, audit=True, **fields)
