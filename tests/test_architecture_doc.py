"""docs/architecture.md stays true to the code: every module, class and member it names exists,
its atomicity table covers every store method whose docstring states a rule, and the broker's
layers keep the order it draws."""

from __future__ import annotations

import importlib
import inspect
import re
import typing
from pathlib import Path

import grimp

from broker.oauth import grants, tokens
from broker.oauth.grants import GrantService
from broker.store.base import RotateOutcome, Store
from broker.store.redis_store import RedisStore
from providers import base as provider_base
from providers import registry

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
PACKAGES = ("broker", "providers", "mcp_app", "tests")


def _section(title: str) -> str:
    start = DOC.index(f"\n## {title}\n")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end != -1 else len(DOC)]


def _code_block() -> str:
    return DOC.split("```\n", 2)[1]


def test_every_path_named_exists() -> None:
    # Hyphens too: the verifier distribution lives in mcp_app/mcp-broker-verifier/.
    full = re.findall(r"\b((?:broker|providers|mcp_app|tests)/[\w/.-]*\w/?)", DOC)
    assert len(full) > 30
    missing = [p for p in full if not (ROOT / p).exists()]
    # In the diagram a bare name continues the directory of the last full path before it.
    directory = Path()
    for token in re.findall(r"(?<![\w/-])([\w/-]+\.py|[\w/-]+/)(?=[\s,)]|$)", _code_block()):
        if token.startswith(PACKAGES):
            directory = Path(token).parent
        elif not (ROOT / directory / token).exists():
            missing.append(str(directory / token))
    assert missing == []


def test_every_dotted_name_resolves() -> None:
    names = re.findall(r"`((?:broker|providers|mcp_app)(?:\.\w+)+)`", DOC)
    assert names
    unresolved = []
    for name in names:
        parts = name.split(".")
        target: object = None
        for cut in range(len(parts), 0, -1):
            try:
                target = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            for attr in parts[cut:]:
                target = getattr(target, attr, None)
            break
        if target is None:
            unresolved.append(name)
    assert unresolved == []


def _has_member(owner: object, name: str) -> bool:
    """A method, or an attribute a protocol only declares."""
    return hasattr(owner, name) or name in getattr(owner, "__annotations__", {})


def test_the_refresh_path_names_real_members() -> None:
    owners: dict[str, object] = {
        "GrantService": GrantService,
        "Store": Store,
        "RedisStore": RedisStore,
        "RefreshProvider": provider_base.RefreshProvider,
    }
    text = _section("A refresh, from route to store") + _section("Adding a provider")
    named = re.findall(r"`([A-Z]\w+)\.(\w+)`", text)
    assert len(named) >= 5
    assert [f"{c}.{m}" for c, m in named if c in owners and not _has_member(owners[c], m)] == []
    helpers = re.findall(r"`(_\w+|seal_for|ProviderConfigUnion)`", text)
    assert len(helpers) >= 5
    homes = (GrantService, grants, tokens, registry)
    assert [h for h in helpers if not any(hasattr(home, h) for home in homes)] == []
    for outcome in typing.get_args(RotateOutcome):
        assert f"`{outcome}`" in text, outcome


def test_the_atomicity_table_covers_every_rule_the_store_states() -> None:
    table = _section("Atomicity rules")
    rows = re.findall(r"^\| (`.+?) \| ", table, re.MULTILINE)
    named = {m for row in rows for m in re.findall(r"`(\w+)`", row)}
    methods = {name for name, _ in inspect.getmembers(Store, inspect.isfunction) if not name.startswith("_")}
    assert named - methods == set()
    rule = re.compile(r"MUST|atomic|single use|at most one|same step|consistent|compare-and-delete", re.I)
    stating = {m for m in methods if rule.search(inspect.getdoc(getattr(Store, m)) or "")}
    assert len(stating) > 10
    assert stating - named == set()


# The broker's layers as the page draws them, top to bottom; a module imports only from its own
# layer or those below. Leaves may be imported from anywhere. Modules not listed are not checked.
LAYERS: list[tuple[str, ...]] = [
    ("broker.app", "broker.cli", "broker.asgi", "broker.devstack"),
    ("broker.routes", "broker.services", "broker.middleware"),
    ("broker.oauth", "broker.delegation", "broker.signals", "broker.scim", "broker.security", "broker.web"),
    ("broker.policy",),
    ("broker.config", "broker.redirect_rules"),
    ("broker.store",),
]


def _layer(module: str) -> int | None:
    for depth, members in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in members):
            return depth
    return None


def test_the_broker_layers_import_downwards_only() -> None:
    graph = grimp.build_graph("broker", "providers", "mcp_app")
    for members in LAYERS:
        for name in members:
            assert any(m == name or m.startswith(name + ".") for m in graph.modules), name
    upward = []
    for module in graph.modules:
        here = _layer(module)
        if here is None:
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            there = _layer(imported)
            if there is not None and there < here:
                upward.append(f"{module} -> {imported}")
    assert upward == []
