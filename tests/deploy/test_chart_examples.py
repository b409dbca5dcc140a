"""Every example values file (one per scenario, ``ci/*-values.yaml``) rendered with Helm's engine,
then checked as Kubernetes, a policy scanner and the broker itself would check it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests.deploy.chart import (
    CHART_DIR,
    EXAMPLES,
    NAMESPACE,
    RELEASE,
    ROOT,
    Doc,
    Rendered,
    containers,
    env_of,
    load_values,
    pod_workloads,
    render,
)

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schema
# kubernetes-validate ships; strict mode rejects unknown fields.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")

CHECKOV = Path(os.environ.get("MCPB_CHECKOV", ROOT / ".venv" / "checkov" / "bin" / "checkov"))

# Findings the chart suppresses with `checkov.io/skipN` annotations, and why (the annotation
# carries the reason too). Any other skip, or any failure, fails the test.
ACCEPTED_SKIPS = {
    "CKV_K8S_35": "the broker and mcp_app read secrets from environment variables only (SecretStr, never "
    "logged); redis-server has no password-file option",
    "CKV_K8S_43": "the image digest exists only after the operator builds the image; image.digest pins it",
}


def _example_id(path: Path) -> str:
    return path.name.removesuffix("-values.yaml")


@pytest.fixture(scope="module", params=EXAMPLES, ids=_example_id)
def example(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any], Rendered]:
    path: Path = request.param
    values = load_values(path)
    return _example_id(path), values, render(values)


def test_there_is_one_example_per_scenario() -> None:
    assert [_example_id(p) for p in EXAMPLES] == ["entra-ldap-sentinel", "entra-only", "ldap-only"]


def test_helm_lint_strict_passes(example: tuple[str, dict[str, Any], Rendered]) -> None:
    _, values, _ = example
    report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE, kube_version="v1.29.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == []
    assert problems == []


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_kubernetes(example: tuple[str, dict[str, Any], Rendered], version: str) -> None:
    _, _, rendered = example
    for doc in rendered.docs:
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            _check_service_monitor(doc, rendered)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} on Kubernetes {version}: {exc.message} at {exc.path}")


def _check_service_monitor(monitor: Doc, rendered: Rendered) -> None:
    """No schema ships for the Prometheus Operator CRD: check what matters by hand."""
    assert monitor["kind"] == "ServiceMonitor"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    wanted = monitor["spec"]["selector"]["matchLabels"]
    services = [s for s in rendered.kind("Service") if wanted.items() <= s["metadata"]["labels"].items()]
    assert len(services) == 1, f"ServiceMonitor {monitor['metadata']['name']} selects {len(services)} Services"
    ports = {p["name"] for p in services[0]["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
        assert endpoint["port"] in ports
        assert endpoint["path"] == "/metrics"


def test_broker_accepts_the_rendered_configuration(
    example: tuple[str, dict[str, Any], Rendered], tmp_path: Path
) -> None:
    """`mcp-broker check-config` on the ConfigMap's broker.yaml, with the policy file beside it and
    every environment variable the Deployment sets given a dummy value."""
    _, _, rendered = example
    policy = tmp_path / "policy.yaml"
    policy.write_text(rendered.policy_yaml, encoding="utf-8")
    config = tmp_path / "broker.yaml"
    assert rendered.broker_config["policy_file"] == "/etc/mcp-broker/policy/policy.yaml"
    config.write_text(rendered.broker_yaml.replace("/etc/mcp-broker/policy/policy.yaml", str(policy)), "utf-8")

    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SYSTEMROOT")}
    for name, var in env_of(containers(rendered.broker)[0]).items():
        env[name] = var.get("value", "dummy-secret-value-" + "x" * 32)
    result = subprocess.run(
        [sys.executable, "-m", "broker.cli", "check-config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_mcp_app_accepts_the_rendered_environment(
    example: tuple[str, dict[str, Any], Rendered], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcp_app.settings import McpAppSettings

    _, values, rendered = example
    for name in list(os.environ):
        if name.startswith("MCP_APP_"):
            monkeypatch.delenv(name)
    for name, var in env_of(containers(rendered.mcp_app)[0]).items():
        monkeypatch.setenv(name, var.get("value", "dummy-secret-value"))
    settings = McpAppSettings()
    assert settings.resource_url == values["mcpApp"]["resourceUrl"]
    assert settings.issuer == values["config"]["issuer"]
    assert settings.host == "0.0.0.0"
    assert settings.redis_password is not None
    assert settings.effective_jwks_url.startswith(f"http://{RELEASE}-mcp-broker.{NAMESPACE}.svc:80/")
    assert settings.effective_jwks_url.endswith("/jwks.json")


def test_checkov_finds_nothing_unexplained(tmp_path: Path) -> None:
    """checkov's Kubernetes checks over every example's manifests: no failure, and no skip
    but the two the chart documents in its annotations."""
    assert CHECKOV.exists(), f"{CHECKOV} is missing: `make install` puts checkov into .venv/checkov"
    for path in EXAMPLES:
        folder = tmp_path / _example_id(path)
        folder.mkdir()
        (folder / "manifest.yaml").write_text(render(load_values(path)).manifest(), encoding="utf-8")
    report = _checkov(tmp_path, "kubernetes")
    failed = [(f["check_id"], f["resource"], f["file_path"]) for f in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["passed"] > 100
    skipped = report["results"]["skipped_checks"]
    assert {s["check_id"] for s in skipped} <= ACCEPTED_SKIPS.keys()
    assert all(s["check_result"].get("suppress_comment") for s in skipped), "every skip gives its reason"


def _checkov(target: Path, framework: str) -> dict[str, Any]:
    flag = "-d" if target.is_dir() else "-f"
    result = subprocess.run(
        [str(CHECKOV), flag, str(target), "--framework", framework, "--output", "json", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert isinstance(report, dict), report
    return report


def run_checkov(target: Path, framework: str) -> dict[str, Any]:
    """Shared with test_dockerfile."""
    return _checkov(target, framework)


def test_workloads_are_hardened(example: tuple[str, dict[str, Any], Rendered]) -> None:
    _, _, rendered = example
    workloads = pod_workloads(rendered)
    assert workloads
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for host_namespace in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(host_namespace), where
        for container in containers(workload):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert sc["runAsUser"] >= 10000, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["privileged"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= container["resources"][kind].keys(), where
            assert {"livenessProbe", "readinessProbe"} <= container.keys(), where
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1], where
            assert not image.endswith(":latest"), where
            # Writable paths are volumes only: /tmp, and the Redis data directory.
            writable = [m["mountPath"] for m in container.get("volumeMounts", []) if not m.get("readOnly")]
            assert set(writable) <= {"/tmp", "/data"}, where  # noqa: S108 (mount paths, not temp files)


def test_apps_probe_healthz_and_readyz(example: tuple[str, dict[str, Any], Rendered]) -> None:
    _, _, rendered = example
    for workload in (rendered.broker, rendered.mcp_app):
        container = containers(workload)[0]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == 9090


def test_images_default_to_the_app_version(example: tuple[str, dict[str, Any], Rendered]) -> None:
    _, values, rendered = example
    app_version = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"]
    tag = values["image"].get("tag") or app_version
    for workload in (rendered.broker, rendered.mcp_app):
        container = containers(workload)[0]
        assert container["image"] == f"{values['image']['repository']}:{tag}"
        # Pulled by tag, so the tag is re-checked on every start.
        assert container["imagePullPolicy"] == "Always"


def test_services_expose_http_and_metrics(example: tuple[str, dict[str, Any], Rendered]) -> None:
    _, _, rendered = example
    for name in (f"{RELEASE}-mcp-broker", f"{RELEASE}-mcp-broker-mcp-app"):
        ports = {p["name"]: (p["port"], p["targetPort"]) for p in rendered.get("Service", name)["spec"]["ports"]}
        assert ports == {"http": (80, "http"), "metrics": (9090, "metrics")}


def test_network_policies_allow_only_what_is_needed(example: tuple[str, dict[str, Any], Rendered]) -> None:
    _, values, rendered = example
    policies = {p["metadata"]["name"]: p["spec"] for p in rendered.kind("NetworkPolicy")}
    broker = policies[f"{RELEASE}-mcp-broker"]
    assert broker["policyTypes"] == ["Ingress", "Egress"]
    # In: HTTP from the ingress controller's namespace and mcp_app; metrics from Prometheus.
    http, metrics = broker["ingress"]
    assert http["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert http["from"][0]["namespaceSelector"] == values.get("networkPolicy", {}).get("ingressController", {}).get(
        "namespaceSelector", {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}
    )
    assert metrics["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    # Out: DNS, Redis, LDAP (when an LDAP provider exists) and HTTPS; nothing else.
    egress_ports = sorted({p["port"] for rule in broker["egress"] for p in rule["ports"]})
    has_ldap = any(p["type"] == "ldap" for p in values["config"]["providers"])
    redis_ports = (
        [6379]
        if values["redis"].get("bundled", {}).get("enabled")
        else values["networkPolicy"].get("redis", {}).get("ports", [6379, 26379])
    )
    ldap_ports = values["networkPolicy"]["ldap"]["ports"] if has_ldap else []
    assert egress_ports == sorted({53, 443, *redis_ports, *ldap_ports})
    for rule in broker["egress"]:
        if any(p["port"] == 53 for p in rule["ports"]):
            assert {p["protocol"] for p in rule["ports"]} == {"UDP", "TCP"}
    mcp = policies[f"{RELEASE}-mcp-broker-mcp-app"]
    broker_rule = next(r for r in mcp["egress"] if r["ports"] == [{"port": 8000, "protocol": "TCP"}])
    assert broker_rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "broker"


def test_notes_name_the_issuer_and_the_mcp_server(example: tuple[str, dict[str, Any], Rendered]) -> None:
    _, values, rendered = example
    assert (
        f"Issuer (the authorization server MCP clients discover):\n  {values['config']['issuer']}\n" in rendered.notes
    )
    assert f"MCP server (mcp_app), the URL to give MCP clients:\n  {values['mcpApp']['resourceUrl']}\n" in (
        rendered.notes
    )


def test_pods_roll_when_the_configuration_changes(example: tuple[str, dict[str, Any], Rendered]) -> None:
    _, values, rendered = example
    annotations = rendered.broker["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/config" in annotations
    assert "checksum/secret" in annotations
    changed = json.loads(json.dumps(values))
    changed["config"].setdefault("tokens", {})["access_token_ttl"] = "2m"
    after = render(changed).broker["spec"]["template"]["metadata"]["annotations"]
    assert after["checksum/config"] != annotations["checksum/config"]
    # The policy is hot-reloaded: changing it does not roll the pods (unless policy.rollOnChange).
    changed = json.loads(json.dumps(values))
    changed["policy"]["mappings"][0]["scopes"] = list(changed["policy"]["mappings"][0]["scopes"])
    changed["policy"]["resources"][0]["name"] = "Renamed"
    after = render(changed).broker["spec"]["template"]["metadata"]["annotations"]
    assert after == annotations
    changed["policy"]["rollOnChange"] = True
    assert "checksum/policy" in render(changed).broker["spec"]["template"]["metadata"]["annotations"]


def test_policy_is_mounted_as_a_directory(example: tuple[str, dict[str, Any], Rendered]) -> None:
    """A subPath mount would never see ConfigMap updates; the hot reload needs the directory."""
    _, _, rendered = example
    mounts = {m["name"]: m for m in containers(rendered.broker)[0]["volumeMounts"]}
    assert mounts["policy"] == {"name": "policy", "mountPath": "/etc/mcp-broker/policy", "readOnly": True}
    assert mounts["config"]["mountPath"] == "/etc/mcp-broker/config"
    assert "subPath" not in mounts["config"]
