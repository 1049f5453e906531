"""What the receiver permits: session facts in, a Reply out. Pure: no sockets, no aiosmtpd.

Every function here reads the connector the session was matched to and the principals the
session holds, and decides as the reference describes."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from smtpgate.connectors.config import AcceptedDomain, ConnectorConfig
from smtpgate.connectors.enums import (
    AcceptedDomainType,
    AuthMechanism,
    MessageRateSource,
    SizeMode,
)
from smtpgate.connectors.enums import Permission as P
from smtpgate.connectors.ranges import IPAddress

from . import addresses, identity, replies
from .replies import Reply

# Commands that move no message forward (NOOP, RSET, HELP, VRFY, a repeated EHLO or HELO,
# MAIL without a completed transaction) a session may send before it is closed; a message
# accepted starts the count again. Postfix's smtpd_junk_command_limit has the same default.
JUNK_COMMAND_LIMIT = 100

# With ms-Exch-Bypass-Message-Size-Limit a message may exceed the connector's limit, but
# never this: the receiver keeps memory bounded whoever the client is.
HARD_MESSAGE_CEILING = 1 << 30

# An AUTH line with its initial response, and each response line of the exchange, may be
# this long (RFC 4954 4): a Kerberos ticket with a Windows PAC takes several kilobytes.
AUTH_LINE_LIMIT = 12288


@dataclass
class Session:
    """What the receiver knows of one SMTP session; the adapter keeps it current."""

    connector: ConnectorConfig
    remote: IPAddress
    accepted_domains: Sequence[AcceptedDomain]
    principals: identity.Principals
    via: str | None = None  # the trusted proxy whose PROXY header named ``remote``
    tls: bool = False
    user: str | None = None
    helo: str | None = None
    logon_failures: int = 0
    protocol_errors: int = 0
    junk_commands: int = 0
    # The AUTH (GSSAPI, NTLM) and X-EXPS mechanisms the connector's Integrated and
    # ExchangeServer give, of those the server has credentials for (``sasl.offered``).
    sasl_offered: tuple[str, ...] = ()
    exps_offered: tuple[str, ...] = ()
    peer_certificate: bytes | None = None  # the client's, from STARTTLS (mutual_tls)
    partner_domain: str | None = None  # the sender domain domain security authenticated
    _rights: tuple[identity.Principals, frozenset[P]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def for_client(self, remote: IPAddress, via: str | None) -> Session:
        """A copy of this session for the client at ``remote`` (through the trusted proxy
        ``via``): a connector's fresh session, made once, copied for each connection
        without ``__init__``'s work (every field holds an immutable value)."""
        session = Session.__new__(Session)
        session.__dict__.update(self.__dict__)
        session.remote, session.via = remote, via
        return session

    @property
    def rights(self) -> frozenset[P]:
        """The connector's rights for the principals held now (worked out again whenever
        the principals change)."""
        if self._rights is None or self._rights[0] is not self.principals:
            self._rights = (self.principals, self.connector.acl.effective(self.principals))
        return self._rights[1]

    @property
    def anonymous(self) -> bool:
        return identity.is_anonymous(self.principals)


def connection(
    connector: ConnectorConfig | None, on_connector: int, from_source: int
) -> Reply | None:
    """Whether a new connection may start; counts include the new connection."""
    if connector is None:
        return replies.NO_CONNECTOR
    limits = connector.limits
    if on_connector > limits.max_inbound_connection:
        return replies.TOO_MANY_CONNECTIONS
    share = math.ceil(
        limits.max_inbound_connection * limits.max_inbound_connection_percentage_per_source / 100
    )
    if from_source > min(limits.max_inbound_connection_per_source, share):
        return replies.TOO_MANY_FROM_SOURCE
    return None


def starttls_offered(session: Session) -> bool:
    return session.connector.starttls_available and not session.tls


def auth_mechanisms(session: Session) -> list[str]:
    """SASL mechanisms offered now: Integrated and ExchangeServer give GSSAPI and NTLM
    (``sasl_offered``, with or without TLS: no password crosses the wire); BasicAuth gives
    LOGIN and PLAIN, before TLS only when BasicAuthRequireTLS is not set."""
    connector = session.connector
    if session.user is not None:
        return []
    offered = list(session.sasl_offered)
    if not connector.offers(AuthMechanism.BasicAuth):
        return offered
    if connector.offers(AuthMechanism.BasicAuthRequireTLS) and not session.tls:
        return offered
    return [*offered, "LOGIN", "PLAIN"]


def message_size_limit(session: Session) -> int:
    if P.BypassMessageSizeLimit in session.rights:
        return HARD_MESSAGE_CEILING
    return session.connector.limits.max_message_size


def ehlo_keywords(session: Session, withheld: frozenset[str] = frozenset()) -> list[str]:
    """The EHLO keywords, exactly what the connector enables, less what the delivery
    cannot honour (``withheld``: DSN or 8BITMIME, which a relay's next hop lacks).
    CHUNKING and BINARYMIME are not offered: the SMTP engine has no BDAT."""
    ext = session.connector.extensions
    keywords: list[str] = []
    if ext.size is SizeMode.Enabled:
        keywords.append(f"SIZE {session.connector.limits.max_message_size}")
    elif ext.size is SizeMode.EnabledWithoutValue:
        keywords.append("SIZE")
    if ext.pipelining:
        keywords.append("PIPELINING")
    if ext.dsn and "DSN" not in withheld:
        keywords.append("DSN")
    if ext.enhanced_status_codes:
        keywords.append("ENHANCEDSTATUSCODES")
    if starttls_offered(session):
        keywords.append("STARTTLS")
    mechanisms = auth_mechanisms(session)
    if mechanisms:
        keywords.append("AUTH " + " ".join(mechanisms))
    if session.exps_offered and session.user is None:
        keywords.append("X-EXPS " + " ".join(session.exps_offered))
    if ext.eight_bit_mime and "8BITMIME" not in withheld:
        keywords.append("8BITMIME")
    if P.AcceptExch50 in session.rights:
        keywords.append("XEXCH50")
    return keywords


def line_allowances(session: Session) -> dict[bytes, int]:
    """Octets a MAIL or RCPT line may have beyond 512 for the extensions EHLO offers:
    SIZE (RFC 1870: 26), DSN (RFC 3461: 100 for MAIL, 500 for RCPT); and an AUTH line
    (with a GSSAPI or NTLM initial response) up to ``AUTH_LINE_LIMIT`` where those are
    offered (AUTH PLAIN and LOGIN fit in 512)."""
    ext = session.connector.extensions
    mail = (26 if ext.size is not SizeMode.Disabled else 0) + (100 if ext.dsn else 0)
    allowances = {b"MAIL": mail, b"RCPT": 500 if ext.dsn else 0}
    if session.sasl_offered or session.exps_offered:
        allowances[b"AUTH"] = allowances[b"X-EX"] = AUTH_LINE_LIMIT - 512
    return allowances


def junk_command(session: Session) -> Reply | None:
    """A command that moves no message forward was counted: whether the session ends."""
    if session.junk_commands > JUNK_COMMAND_LIMIT:
        return replies.TOO_MANY_JUNK_COMMANDS
    return None


def auth_start(session: Session, mechanism: str) -> Reply | None:
    """Whether an AUTH with ``mechanism`` may begin."""
    if session.user is not None:
        return replies.AUTH_ALREADY
    connector = session.connector
    if mechanism.upper() in session.sasl_offered:
        return None
    if mechanism.upper() not in ("LOGIN", "PLAIN") or not connector.offers(AuthMechanism.BasicAuth):
        return replies.AUTH_UNKNOWN_MECHANISM
    if connector.offers(AuthMechanism.BasicAuthRequireTLS) and not session.tls:
        return replies.AUTH_NEEDS_TLS
    return None


def exps_start(session: Session, arg: str | None) -> Reply | None:
    """Whether an X-EXPS (Exchange server authentication) exchange may begin."""
    if session.user is not None:
        return replies.AUTH_ALREADY
    words = (arg or "").split()
    if not words or len(words) > 2:
        return replies.EXPS_SYNTAX
    if words[0].upper() not in session.exps_offered:
        return replies.AUTH_UNKNOWN_MECHANISM
    return None


def auth_result(
    session: Session, principals: identity.Principals | None, failure: Reply | None = None
) -> Reply:
    """The reply to an AUTH whose credentials gave ``principals`` (None: invalid, or the
    exchange ended with ``failure``, e.g. a cancel; either counts as a failed logon). A
    principal without ms-Exch-SMTP-Submit is refused, as Exchange refuses AUTH without it."""
    if principals is None:
        if session.logon_failures + 1 >= max(1, session.connector.limits.max_logon_failures):
            return replies.TOO_MANY_LOGON_FAILURES
        return failure or replies.AUTH_FAILED
    if P.Submit not in session.connector.acl.effective(principals):
        return replies.AUTH_NOT_PERMITTED
    return replies.AUTH_OK


def mail(
    session: Session,
    sender: str,
    declared_size: int | None,
    owns: Callable[[str], bool] = lambda address: False,
) -> Reply:
    """MAIL FROM: submit right, TLS where required, size, and the sender spoofing check
    (``owns``: whether the authenticated user may send as an address)."""
    connector = session.connector
    if connector.require_tls and not session.tls:
        return replies.MUST_STARTTLS
    rights = session.rights
    if P.Submit not in rights:
        return replies.NOT_AUTHENTICATED
    if declared_size is not None and declared_size > message_size_limit(session):
        return replies.MESSAGE_TOO_BIG
    if sender in ("", "<>"):
        return replies.SENDER_OK
    address = addresses.parse(sender)
    if address is None:
        return replies.BAD_ADDRESS
    if session.user is not None:
        return _user_sender(session, address, owns(str(address)))
    if session.partner_domain is not None and address.domain.lower() == session.partner_domain:
        return replies.SENDER_OK  # proved by the partner's certificate (domain security)
    domains = session.accepted_domains
    if addresses.is_authoritative(address.domain, domains):
        if P.AcceptAuthoritativeDomainSender not in rights:
            return replies.SEND_AS_DENIED
        return replies.SENDER_OK
    if (
        P.AcceptAnySender not in rights
        and addresses.accepted_domain(address.domain, domains) is None
    ):
        return replies.SEND_AS_DENIED
    return replies.SENDER_OK


def _user_sender(session: Session, address: addresses.Address, owned: bool) -> Reply:
    """An authenticated user's sender: any with ms-Exch-SMTP-Accept-Any-Sender; else only
    an address the user owns (``owned``: the user database's send-as list), and not in an
    authoritative domain when Accept-Authoritative-Domain-Sender is denied to the session,
    nor outside the accepted domains when Accept-Any-Sender is."""
    if P.AcceptAnySender in session.rights:
        return replies.SENDER_OK
    if not owned:
        return replies.SEND_AS_DENIED
    denied = session.connector.acl.denied(session.principals)
    domains = session.accepted_domains
    if addresses.is_authoritative(address.domain, domains):
        if P.AcceptAuthoritativeDomainSender in denied:
            return replies.SEND_AS_DENIED
    elif P.AcceptAnySender in denied and addresses.accepted_domain(address.domain, domains) is None:
        return replies.SEND_AS_DENIED
    return replies.SENDER_OK


def rate_key(session: Session) -> str | None:
    """What the connector's message rate limit counts against, for this session."""
    connector = session.connector
    if connector.limits.message_rate_limit is None:
        return None
    source = connector.limits.message_rate_source
    if source is MessageRateSource.None_:
        return None
    if source is MessageRateSource.User:
        return f"user:{session.user}" if session.user is not None else None
    if source is MessageRateSource.IPAddress:
        return f"ip:{session.remote}"
    return f"user:{session.user}" if session.user is not None else f"ip:{session.remote}"


def message_rate(session: Session, sent_last_minute: int) -> Reply | None:
    """MAIL FROM once the source has sent its messages for this minute."""
    limit = session.connector.limits.message_rate_limit
    if limit is not None and rate_key(session) is not None and sent_last_minute >= limit:
        return replies.MESSAGE_RATE_EXCEEDED
    return None


def rcpt(session: Session, recipient: str, so_far: int) -> Reply:
    """RCPT TO: the recipient limit (``so_far`` accepted already) and the relay check."""
    if so_far >= session.connector.limits.max_recipients_per_message:
        return replies.TOO_MANY_RECIPIENTS
    address = addresses.parse(recipient)
    if address is None:
        return replies.BAD_ADDRESS
    if P.AcceptAnyRecipient in session.rights:
        return replies.RECIPIENT_OK
    if (
        address.plain
        and not address.literal
        and addresses.accepted_domain(address.domain, session.accepted_domains) is not None
    ):
        return replies.RECIPIENT_OK
    return replies.RELAY_DENIED


def postmaster(session: Session) -> str:
    """Where ``RCPT TO:<postmaster>`` (no domain, any case; RFC 5321 4.5.1 requires it to
    be accepted) goes: postmaster at the authoritative domain the connector's FQDN is in,
    else at the first authoritative domain by name, else at the FQDN itself."""
    fqdn = session.connector.fqdn.lower()
    own = [
        d.domain
        for d in session.accepted_domains
        if d.domain_type is AcceptedDomainType.Authoritative and not d.domain.startswith("*.")
    ]
    domain = next((d for d in own if fqdn == d or fqdn.endswith("." + d)), own[0] if own else fqdn)
    return f"postmaster@{domain}"


def message(session: Session, header_size: int, hop_count: int) -> Reply | None:
    """At the end of DATA: the header size limit and the hop count (loop) limit."""
    limits = session.connector.limits
    if header_size > limits.max_header_size:
        return replies.HEADER_TOO_BIG
    if hop_count >= limits.max_hop_count:
        return replies.HOP_COUNT_EXCEEDED
    return None


def exch50(session: Session) -> Reply:
    if P.AcceptExch50 not in session.rights:
        return replies.EXCH50_NOT_PERMITTED
    return replies.EXCH50_SEND_DATA


def tarpit_seconds(session: Session, reply: Reply) -> int:
    """Refusals to anonymous clients are delayed by the connector's tarpit interval."""
    if reply.code >= 500 and session.anonymous and not reply.close:
        return session.connector.limits.tarpit_interval_seconds
    return 0


def counts_as_protocol_error(code: int) -> bool:
    """Replies that say the client spoke out of turn or out of syntax."""
    return code in (500, 501, 502, 503, 504)
