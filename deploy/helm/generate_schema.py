"""Write ``deploy/helm/mcp-broker/values.schema.json``.

The chart's own values are described here by hand; the sections that are copied into the
broker's configuration file (``config.*`` and ``policy.*``) are derived from the broker's
pydantic models, so a key the broker does not know fails ``helm install`` and a key the
broker gains shows up as a difference that ``tests/deploy`` reports. Every object is closed
(``additionalProperties: false``). Run after changing values.yaml or the config models::

    .venv/bin/python deploy/helm/generate_schema.py
"""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "deploy" / "helm" / "mcp-broker" / "values.schema.json"

Schema = dict[str, Any]

ENV_REF = r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$"
DURATION_PATTERN = r"^\s*\d+\s*[smhd]?\s*$"

# Keys of broker.yaml that the chart writes itself from its own values.
CHART_MANAGED_TOP = ("redis", "admin", "metrics", "policy_file", "resources", "mappings")
CHART_MANAGED = {
    "server": ("host", "port"),
    "signing": ("key_encryption_key", "keys_dir"),
}


def _closed(properties: dict[str, Schema], *, required: list[str] | None = None, description: str = "") -> Schema:
    schema: Schema = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = required
    if description:
        schema["description"] = description
    return schema


def _strings() -> Schema:
    return {"type": "array", "items": {"type": "string"}}


def _string_map() -> Schema:
    return {"type": "object", "additionalProperties": {"type": "string"}}


# ---------------------------------------------------------------------------------------------
# Broker configuration sections, from the pydantic models


def _annotation_schema(annotation: Any, info: FieldInfo | None) -> Schema:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _annotation_schema(args[0], None)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        inner = _annotation_schema(members[0], info) if len(members) == 1 else {}
        if type(None) in args:
            # null is accepted: it means "unset", as in the broker's file.
            kind = inner.get("type")
            if isinstance(kind, str):
                inner = {**inner, "type": [kind, "null"]}
            elif isinstance(kind, list):
                inner = {**inner, "type": [*kind, "null"]}
        return inner
    if annotation is typing.Any:  # any JSON value (a JSON Web Key Set's members, say)
        return {}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin is list:
        return {"type": "array", "items": _annotation_schema(args[0], None)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _annotation_schema(args[1], None)}
    if annotation is SecretStr:
        return {
            "type": "string",
            "pattern": ENV_REF,
            "description": "A secret: only a ${NAME} reference to an environment variable set under secrets.env.",
        }
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return model_schema(annotation)
    if annotation is bool:
        return {"type": "boolean"}
    if annotation is int:
        if info is not None and any(type(m).__name__ == "BeforeValidator" for m in info.metadata):
            return {"type": ["integer", "string"], "pattern": DURATION_PATTERN}
        return {"type": "integer"}
    if annotation is float:
        return {"type": "number"}
    # str, HttpUrl and other string-like types.
    return {"type": "string"}


def model_schema(model: type[BaseModel], *, exclude: tuple[str, ...] = ()) -> Schema:
    properties: dict[str, Schema] = {}
    required: list[str] = []
    for name, info in model.model_fields.items():
        if name in exclude:
            continue
        schema = _annotation_schema(info.annotation, info)
        if info.description and "description" not in schema:
            schema = {**schema, "description": info.description}
        properties[name] = schema
        if info.is_required():
            required.append(name)
    return _closed(properties, required=required)


def _provider_schema(model: type[BaseModel]) -> Schema:
    schema = model_schema(model)
    kind = typing.get_args(model.model_fields["type"].annotation)[0]
    schema["properties"]["type"] = {"const": kind}
    schema["required"] = sorted({*schema.get("required", []), "type"})
    return schema


def config_schema() -> Schema:
    from broker.config import models
    from providers.entra.config import EntraProviderConfig
    from providers.ldap.config import LdapProviderConfig
    from providers.oidc.config import OidcProviderConfig

    sections: dict[str, Schema] = {}
    for name, info in models.BrokerConfig.model_fields.items():
        if name in CHART_MANAGED_TOP or name == "providers":
            continue
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            sections[name] = model_schema(annotation, exclude=CHART_MANAGED.get(name, ()))
        else:
            sections[name] = _annotation_schema(annotation, info)
    sections["issuer"] = {
        "type": "string",
        "description": "The broker's public https URL (issuer identifier). Required.",
    }
    providers = [(m, _provider_schema(m)) for m in (LdapProviderConfig, EntraProviderConfig, OidcProviderConfig)]
    sections["providers"] = {
        "type": "array",
        "description": "Upstream identity providers, discriminated by type.",
        "items": {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"enum": [s["properties"]["type"]["const"] for _, s in providers]}},
            "allOf": [
                {"if": {"properties": {"type": {"const": s["properties"]["type"]["const"]}}}, "then": s}
                for _, s in providers
            ],
        },
    }
    return _closed(dict(sorted(sections.items())), description="The broker's configuration file (broker.yaml).")


def policy_schema() -> Schema:
    from broker.config.models import PolicyFileModel

    schema = model_schema(PolicyFileModel)
    schema["properties"] = {
        "rollOnChange": {
            "type": "boolean",
            "description": "Roll the broker pods on a policy change instead of relying on the hot reload.",
        },
        **schema["properties"],
    }
    schema["description"] = "Protected resources and group-to-scope mappings (the hot-reloaded policy file)."
    return schema


# ---------------------------------------------------------------------------------------------
# Kubernetes types used in values (closed; the API server validates them again)

QUANTITY: Schema = {"type": ["string", "integer", "number"]}


def _defs() -> dict[str, Schema]:
    label_selector = _closed(
        {
            "matchLabels": _string_map(),
            "matchExpressions": {
                "type": "array",
                "items": _closed(
                    {
                        "key": {"type": "string"},
                        "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                        "values": _strings(),
                    },
                    required=["key", "operator"],
                ),
            },
        }
    )
    resource_list = _closed({"cpu": QUANTITY, "memory": QUANTITY, "ephemeral-storage": QUANTITY})
    seccomp = _closed(
        {"type": {"enum": ["RuntimeDefault", "Localhost", "Unconfined"]}, "localhostProfile": {"type": "string"}},
        required=["type"],
    )
    port_list = {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 65535}}
    key_ref = _closed(
        {"name": {"type": "string"}, "key": {"type": "string"}, "optional": {"type": "boolean"}},
        required=["key"],
    )
    key_to_path = {
        "type": "array",
        "items": _closed(
            {"key": {"type": "string"}, "path": {"type": "string"}, "mode": {"type": "integer"}},
            required=["key", "path"],
        ),
    }
    return {
        "secretRef": _closed(
            {
                "existingSecret": {"type": "string", "description": "Name of an existing Secret."},
                "key": {"type": "string", "minLength": 1, "description": "Key inside the Secret."},
                "value": {"type": "string", "description": "Value written into the chart's Secret."},
            },
            required=["key"],
        ),
        "optionalSecretRef": _closed(
            {
                "enabled": {"type": "boolean"},
                "existingSecret": {"type": "string"},
                "key": {"type": "string", "minLength": 1},
                "value": {"type": "string"},
            },
            required=["enabled", "key"],
        ),
        "envSecretRef": _closed(
            {
                "existingSecret": {"type": "string"},
                "key": {"type": "string", "minLength": 1},
                "value": {"type": "string"},
            },
        ),
        "image": _closed(
            {
                "repository": {"type": "string"},
                "tag": {"type": "string", "not": {"const": "latest"}},
                "digest": {"type": "string", "pattern": r"^(|sha256:[0-9a-f]{64})$"},
                "pullPolicy": {"enum": ["", "Always", "IfNotPresent", "Never"]},
            },
            required=["repository", "tag", "digest", "pullPolicy"],
        ),
        "labelSelector": label_selector,
        "peer": _closed(
            {
                "ipBlock": _closed({"cidr": {"type": "string"}, "except": _strings()}, required=["cidr"]),
                "namespaceSelector": {"$ref": "#/definitions/labelSelector"},
                "podSelector": {"$ref": "#/definitions/labelSelector"},
            }
        ),
        "resources": _closed({"requests": resource_list, "limits": resource_list}),
        "podSecurityContext": _closed(
            {
                "runAsNonRoot": {"type": "boolean"},
                "runAsUser": {"type": "integer", "minimum": 0},
                "runAsGroup": {"type": "integer", "minimum": 0},
                "fsGroup": {"type": "integer", "minimum": 0},
                "fsGroupChangePolicy": {"enum": ["OnRootMismatch", "Always"]},
                "supplementalGroups": {"type": "array", "items": {"type": "integer"}},
                "seccompProfile": seccomp,
            }
        ),
        "securityContext": _closed(
            {
                "allowPrivilegeEscalation": {"type": "boolean"},
                "privileged": {"type": "boolean"},
                "readOnlyRootFilesystem": {"type": "boolean"},
                "runAsNonRoot": {"type": "boolean"},
                "runAsUser": {"type": "integer", "minimum": 0},
                "runAsGroup": {"type": "integer", "minimum": 0},
                "capabilities": _closed({"add": _strings(), "drop": _strings()}),
                "seccompProfile": seccomp,
            }
        ),
        "probeTiming": _closed(
            {
                "initialDelaySeconds": {"type": "integer", "minimum": 0},
                "periodSeconds": {"type": "integer", "minimum": 1},
                "timeoutSeconds": {"type": "integer", "minimum": 1},
                "failureThreshold": {"type": "integer", "minimum": 1},
            }
        ),
        "probes": _closed(
            {
                "liveness": {"$ref": "#/definitions/probeTiming"},
                "readiness": {"$ref": "#/definitions/probeTiming"},
                "startup": {"$ref": "#/definitions/probeTiming"},
            }
        ),
        "toleration": _closed(
            {
                "key": {"type": "string"},
                "operator": {"enum": ["Exists", "Equal"]},
                "value": {"type": "string"},
                "effect": {"enum": ["", "NoSchedule", "PreferNoSchedule", "NoExecute"]},
                "tolerationSeconds": {"type": "integer"},
            }
        ),
        "affinity": _closed(
            {
                "nodeAffinity": {"type": "object", "description": "Kubernetes NodeAffinity."},
                "podAffinity": {"type": "object", "description": "Kubernetes PodAffinity."},
                "podAntiAffinity": {"type": "object", "description": "Kubernetes PodAntiAffinity."},
            }
        ),
        "topologySpreadConstraint": _closed(
            {
                "maxSkew": {"type": "integer", "minimum": 1},
                "topologyKey": {"type": "string"},
                "whenUnsatisfiable": {"enum": ["DoNotSchedule", "ScheduleAnyway"]},
                "labelSelector": {"$ref": "#/definitions/labelSelector"},
                "minDomains": {"type": "integer", "minimum": 1},
                "nodeAffinityPolicy": {"enum": ["Honor", "Ignore"]},
                "nodeTaintsPolicy": {"enum": ["Honor", "Ignore"]},
                "matchLabelKeys": _strings(),
            },
            required=["maxSkew", "topologyKey", "whenUnsatisfiable"],
        ),
        "envVar": _closed(
            {
                "name": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
                "value": {"type": "string"},
                "valueFrom": _closed(
                    {
                        "secretKeyRef": key_ref,
                        "configMapKeyRef": key_ref,
                        "fieldRef": _closed(
                            {"fieldPath": {"type": "string"}, "apiVersion": {"type": "string"}},
                            required=["fieldPath"],
                        ),
                        "resourceFieldRef": _closed(
                            {
                                "resource": {"type": "string"},
                                "containerName": {"type": "string"},
                                "divisor": QUANTITY,
                            },
                            required=["resource"],
                        ),
                    }
                ),
            },
            required=["name"],
        ),
        "volume": _closed(
            {
                "name": {"type": "string"},
                "secret": _closed(
                    {
                        "secretName": {"type": "string"},
                        "items": key_to_path,
                        "defaultMode": {"type": "integer"},
                        "optional": {"type": "boolean"},
                    },
                    required=["secretName"],
                ),
                "configMap": _closed(
                    {
                        "name": {"type": "string"},
                        "items": key_to_path,
                        "defaultMode": {"type": "integer"},
                        "optional": {"type": "boolean"},
                    },
                    required=["name"],
                ),
                "emptyDir": _closed({"medium": {"enum": ["", "Memory"]}, "sizeLimit": QUANTITY}),
                "csi": {"type": "object", "description": "Kubernetes CSIVolumeSource (e.g. a secrets-store driver)."},
            },
            required=["name"],
        ),
        "volumeMount": _closed(
            {
                "name": {"type": "string"},
                "mountPath": {"type": "string"},
                "subPath": {"type": "string"},
                "readOnly": {"type": "boolean"},
            },
            required=["name", "mountPath"],
        ),
        "service": _closed(
            {
                "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "annotations": _string_map(),
            },
            required=["type", "port"],
        ),
        "autoscaling": _closed(
            {
                "enabled": {"type": "boolean"},
                "minReplicas": {"type": "integer", "minimum": 1},
                "maxReplicas": {"type": "integer", "minimum": 1},
                "targetCPUUtilizationPercentage": {"type": "integer", "minimum": 0, "maximum": 100},
                "targetMemoryUtilizationPercentage": {"type": "integer", "minimum": 0, "maximum": 100},
            },
            required=["enabled"],
        ),
        "podDisruptionBudget": _closed(
            {
                "enabled": {"type": "boolean"},
                "maxUnavailable": {"type": ["integer", "string"]},
            },
            required=["enabled"],
        ),
        "egressRule": _closed(
            {
                "to": {"type": "array", "items": {"$ref": "#/definitions/peer"}},
                "ports": {
                    "type": "array",
                    "items": _closed(
                        {
                            "port": {"type": ["integer", "string"]},
                            "endPort": {"type": "integer"},
                            "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
                        }
                    ),
                },
            }
        ),
        "egressTarget": _closed(
            {"to": {"type": "array", "items": {"$ref": "#/definitions/peer"}}, "ports": port_list},
            required=["to", "ports"],
        ),
    }


def _ref(name: str) -> Schema:
    return {"$ref": f"#/definitions/{name}"}


def _workload(*, broker: bool) -> Schema:
    properties: dict[str, Schema] = {
        "replicaCount": {"type": "integer", "minimum": 0},
        "containerPort": {"type": "integer", "minimum": 1024, "maximum": 65535},
        "resources": _ref("resources"),
        "podSecurityContext": _ref("podSecurityContext"),
        "securityContext": _ref("securityContext"),
        "probes": _ref("probes"),
        "preStopSleepSeconds": {"type": "integer", "minimum": 0},
        "terminationGracePeriodSeconds": {"type": "integer", "minimum": 0},
        "podAnnotations": _string_map(),
        "podLabels": _string_map(),
        "nodeSelector": _string_map(),
        "tolerations": {"type": "array", "items": _ref("toleration")},
        "affinity": _ref("affinity"),
        "topologySpreadConstraints": {"type": "array", "items": _ref("topologySpreadConstraint")},
        "priorityClassName": {"type": "string"},
        "extraEnv": {"type": "array", "items": _ref("envVar")},
        "service": _ref("service"),
        "autoscaling": _ref("autoscaling"),
        "podDisruptionBudget": _ref("podDisruptionBudget"),
    }
    if broker:
        properties["extraVolumes"] = {"type": "array", "items": _ref("volume")}
        properties["extraVolumeMounts"] = {"type": "array", "items": _ref("volumeMount")}
        return _closed(properties, description="The broker Deployment.")
    app = {
        "enabled": {"type": "boolean"},
        "resourceUrl": {"type": "string"},
        "jwksUrl": {"type": "string"},
        "allowedHosts": _strings(),
        "allowedOrigins": _strings(),
        "failClosed": {"type": "boolean"},
        "revocationMaxStaleness": {"type": "number", "exclusiveMinimum": 0},
    }
    return _closed({**app, **properties}, description="The protected demo MCP server (mcp_app) Deployment.")


def build() -> Schema:
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$comment": "Generated by deploy/helm/generate_schema.py from the chart's values and the broker's "
        "configuration models. Do not edit by hand.",
        "title": "mcp-broker Helm chart values",
        "definitions": _defs(),
        **_closed(
            {
                "global": {"type": "object", "description": "Helm's global values (unused by this chart)."},
                "nameOverride": {"type": "string"},
                "fullnameOverride": {"type": "string"},
                "commonLabels": _string_map(),
                "image": _ref("image"),
                "imagePullSecrets": {
                    "type": "array",
                    "items": _closed({"name": {"type": "string"}}, required=["name"]),
                },
                "serviceAccount": _closed(
                    {"create": {"type": "boolean"}, "name": {"type": "string"}, "annotations": _string_map()}
                ),
                "config": config_schema(),
                "policy": policy_schema(),
                "signing": _closed({"keysSecret": {"type": "string"}}),
                "secrets": _closed(
                    {
                        "keyEncryptionKey": _ref("secretRef"),
                        "adminToken": _ref("optionalSecretRef"),
                        "env": {
                            "type": "object",
                            "propertyNames": {"pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
                            "additionalProperties": _ref("envSecretRef"),
                        },
                    }
                ),
                "redis": _closed(
                    {
                        "url": {
                            "type": "string",
                            "pattern": r"^(|(redis|rediss|redis\+sentinel|rediss\+sentinel|redis\+cluster|rediss\+cluster)://.+)$",
                            "description": "Redis URL without a password.",
                        },
                        "keyPrefix": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{1,32}$"},
                        "socketTimeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 60},
                        "auth": _ref("optionalSecretRef"),
                        "sentinelAuth": _ref("optionalSecretRef"),
                        "tls": _closed({"caSecret": {"type": "string"}, "caKey": {"type": "string", "minLength": 1}}),
                        "bundled": _closed(
                            {
                                "enabled": {"type": "boolean"},
                                "image": _ref("image"),
                                "persistence": _closed(
                                    {
                                        "enabled": {"type": "boolean"},
                                        "storageClass": {"type": "string"},
                                        "size": {"type": "string"},
                                    }
                                ),
                                "maxmemory": {"type": "string", "pattern": r"^[0-9]+(b|kb|mb|gb)?$"},
                                "resources": _ref("resources"),
                                "podSecurityContext": _ref("podSecurityContext"),
                                "securityContext": _ref("securityContext"),
                                "nodeSelector": _string_map(),
                                "tolerations": {"type": "array", "items": _ref("toleration")},
                                "affinity": _ref("affinity"),
                                "priorityClassName": {"type": "string"},
                            }
                        ),
                    },
                    required=["url", "auth", "sentinelAuth", "bundled"],
                ),
                "metrics": _closed(
                    {
                        "enabled": {"type": "boolean"},
                        "port": {"type": "integer", "minimum": 1024, "maximum": 65535},
                        "serviceMonitor": _closed(
                            {
                                "enabled": {"type": "boolean"},
                                "interval": {"type": "string"},
                                "scrapeTimeout": {"type": "string"},
                                "labels": _string_map(),
                            }
                        ),
                    }
                ),
                "broker": _workload(broker=True),
                "mcpApp": _workload(broker=False),
                "ingress": _closed(
                    {
                        "enabled": {"type": "boolean"},
                        "className": {"type": "string"},
                        "annotations": _string_map(),
                        "tls": {
                            "type": "array",
                            "items": _closed(
                                {"secretName": {"type": "string", "minLength": 1}, "hosts": _strings()},
                                required=["secretName"],
                            ),
                        },
                    }
                ),
                "networkPolicy": _closed(
                    {
                        "enabled": {"type": "boolean"},
                        "ingressController": _ref("peer"),
                        "prometheus": _ref("peer"),
                        "dns": _ref("peer"),
                        "redis": _ref("egressTarget"),
                        "ldap": _ref("egressTarget"),
                        "https": _ref("egressTarget"),
                        "extraEgress": {"type": "array", "items": _ref("egressRule")},
                    }
                ),
            },
            required=["image", "config", "policy", "secrets", "redis", "broker", "mcpApp"],
        ),
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main() -> int:
    SCHEMA_PATH.write_text(render(), encoding="utf-8")
    print(f"wrote {SCHEMA_PATH.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
