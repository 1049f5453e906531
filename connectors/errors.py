"""The model's exceptions.

SmtpgateError
 └── SpecError            a spec that breaks a rule; names the field (``spec.bindings[1]``)
      └── ConflictError   a connector that collides with another on the same server
"""

from __future__ import annotations


class SmtpgateError(Exception):
    """Base of every error the model raises."""


class SpecError(SmtpgateError, ValueError):
    """A spec that breaks a rule. ``field`` is the path of the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ConflictError(SpecError):
    """A connector whose bindings and remote ranges collide with another connector's."""

    def __init__(self, field: str, message: str, other: str) -> None:
        super().__init__(field, message)
        self.other = other
