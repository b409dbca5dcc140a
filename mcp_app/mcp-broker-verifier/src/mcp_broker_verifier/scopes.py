"""A scope hierarchy: which scopes a granted scope implies (``notes:write`` implies ``notes:read``).

The hierarchy is configuration (``MCP_APP_SCOPE_IMPLIES`` for the demo server), never code
of the verifier's: each MCP server passes its own. The broker's policy (a resource's
``implies``) follows the same rule, with this same function.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

ScopeImplies = Mapping[str, Sequence[str]]


def effective_scopes(scopes: Iterable[str], implies: ScopeImplies) -> set[str]:
    """The granted ``scopes`` and every scope they imply, directly or through another."""
    out: set[str] = set()
    pending = list(scopes)
    while pending:
        scope = pending.pop()
        if scope not in out:
            out.add(scope)
            pending.extend(implies.get(scope, ()))
    return out
