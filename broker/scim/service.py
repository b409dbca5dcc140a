"""A SCIM 2.0 service provider for one tenant (RFC 7644 §3): create, read, list with filters,
replace, patch and delete of ``Users`` and ``Groups``, and what they do to the broker's grants.

Parsing, validation, PATCH (RFC 7644 §3.5.2, incl. Entra's and Okta's shapes), filters
(§3.4.2.2) and errors (§3.12) are `scim2-models`'; this module keeps the resources in the store
(``Store.save_scim_resource``...) and hands effects to the signals core
(:class:`broker.signals.effects.SignalEffects`):

* a user written with ``active: false``, or deleted -> ``revoke_user``: every grant of theirs is
  revoked and announced;
* a group membership removed (PATCH ``remove``, a PUT with fewer members, the group deleted) ->
  ``reapply_policy`` for that user's live grants, with the groups the provider answers now.

How a SCIM user finds the broker's user: with the tenant's ``subject`` template, the provider
subject ``qualified_subject(provider, template.format(userName=..., externalId=..., id=...))``;
without it, the ``userName``, matched case-insensitively against the username the provider gave
at sign-in (``Store.username_grant_ids``), which is how Entra (``userPrincipalName``), Okta
(``login``) and an LDAP directory (its login attribute) name the user by default.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError
from scim2_models import (
    Context,
    Error,
    Group,
    InvalidSyntaxException,
    Meta,
    NotFoundException,
    PatchOp,
    SCIMException,
    ScimPolicy,
    SearchRequest,
    UniquenessException,
    User,
)
from scim2_models.path.expressions import CompareOperator, Comparison

from broker.config.scim import ScimTenantConfig
from broker.scim.resources import KINDS, MAX_RESULTS, RESOURCE_MODELS, ScimUser, list_response
from broker.signals.effects import Signal, SignalEffects
from broker.store.base import Store

Endpoint = Literal["Users", "Groups"]
AnyResource = ScimUser | Group

# What the service tolerates beyond the strict reading, each for a provisioning service that sends
# it: a PATCH ``remove`` whose ``value`` names the members to remove, and a ``replace`` through a
# path filter matching no entry yet (``emails[type eq "work"].value``), both as Entra sends them.
# Unknown attributes and schema URNs stay refused (``invalidSyntax``), but for one: the schema URN
# Entra lists on a Group with no attribute of it (its documented "Create Group" request).
POLICY = ScimPolicy(
    remove_value_as_filter=ScimPolicy.RemoveValue.apply,
    unmatched_path_filter=ScimPolicy.UnmatchedPathFilter.create,
)
ATTEMPTS = 20  # read-modify-write rounds of one PATCH or PUT before it gives up (503)
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
IGNORED_SCHEMAS = {"http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"}


class ScimError(SCIMException):
    """An error the SCIM client gets as RFC 7644 §3.12 says, built from a scim2-models Error."""

    def __init__(self, error: Error) -> None:
        super().__init__(detail=error.detail)
        self._error = error


async def _backoff(attempt: int) -> None:
    """Nothing before the first round; then a short random pause, so racing writers spread out."""
    if attempt:
        await asyncio.sleep(random.uniform(0, 0.005 * min(attempt, 10)))  # noqa: S311 (jitter, not a secret)


def _busy() -> ScimError:
    return ScimError(Error(status=503, detail="the resource kept changing under this request: retry"))


def _invalid(exc: ValidationError) -> ScimError:
    return ScimError(Error.from_validation_error(exc.errors()[0]))


def _index(endpoint: Endpoint, resource: AnyResource) -> dict[str, str]:
    """The values looked up by the filters provisioning services send: ``userName`` and
    ``displayName`` case-insensitively (RFC 7643 §4.1.1), ``externalId`` exactly."""
    found: dict[str, str] = {}
    if isinstance(resource, Group):
        if resource.display_name:
            found["displayname"] = resource.display_name.casefold()
    elif resource.user_name:
        found["username"] = resource.user_name.casefold()
    if resource.external_id:
        found["externalid"] = resource.external_id
    return found


def _entra_manager(operation: Any) -> Any:
    """Entra sets the enterprise ``manager`` to the manager's id as a bare string; RFC 7643 §4.3
    makes it a complex attribute whose ``value`` is that id."""
    if (
        isinstance(operation, dict)
        and str(operation.get("path", "")).casefold().endswith(":manager")
        and isinstance(operation.get("value"), str)
    ):
        return {**operation, "value": {"value": operation["value"]}}
    return operation


def _members(group: Group | None) -> set[str]:
    return {m.value for m in (group.members or []) if m.value} if group is not None else set()


class ScimTenant:
    """One tenant: the SCIM client of one provider (``scim.tenants[]``), at ``{issuer}/scim/v2/{provider}``."""

    def __init__(self, tenant: ScimTenantConfig, store: Store, signals: SignalEffects, base_url: str) -> None:
        self.tenant = tenant
        self.provider = tenant.provider
        self.store = store
        self.signals = signals
        self.base_url = base_url.rstrip("/")

    # -- reading ------------------------------------------------------------------------------
    async def _load(self, endpoint: Endpoint, resource_id: str) -> AnyResource:
        return (await self._read(endpoint, resource_id))[0]

    async def _read(self, endpoint: Endpoint, resource_id: str) -> tuple[AnyResource, dict[str, Any]]:
        """The resource, and its record as stored (what a change of it is checked against)."""
        record = await self.store.get_scim_resource(self.provider, endpoint, resource_id)
        if record is None:
            raise NotFoundException(detail=f"{KINDS[endpoint]} {resource_id} not found")
        return self._from_record(endpoint, record), record

    def _from_record(self, endpoint: Endpoint, record: Mapping[str, Any]) -> AnyResource:
        model = RESOURCE_MODELS[endpoint]
        return model.model_validate(record["resource"], scim_ctx=None)

    def _render(
        self, resource: AnyResource, context: Context, search: SearchRequest[Any] | None = None
    ) -> dict[str, Any]:
        return resource.model_dump(scim_ctx=context, response_parameters=search)

    async def get(self, endpoint: Endpoint, resource_id: str, query: Mapping[str, str]) -> dict[str, Any]:
        search = self._search(endpoint, query)
        return self._render(await self._load(endpoint, resource_id), Context.RESOURCE_QUERY_RESPONSE, search)

    def _search(self, endpoint: Endpoint, query: Mapping[str, Any]) -> SearchRequest[Any]:
        model = RESOURCE_MODELS[endpoint]
        try:
            return SearchRequest[model].model_validate(dict(query), scim_ctx=Context.SEARCH_REQUEST)  # type: ignore[valid-type]
        except ValidationError as exc:
            raise _invalid(exc) from None

    async def search(self, endpoint: Endpoint, query: Mapping[str, Any]) -> dict[str, Any]:
        """GET on a resource type with ``filter``, ``startIndex``, ``count``, ``attributes``,
        ``excludedAttributes`` (RFC 7644 §3.4.2), or their POST ``/.search`` form (§3.4.3). The ``eq`` filters on ``userName``,
        ``externalId`` and ``displayName`` are one index lookup; any other filter is matched
        against each resource of the tenant."""
        search = self._search(endpoint, query)
        found: list[AnyResource] = []
        exact = self._indexed_lookup(search)
        if exact is not None:
            resource_id = await self.store.find_scim_resource(self.provider, endpoint, *exact)
            record = await self.store.get_scim_resource(self.provider, endpoint, resource_id) if resource_id else None
            if record is not None:
                found.append(self._from_record(endpoint, record))
        else:
            for _, record in await self.store.list_scim_resources(self.provider, endpoint):
                resource = self._from_record(endpoint, record)
                if search.filter is None or search.filter.match(resource):
                    found.append(resource)
        start = max(1, search.start_index or 1)
        count = MAX_RESULTS if search.count is None else min(search.count, MAX_RESULTS)
        page = found[start - 1 : start - 1 + count]
        rendered = [self._render(r, Context.SEARCH_RESPONSE, search) for r in page]
        return list_response(rendered, total=len(found), start=start)

    @staticmethod
    def _indexed_lookup(search: SearchRequest[Any]) -> tuple[str, str] | None:
        if search.filter is None:
            return None
        node = search.filter.ast
        if not isinstance(node, Comparison) or node.op != CompareOperator.eq or not isinstance(node.value, str):
            return None
        attr_path = node.attr_path
        if attr_path.sub_attr is not None or attr_path.uri not in (None, ""):
            return None
        name = attr_path.attr.casefold()
        if name in ("username", "displayname"):
            return name, node.value.casefold()
        if name == "externalid":
            return name, node.value
        return None

    # -- writing ------------------------------------------------------------------------------
    def _parse(self, endpoint: Endpoint, body: Any, context: Context) -> AnyResource:
        if not isinstance(body, dict):
            raise InvalidSyntaxException(detail="the body is not a JSON object")
        model = RESOURCE_MODELS[endpoint]
        if isinstance(body.get("schemas"), list):
            body = {**body, "schemas": [s for s in body["schemas"] if s not in IGNORED_SCHEMAS or s in body]}
        try:
            return model.model_validate(body, scim_ctx=context, scim_policy=POLICY)
        except ValidationError as exc:
            raise _invalid(exc) from None

    async def _save(
        self, endpoint: Endpoint, resource: AnyResource, *, create: bool, expected: Mapping[str, Any] | None = None
    ) -> bool:
        """Store the resource; False when ``expected`` is no longer what is stored (read again)."""
        assert resource.id is not None
        record = {"resource": resource.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE)}
        outcome = await self.store.save_scim_resource(
            self.provider, endpoint, resource.id, record, _index(endpoint, resource), create=create, expected=expected
        )
        if outcome == "conflict":
            what = "displayName" if endpoint == "Groups" else "userName or externalId"
            raise UniquenessException(detail=f"another {KINDS[endpoint]} has this {what}")
        if outcome == "missing":
            raise NotFoundException(detail=f"{KINDS[endpoint]} {resource.id} not found")
        return outcome == "ok"

    def _stamp(self, endpoint: Endpoint, resource: AnyResource, created: datetime | None) -> None:
        now = datetime.now(UTC)
        assert resource.id is not None
        resource.meta = Meta(
            resource_type=KINDS[endpoint],
            created=created or now,
            last_modified=now,
            location=f"{self.base_url}/{endpoint}/{resource.id}",
        )

    async def create(self, endpoint: Endpoint, body: Any) -> dict[str, Any]:
        resource = self._parse(endpoint, body, Context.RESOURCE_CREATION_REQUEST)
        resource.id = secrets.token_hex(16)
        self._stamp(endpoint, resource, None)
        await self._save(endpoint, resource, create=True)
        if isinstance(resource, Group):
            pass  # a new group widens nothing now: the policy applies at the next sign-in or refresh
        elif resource.active is False:
            await self._deactivated(resource, "user_created_inactive")
        return self._render(resource, Context.RESOURCE_CREATION_RESPONSE)

    async def replace(self, endpoint: Endpoint, resource_id: str, body: Any) -> dict[str, Any]:
        replacement = self._parse(endpoint, body, Context.RESOURCE_REPLACEMENT_REQUEST)
        for attempt in range(ATTEMPTS):  # a concurrent change of the resource in between: start over
            await _backoff(attempt)
            original, record = await self._read(endpoint, resource_id)
            resource = replacement.model_copy(deep=True)
            resource.replace(original)  # type: ignore[arg-type]  # immutable attributes checked, read-only kept
            resource.id = resource_id
            self._stamp(endpoint, resource, original.meta.created if original.meta else None)
            if await self._save(endpoint, resource, create=False, expected=record):
                await self._effects(endpoint, original, resource)
                return self._render(resource, Context.RESOURCE_REPLACEMENT_RESPONSE)
        raise _busy()

    async def patch(self, endpoint: Endpoint, resource_id: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise InvalidSyntaxException(detail="the body is not a JSON object")
        if PATCH_OP not in (body.get("schemas") or ()):
            raise InvalidSyntaxException(detail=f"a PATCH body lists the schema {PATCH_OP}")
        model = RESOURCE_MODELS[endpoint]
        body = {**body, "Operations": [_entra_manager(op) for op in body.get("Operations") or []]}
        try:
            operation = PatchOp[model].model_validate(body, scim_ctx=Context.RESOURCE_PATCH_REQUEST, scim_policy=POLICY)  # type: ignore[valid-type]
        except ValidationError as exc:
            raise _invalid(exc) from None
        for attempt in range(ATTEMPTS):  # a concurrent change of the resource in between: start over
            await _backoff(attempt)
            original, record = await self._read(endpoint, resource_id)
            resource = original.model_copy(deep=True)
            if operation.patch(resource, POLICY):
                self._stamp(endpoint, resource, original.meta.created if original.meta else None)
                if not await self._save(endpoint, resource, create=False, expected=record):
                    continue
            await self._effects(endpoint, original, resource)
            return self._render(resource, Context.RESOURCE_PATCH_RESPONSE)
        raise _busy()

    async def delete(self, endpoint: Endpoint, resource_id: str) -> None:
        original = await self._load(endpoint, resource_id)
        if not await self.store.delete_scim_resource(self.provider, endpoint, resource_id):
            raise NotFoundException(detail=f"{KINDS[endpoint]} {resource_id} not found")
        if isinstance(original, Group):
            await self._members_removed(original, _members(original), "group_deleted")
        else:
            await self._deactivated(original, "user_deleted")
            await self._drop_memberships(resource_id)

    async def _drop_memberships(self, user_id: str) -> None:
        """A deleted user is no member of any group any more (RFC 7643 §4.2: ``members`` refers to
        resources that exist): each group that lists them is written without them, read again and
        retried when changed concurrently. Their grants are revoked already, so nothing else follows."""
        for group_id, record in await self.store.list_scim_resources(self.provider, "Groups"):
            listed = record["resource"].get("members") or []
            if not any(isinstance(m, dict) and m.get("value") == user_id for m in listed):
                continue
            for attempt in range(ATTEMPTS):
                await _backoff(attempt)
                try:
                    group, stored = await self._read("Groups", group_id)
                except NotFoundException:
                    break  # deleted meanwhile
                assert isinstance(group, Group)
                if user_id not in _members(group):
                    break
                changed = group.model_copy(deep=True)
                changed.members = [m for m in group.members or [] if m.value != user_id]
                self._stamp("Groups", changed, group.meta.created if group.meta else None)
                if await self._save("Groups", changed, create=False, expected=stored):
                    break

    # -- effects ------------------------------------------------------------------------------
    async def _effects(self, endpoint: Endpoint, before: AnyResource, after: AnyResource) -> None:
        if isinstance(before, Group) and isinstance(after, Group):
            removed = _members(before) - _members(after)
            if removed:
                await self._members_removed(after, removed, "group_member_removed")
        elif isinstance(after, User) and after.active is False:
            # Every write leaving the user inactive revokes: provisioning services resend it, and
            # a grant made since (the upstream account still enabled) must not survive it.
            await self._deactivated(after, "user_deactivated")

    def _signal(self, kind: str, resource: AnyResource, **detail: Any) -> Signal:
        return Signal(source="scim", kind=kind, provider_id=self.provider, signal_id=resource.id, detail=detail)

    def _subject(self, user: ScimUser) -> str | None:
        template = self.tenant.subject
        if template is None:
            return None
        local = template.format(userName=user.user_name or "", externalId=user.external_id or "", id=user.id or "")
        return self.signals.qualify(self.provider, local)

    async def _deactivated(self, user: ScimUser, kind: str) -> None:
        signal = self._signal(kind, user, userName=user.user_name, externalId=user.external_id)
        subject = self._subject(user)
        await self.signals.revoke_user(
            self.provider,
            subject=subject,
            username=None if subject is not None else user.user_name,
            reason=f"scim_{kind}",
            signal=signal,
        )

    async def _subjects(self, user: ScimUser) -> set[str]:
        subject = self._subject(user)
        if subject is not None:
            return {subject}
        if not user.user_name:
            return set()
        subjects = set()
        for grant_id in await self.store.username_grant_ids(self.provider, user.user_name):
            grant = await self.store.get_grant(grant_id)
            if grant is not None and grant.active:
                subjects.add(grant.subject)
        return subjects

    async def _members_removed(self, group: Group, removed: set[str], kind: str) -> None:
        for member_id in sorted(removed):
            record = await self.store.get_scim_resource(self.provider, "Users", member_id)
            if record is None:
                continue  # not a user of this tenant (a nested group, or deleted already)
            user = self._from_record("Users", record)
            assert isinstance(user, User)
            for subject in sorted(await self._subjects(user)):
                signal = self._signal(kind, group, group=group.display_name, member=member_id, userName=user.user_name)
                await self.signals.reapply_policy(self.provider, subject, reason=f"scim_{kind}", signal=signal)
