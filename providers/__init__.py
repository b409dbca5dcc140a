"""Upstream identity providers.

Each provider lives in its own package (``ldap``, ``entra``, ``oidc``) and imports nothing
from :mod:`broker`. The broker talks to them only through :mod:`providers.base`.
"""
