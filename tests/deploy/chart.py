"""Render the Helm chart with Helm's own engine (helm-python-sdk binds Helm's Go SDK; no binary)."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "deploy" / "helm" / "mcp-broker"
EXAMPLES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
RELEASE = "mcpb"
NAMESPACE = "mcp"

Doc = dict[str, Any]


@functools.cache
def chart() -> helm.Chart:
    """The chart, loaded once per process (a handle into the native library)."""
    return helm.Chart.load(CHART_DIR)


def load_values(path: Path) -> dict[str, Any]:
    values = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(values, dict)
    return values


def example(name: str) -> dict[str, Any]:
    """A fresh copy of ``ci/<name>-values.yaml``, to modify freely."""
    return copy.deepcopy(load_values(CHART_DIR / "ci" / f"{name}-values.yaml"))


@dataclass
class Rendered:
    templates: dict[str, str]
    docs: list[Doc] = field(default_factory=list)

    def __post_init__(self) -> None:
        for path, text in sorted(self.templates.items()):
            if not path.endswith(".yaml"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc is not None:
                    self.docs.append(doc)

    @property
    def notes(self) -> str:
        return next(text for path, text in self.templates.items() if path.endswith("NOTES.txt"))

    def kind(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> Doc:
        matches = [d for d in self.kind(kind) if d["metadata"]["name"] == name]
        assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
        return matches[0]

    def has(self, kind: str, name: str) -> bool:
        return any(d["metadata"]["name"] == name for d in self.kind(kind))

    def manifest(self) -> str:
        """Every object as one multi-document YAML stream, as `helm template` prints it."""
        return "".join(f"---\n{yaml.safe_dump(doc, sort_keys=False)}" for doc in self.docs)

    # Shortcuts to the objects every test looks at.
    @property
    def broker(self) -> Doc:
        return self.get("Deployment", f"{RELEASE}-mcp-broker")

    @property
    def mcp_app(self) -> Doc:
        return self.get("Deployment", f"{RELEASE}-mcp-broker-mcp-app")

    @property
    def broker_yaml(self) -> str:
        text = self.get("ConfigMap", f"{RELEASE}-mcp-broker-config")["data"]["broker.yaml"]
        assert isinstance(text, str)
        return text

    @property
    def broker_config(self) -> dict[str, Any]:
        config = yaml.safe_load(self.broker_yaml)
        assert isinstance(config, dict)
        return config

    @property
    def policy_yaml(self) -> str:
        text = self.get("ConfigMap", f"{RELEASE}-mcp-broker-policy")["data"]["policy.yaml"]
        assert isinstance(text, str)
        return text


def render(values: dict[str, Any], *, namespace: str = NAMESPACE) -> Rendered:
    """Render as `helm install` would (schema validation included); raises Helm's errors."""
    return Rendered(chart().render(values, name=RELEASE, namespace=namespace, is_install=True))


def containers(workload: Doc) -> list[Doc]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def pod_workloads(rendered: Rendered) -> list[Doc]:
    return [d for d in rendered.docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]
