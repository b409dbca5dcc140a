"""The chart's values: the schema rejects typos, missing secrets fail rendering with a clear
message, and each option renders what it promises."""

from __future__ import annotations

import base64
import importlib.util
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.deploy.chart import CHART_DIR, RELEASE, ROOT, Rendered, containers, env_of, example, render

Values = dict[str, Any]


def _schema_error(values: Values) -> str:
    with pytest.raises(helm.HelmValuesError) as info:
        render(values)
    return str(info.value)


def _render_error(values: Values) -> str:
    with pytest.raises(helm.HelmRenderError) as info:
        render(values)
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# values.schema.json


def _set(path: str, value: Any) -> Callable[[Values], None]:
    def change(values: Values) -> None:
        *parents, last = path.split(".")
        node: Any = values
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


TYPOS = {
    "top-level key": (_set("brokr", {"replicaCount": 3}), "'brokr' not allowed"),
    "broker config key": (_set("config.tokens.acess_token_ttl", "5m"), "'acess_token_ttl' not allowed"),
    "provider key": (_set("config.providers.0.tenant", "x"), "'tenant' not allowed"),
    "policy key": (_set("policy.mappings.0.group", ["x"]), "'group' not allowed"),
    "secret reference key": (_set("secrets.keyEncryptionKey.existingSecre", "x"), "'existingSecre' not allowed"),
    "kubernetes resources key": (_set("broker.resources.limits.cpus", "1"), "'cpus' not allowed"),
    "security context key": (_set("mcpApp.securityContext.readOnlyRootFs", True), "'readOnlyRootFs' not allowed"),
    "network policy peer": (_set("networkPolicy.ldap.to", [{"ipblock": {"cidr": "10.0.0.0/8"}}]), "'ipblock'"),
    "wrong type": (_set("broker.replicaCount", "two"), "broker/replicaCount"),
    "unknown provider type": (_set("config.providers.0.type", "saml"), "config/providers/0/type"),
    "latest tag": (_set("image.tag", "latest"), "image/tag"),
    "redis scheme": (_set("redis.url", "http://redis:6379"), "redis/url"),
    "literal secret in the config": (_set("config.providers.0.client_secret", "hunter2"), "client_secret"),
}


@pytest.mark.parametrize("case", TYPOS.keys())
def test_a_typo_fails_the_schema(case: str) -> None:
    change, expected = TYPOS[case]
    values = example("entra-only")
    change(values)
    message = _schema_error(values)
    assert "values don't meet the specifications of the schema" in message
    assert expected in message


def test_the_schema_is_generated_from_the_current_models() -> None:
    """values.schema.json is written by deploy/helm/generate_schema.py from the broker's
    configuration models: a key added to the broker shows up here until the schema is rebuilt."""
    spec = importlib.util.spec_from_file_location("generate_schema", ROOT / "deploy" / "helm" / "generate_schema.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    current = (CHART_DIR / "values.schema.json").read_text(encoding="utf-8")
    assert module.render() == current, "run: .venv/bin/python deploy/helm/generate_schema.py"


def _objects(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            yield path, node
        for key, value in node.items():
            yield from _objects(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _objects(value, f"{path}/{index}")


# Kubernetes objects passed through as they are, validated by the API server.
OPEN_OBJECTS = {"nodeAffinity", "podAffinity", "podAntiAffinity", "csi", "global"}


def test_every_schema_object_is_closed() -> None:
    schema = yaml.safe_load((CHART_DIR / "values.schema.json").read_text())
    for path, node in _objects(schema):
        if path.rsplit("/", 1)[-1] in OPEN_OBJECTS or path.endswith("/if"):
            continue
        if "properties" in node:
            assert node.get("additionalProperties") is False or "allOf" in node, path
        else:
            assert isinstance(node.get("additionalProperties"), dict), f"{path}: an open object"


def test_the_default_values_pass_the_schema() -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        chart.validate_schema({})


# ---------------------------------------------------------------------------------------------
# Every value documented (helm-docs `# --` comments)


def test_every_value_is_documented() -> None:
    """Each key of values.yaml has a `# --` comment above it, or sits inside a documented key."""
    lines = (CHART_DIR / "values.yaml").read_text(encoding="utf-8").splitlines()
    documented_at: list[int] = []  # indentation of documented ancestors
    undocumented = []
    for index, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        documented_at = [i for i in documented_at if i < indent]
        above = index - 1
        while above >= 0 and lines[above].strip().startswith("#") and not lines[above].strip().startswith("# --"):
            above -= 1
        has_doc = above >= 0 and lines[above].strip().startswith("# --")
        is_section = index + 1 < len(lines) and re.match(r"^ *[#A-Za-z]", lines[index + 1] or "") is not None
        if has_doc:
            documented_at.append(indent)
        elif not documented_at and not (is_section and line.rstrip().endswith(":")):
            undocumented.append(line.strip())
    assert undocumented == []


# ---------------------------------------------------------------------------------------------
# Required values and secrets fail rendering with a message naming them


def _without(path: str) -> Callable[[Values], None]:
    def change(values: Values) -> None:
        *parents, last = path.split(".")
        node: Any = values
        for part in parents:
            node = node[part]
        node.pop(last)

    return change


MISSING = {
    "key encryption key": (
        "entra-only",
        _without("secrets.keyEncryptionKey"),
        "secrets.keyEncryptionKey is required: set secrets.keyEncryptionKey.existingSecret",
    ),
    "provider secret": (
        "entra-only",
        _set("secrets.env.ENTRA_CLIENT_SECRET", {}),
        "secrets.env.ENTRA_CLIENT_SECRET is required",
    ),
    "secret referenced but not provided": (
        "entra-only",
        _without("secrets.env"),
        "refers to ${ENTRA_CLIENT_SECRET}, but no environment variable ENTRA_CLIENT_SECRET is set",
    ),
    "redis password": ("entra-only", _set("redis.auth", {"enabled": True, "key": "p"}), "redis.auth is required"),
    "sentinel password": (
        "entra-ldap-sentinel",
        _set("redis.sentinelAuth", {"enabled": True, "key": "p"}),
        "redis.sentinelAuth is required",
    ),
    "admin token": (
        "entra-only",
        _set("secrets.adminToken", {"enabled": True, "key": "t"}),
        "secrets.adminToken is required",
    ),
    "bundled redis password": (
        "ldap-only",
        _set("redis.auth", {"enabled": True, "key": "redis-password"}),
        "redis.auth is required",
    ),
    "issuer": ("entra-only", _set("config.issuer", ""), "config.issuer is required"),
    "image repository": ("entra-only", _set("image.repository", ""), "image.repository is required"),
    "redis url": ("entra-only", _set("redis.url", ""), "redis.url is required"),
    "mcp resource url": ("entra-only", _set("mcpApp.resourceUrl", ""), "mcpApp.resourceUrl is required"),
}


@pytest.mark.parametrize("case", MISSING.keys())
def test_a_missing_required_value_fails_with_a_clear_message(case: str) -> None:
    name, change, expected = MISSING[case]
    values = example(name)
    change(values)
    assert expected in _render_error(values)


def test_upstream_refresh_without_a_key_encryption_key_fails_at_render() -> None:
    values = example("ldap-only")  # signing keys from a Secret, so no key encryption key
    values["config"]["providers"].append(
        {
            "id": "okta",
            "type": "oidc",
            "display_name": "Okta",
            "issuer": "https://example.okta.com",
            "client_id": "abc",
            "use_upstream_refresh": True,
        }
    )
    assert "config.providers[1] (okta) has use_upstream_refresh, which needs secrets.keyEncryptionKey" in (
        _render_error(values)
    )


def test_nothing_renders_from_the_defaults() -> None:
    """The defaults hold no placeholder: issuer, image and secrets must be given."""
    assert "is required" in _render_error({})


REJECTED = {
    "http issuer": (_set("config.issuer", "http://mcp.example.com"), "must be an https:// URL"),
    "trailing slash": (_set("config.issuer", "https://mcp.example.com/"), "must not end with '/'"),
    "password in the redis url": (_set("redis.url", "redis://:pw@redis:6379/0"), "must not contain credentials"),
    "resource not in the policy": (
        _set("mcpApp.resourceUrl", "https://other.example.com/mcp"),
        "is not the uri of any policy.resources entry",
    ),
    "short admin token": (
        _set("secrets.adminToken", {"enabled": True, "key": "t", "value": "short"}),
        "at least 32 characters",
    ),
}


def test_mcp_app_gets_the_sentinel_password_and_the_redis_ca() -> None:
    values = example("entra-only")
    values["redis"]["sentinelAuth"] = {"enabled": True, "key": "p", "existingSecret": "s"}
    values["redis"]["tls"] = {"caSecret": "redis-ca", "caKey": "ca.crt"}
    rendered = render(values)
    env = {e["name"]: e for e in containers(rendered.get("Deployment", MCP))[0]["env"]}
    assert env["MCP_APP_REDIS_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "s", "key": "p"}
    assert env["MCP_APP_REDIS_CA_FILE"]["value"] == "/etc/mcp-broker/redis-ca/ca.crt"


@pytest.mark.parametrize("case", REJECTED.keys())
def test_an_unusable_value_is_rejected(case: str) -> None:
    change, expected = REJECTED[case]
    values = example("entra-only")
    change(values)
    assert expected in _render_error(values)


# ---------------------------------------------------------------------------------------------
# Options


def test_secrets_given_as_values_go_into_the_chart_secret() -> None:
    values = example("entra-only")
    kek = base64.urlsafe_b64encode(b"k" * 32).decode()
    values["secrets"]["keyEncryptionKey"] = {"key": "key-encryption-key", "value": kek}
    values["secrets"]["env"]["ENTRA_CLIENT_SECRET"] = {"value": "entra-secret"}
    values["secrets"]["adminToken"] = {"enabled": True, "key": "admin-token", "value": "a" * 40}
    values["redis"]["auth"] = {"enabled": True, "key": "redis-password", "value": "redis-pass"}
    rendered = render(values)
    secret = rendered.get("Secret", RELEASE + "-mcp-broker")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == {
        "key-encryption-key": kek,
        "ENTRA_CLIENT_SECRET": "entra-secret",
        "admin-token": "a" * 40,
        "redis-password": "redis-pass",
    }
    env = env_of(containers(rendered.broker)[0])
    assert env["MCPB_KEY_ENCRYPTION_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": RELEASE + "-mcp-broker",
        "key": "key-encryption-key",
    }
    assert env["ENTRA_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "ENTRA_CLIENT_SECRET"
    assert rendered.broker_config["admin"] == {"token": "${MCPB_ADMIN_TOKEN}"}
    # A new secret value rolls the pods.
    before = rendered.broker["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
    values["redis"]["auth"]["value"] = "another-pass"
    after = render(values).broker["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
    assert before != after


def test_existing_secrets_create_no_secret() -> None:
    for name in ("entra-only", "ldap-only", "entra-ldap-sentinel"):
        assert render(example(name)).kind("Secret") == []


def test_the_config_holds_references_never_secret_values() -> None:
    values = example("entra-only")
    values["secrets"]["env"]["ENTRA_CLIENT_SECRET"] = {"value": "s3cr3t-value"}
    rendered = render(values)
    assert "s3cr3t-value" not in rendered.broker_yaml
    assert rendered.broker_config["providers"][0]["client_secret"] == "${ENTRA_CLIENT_SECRET}"
    assert rendered.broker_config["redis"]["password"] == "${REDIS_PASSWORD}"
    assert rendered.broker_config["signing"]["key_encryption_key"] == "${MCPB_KEY_ENCRYPTION_KEY}"


def _paths(rendered: Rendered) -> dict[str, dict[str, str]]:
    ingress = rendered.get("Ingress", RELEASE + "-mcp-broker")
    return {
        rule["host"]: {p["path"]: p["backend"]["service"]["name"] for p in rule["http"]["paths"]}
        for rule in ingress["spec"]["rules"]
    }


BROKER = RELEASE + "-mcp-broker"
MCP = RELEASE + "-mcp-broker-mcp-app"


def test_ingress_on_one_host_routes_well_known_paths() -> None:
    rendered = render(example("entra-only"))
    assert _paths(rendered) == {
        "mcp.example.com": {
            "/.well-known/oauth-authorization-server": BROKER,
            "/.well-known/openid-configuration": BROKER,
            "/": BROKER,
            "/.well-known/oauth-protected-resource": MCP,
            "/mcp": MCP,
        }
    }
    tls = rendered.get("Ingress", BROKER)["spec"]["tls"]
    assert tls == [{"secretName": "mcp-example-com-tls", "hosts": ["mcp.example.com"]}]


def test_ingress_on_two_hosts_with_an_issuer_path() -> None:
    values = example("entra-ldap-sentinel")
    values["config"]["issuer"] = "https://mcp-auth.example.com/tenant-a"
    values["ingress"]["tls"] = [{"secretName": "wildcard-tls"}]
    rendered = render(values)
    assert _paths(rendered) == {
        "mcp-auth.example.com": {
            "/.well-known/oauth-authorization-server": BROKER,
            "/.well-known/openid-configuration": BROKER,
            "/tenant-a": BROKER,
        },
        "mcp.example.com": {"/.well-known/oauth-protected-resource": MCP, "/notes/mcp": MCP},
    }
    assert rendered.get("Ingress", BROKER)["spec"]["tls"] == [
        {"secretName": "wildcard-tls", "hosts": ["mcp-auth.example.com", "mcp.example.com"]}
    ]
    env = env_of(containers(rendered.mcp_app)[0])
    assert env["MCP_APP_JWKS_URL"]["value"] == f"http://{BROKER}.mcp.svc:80/tenant-a/jwks.json"


def test_ingress_is_optional() -> None:
    values = example("entra-only")
    values["ingress"]["enabled"] = False
    rendered = render(values)
    assert rendered.kind("Ingress") == []
    assert "port-forward service/" + BROKER in rendered.notes


def test_bundled_redis() -> None:
    rendered = render(example("ldap-only"))
    name = RELEASE + "-mcp-broker-redis"
    statefulset = rendered.get("StatefulSet", name)
    redis = containers(statefulset)[0]
    assert redis["env"][0]["name"] == "REDISCLI_AUTH"
    assert redis["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "mcp-broker-redis", "key": "password"}
    assert "--requirepass" not in " ".join(redis["command"]), "the password never appears in the process list"
    conf = rendered.get("ConfigMap", name)["data"]["redis.conf"]
    assert "maxmemory-policy noeviction" in conf
    assert "appendonly yes" in conf
    assert statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert redis["image"].endswith("@sha256:02419de7eddf55aa5bcf49efb74e88fa8d931b4d77c07eff8a6b2144472b6952")
    url = f"redis://{name}.mcp.svc:6379/0"
    assert rendered.broker_config["redis"]["url"] == url
    assert env_of(containers(rendered.mcp_app)[0])["MCP_APP_REDIS_URL"]["value"] == url
    policy = rendered.get("NetworkPolicy", name)["spec"]
    assert policy["egress"] == []
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    components = {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in policy["ingress"][0]["from"]}
    assert components == {"broker", "mcp-app"}
    assert "WARNING: the bundled Redis is a single pod" in rendered.notes


def test_the_bundled_redis_restarts_only_for_its_own_password() -> None:
    """Rotating another credential must not restart Redis (without persistence: losing every grant)."""

    def checksum(values: dict[str, Any]) -> str:
        statefulset = render(values).get("StatefulSet", RELEASE + "-mcp-broker-redis")
        return str(statefulset["spec"]["template"]["metadata"]["annotations"]["checksum/secret"])

    values = example("ldap-only")
    before = checksum(values)
    values.setdefault("secrets", {})["adminToken"] = {"value": "b" * 40}
    values["secrets"].setdefault("env", {})["LDAP_BIND_PASSWORD"] = {"value": "rotated-bind-password"}
    assert checksum(values) == before
    values["redis"]["auth"] = {"existingSecret": "mcp-broker-redis-v2", "key": "password"}
    assert checksum(values) != before


def test_the_bundled_redis_refuses_a_password_its_config_cannot_hold(tmp_path: Path) -> None:
    statefulset = render(example("ldap-only")).get("StatefulSet", RELEASE + "-mcp-broker-redis")
    in_pod = "/tmp/auth.conf"  # noqa: S108 - the path inside the pod, replaced here
    script = containers(statefulset)[0]["command"][-1].replace(in_pod, str(tmp_path / "auth.conf"))
    for password, ok in (("plain-Pass_1 $x", True), ('has"quote', False), ("back\\slash", False), ("a\nb", False)):
        result = subprocess.run(
            ["/bin/sh", "-c", script],
            env={"REDISCLI_AUTH": password, "PATH": "/nonexistent"},
            capture_output=True,
            text=True,
            check=False,
        )
        refused = "must not contain" in result.stderr
        assert refused is not ok, (password, result.stderr)


def test_bundled_redis_rules() -> None:
    values = example("ldap-only")
    values["redis"]["url"] = "redis://elsewhere:6379"
    assert "redis.url must be empty with redis.bundled.enabled" in _render_error(values)
    values = example("ldap-only")
    values["redis"]["auth"] = {"enabled": True, "key": "redis-password", "value": 'has "quotes" in it'}
    assert "at least 16 characters of" in _render_error(values)


def test_signing_keys_from_a_secret() -> None:
    rendered = render(example("ldap-only"))
    assert rendered.broker_config["signing"]["keys_dir"] == "/etc/mcp-broker/signing-keys"
    assert "key_encryption_key" not in rendered.broker_config["signing"]
    volumes = {v["name"]: v for v in rendered.broker["spec"]["template"]["spec"]["volumes"]}
    assert volumes["signing-keys"]["secret"] == {"secretName": "mcp-broker-signing-keys", "defaultMode": 0o400}


def test_autoscaling_replaces_the_replica_count() -> None:
    rendered = render(example("entra-ldap-sentinel"))
    assert "replicas" not in rendered.broker["spec"]
    hpa = rendered.get("HorizontalPodAutoscaler", BROKER)["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": BROKER}
    assert render(example("entra-only")).broker["spec"]["replicas"] == 2


def test_spreading_and_disruption_budget() -> None:
    rendered = render(example("entra-only"))
    spread = rendered.broker["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    selector = rendered.broker["spec"]["selector"]["matchLabels"]
    assert all(c["labelSelector"]["matchLabels"] == selector for c in spread)
    pdb = rendered.get("PodDisruptionBudget", BROKER)["spec"]
    assert pdb == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}


def test_service_monitors_scrape_the_metrics_port() -> None:
    rendered = render(example("entra-ldap-sentinel"))
    monitors = {m["metadata"]["name"]: m for m in rendered.kind("ServiceMonitor")}
    assert set(monitors) == {BROKER, MCP}
    assert monitors[BROKER]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert render(example("entra-only")).kind("ServiceMonitor") == []


def test_metrics_can_be_turned_off() -> None:
    values = example("entra-only")
    values["metrics"] = {"enabled": False}
    rendered = render(values)
    assert rendered.broker_config["metrics"] == {"enabled": False, "port": 9090}
    assert env_of(containers(rendered.mcp_app)[0])["MCP_APP_METRICS_PORT"]["value"] == "0"
    for name in (BROKER, MCP):
        assert [p["name"] for p in rendered.get("Service", name)["spec"]["ports"]] == ["http"]
        assert len(rendered.get("NetworkPolicy", name)["spec"]["ingress"]) == 1


def test_mcp_app_is_optional() -> None:
    values = example("entra-only")
    values["mcpApp"] = {"enabled": False}
    values["redis"]["tls"] = {"caSecret": "redis-ca", "caKey": "ca.crt"}
    rendered = render(values)
    assert not rendered.has("Deployment", MCP)
    assert not rendered.has("Service", MCP)
    assert "/mcp" not in _paths(rendered)["mcp.example.com"]
    # Without mcp_app, a private Redis CA is fine: the broker mounts it.
    assert rendered.broker_config["redis"]["ca_file"] == "/etc/mcp-broker/redis-ca/ca.crt"


def test_image_digest_pins_the_image() -> None:
    values = example("entra-only")
    digest = "sha256:" + "ab" * 32
    values["image"]["digest"] = digest
    container = containers(render(values).broker)[0]
    assert container["image"] == f"registry.example.com/platform/mcp-broker:0.1.0@{digest}"
    assert container["imagePullPolicy"] == "IfNotPresent"


def test_namespace_is_set_on_every_object() -> None:
    rendered = render(example("entra-ldap-sentinel"), namespace="identity")
    assert {d["metadata"]["namespace"] for d in rendered.docs} == {"identity"}


def test_notes_warn_without_trusted_proxies() -> None:
    assert "trusted_proxies is empty" not in render(example("entra-only")).notes
    values = example("entra-only")
    del values["config"]["server"]
    assert "WARNING: config.server.trusted_proxies is empty" in render(values).notes


def test_autoscaling_needs_a_target() -> None:
    values = example("entra-ldap-sentinel")
    values["broker"]["autoscaling"]["targetCPUUtilizationPercentage"] = 0
    assert "broker.autoscaling needs targetCPUUtilizationPercentage" in _render_error(values)
