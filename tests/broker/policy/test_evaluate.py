"""The pure policy function: grants, denies, hierarchies, users, names vs ids, empty results."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.config.models import MappingRule, ResourceConfig, ScopeConfig
from broker.policy import Policy
from broker.policy.evaluate import closure
from providers.base import Identity

NOTES = ResourceConfig(
    id="notes",
    uri="https://notes.example.com/mcp",
    name="Notes",
    scopes=[
        ScopeConfig(name="notes:read", description="r"),
        ScopeConfig(name="notes:write", description="w", implies=["notes:read"]),
        ScopeConfig(name="notes:admin", description="a", implies=["notes:write"]),
    ],
)
READERS_DN = "cn=mcp-readers,ou=groups,dc=corp"
WRITERS_DN = "cn=mcp-writers,ou=groups,dc=corp"


def rule(
    rule_id: str,
    scopes: list[str],
    *,
    groups: list[str] | None = None,
    users: list[str] | None = None,
    effect: str = "grant",
    provider: str = "corp",
) -> MappingRule:
    return MappingRule(
        id=rule_id,
        resource="notes",
        provider=provider,
        groups=groups or [],
        users=users or [],
        scopes=scopes,
        effect=effect,
    )  # type: ignore[arg-type]


def person(*groups: str, username: str = "alice", provider: str = "corp", unique: bool = True) -> Identity:
    names = {g: g.split(",")[0].removeprefix("cn=") for g in groups}
    return Identity(
        provider_id=provider,
        subject=f"sub-{username}",
        username=username,
        groups=frozenset(groups),
        group_names=names,
        username_is_unique=unique,
    )


POLICY = Policy(
    [NOTES],
    [
        rule("readers", ["notes:read"], groups=["mcp-readers"]),  # by short name
        rule("writers", ["notes:write"], groups=[WRITERS_DN]),  # by DN
        rule("carol-admin", ["notes:admin"], users=["carol"]),
        rule("no-interns", ["notes:write"], groups=["interns"], effect="deny"),
    ],
)


def test_grants_by_name_and_by_id() -> None:
    assert POLICY.evaluate(NOTES, person(READERS_DN)).scopes == {"notes:read"}
    writer = POLICY.evaluate(NOTES, person(WRITERS_DN))
    assert writer.scopes == {"notes:read", "notes:write"}  # write implies read
    assert writer.granted_by == {"notes:write": ["writers"], "notes:read": ["writers"]}


def test_user_rules() -> None:
    assert POLICY.evaluate(NOTES, person(username="carol")).scopes == {"notes:read", "notes:write", "notes:admin"}
    assert POLICY.evaluate(NOTES, person(username="CAROL")).scopes == {"notes:read", "notes:write", "notes:admin"}


def test_a_username_the_provider_does_not_vouch_for_grants_nothing_but_still_denies() -> None:
    # An OIDC preferred_username anyone may pick: "carol" here could be anybody.
    assert POLICY.evaluate(NOTES, person(username="carol", unique=False)).scopes == frozenset()
    by_subject = Policy([NOTES], [rule("carol-admin", ["notes:admin"], users=["sub-carol"])])
    assert by_subject.evaluate(NOTES, person(username="carol", unique=False)).scopes == {
        "notes:read",
        "notes:write",
        "notes:admin",
    }
    deny = Policy(
        [NOTES],
        [
            rule("writers", ["notes:write"], groups=[WRITERS_DN]),
            rule("no-mallory", ["notes:write"], users=["mallory"], effect="deny"),
        ],
    )
    denied = deny.evaluate(NOTES, person(WRITERS_DN, username="mallory", unique=False))
    assert denied.scopes == {"notes:read"}  # write denied; read (which write implied) stays
    assert denied.denied_by == {"notes:write": ["no-mallory"]}


def test_deny_wins_and_removes_what_implies_the_denied_scope() -> None:
    intern = person(WRITERS_DN, READERS_DN, "cn=interns,ou=groups,dc=corp")
    decision = POLICY.evaluate(NOTES, intern)
    assert decision.scopes == {"notes:read"}
    assert decision.denied_by["notes:write"] == ["no-interns"]


def test_other_provider_gets_nothing() -> None:
    assert POLICY.evaluate(NOTES, person(READERS_DN, provider="entra")).scopes == frozenset()


def test_empty_result() -> None:
    assert POLICY.evaluate(NOTES, person()).scopes == frozenset()


def test_narrow_to_the_request() -> None:
    writer = POLICY.evaluate(NOTES, person(WRITERS_DN))
    assert POLICY.narrow(NOTES, writer, None) == {"notes:read", "notes:write"}
    assert POLICY.narrow(NOTES, writer, ["notes:read"]) == {"notes:read"}
    assert POLICY.narrow(NOTES, writer, ["notes:write"]) == {"notes:read", "notes:write"}
    reader = POLICY.evaluate(NOTES, person(READERS_DN))
    assert POLICY.narrow(NOTES, reader, ["notes:write"]) == {"notes:read"}


def test_version_is_a_content_hash() -> None:
    same = Policy([NOTES], list(POLICY.rules))
    other = Policy([NOTES], list(POLICY.rules[:1]))
    assert same.version == POLICY.version != other.version


GROUPS = st.sets(st.sampled_from([READERS_DN, WRITERS_DN, "cn=interns,ou=groups,dc=corp", "cn=other,dc=x"]))
REQUESTS = st.one_of(st.none(), st.lists(st.sampled_from(["notes:read", "notes:write", "notes:admin"]), max_size=3))


@given(groups=GROUPS, requested=REQUESTS, username=st.sampled_from(["alice", "carol", "dave"]))
def test_properties(groups: set[str], requested: list[str] | None, username: str) -> None:
    identity = person(*groups, username=username)
    decision = POLICY.evaluate(NOTES, identity)
    implies = POLICY.implies(NOTES)
    # Closed under the hierarchy: whoever holds a scope holds what it implies.
    assert closure(decision.scopes, implies) == decision.scopes
    # Nothing denied survives, and nothing appears that no rule granted.
    assert not (decision.scopes & set(decision.denied_by))
    assert decision.scopes <= set(decision.granted_by)
    # A token never holds more than the decision, nor anything the request did not ask for (or imply).
    granted = POLICY.narrow(NOTES, decision, requested)
    assert granted <= decision.scopes
    if requested is not None:
        assert granted <= closure(requested, implies)
    # More groups never take a scope away unless a deny rule is involved.
    if "cn=interns,ou=groups,dc=corp" not in groups:
        bigger = POLICY.evaluate(NOTES, person(*groups, READERS_DN, username=username))
        assert decision.scopes <= bigger.scopes
