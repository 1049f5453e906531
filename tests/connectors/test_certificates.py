"""tlsCertificateName parsing and certificate choice by issuer, subject, validity and SAN."""

from __future__ import annotations

import datetime as dt

import pytest
from smtpgate.connectors import certificates
from smtpgate.connectors.certificates import Candidate, Reason

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
NAME = certificates.parse_name("<I>CN=Contoso CA, O=Contoso, C=US<S>CN=mail.contoso.com")


def _candidate(
    source: str,
    issuer: str = "C=US,O=Contoso,CN=Contoso CA",
    subject: str = "CN=mail.contoso.com",
    days: tuple[int, int] = (-10, 80),
    dns: tuple[str, ...] = ("mail.contoso.com",),
) -> Candidate:
    return Candidate(
        source=source,
        issuer=certificates.name_key(issuer),
        subject=certificates.name_key(subject),
        not_before=NOW + dt.timedelta(days=days[0]),
        not_after=NOW + dt.timedelta(days=days[1]),
        dns_names=dns,
    )


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("CN=Contoso CA,O=Contoso,C=US", "C=US, O=Contoso, CN=Contoso CA"),
        ("cn=contoso ca,o=CONTOSO", "O=Contoso,CN=Contoso  CA"),
    ],
)
def test_names_match_regardless_of_order_case_and_spacing(a: str, b: str) -> None:
    assert certificates.name_key(a) == certificates.name_key(b)


def test_chooses_the_matching_certificate_that_expires_last() -> None:
    choice = certificates.choose(
        NAME,
        "mail.contoso.com",
        [
            _candidate("older", days=(-10, 30)),
            _candidate("newer", days=(-1, 90)),
            _candidate("other-issuer", issuer="CN=Evil CA", days=(-1, 900)),
        ],
        NOW,
    )
    assert choice.chosen is not None and choice.chosen.source == "newer"


def test_wildcard_san_names_the_fqdn() -> None:
    choice = certificates.choose(
        NAME, "mail.contoso.com", [_candidate("w", dns=("*.contoso.com",))], NOW
    )
    assert choice.chosen is not None


@pytest.mark.parametrize(
    ("candidates", "reason"),
    [
        ([], Reason.NoCertificates),
        ([_candidate("x", issuer="CN=Other CA")], Reason.IssuerNotFound),
        ([_candidate("x", subject="CN=www.contoso.com")], Reason.SubjectNotFound),
        ([_candidate("x", days=(-100, -1))], Reason.Expired),
        ([_candidate("x", days=(5, 100))], Reason.NotYetValid),
        (
            [_candidate("x", dns=("www.contoso.com", "*.mail.contoso.com"))],
            Reason.FqdnNotInSubjectAltName,
        ),
    ],
)
def test_each_failure_reason_is_told(candidates: list[Candidate], reason: Reason) -> None:
    choice = certificates.choose(NAME, "mail.contoso.com", candidates, NOW)
    assert choice.chosen is None and choice.reason is reason and choice.message


def test_expired_candidate_is_skipped_for_a_valid_one() -> None:
    choice = certificates.choose(
        NAME, "mail.contoso.com", [_candidate("old", days=(-400, -5)), _candidate("ok")], NOW
    )
    assert choice.chosen is not None and choice.chosen.source == "ok"


def test_without_issuer_and_subject_any_valid_certificate_naming_the_fqdn_is_chosen() -> None:
    pool = [
        _candidate("other", issuer="CN=Other CA", days=(-1, 300)),
        _candidate("wrong-name", dns=("x.example",), days=(-1, 900)),
    ]
    choice = certificates.choose(None, "mail.contoso.com", pool, NOW)
    assert choice.chosen is not None and choice.chosen.source == "other"
    none = certificates.choose(None, "mail.contoso.com", pool[1:], NOW)
    assert none.chosen is None and none.reason is Reason.FqdnNotInSubjectAltName
