"""The SCIM resources this service provider serves and what it announces about itself
(RFC 7643 §§4-8, RFC 7644 §4), all as `scim2-models` objects: no hand-written schema.

* ``User`` with the enterprise extension (``urn:ietf:params:scim:schemas:extension:enterprise:2.0:User``,
  which Entra's provisioning sends), and ``Group``;
* ``ServiceProviderConfig``: patch and filter supported; bulk, sort, ETags and changePassword
  not (declared so, and so checked by ``scim2-tester``); OAuth bearer token authentication.
"""

from __future__ import annotations

from typing import Any

from scim2_models import (
    URI,
    AuthenticationScheme,
    Bulk,
    ChangePassword,
    Context,
    EnterpriseUser,
    ETag,
    Filter,
    Group,
    ListResponse,
    Meta,
    Patch,
    Reference,
    ResourceType,
    Schema,
    ServiceProviderConfig,
    Sort,
    User,
)

ScimUser = User[EnterpriseUser]
MAX_RESULTS = 200  # one list page at most; RFC 7644 §3.4.2.4 lets the service cap ``count``
RESOURCE_MODELS: dict[str, type[ScimUser] | type[Group]] = {"Users": ScimUser, "Groups": Group}
KINDS = {"Users": "User", "Groups": "Group"}


def service_provider_config(base: str) -> dict[str, Any]:
    config = ServiceProviderConfig(
        documentation_uri=None,
        patch=Patch(supported=True),
        bulk=Bulk(supported=False, max_operations=0, max_payload_size=0),
        filter=Filter(supported=True, max_results=MAX_RESULTS),
        change_password=ChangePassword(supported=False),
        sort=Sort(supported=False),
        etag=ETag(supported=False),
        authentication_schemes=[
            AuthenticationScheme(
                type="oauthbearertoken",
                name="OAuth Bearer Token",
                description="The tenant's bearer token (scim.tenants[].token), in the Authorization header",
                primary=True,
            )
        ],
        meta=Meta(resource_type="ServiceProviderConfig", location=f"{base}/ServiceProviderConfig"),
    )
    return config.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE)


def resource_types(base: str) -> list[dict[str, Any]]:
    types = []
    for endpoint, model in RESOURCE_MODELS.items():
        resource_type = ResourceType.from_resource(model)
        resource_type.endpoint = Reference[URI](f"/{endpoint}")
        resource_type.meta = Meta(resource_type="ResourceType", location=f"{base}/ResourceTypes/{resource_type.id}")
        types.append(resource_type.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))
    return types


def schemas(base: str) -> list[dict[str, Any]]:
    found = []
    for model in (User, EnterpriseUser, Group):
        schema: Schema = model.to_schema()
        schema.meta = Meta(resource_type="Schema", location=f"{base}/Schemas/{schema.id}")
        found.append(schema.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))
    return found


def list_response(resources: list[dict[str, Any]], *, total: int, start: int) -> dict[str, Any]:
    """A ListResponse (RFC 7644 §3.4.2) of already serialised resources."""
    body: dict[str, Any] = ListResponse[ScimUser](
        total_results=total, start_index=start, items_per_page=len(resources)
    ).model_dump(scim_ctx=Context.SEARCH_RESPONSE)
    body["Resources"] = resources
    return body
