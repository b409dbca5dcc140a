"""The verifier stands alone: it loads without the broker, and shares the broker's revocation keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from broker.store.keys import Keys
from mcp_broker_verifier import revocation_keys
from mcp_broker_verifier.redis_client import create_redis
from mcp_broker_verifier.revocations import RevocationWatcher

ROOT = Path(__file__).resolve().parents[2]
VERIFIER_MODULES = [
    "mcp_broker_verifier.verifier",
    "mcp_broker_verifier.introspection",
    "mcp_broker_verifier.revocations",
    "mcp_broker_verifier.auth",
    "mcp_broker_verifier.protection",
]
NOT_NEEDED = ["broker", "providers", "ldap3", "msal", "authlib", "fastapi", "prometheus_client", "pydantic_settings"]


def test_importing_the_verifier_loads_nothing_of_the_broker() -> None:
    code = (
        "import json, sys\n"
        + "".join(f"import {name}\n" for name in VERIFIER_MODULES)
        + f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({NOT_NEEDED!r}))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == []


def test_the_broker_and_the_verifier_read_one_revocation_key_contract() -> None:
    watcher = RevocationWatcher(create_redis("redis://127.0.0.1:1"), key_prefix="tenant7")
    keys = Keys("tenant7")
    assert (watcher.set_key, watcher.channel) == (keys.revoked(), keys.revocation_channel())
    assert (keys.revoked(), keys.revocation_channel()) == (
        revocation_keys.revoked_set("tenant7"),
        revocation_keys.revocation_channel("tenant7"),
    )
    assert keys.revoked() == "tenant7:{revoked}"  # the hash tag: one Cluster slot for the set
    assert keys.revocation_channel() == "tenant7:revocations"
