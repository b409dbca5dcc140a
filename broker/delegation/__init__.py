"""Delegated access (issue 14): RFC 8693 token exchange by MCP servers for downstream targets.

``targets.py`` the target interface and its errors, ``registry.py`` the kinds, ``internal.py``
the broker-minted kind, ``exchange.py`` the exchange itself (its rules: ``broker.policy.delegation``).
No web framework here (an import-linter contract)."""
