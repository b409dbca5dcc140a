"""What every upstream identity provider shares: the normalised identity, the capability
protocols a provider may implement, and the outcomes a login can have.

In the spirit of Dex's connectors (``connector/connector.go``): small optional capabilities
instead of one large base class. Every provider is a :class:`Provider` (an id and a display
name); each provider class declares the capabilities it implements by inheriting them
explicitly, as Dex's ``var _ connector.PasswordConnector = (*ldapConnector)(nil)`` does, so
``mypy --strict`` checks every declared method and attribute and refuses to build a provider
that lacks one. The broker finds a capability with ``isinstance`` against these runtime
protocols, never with ``getattr``. :data:`CAPABILITIES` lists them all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True, slots=True)
class Identity:
    """A user as an upstream provider vouches for them, normalised across providers.

    ``subject`` is stable for the life of the account and always carries its provider: it is
    ``qualified_subject(provider_id, local)``, that is ``f"{provider_id}:{local}"``, where
    ``local`` is the provider's own stable id (an LDAP entryUUID or DN, an Entra
    ``{tid}:{oid}``, an OIDC ``sub``). Two providers can therefore never share a subject, even
    when their local ids overlap (two LDAP providers on one directory, for example). ``groups`` are the provider's group identifiers (DNs, GUIDs,
    claim values); ``group_names`` maps an identifier to a human or short name where the
    provider knows one, so mappings may use either. ``private`` is provider-only state (for
    example what a refresh-time re-check needs) and is never shown to clients.

    ``username_is_unique`` is the provider's word that no other account can present this
    username (a directory search that refuses ambiguity, an Entra UPN); only then may a grant
    rule's ``users:`` name the user by username rather than by subject. An OIDC
    ``preferred_username`` is not unique by the spec (OIDC Core §5.7) and often user-editable.
    """

    provider_id: str
    subject: str
    username: str
    email: str | None = None
    display_name: str | None = None
    groups: frozenset[str] = frozenset()
    group_names: Mapping[str, str] = field(default_factory=dict)
    private: Mapping[str, Any] = field(default_factory=dict)
    username_is_unique: bool = False
    upstream_session: str | None = None  # the provider's session id (an OIDC ``sid``), for back-channel logout


def qualified_subject(provider_id: str, local: str) -> str:
    """The one subject rule for every provider: ``{provider_id}:{local}`` (see ``Identity``)."""
    return f"{provider_id}:{local}"


class ProviderError(Exception):
    """Base of every provider failure. ``public`` is safe to show a user; ``str(exc)`` is for logs."""

    public = "Sign-in failed."


class InvalidCredentials(ProviderError):
    """Wrong password or unknown user: the user is told the same thing for both."""

    public = "The username or password is incorrect."


class AccountDisabled(ProviderError):
    """The account exists and the password may be right, but the account may not sign in."""

    public = "This account is disabled or locked. Contact your IT help desk."


class UpstreamUnavailable(ProviderError):
    """The directory or identity provider could not be reached or answered with an error."""

    public = "The sign-in service is temporarily unavailable. Please try again in a few minutes."


class UpstreamRejected(ProviderError):
    """The upstream answered, but what it answered cannot be trusted or used."""

    public = "The identity provider returned an answer that could not be accepted."


class InteractionNeeded(ProviderError):
    """The upstream issues only after the user comes back: a consent, multi-factor or conditional
    access step (Entra ``interaction_required`` / ``consent_required``), or a new sign-in (an
    upstream refresh token that expired or was revoked). ``scopes`` are those that were asked."""

    public = "The identity provider needs you to sign in again or to consent."

    def __init__(self, detail: str, scopes: Sequence[str] = ()) -> None:
        super().__init__(detail)
        self.scopes = tuple(scopes)


@dataclass(frozen=True, slots=True)
class UpstreamToken:
    """An access token the upstream issued for another API, as the user (delegated access).

    ``state`` is the provider's upstream state after the call (a rotated refresh token, an MSAL
    token cache that gained tokens) when it changed, else None: the broker keeps it sealed for
    the grant and hands it back next time. It is never shown to clients."""

    access_token: str
    expires_in: int
    scopes: frozenset[str]
    state: Mapping[str, Any] | None = None


@runtime_checkable
class Provider(Protocol):
    """What every provider is: ``open_provider`` returns one. Capabilities come on top."""

    id: str
    display_name: str


@runtime_checkable
class PasswordProvider(Provider, Protocol):
    """Checks a username and password (an LDAP directory, for example)."""

    async def login(self, username: str, password: str) -> Identity:
        """Return the identity, or raise InvalidCredentials / AccountDisabled / UpstreamUnavailable."""
        ...


@runtime_checkable
class RedirectProvider(Provider, Protocol):
    """Sends the browser upstream and turns the callback into an identity (OIDC, Entra ID).

    ``flow`` is JSON-serialisable data (nonce, PKCE verifier, ...) the broker keeps for the
    callback, encrypted at rest, for ten minutes at most.
    """

    async def login_url(self, callback_url: str, state: str) -> tuple[str, Mapping[str, Any]]:
        """Return the upstream URL and the flow data to hand back to ``handle_callback``."""
        ...

    async def handle_callback(self, callback_url: str, params: Mapping[str, str], flow: Mapping[str, Any]) -> Identity:
        """Check the callback against the stored flow and return the identity."""
        ...


@runtime_checkable
class RefreshProvider(Protocol):
    """Looks a user up again at refresh time, so group changes upstream take effect.

    ``refresh_spends_upstream_token`` is True when the re-check spends an upstream refresh
    token: the broker then never runs two re-checks of one grant at once.
    """

    refresh_spends_upstream_token: ClassVar[bool]

    async def refresh(self, identity: Identity) -> Identity:
        """Return fresh data, or raise InvalidCredentials / AccountDisabled if the user is gone."""
        ...


@runtime_checkable
class LookupProvider(Protocol):
    """Finds a user without their password (``mcp-broker explain``, admin tools)."""

    async def lookup(self, username: str) -> Identity:
        """Return the identity, or raise InvalidCredentials if there is no such user."""
        ...


@runtime_checkable
class Lifecycle(Protocol):
    """Work at the broker's start and end. Both default to doing nothing.

    ``prepare()`` is awaited in the background at start (so slow or failing work there delays
    nothing, and it must not raise); ``aclose()`` releases connections at shutdown.
    """

    async def prepare(self) -> None:
        """Warm up before the first sign-in (read discovery documents, for example)."""
        return None

    async def aclose(self) -> None:
        """Release connections and threads."""
        return None


@runtime_checkable
class FormOrigins(Protocol):
    """The origins a provider's login URL can point at: the consent and account pages'
    ``form-action`` policy allows the redirect there."""

    @property
    def origins(self) -> tuple[str, ...]:
        """Origins (``scheme://host[:port]``) the browser is sent to for sign-in."""
        ...


@runtime_checkable
class EmailDomainHints(Protocol):
    """Email domains whose users the login page sends straight to this provider."""

    @property
    def email_domains(self) -> tuple[str, ...]:
        """Domains as configured (compare them case-insensitively)."""
        ...


@runtime_checkable
class DelegatedAccess(Protocol):
    """Gets tokens for other APIs as a signed-in user, from the upstream session kept at sign-in
    (Entra: MSAL's token cache; OIDC: the upstream refresh token).

    ``state`` is the identity's provider-private data, overlaid with the latest state this method
    returned for the grant. ``delegated_spends_upstream_token`` is True when a call spends a
    single-use upstream token: the broker then runs one call per grant at a time, under the same
    lock as a refresh's re-check."""

    delegated_spends_upstream_token: ClassVar[bool]

    async def delegated_token(
        self,
        state: Mapping[str, Any],
        scopes: Sequence[str],
        *,
        audience: str | None = None,
        on_behalf_of: bool = False,
    ) -> UpstreamToken:
        """A token for ``scopes`` (and ``audience``, where the upstream takes one); raises
        InteractionNeeded, UpstreamUnavailable or UpstreamRejected."""
        ...


CAPABILITIES: tuple[type, ...] = (
    PasswordProvider,
    RedirectProvider,
    RefreshProvider,
    LookupProvider,
    Lifecycle,
    FormOrigins,
    EmailDomainHints,
    DelegatedAccess,
)
"""Every optional capability a provider can declare."""


class ProviderConfig(BaseModel):
    """Fields every provider configuration has. Subclasses add a ``type`` literal."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="Stable identifier used in mappings, callback URLs and audit events.",
    )
    display_name: str = Field(min_length=1, max_length=80, description="Shown on the login page.")

    @property
    def usernames_are_unique(self) -> bool:
        """Whether this provider's usernames identify one account (see ``Identity``)."""
        return True

    @property
    def upstream_refresh_setting(self) -> str | None:
        """The key of this entry, when set, that makes the broker keep upstream refresh tokens in
        its grants (kept only encrypted, so ``signing.key_encryption_key`` is needed); else None."""
        return None

    email_domains: list[str] = Field(
        default_factory=list,
        description="Email domains routed straight to this provider from the login page.",
    )
