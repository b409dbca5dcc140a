"""Generic OpenID Connect provider: discovery, authorization code with PKCE (S256) and a nonce,
ID token checks (signature by the OP's JWKS, iss, aud, azp, exp, iat, nonce), groups from a
claim of the ID token or of userinfo, optional upstream refresh, RP-initiated logout.

Sample configuration::

    providers:
      - id: okta
        type: oidc
        display_name: Okta
        issuer: https://example.okta.com          # exactly as in its discovery document
        client_id: 0oa1example
        client_secret: ${OKTA_CLIENT_SECRET}       # omit for a public client
        scopes: [openid, profile, email, groups, offline_access]
        groups_claim: groups                       # or a dotted path: realm_access.roles
        username_claim: preferred_username         # falls back to a verified email, then sub
        unique_usernames: false                    # true only if the OP keeps usernames unique and fixed
        use_upstream_refresh: true                 # re-read groups upstream at every broker refresh
        authorize_params: {prompt: consent}        # offline_access wants consent (OIDC Core §11)

The OP redirects back to ``{broker issuer}/callback/{id}``; register that as the client's
redirect URI. The broker's user subject is ``{id}:{sub}``, so two OPs that both issue a ``sub``
of ``12345`` stay two users. ``use_upstream_refresh`` keeps the OP's refresh token with the
grant, which the broker stores only encrypted (``signing.key_encryption_key``).
"""

from providers.oidc.config import OidcProviderConfig

__all__ = ["OidcProviderConfig"]
