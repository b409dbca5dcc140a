"""Upstream identity providers.

Each provider lives in its own package (``ldap``, ``entra``, ``oidc``) and imports nothing
from :mod:`broker`. The broker talks to them only through :mod:`providers.base` (the
``Provider`` protocol and the capabilities each provider class declares) and
:mod:`providers.registry` (the provider types, and ``open_provider``).
"""
