"""A provider's groups taken from its SCIM data (``scim.tenants[].groups_source: true``).

Every identity of such a provider passes through :meth:`GroupSource.apply` where it enters the
broker or is looked at again: the browser flow's sign-in (password and callback), the refresh
re-check and ``GrantService.current_identity`` (token exchange, ``reapply_policy``), and the
ID-JAG redemption. Its ``groups`` become the user's SCIM group ids and ``group_names`` their
``displayName``s (the policy matches either); the provider still vouches for the user (password,
callback, its re-check of the account). A user the tenant does not know has no groups; a user
inactive there may not sign in (``AccountDisabled``, as a disabled account upstream).

One store read of the user (an index lookup) and one of the tenant's groups, per sign-in or
refresh; the shared re-check answer keeps the provider's answer, and SCIM is read after it.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Iterable, Mapping
from typing import Any

from broker.config.scim import ScimTenantConfig
from broker.store.base import Store
from providers.base import AccountDisabled, Identity, qualified_subject

_INDEXED = {"userName": "username", "externalId": "externalid"}


class InactiveInScim(AccountDisabled):
    """The user is inactive in the SCIM data their provider takes its groups from."""


class GroupSource:
    def __init__(self, store: Store, tenants: Iterable[ScimTenantConfig]) -> None:
        self.store = store
        self._tenants = {t.provider: t for t in tenants if t.groups_source}

    def applies(self, provider_id: str) -> bool:
        return provider_id in self._tenants

    async def apply(self, identity: Identity) -> Identity:
        """``identity`` with its groups from SCIM when its provider takes them from there, else
        as it is. Raises ``AccountDisabled`` for a user inactive in the tenant."""
        tenant = self._tenants.get(identity.provider_id)
        if tenant is None:
            return identity
        user = await self._user(tenant, identity)
        groups: dict[str, str] = {}
        if user is not None:
            if user.get("active") is False:
                raise InactiveInScim(f"{identity.username} is inactive in SCIM tenant {tenant.provider}")
            user_id = user.get("id")
            for group_id, record in await self.store.list_scim_resources(tenant.provider, "Groups"):
                group = record.get("resource") or {}
                if any(isinstance(m, Mapping) and m.get("value") == user_id for m in group.get("members") or ()):
                    groups[group_id] = str(group.get("displayName") or group_id)
        return dataclasses.replace(identity, groups=frozenset(groups), group_names=groups)

    async def _user(self, tenant: ScimTenantConfig, identity: Identity) -> dict[str, Any] | None:
        """The tenant's SCIM user who is ``identity`` (see ``broker.config.scim``), or None."""
        if tenant.subject is None:
            return await self._find(tenant.provider, "username", identity.username.casefold())
        local = identity.subject.removeprefix(qualified_subject(tenant.provider, ""))
        parts = [(text, name) for text, name, _, _ in string.Formatter().parse(tenant.subject)]
        named = [name for _, name in parts if name is not None]
        if len(named) == 1:  # "<prefix>{field}<suffix>": one index lookup
            prefix = parts[0][0] if parts[0][1] is not None else ""
            suffix = "".join(text for text, _ in parts[1:])
            if not (local.startswith(prefix) and local.endswith(suffix) and len(local) >= len(prefix) + len(suffix)):
                return None
            value = local[len(prefix) : len(local) - len(suffix)]
            if named[0] == "id":
                record = await self.store.get_scim_resource(tenant.provider, "Users", value)
                user = record.get("resource") if record else None
            else:
                key = _INDEXED[named[0]]
                user = await self._find(tenant.provider, key, value.casefold() if key == "username" else value)
            return user if user is not None and _local(tenant.subject, user) == local else None
        for _, record in await self.store.list_scim_resources(tenant.provider, "Users"):
            user = record.get("resource") or {}
            if _local(tenant.subject, user) == local:
                return dict(user)
        return None

    async def _find(self, tenant: str, attribute: str, value: str) -> dict[str, Any] | None:
        user_id = await self.store.find_scim_resource(tenant, "Users", attribute, value)
        record = await self.store.get_scim_resource(tenant, "Users", user_id) if user_id else None
        user = record.get("resource") if record else None
        return dict(user) if isinstance(user, Mapping) else None


def _local(template: str, user: Mapping[str, Any]) -> str:
    return template.format(
        userName=user.get("userName") or "", externalId=user.get("externalId") or "", id=user.get("id") or ""
    )
