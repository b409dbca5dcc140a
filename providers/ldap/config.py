"""Configuration model of the LDAP / Active Directory provider."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from providers.base import ProviderConfig
from providers.ldap.wire import FilterError, check_filter


class LdapProviderConfig(ProviderConfig):
    type: Literal["ldap"] = "ldap"
    urls: list[str] = Field(
        min_length=1,
        description="Directory servers tried in order (failover): ldap://, ldaps:// URLs.",
    )
    start_tls: bool = Field(default=False, description="Upgrade ldap:// connections with StartTLS.")
    ca_file: str | None = Field(
        default=None, description="Extra CA bundle (PEM) trusted for TLS, besides the system's."
    )
    verify_tls: bool = Field(default=True, description="Verify the server certificate (keep on).")
    bind_dn: str | None = Field(default=None, description="Service account that searches for users.")
    bind_password: SecretStr | None = Field(default=None, description="Service account password.")
    user_base_dn: str = Field(description="Where users are searched.")
    user_filter: str = Field(
        default="(&(objectClass=inetOrgPerson)(uid={username}))",
        description="Search filter; {username} is replaced by the RFC 4515-escaped login name.",
    )
    username_attribute: str = "uid"
    subject_attribute: str = Field(
        default="entryUUID", description="Attribute giving a stable subject (objectGUID on AD)."
    )
    email_attribute: str = "mail"
    display_name_attribute: str = "cn"
    group_base_dn: str | None = Field(default=None, description="Where groups are searched.")
    group_filter: str = Field(
        default="(|(member={dn})(uniqueMember={dn}))",
        description="Group search filter; {dn} is the escaped user DN.",
    )
    group_name_attribute: str = Field(default="cn", description="Short group name usable in mappings.")
    use_member_of: bool = Field(default=True, description="Read groups from memberOf when present.")
    nested_groups: bool = Field(default=True, description="Resolve groups of groups.")
    nested_depth: int = Field(default=5, ge=0, le=20)
    active_directory_in_chain: bool | None = Field(
        default=None,
        description=(
            "Resolve nested groups with one LDAP_MATCHING_RULE_IN_CHAIN search under group_base_dn "
            "(Active Directory only). Unset: when the directory's root DSE says it is Active Directory "
            "(groups from memberOf are kept too); true: always, and the in-chain search alone gives the "
            "groups; false: never (one search per nesting level)."
        ),
    )
    connect_timeout: float = Field(
        default=5.0, gt=0, le=60, description="Seconds to wait for one server to accept a connection."
    )
    operation_timeout: float = Field(
        default=10.0, gt=0, le=120, description="Seconds to wait for one answer from a server."
    )
    request_deadline: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description=(
            "Seconds within which a sign-in, refresh re-check or lookup is answered, failover and any "
            "wait for a free connection included; every wait is cut to what is left of it. Keep "
            "operation_timeout below it when there are several urls, so a hung first server leaves "
            "time for the next."
        ),
    )
    failure_backoff: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description=(
            "Seconds a server that failed (refused, silent, broken, StartTLS refused) is skipped while "
            "another server is not; when all are, one request at a time tries the one that failed "
            "longest ago and the others are answered at once. 0 turns the breaker off."
        ),
    )
    pool_size: int = Field(
        default=2,
        ge=1,
        le=64,
        description=(
            "Service-account connections per process, shared by every search; each carries many "
            "operations at once (operations_per_connection)."
        ),
    )
    operations_per_connection: int = Field(
        default=32,
        ge=1,
        le=256,
        description=(
            "Requests at the directory at once per pooled connection: pool_size times this many "
            "sign-ins, re-checks and lookups run side by side, the others wait (within request_deadline). "
            "With a directory d ms away a lookup takes about 4 d ms (two round trips), so this bounds "
            "lookups per second near pool_size * operations_per_connection * 1000 / (4 d); see "
            "bench/ldap_pool.py."
        ),
    )

    bind_pool_size: int = Field(
        default=8,
        ge=0,
        le=256,
        description=(
            "Connections kept for users' sign-in binds, made anonymous again after each bind and used "
            "for nothing else: a sign-in then skips the TCP and TLS handshakes. More sign-ins at once "
            "open connections of their own; 0: a new connection for every bind."
        ),
    )

    @field_validator("user_filter", "group_filter")
    @classmethod
    def _filter_is_rfc4515(cls, text: str) -> str:
        try:
            check_filter(text.replace("{username}", "x").replace("{dn}", "cn=x"))
        except FilterError as exc:
            raise ValueError(f"not an RFC 4515 search filter: {exc}") from None
        return text

    @field_validator("urls")
    @classmethod
    def _urls_are_ldap(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("ldap://", "ldaps://")):
                raise ValueError(f"{url!r} is not an ldap:// or ldaps:// URL")
        return urls
