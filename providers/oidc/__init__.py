"""Generic OpenID Connect provider (authlib: discovery, PKCE, nonce, ID token checks).

Sample configuration::

    providers:
      - id: okta
        type: oidc
        display_name: Okta
        issuer: https://example.okta.com
        client_id: 0oa1example
        client_secret: ${OKTA_CLIENT_SECRET}
        groups_claim: groups
"""

from providers.oidc.config import OidcProviderConfig

__all__ = ["OidcProviderConfig"]
