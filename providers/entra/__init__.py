"""Microsoft Entra ID provider (MSAL auth code flow; groups claim or Microsoft Graph).

Sample configuration::

    providers:
      - id: entra
        type: entra
        display_name: Contoso (Microsoft Entra ID)
        tenant_id: 00000000-0000-0000-0000-000000000000
        client_id: 11111111-1111-1111-1111-111111111111
        client_secret: ${ENTRA_CLIENT_SECRET}
        email_domains: [contoso.com]
        # groups_from_graph: overage       # or "always"
        # resolve_group_names: false       # true: mappings may name groups (needs GroupMember.Read.All)
        # graph_scopes: [User.Read]        # delegated Graph permissions asked at sign-in
        # refresh_check: graph             # re-check the user with app-only Graph at every refresh
        # delegated_access: false          # true: keep the user's MSAL session for delegation targets
        # allowed_tenants: []              # other tenants of a multi-tenant app
        # authority_host: https://login.microsoftonline.us   # sovereign clouds
        # graph_url: https://graph.microsoft.us

    mappings:
      - id: entra-readers
        resource: notes
        provider: entra
        groups: [5f0c8d4e-0000-0000-0000-000000000001]   # group object id (or its name, see above)
        scopes: [notes:read]
      - id: entra-writers-role
        resource: notes
        provider: entra
        groups: ["role:Notes.Write"]                      # an app role, from the roles claim
        scopes: [notes:write]

App registration (Entra admin center, by an IT admin):

1. *Identity > Applications > App registrations > New registration*. Name it (for example
   "MCP broker"); supported account types: *this organizational directory only* (single
   tenant) unless ``allowed_tenants`` is used (then *any organizational directory*).
   Redirect URI: platform **Web**, ``{issuer}/callback/{provider id}``, for example
   ``https://mcp-auth.contoso.com/callback/entra``. Note the *Application (client) ID* and
   *Directory (tenant) ID* for ``client_id`` and ``tenant_id``.
2. *Certificates & secrets*: add a client secret (``client_secret``; put it in the
   environment, not in the file) or upload a certificate and give the broker a PEM holding
   its private key and certificate (``client_certificate_file``). Secrets expire: note when.
3. *API permissions > Add a permission > Microsoft Graph*:
   * Delegated ``User.Read`` (default ``graph_scopes``), or ``GroupMember.Read.All`` when
     ``resolve_group_names`` is on; used only when a user is in too many groups for the token.
   * Application ``User.Read.All`` and ``GroupMember.Read.All`` for the refresh-time re-check
     (``refresh_check: graph``): it reads ``accountEnabled`` and the current groups.
   Then *Grant admin consent for <tenant>*.
4. *Token configuration > Add groups claim*: *Security groups* (or *Groups assigned to the
   application*), ID token: *Group ID*. Users in more than 200 groups get no ``groups`` claim
   but an overage marker; the broker then asks Graph. Optionally *Add optional claim > ID >
   email*.
5. Optional: *App roles* for role-based mappings (``role:<value>``), assigned under
   *Enterprise applications > the app > Users and groups*.
"""

from providers.entra.config import EntraProviderConfig

__all__ = ["EntraProviderConfig"]
