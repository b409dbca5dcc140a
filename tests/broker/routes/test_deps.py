"""Routes receive their services as FastAPI dependencies (``broker.routes.deps``): a test can
replace one through ``app.dependency_overrides``, and no route reaches past them to the
``Services`` that ``create_app`` built."""

from __future__ import annotations

import ast
import inspect
import secrets
from pathlib import Path

import httpx

from broker.app import create_app
from broker.config import parse_config
from broker.config.models import BrokerConfig
from broker.devstack import RedisServer, Slapd, free_port
from broker.routes.deps import get_config
from tests.broker.flows import broker_yaml
from tests.http import running

ROUTES = Path(__file__).parents[3] / "broker" / "routes"


def test_a_route_takes_the_service_it_declares_from_its_dependency(redis_server: RedisServer, slapd: Slapd) -> None:
    port = free_port()
    prefix = f"t{secrets.token_hex(6)}"
    served = parse_config(broker_yaml(port, redis_server.url, slapd, prefix=prefix))
    other = parse_config(broker_yaml(port, redis_server.url, slapd, prefix=prefix, issuer_path="/elsewhere"))
    app = create_app(served)

    def replaced() -> BrokerConfig:
        return other

    app.dependency_overrides[get_config] = replaced
    with running(app, port):
        response = httpx.get(f"{served.issuer}/.well-known/oauth-authorization-server")
    assert response.status_code == 200
    assert response.json()["issuer"] == other.issuer != served.issuer


def test_only_the_deps_module_reaches_the_services() -> None:
    reaching = []
    for module in sorted(ROUTES.glob("*.py")):
        if module.name == "deps.py":
            continue
        tree = ast.parse(module.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (
                node.module == "broker.services" or any(a.name == "get_services" for a in node.names)
            ):
                reaching.append(f"{module.name} imports {node.module}")
            if isinstance(node, ast.Attribute) and node.attr == "state" and ast.unparse(node) == "request.app.state":
                reaching.append(f"{module.name} reads request.app.state")
    assert reaching == []


def test_route_modules_stay_small() -> None:
    # openapi.py holds the OpenAPI declarations (schemas, examples), not routes.
    sizes = {m.name: len(m.read_text().splitlines()) for m in ROUTES.glob("*.py") if m.name != "openapi.py"}
    assert {name: lines for name, lines in sizes.items() if lines >= 300} == {}


def test_every_dependency_runs_on_the_event_loop() -> None:
    """A plain ``def`` dependency is run in FastAPI's thread pool: a thread hand-off per
    dependency per request, which cost a refresh a fifth of its CPU (``bench/refresh.py``)."""
    from fastapi.params import Depends as DependsParam

    from broker.routes import admin, deps

    found = []
    for module in (deps, admin):
        for name in dir(module):
            marker = getattr(module, name)
            for meta in getattr(marker, "__metadata__", ()):
                if isinstance(meta, DependsParam) and meta.dependency is not None:
                    found.append(meta.dependency)
    assert len(found) >= 15
    assert all(inspect.iscoroutinefunction(f) for f in found), [
        f.__name__ for f in found if not inspect.iscoroutinefunction(f)
    ]
