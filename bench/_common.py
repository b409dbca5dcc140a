"""Pieces several benchmarks share; each script runs as ``python bench/<name>.py``, which puts this
folder first on ``sys.path``."""

from __future__ import annotations

from broker.devstack import Slapd
from providers.ldap.config import LdapProviderConfig

BASE = "dc=demo,dc=local"


def demo_ldap_config(slapd: Slapd) -> LdapProviderConfig:
    """The LDAP provider's configuration for the demo directory ``slapd`` serves."""
    return LdapProviderConfig(
        id="demo-ldap",
        display_name="Demo directory",
        urls=[slapd.url],
        bind_dn=slapd.service_dn,
        bind_password=slapd.service_password,
        user_base_dn=f"ou=people,{BASE}",
        group_base_dn=f"ou=groups,{BASE}",
    )
