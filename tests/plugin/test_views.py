"""What the kubectl plugin prints, from the examples' own manifests compiled by the model."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import yaml
from smtpgate.connectors import config, specs
from smtpgate.connectors.errors import SpecError
from smtpgate.connectors.ranges import parse_address
from smtpgate.plugin import views

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def _documents() -> list[dict[str, Any]]:
    return [
        d
        for path in sorted(EXAMPLES.glob("*.yaml"))
        for d in yaml.safe_load_all(path.read_text())
        if d
    ]


def _mx01() -> config.ServerConfig:
    docs = _documents()
    server = next(d for d in docs if d["metadata"]["name"] == "mx01")
    connectors = [
        (d["metadata"]["name"], specs.ReceiveConnectorSpec.model_validate(d["spec"]))
        for d in docs
        if d["kind"] == "ReceiveConnector"
    ]
    domains = [
        specs.AcceptedDomainSpec.model_validate(d["spec"])
        for d in docs
        if d["kind"] == "AcceptedDomain"
    ]
    spec = specs.TransportServerSpec.model_validate(server["spec"])
    return config.compile_server("mx01", "mail", spec, connectors, domains).config


def test_partner_range_is_more_specific_than_the_internet_connectors() -> None:
    out = views.which(_mx01(), parse_address("198.51.100.7"), 25)
    assert "To 192.0.2.10, port 25:\n  connector: partner-fabrikam (Partner" in out
    assert "matched range: 198.51.100.0/24" in out
    assert "also holds 198.51.100.7: internet-mx01 with 0.0.0.0/0 (less specific)" in out
    # The Partners group grants to partner servers; an anonymous session may do nothing.
    assert "  anonymous: NT AUTHORITY\\ANONYMOUS LOGON\n    may: nothing" in out
    assert "To any other address, port 25:\n  no connector: nothing listens here" in out


def test_internet_client_lands_on_the_internet_connector_and_may_submit() -> None:
    out = views.which(_mx01(), parse_address("203.0.113.5"), 25, parse_address("192.0.2.10"))
    assert "connector: internet-mx01 (Internet" in out and "matched range: 0.0.0.0/0" in out
    assert "    may: ms-Exch-SMTP-Submit" in out
    assert "any other address" not in out
    assert "after AUTH: AUTH is not offered" in out


def test_named_user_sees_a_deny_that_names_them() -> None:
    cfg = _mx01()
    anyone = views.which(cfg, parse_address("10.1.2.3"), 587)
    printer = views.which(cfg, parse_address("10.1.2.3"), 587, user="printer")
    assert "after AUTH (after STARTTLS): NT AUTHORITY\\Authenticated Users\n" in anyone
    assert "may: ms-Exch-SMTP-Accept-Any-Recipient" in anyone
    assert "may: ms-Exch-SMTP-Accept-Any-Recipient" not in printer
    assert "    denied: ms-Exch-SMTP-Accept-Any-Recipient" in printer


def test_bound_but_no_range_holds_the_client_is_refused() -> None:
    out = views.which(_mx01(), parse_address("2001:db8::1"), 25)
    assert "nothing listens here" in out  # no IPv6 binding on 25
    cfg = _mx01()
    partner_only = cfg.model_copy(
        update={"connectors": tuple(c for c in cfg.connectors if c.name == "partner-fabrikam")}
    )
    out = views.which(partner_only, parse_address("203.0.113.5"), 25)
    assert "no remote range of partner-fabrikam holds 203.0.113.5" in out and "554 5.7.1" in out


def _connector(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": "submission-mx01", "namespace": "mail", "generation": generation},
        "spec": next(d for d in _documents() if d["metadata"]["name"] == "submission-mx01")["spec"],
    }
    if status is not None:
        body["status"] = status
    return body


def test_permissions_table_from_the_status_one_line_per_right() -> None:
    rows = [
        {
            "principal": "printer",
            "extendedRights": ["ms-Exch-SMTP-Accept-Any-Recipient"],
            "deny": True,
        },
        {
            "principal": "NT AUTHORITY\\Authenticated Users",
            "extendedRights": ["ms-Exch-SMTP-Submit", "ms-Exch-Accept-Headers-Routing"],
            "deny": False,
        },
    ]
    status = {
        "observedGeneration": 1,
        "effectivePermissions": rows,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Serving", "observedGeneration": 1}
        ],
    }
    found, note = views.effective_permissions(_connector(status), None)
    assert (found, note) == (rows, None)
    lines = views.permissions_table(found).splitlines()
    assert lines[0].split() == ["PRINCIPAL", "EXTENDED", "RIGHTS", "ACCESS"]
    # The reference's order: Accept-Headers-Routing before Submit.
    assert lines[1].split("   ")[0] == "NT AUTHORITY\\Authenticated Users"
    assert "ms-Exch-Accept-Headers-Routing" in lines[1] and lines[1].endswith("Allow")
    assert "ms-Exch-SMTP-Submit" in lines[2]
    assert lines[3].startswith("printer") and lines[3].endswith("Deny")


@pytest.mark.parametrize(
    ("status", "why"),
    [
        (None, "none in the status"),
        (
            {
                "observedGeneration": 1,
                "effectivePermissions": [],
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "Serving",
                        "observedGeneration": 1,
                    }
                ],
            },
            "the status is stale",
        ),
    ],
)
def test_permissions_computed_from_the_spec_when_the_status_cannot_say(
    status: dict[str, Any] | None, why: str
) -> None:
    found, note = views.effective_permissions(_connector(status, generation=2), None)
    assert note is not None and why in note and "read as a Mailbox server" in note
    by = {(r["principal"], r["deny"]): r["extendedRights"] for r in found}
    assert by[("printer", True)] == ["ms-Exch-SMTP-Accept-Any-Recipient"]
    assert "ms-Exch-SMTP-Submit" in by[("NT AUTHORITY\\Authenticated Users", False)]


def test_invalid_spec_is_an_error_not_a_guess() -> None:
    body = _connector(None)
    body["spec"]["bindings"] = ["nowhere"]
    with pytest.raises(SpecError):
        views.effective_permissions(body, None)


def test_status_shows_stale_and_failing_conditions() -> None:
    server = {
        "metadata": {"name": "mx01", "namespace": "mail", "generation": 3},
        "spec": {"role": "Mailbox", "fqdn": "mail.contoso.com", "replicas": 2},
        "status": {
            "observedGeneration": 2,
            "readyReplicas": 2,
            "connectors": 3,
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Serving", "observedGeneration": 2}
            ],
        },
    }
    conflict = {
        "metadata": {"name": "b", "namespace": "mail", "generation": 1},
        "spec": {"server": "mx01", "usage": "Custom", "bindings": ["0.0.0.0:25"]},
        "status": {
            "observedGeneration": 1,
            "conditions": [
                {
                    "type": "Accepted",
                    "status": "False",
                    "reason": "Conflict",
                    "message": "clashes with 'a'",
                    "observedGeneration": 1,
                },
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "NotInConfig",
                    "message": "left out",
                    "observedGeneration": 1,
                },
            ],
        },
    }
    out = views.status([server], [conflict], [], wide=False)
    assert "mx01   Mailbox   mail.contoso.com   2/2        3            Unknown (Stale)" in out
    assert (
        "b      mx01     Custom   0.0.0.0:25   False (Conflict)   -             False (NotInConfig)"
        in out
    )
    assert "receiveconnector/b: Accepted False (Conflict): clashes with 'a'" in out
    assert (
        "transportserver/mx01: Ready Unknown (Stale): status is for generation 2; the spec is at 3"
        in out
    )
    assert views.status([server], [conflict], [], wide=True).splitlines()[1].startswith("NAMESPACE")


def test_status_names_a_missing_krb5_config_map_among_what_is_not_well() -> None:
    message = (
        "ConfigMap mail/krb5 (spec.kerberos.krb5ConfigMapRef, the krb5.conf, key 'krb5.conf') "
        "does not exist"
    )
    server = {
        "metadata": {"name": "ex01", "namespace": "mail", "generation": 1},
        "spec": {"role": "Mailbox", "fqdn": "ex01.contoso.com", "replicas": 1},
        "status": {
            "observedGeneration": 1,
            "readyReplicas": 0,
            "connectors": 1,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "ConfigMapNotFound",
                    "message": message,
                    "observedGeneration": 1,
                },
                {"type": "SecretsReady", "status": "True", "reason": "Found", "message": ""},
                {
                    "type": "ConfigMapsReady",
                    "status": "False",
                    "reason": "ConfigMapNotFound",
                    "message": message,
                    "observedGeneration": 1,
                },
            ],
        },
    }
    out = views.status([server], [], [], wide=False)
    assert "False (ConfigMapNotFound)" in out
    assert f"transportserver/ex01: ConfigMapsReady False (ConfigMapNotFound): {message}" in out
    assert "SecretsReady" not in out
