"""The store contract: every operation the broker asks of its shared state, and its atomicity rule.

Every backend MUST keep the rule stated on each method, across every replica of the broker (the
conformance suite in ``tests/broker/store/conformance.py`` checks them against each one). Only
the backend names keys or holds scripts; callers deal in the typed records of
:mod:`broker.store.records`. Every record carries an expiry: nothing outlives the lifetime
configured for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from broker.store.records import (
    AuthorizationCode,
    BrowserSession,
    ClientRegistration,
    Consent,
    Grant,
    PendingFlow,
    RefreshToken,
    StoredIdentity,
)

TakeOutcome = Literal["ok", "replayed", "missing", "wrong_client"]
RotateOutcome = Literal["ok", "rotated", "revoked", "nogrant", "unknown", "stale"]
NarrowOutcome = Literal["ok", "stale", "inactive"]
AttemptState = Literal["started", "locked", "busy"]
LoginOutcome = Literal["failed", "cleared", "void"]


@dataclass(frozen=True)
class TakeResult:
    """``ok``: the code, now spent. ``replayed``: it was spent already (its grant exists).
    ``wrong_client``: another client presented it (left unspent). ``missing``: unknown or expired."""

    outcome: TakeOutcome
    code: AuthorizationCode | None = None


@dataclass(frozen=True)
class RotateResult:
    """``ok``: this caller rotated the token. ``rotated``: another did, at ``rotated_at``, and
    ``successor`` is its answer sealed under the old token ("" once the grace window is over).
    ``revoked`` / ``nogrant`` / ``unknown``: the grant is revoked, gone, or the token unknown."""

    outcome: RotateOutcome
    rotated_at: float = 0.0
    successor: str = ""


@dataclass(frozen=True)
class AttemptStart:
    """``started``: the attempt counts as in flight. ``locked``: refused for ``retry_after``
    seconds. ``busy``: failures plus attempts in flight reach the limit; retry shortly."""

    state: AttemptState
    retry_after: int = 0


@dataclass(frozen=True)
class LocksReached:
    """Which locks a failed sign-in has just reached (each reported once, when reached)."""

    pair: bool = False
    account: bool = False


@dataclass(frozen=True)
class Hit:
    count: int
    retry_after: int


@dataclass(frozen=True)
class RecheckClaim:
    """A kept re-check answer (``identity``, from a lookup begun at ``checked_at``, kept for
    ``expires_in`` more seconds); or ``lock``, the caller's token for the lookup lock; or neither
    (another holds the lock)."""

    identity: StoredIdentity | None = None
    checked_at: float = 0.0
    expires_in: float = 0.0
    lock: str | None = None


class SigningKeyStore(Protocol):
    """Where the signing key ring lives (its private keys sealed by the caller)."""

    async def signing_keys(self) -> list[dict[str, Any]]:
        """Every stored signing key record, in no particular order."""

    async def save_signing_key(self, kid: str, record: Mapping[str, Any]) -> None:
        """Add one key record to the ring (replacing one of the same ``kid``)."""

    async def drop_signing_keys(self, kids: Sequence[str]) -> None:
        """Remove these keys from the ring."""

    async def lock_signing_keys(self, seconds: int) -> str | None:
        """Take the ring's lock, so one replica at a time creates keys: the holder's token, or
        None if another holds it. At most one holder across replicas; the lock ends by itself
        after ``seconds``."""

    async def unlock_signing_keys(self, token: str) -> None:
        """Free the ring's lock only if ``token``'s holder still holds it (compare-and-delete)."""

    async def signing_keys_locked(self) -> bool:
        """Whether any replica holds the ring's lock now."""


class Store(SigningKeyStore, Protocol):
    # -- clients ---------------------------------------------------------------------------
    async def save_client(self, client: ClientRegistration, ttl: int) -> None:
        """Store a registered client for ``ttl`` seconds, replacing any earlier one."""

    async def get_client(self, client_id: str, *, touch_ttl: int | None = None) -> ClientRegistration | None:
        """A registered client, or None. With ``touch_ttl`` its expiry restarts in the same step."""

    # -- pending authorization flows -------------------------------------------------------
    async def save_flow(self, flow_id: str, flow: PendingFlow, ttl: int) -> None:
        """Store a new flow for ``ttl`` seconds."""

    async def get_flow(self, flow_id: str) -> PendingFlow | None:
        """A flow, or None once taken or expired."""

    async def update_flow(self, flow_id: str, flow: PendingFlow) -> bool:
        """Replace a flow, keeping its expiry. MUST NOT recreate a flow that was taken or has
        expired meanwhile (False then): replace-if-present is one atomic step."""

    async def take_flow(self, flow_id: str) -> PendingFlow | None:
        """Remove and return a flow. Single use across replicas: of concurrent takes, exactly one
        gets the flow, the others None."""

    async def spend_flow(
        self, flow_id: str, *, grant_id: str, code: AuthorizationCode, code_ttl: int, subject: str, consent: Consent
    ) -> bool:
        """The end of a sign-in in one call: spend the flow (as :meth:`take_flow`) and, only if
        this call spent it, store its authorization code (as :meth:`save_code`) and remember the
        user's consent (as :meth:`remember_consent`). False, with nothing stored, if the flow was
        gone: of concurrent calls for one flow exactly one returns True, and only its code is stored."""

    async def count_flow_attempt(self, flow_id: str) -> int:
        """Count one more failed sign-in on a flow and return the new count, atomically however
        many arrive at once (no two callers see the same number); 0 if the flow has expired.
        The count lives exactly as long as its flow."""

    async def save_upstream_pointer(self, upstream_state: str, flow_id: str, ttl: int) -> None:
        """Remember which flow the ``state`` sent to an upstream provider belongs to (only its hash
        is kept), for ``ttl`` seconds."""

    async def get_upstream_pointer(self, upstream_state: str) -> str | None:
        """The flow id an upstream ``state`` points to, without spending it."""

    async def take_upstream_pointer(self, upstream_state: str) -> str | None:
        """Spend an upstream ``state``. Single use across replicas: of concurrent takes, exactly one
        gets the flow id."""

    # -- codes and grants ------------------------------------------------------------------
    async def save_code(self, grant_id: str, code: AuthorizationCode, ttl: int) -> None:
        """Store an authorization code under the grant id it will start, for ``ttl`` seconds."""

    async def take_code(self, grant_id: str, code_hash: str, client_id: str) -> TakeResult:
        """Spend a code. MUST be atomic and single use across replicas: of concurrent exchanges
        exactly one gets ``ok``. Another client's attempt is refused (``wrong_client``) without
        spending it; a wrong secret for a known grant id burns the code (``missing``); a code
        whose grant exists reports ``replayed``."""

    async def create_grant(self, grant: Grant, refresh_hash: str, refresh_ttl: int, grant_ttl: int) -> None:
        """Store a grant with its first refresh token (active) in one atomic step, and index the
        grant under its user until the user's longest-lived grant expires (and likewise under its
        provider and username, and under its upstream session when the identity names one)."""

    async def get_grant(self, grant_id: str) -> Grant | None:
        """A grant, or None once expired."""

    async def get_grant_and_refresh(self, grant_id: str, refresh_hash: str) -> tuple[Grant | None, RefreshToken | None]:
        """A grant and one of its refresh tokens, read together (one consistent snapshot)."""

    async def get_refresh(self, grant_id: str, refresh_hash: str) -> RefreshToken | None:
        """One refresh token's record, or None if unknown or expired."""

    async def get_successor(self, grant_id: str, refresh_hash: str) -> str | None:
        """The sealed answer a rotated token's retries get, while the grace window lasts."""

    async def rotate_refresh(
        self,
        grant_id: str,
        old_hash: str,
        new_hash: str,
        *,
        successor: str,
        new_ttl: int,
        rotated_ttl: int,
        successor_ttl: int = 60,
        scopes: str,
        identity: StoredIdentity | None = None,
        now: float | None = None,
        epoch: int = 0,
    ) -> RotateResult:
        """Swap an active refresh token for ``new_hash``. MUST be atomic: of concurrent rotations
        of one token exactly one gets ``ok``; every other gets ``rotated`` with the winner's
        ``successor``. A revoked grant never rotates (``revoked``), whatever the interleaving.
        ``epoch`` is the grant's epoch the caller minted from (``Grant.epoch``): a grant narrowed
        since (``narrow_grant``) does not rotate (``stale``, nothing written), so neither the wider
        scopes nor a token of the ended handle are written back over the narrowing.
        In the same step the grant's scopes, last refresh and (when given) identity are written,
        and nothing else writes them but ``narrow_grant`` (which moves the epoch): so while a token
        is active and the epoch unchanged, its grant holds what the rotation that issued it wrote,
        apart from its status (a caller may keep that grant and start the next rotation from it,
        :mod:`broker.oauth.grant_memo`). The rotated marker lives ``rotated_ttl`` seconds (a later
        reuse is theft), the successor only ``successor_ttl``."""

    async def narrow_grant(
        self, grant_id: str, scopes: str, *, epoch: int, tokens_expire_at: float, reason: str
    ) -> NarrowOutcome:
        """Narrow an active grant's scopes to ``scopes`` in place (the caller computed them from the
        grant as read at ``epoch``) and end every access token it issued so far. MUST be atomic
        with the grant's epoch: only a grant still at ``epoch`` is narrowed (``stale`` otherwise,
        nothing written; ``inactive`` for a revoked or unknown grant). In the same step the grant
        moves to ``epoch + 1`` (so its ``token_handle`` changes) and its cached downstream tokens are
        dropped; its old handle is recorded in the revoked set until ``tokens_expire_at`` and
        announced on the revocation channel like a revoked grant. No grant is narrowed before its
        old handle is announced (fail closed if a step is cut short)."""

    async def lock_grant(self, grant_id: str, seconds: float) -> str | None:
        """Take a grant's lock for ``seconds``: the holder's token, or None if another holds it.
        At most one holder at a time across replicas."""

    async def unlock_grant(self, grant_id: str, token: str) -> None:
        """Free the lock only if ``token``'s holder still holds it (compare-and-delete, atomic): a
        holder slower than its lock's expiry MUST NOT free a lock another has taken since."""

    async def revoke_grant(self, grant_id: str, reason: str) -> bool:
        """Mark a grant revoked, record its current ``token_handle`` in the revoked set and announce
        it to resource servers (the handles of earlier epochs were announced when they ended),
        and in the step that marks it drop its vault entry (``put_upstream_tokens``), its cached
        downstream tokens (``put_downstream_token``) and the provider-private part of its identity
        (upstream tokens). True if it was active. A revoked grant stays revoked. No grant is marked revoked before it
        is in the revoked set and announced (fail closed if a step is cut short)."""

    async def put_upstream_tokens(self, grant_id: str, sealed: str, ttl: float) -> bool:
        """Keep ``sealed`` (upstream tokens, already sealed by the caller) as the grant's vault entry,
        replacing the one before, for ``ttl`` seconds at most and never past the grant's own expiry.
        MUST be atomic with the grant's status: only an active grant gets one (False otherwise),
        so a write racing a revocation cannot outlive it."""

    async def get_upstream_tokens(self, grant_id: str) -> str | None:
        """The grant's vault entry as it was put, or None (none kept, expired, or the grant revoked:
        ``revoke_grant`` drops it in the step that marks the grant)."""

    async def put_downstream_token(self, grant_id: str, slot: str, sealed: str, ttl: float) -> bool:
        """Cache ``sealed`` (a downstream token of delegated access, sealed by the caller) under the
        grant for ``slot`` (a target and scope set), replacing the one before, for ``ttl`` seconds at
        most and never past the grant's own expiry. MUST be atomic with the grant's status: only an
        active grant gets one (False otherwise), so a write racing a revocation cannot outlive it."""

    async def get_downstream_token(self, grant_id: str, slot: str) -> str | None:
        """The grant's cached downstream token for ``slot``, or None (none, expired, or the grant
        revoked: ``revoke_grant`` drops every one of the grant's in the step that marks it)."""

    async def user_grant_ids(self, subject: str) -> list[str]:
        """Ids of a user's grants not yet expired (some may be revoked)."""

    async def username_grant_ids(self, provider_id: str, username: str) -> list[str]:
        """Ids of the grants not yet expired of a provider's user named ``username`` (compared
        case-insensitively), as ``create_grant`` indexed them; some may be revoked."""

    async def session_grant_ids(self, provider_id: str, session: str) -> list[str]:
        """Ids of the grants not yet expired started from one upstream session (an OIDC ``sid``:
        the identity's ``upstream_session``), as ``create_grant`` indexed them; some may be revoked."""

    async def revoked(self) -> list[str]:
        """Token handles (``Grant.token_handle``: grant ids, and ``{id}.{epoch}`` for the epochs a
        narrowing ended) whose tokens have not all expired yet."""

    # -- browser sessions ------------------------------------------------------------------
    async def save_session(self, token: str, session: BrowserSession, ttl: int) -> None:
        """Store a session under its cookie token (only the token's hash is kept)."""

    async def get_session(self, token: str) -> BrowserSession | None:
        """The session a cookie token opens, or None."""

    async def end_session(self, token: str) -> None:
        """Forget a session at once, on every replica."""

    # -- remembered consents ---------------------------------------------------------------
    async def remember_consent(self, subject: str, client_id: str, resource: str, scopes: list[str]) -> None:
        """Remember (replacing) what a user granted one client for one resource."""

    async def consents(self, subject: str) -> list[Consent]:
        """A user's remembered consents, sorted by client and resource."""

    async def forget_consent(self, subject: str, client_id: str, resource: str) -> bool:
        """Forget one consent; True if there was one."""

    # -- sign-in throttling ----------------------------------------------------------------
    async def start_login_attempt(
        self,
        provider_id: str,
        username: str,
        source: str | None,
        *,
        pair_limit: int,
        account_limit: int,
        address_limit: int,
        in_flight_ttl: int,
    ) -> AttemptStart:
        """Start one password attempt for a username from ``source`` (an address), in three
        counts: the pair (username and address), the account (the username from every address)
        and, if ``source`` is given, the address (across usernames). MUST be atomic per count: the
        attempt starts only while failures plus attempts in flight stay under each count's limit,
        so parallel guesses cannot all pass one check; and it starts in all of them or in none.
        ``locked`` names the username's lock before the address's, and a lock before ``busy``.
        Usernames are compared case-insensitively."""

    async def finish_login_attempt(
        self,
        provider_id: str,
        username: str,
        source: str | None,
        outcome: LoginOutcome,
        *,
        window: int,
        pair_limit: int,
        account_limit: int,
    ) -> LocksReached:
        """Settle an attempt started by :meth:`start_login_attempt`, atomically per count:
        ``failed`` counts a failure for the pair, the account and the address (each for
        ``window`` seconds from its first), ``cleared`` clears the pair's, ``void`` neither.
        Reports the locks on the username this failure has just reached."""

    async def clear_login_failures(self, provider_id: str, username: str) -> bool:
        """Clear a username's failures for every address and the account. True if any."""

    # -- request rate limits ---------------------------------------------------------------
    async def count_request(self, limit_name: str, subject: str, *, window: int) -> Hit:
        """Count one request by ``subject`` in a fixed window of ``window`` seconds, atomically:
        the count so far and the seconds left in the window."""

    # -- shared upstream re-checks (tokens.upstream_recheck_interval) -----------------------
    async def claim_recheck(
        self, provider_id: str, subject: str, *, not_before: float, lock_seconds: float
    ) -> RecheckClaim:
        """One atomic step: the user's kept re-check answer if there is one from a lookup begun at
        or after ``not_before`` (epoch seconds); else the lookup lock, if nobody holds it (for
        ``lock_seconds``, then it ends by itself); else neither (another process is looking the user
        up: poll again). At most one holder at a time across replicas."""

    async def finish_recheck(
        self,
        provider_id: str,
        subject: str,
        lock: str | None,
        identity: StoredIdentity | None,
        *,
        checked_at: float = 0.0,
        ttl: float = 0.0,
    ) -> bool:
        """End a lookup, atomically. With ``identity`` (a good answer, from a lookup begun at
        ``checked_at``) the answer is kept for ``ttl`` seconds, replacing any other, but only if
        ``lock`` still holds the lock: a holder slower than its lock, or one whose answer was
        forgotten meanwhile, keeps nothing (False). Without ``identity`` (the user is gone or
        disabled, or the lookup failed) any kept answer is dropped. Either way the lock is freed
        if ``lock`` holds it (compare-and-delete)."""

    async def forget_recheck(self, provider_id: str, subject: str) -> None:
        """Drop the user's kept answer and any lookup lock, so a lookup in progress keeps nothing
        and the next refresh asks upstream (used when an administrator revokes the user)."""

    # -- redeemed identity assertions (ID-JAG ``jti``) ----------------------------------------
    async def claim_assertion_jti(self, issuer: str, jti: str, expires_at: float) -> bool:
        """Spend an assertion's ``jti`` (RFC 7521 §5.2, RFC 7519 §4.1.7): True for the first claim
        of ``jti`` from ``issuer``, False ever after until ``expires_at`` (epoch seconds), when the
        record ends by itself. Single use across replicas: of concurrent claims exactly one is True."""

    async def release_assertion_jti(self, issuer: str, jti: str) -> None:
        """Forget a claim of ``claim_assertion_jti`` whose handling failed before it took effect,
        so the sender's retry is handled rather than refused as a replay. Only for handling that
        may safely run twice (an upstream signal's effect); never for a grant that issues tokens."""

    # -- upstream signals (broker.signals) ---------------------------------------------------
    async def record_signal(self, provider_id: str, record: Mapping[str, Any], *, keep: int) -> None:
        """Add one signal's record (JSON-serialisable) to the provider's recent signals, keeping the
        newest ``keep``, in one atomic step."""

    async def recent_signals(self, provider_id: str, limit: int) -> list[dict[str, Any]]:
        """The provider's recent signal records, newest first, at most ``limit``."""

    # -- SCIM provisioning (RFC 7644), per tenant ------------------------------------------
    async def save_scim_resource(
        self,
        tenant: str,
        kind: str,
        resource_id: str,
        record: Mapping[str, Any],
        index: Mapping[str, str],
        *,
        create: bool,
        expected: Mapping[str, Any] | None = None,
    ) -> Literal["ok", "conflict", "missing", "stale"]:
        """Write one SCIM resource and its lookup entries (``index``: attribute -> value, values
        already normalised by the caller) in one step: ``conflict`` (nothing written) when
        another resource of the tenant and kind holds one of the values, or ``create`` and the id
        exists; ``missing`` when not ``create`` and the id does not exist (a replace never
        recreates a deleted resource); ``stale`` when ``expected`` (the record the change was
        made from) is no longer the stored one, so of concurrent read-modify-writes of one
        resource exactly one wins. The resource's former entries go in the same step. SCIM data
        has no expiry: it lives until its provisioning client deletes it."""

    async def get_scim_resource(self, tenant: str, kind: str, resource_id: str) -> dict[str, Any] | None:
        """One SCIM resource's record, or None."""

    async def find_scim_resource(self, tenant: str, kind: str, attribute: str, value: str) -> str | None:
        """The id of the resource whose indexed ``attribute`` is ``value`` (normalised), or None."""

    async def list_scim_resources(self, tenant: str, kind: str) -> list[tuple[str, dict[str, Any]]]:
        """Every (id, record) of the tenant and kind, in id order."""

    async def delete_scim_resource(self, tenant: str, kind: str, resource_id: str) -> bool:
        """Delete a resource and its lookup entries in one step; False when it was not there."""
