"""Every SMTP reply the receiver's policy gives, by name."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: code, enhanced status code, text; ``close`` ends the session after it."""

    code: int
    status: str
    text: str
    close: bool = False

    def line(self, enhanced: bool = True) -> str:
        if enhanced:
            return self.enhanced_line
        return f"{self.code} {self.text}"

    @functools.cached_property
    def enhanced_line(self) -> str:
        """The reply line with its enhanced status code (where it has one), made once."""
        return (
            f"{self.code} {self.status} {self.text}" if self.status else f"{self.code} {self.text}"
        )

    @property
    def refusal(self) -> bool:
        return self.code >= 400


ENHANCED = re.compile(r"^(\d{3})([ -])[245]\.\d{1,3}\.\d{1,3} ")


def one_line(text: bytes | str) -> str:
    """Reply text from elsewhere (a next hop's) as one line of printable text: its line
    breaks and other control characters become spaces (they must not reach the client as
    reply lines of their own)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " ".join(_CONTROL.sub(" ", text).split())


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def strip_enhanced(line: str) -> str:
    """A reply line without its enhanced status code (for connectors that disable them)."""
    return ENHANCED.sub(r"\1\2", line)


NO_CONNECTOR = Reply(
    554, "5.7.1", "No receive connector accepts connections from your address", True
)
TOO_MANY_CONNECTIONS = Reply(421, "4.3.2", "Too many connections, try again later", True)
TOO_MANY_FROM_SOURCE = Reply(421, "4.7.0", "Too many connections from your address", True)
CONNECTION_TIMEOUT = Reply(421, "4.4.2", "Connection timed out", True)
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later", True)
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors on this connection, closing", True)
TOO_MANY_LOGON_FAILURES = Reply(421, "4.7.0", "Too many failed logons, closing", True)
PREGREET = Reply(554, "5.5.0", "SMTP protocol synchronization: you spoke before the greeting", True)
TOO_MANY_JUNK_COMMANDS = Reply(421, "4.7.0", "Too many commands without a message, closing", True)

NOT_AUTHENTICATED = Reply(530, "5.7.1", "Client was not authenticated")
MUST_STARTTLS = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.7.4", "Unrecognized authentication type")
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_ALREADY = Reply(503, "5.5.1", "Already authenticated")
AUTH_NOT_PERMITTED = Reply(530, "5.7.1", "Client is not permitted to submit on this connector")
EXPS_SYNTAX = Reply(501, "5.5.4", "Syntax: X-EXPS <mechanism> [initial-response]")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH is not permitted during a mail transaction")
AUTH_AUTHZID = Reply(
    535, "5.7.8", "Authorization identity must be empty or the authentication identity"
)


# Domain security (a sender domain in the organisation's domain-secure list): transient, so
# that the partner's queue keeps the message and retries once its TLS or certificate is put
# right; Exchange answers a failed certificate check with 454 4.7.5.
def domain_secure_needs_tls(domain: str) -> Reply:
    return Reply(
        451, "4.7.3", f"Domain security for {domain} requires STARTTLS with a client certificate"
    )


def domain_secure_certificate(domain: str) -> Reply:
    return Reply(
        454,
        "4.7.5",
        f"Certificate validation failure: domain security for {domain} requires a client "
        "certificate that chains to a partner trust anchor and names the domain",
    )


MESSAGE_RATE_EXCEEDED = Reply(452, "4.7.0", "Message rate limit exceeded, try again later")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
SEND_AS_DENIED = Reply(550, "5.7.1", "Client does not have permissions to send as this sender")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
RELAY_DENIED = Reply(550, "5.7.54", "Unable to relay recipient in non-accepted domain")
BAD_ADDRESS = Reply(501, "5.1.3", "Invalid address")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")

HEADER_TOO_BIG = Reply(552, "5.3.4", "Message header size exceeds limit")
HOP_COUNT_EXCEEDED = Reply(554, "5.4.6", "Hop count exceeded - possible mail loop")
BARE_LINE_ENDING_DATA = Reply(554, "5.6.11", "Bare CR or LF in message data is not permitted")
BARE_LINE_ENDING_COMMAND = Reply(500, "5.5.2", "Bare CR or LF in command is not permitted")
COMMAND_TOO_LONG = Reply(500, "5.5.6", "Command line too long (RFC 5321 4.5.3.1.4)")
CONTROL_IN_COMMAND = Reply(501, "5.5.2", "Control characters in commands are not permitted")
DATA_TOO_MUCH = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
DATA_LINE_TOO_LONG = Reply(500, "5.5.6", "Line too long (RFC 5321 4.5.3.1.6)")
NUL_IN_DATA = Reply(554, "5.6.0", "NUL characters in message data are not permitted")
DELIVERY_DEFERRED = Reply(451, "4.3.0", "Temporary failure delivering the message, try again later")

EXCH50_NOT_PERMITTED = Reply(502, "5.3.3", "Command not implemented")
EXCH50_SEND_DATA = Reply(354, "", "Send binary data")
EXCH50_OK = Reply(250, "2.0.0", "XEXCH50 OK")
EXCH50_SYNTAX = Reply(501, "5.5.4", "Syntax: XEXCH50 <size> 2")
