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
"""

from providers.entra.config import EntraProviderConfig

__all__ = ["EntraProviderConfig"]
