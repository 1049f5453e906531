"""CustomResourceDefinitions generated from the spec models (one source of truth)."""

from __future__ import annotations

from typing import Any

from . import admission
from .organization import TransportConfigSpec
from .specs import (
    SERVER_NAME_RULE,
    AcceptedDomainSpec,
    ReceiveConnectorSpec,
    TransportServerSpec,
    server_name_cel,
)

GROUP = "smtpgate.io"
VERSION = "v1alpha1"
CATEGORY = "smtpgate"
Schema = dict[str, Any]


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """A pydantic JSON schema as a Kubernetes structural schema: refs inlined, nullables
    folded, titles and defaults dropped (defaults are applied by the compiler, so that the
    apiserver never writes into a user's spec)."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}
    any_of = node.get("anyOf")
    if any_of and not node.get("x-kubernetes-int-or-string"):
        others = [s for s in any_of if s != {"type": "null"}]
        if len(others) == 1 and len(others) < len(any_of):
            del node["anyOf"]
            return _structural({**others[0], **node}, defs)
    out: Schema = {}
    for key, value in node.items():
        if key in ("title", "default", "$defs") or (key == "additionalProperties" and not value):
            continue
        if key == "properties":
            out[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        else:
            out[key] = _structural(value, defs)
    return out


def spec_schema(model: type) -> Schema:
    raw = model.model_json_schema(by_alias=True)  # type: ignore[attr-defined]
    schema: Schema = _structural(raw, raw.get("$defs", {}))
    schema["type"] = "object"
    return schema


def _conditions() -> Schema:
    return {
        "type": "array",
        "description": "Observations of the resource's state (Kubernetes conditions).",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status"],
            "properties": {
                "type": {"type": "string", "description": "Condition type, e.g. Ready."},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "reason": {"type": "string", "description": "CamelCase reason."},
                "message": {"type": "string", "description": "What a person should know."},
                "lastTransitionTime": {"type": "string", "format": "date-time"},
                "observedGeneration": {"type": "integer", "format": "int64"},
            },
        },
    }


def _status(extra: dict[str, Schema]) -> Schema:
    return {
        "type": "object",
        "description": "What the operator observed and did.",
        "properties": {
            "observedGeneration": {
                "type": "integer",
                "format": "int64",
                "description": "The generation of the spec this status describes.",
            },
            "conditions": _conditions(),
            **extra,
        },
    }


RECEIVE_CONNECTOR_STATUS = _status(
    {
        "effectivePermissions": {
            "type": "array",
            "description": "Permissions per principal after groups and entries "
            "(what Get-ADPermission shows).",
            "items": {
                "type": "object",
                "properties": {
                    "principal": {"type": "string"},
                    "extendedRights": {"type": "array", "items": {"type": "string"}},
                    "deny": {"type": "boolean"},
                },
            },
        },
        "certificate": {
            "type": "object",
            "description": "The certificate chosen for STARTTLS.",
            "properties": {
                "secretName": {"type": "string"},
                "notAfter": {"type": "string", "format": "date-time"},
            },
        },
    }
)
TRANSPORT_SERVER_STATUS = _status(
    {
        "connectors": {
            "type": "integer",
            "description": "ReceiveConnectors in the server's config (the implicit Mailbox "
            "delivery connector is not counted).",
        },
        "readyReplicas": {"type": "integer", "description": "Receiver pods ready."},
        "replicas": {"type": "integer", "description": "Receiver pods (the scale subresource)."},
        "replicasReady": {"type": "string", "description": "Ready of desired pods, e.g. 1/2."},
        "selector": {
            "type": "string",
            "description": "Label selector of the receiver pods (the scale subresource, for "
            "kubectl scale and HorizontalPodAutoscalers).",
        },
        "configHash": {"type": "string", "description": "Hash of the config in force."},
        "defaultConnectorsCreated": {
            "type": "boolean",
            "description": "The role's default connectors were created (once, with the server).",
        },
        "selfSignedCertificate": {
            "type": "object",
            "description": "The server's own self-signed certificate (a kubernetes.io/tls "
            "Secret the operator owns and renews): served where no certificate is chosen by "
            "issuer and subject, and trusted by the organisation's other servers.",
            "properties": {
                "secretName": {"type": "string"},
                "notAfter": {"type": "string", "format": "date-time"},
                "renewAfter": {"type": "string", "format": "date-time"},
                "sha256": {"type": "string"},
            },
        },
    }
)
ACCEPTED_DOMAIN_STATUS = _status({})
TRANSPORT_CONFIG_STATUS = _status(
    {
        "domain": {"type": "string", "description": "The <Domain> of principal names."},
        "trustedServers": {
            "type": "array",
            "description": "Every server certificate the organisation's servers trust (Direct "
            "Trust): its TransportServers' and the external servers listed.",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "role": {"type": "string"},
                    "source": {"type": "string"},
                    "sha256": {"type": "string"},
                    "notAfter": {"type": "string", "format": "date-time"},
                },
            },
        },
        "partnerTrustAnchors": {
            "type": "integer",
            "description": "CA certificates partner certificates may chain to.",
        },
    }
)

READY_COLUMN = {
    "name": "Ready",
    "type": "string",
    "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
}
AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def _crd(
    kind: str,
    plural: str,
    short_names: list[str],
    description: str,
    spec: Schema,
    status: Schema,
    columns: list[dict[str, Any]],
    rules: list[dict[str, str]] | None = None,
    scale: bool = False,
) -> Schema:
    root: Schema = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    if rules:
        root["x-kubernetes-validations"] = rules
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        **(
                            {
                                "scale": {
                                    "specReplicasPath": ".spec.replicas",
                                    "statusReplicasPath": ".status.replicas",
                                    "labelSelectorPath": ".status.selector",
                                }
                            }
                            if scale
                            else {}
                        ),
                    },
                    "additionalPrinterColumns": [*columns, READY_COLUMN, AGE_COLUMN],
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def receive_connector() -> Schema:
    spec = spec_schema(ReceiveConnectorSpec)
    spec["properties"]["usage"]["x-kubernetes-validations"] = [
        {"rule": "self == oldSelf", "message": "usage is immutable: it is set at creation only"}
    ]
    return _crd(
        "ReceiveConnector",
        "receiveconnectors",
        ["recvconn", "rcvc"],
        "An Exchange-style Receive connector: how one transport server accepts SMTP "
        "connections from a set of sources (New-ReceiveConnector / Set-ReceiveConnector).",
        spec,
        RECEIVE_CONNECTOR_STATUS,
        [
            {"name": "Server", "type": "string", "jsonPath": ".spec.server"},
            {"name": "Usage", "type": "string", "jsonPath": ".spec.usage"},
            {"name": "Bindings", "type": "string", "jsonPath": ".spec.bindings"},
            {
                "name": "Accepted",
                "type": "string",
                "jsonPath": '.status.conditions[?(@.type=="Accepted")].status',
                "priority": 1,
            },
            {
                "name": "Reason",
                "type": "string",
                "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
                "priority": 1,
            },
            {
                "name": "Certificate",
                "type": "string",
                "jsonPath": ".status.certificate.secretName",
                "priority": 1,
            },
        ],
    )


def transport_server() -> Schema:
    return _crd(
        "TransportServer",
        "transportservers",
        ["tsrv"],
        "An Exchange-style transport server (Mailbox or Edge): its receiver pods, how they are "
        "exposed, and where accepted mail goes. Its name is a DNS-1035 label of at most "
        f"{admission.MAX_SERVER_NAME} characters: <name>-receiver names its workload, "
        "Services and ConfigMap.",
        spec_schema(TransportServerSpec),
        TRANSPORT_SERVER_STATUS,
        [
            {"name": "Role", "type": "string", "jsonPath": ".spec.role"},
            {"name": "FQDN", "type": "string", "jsonPath": ".spec.fqdn"},
            {"name": "Connectors", "type": "integer", "jsonPath": ".status.connectors"},
            {"name": "Replicas", "type": "string", "jsonPath": ".status.replicasReady"},
            {
                "name": "Exposure",
                "type": "string",
                "jsonPath": ".spec.exposure.type",
                "priority": 1,
            },
            {"name": "Next hop", "type": "string", "jsonPath": ".spec.nextHop.type", "priority": 1},
            {"name": "Config", "type": "string", "jsonPath": ".status.configHash", "priority": 1},
        ],
        [
            {
                "rule": server_name_cel("self.metadata.name"),
                "message": "metadata.name " + SERVER_NAME_RULE.message,
            }
        ],
        scale=True,
    )


def accepted_domain() -> Schema:
    return _crd(
        "AcceptedDomain",
        "accepteddomains",
        ["adom"],
        "A domain the organisation accepts mail for (New-AcceptedDomain).",
        spec_schema(AcceptedDomainSpec),
        ACCEPTED_DOMAIN_STATUS,
        [
            {"name": "Domain", "type": "string", "jsonPath": ".spec.domainName"},
            {"name": "Type", "type": "string", "jsonPath": ".spec.domainType"},
        ],
    )


def transport_config() -> Schema:
    return _crd(
        "TransportConfig",
        "transportconfigs",
        ["tcfg"],
        "The organisation's transport settings, one per namespace (Get-TransportConfig / "
        "Set-TransportConfig): the <Domain> of principal names, external servers trusted by "
        "certificate, the domain-secure partner domains and their trust anchors.",
        spec_schema(TransportConfigSpec),
        TRANSPORT_CONFIG_STATUS,
        [
            {"name": "Domain", "type": "string", "jsonPath": ".status.domain"},
            {
                "name": "Domain secure",
                "type": "string",
                "jsonPath": ".spec.tlsReceiveDomainSecureList",
                "priority": 1,
            },
        ],
    )


def all_crds() -> dict[str, Schema]:
    """File name → CRD, as ``crds/`` holds them."""
    return {
        "transportconfigs.yaml": transport_config(),
        "receiveconnectors.yaml": receive_connector(),
        "transportservers.yaml": transport_server(),
        "accepteddomains.yaml": accepted_domain(),
    }
