"""The few exceptions a user can act on, each with the exit code the CLI maps it to."""

from __future__ import annotations


class ServiceDeskETLError(Exception):
    """Base class: `str(error)` is one line a user can act on."""

    exit_code = 2
    transient = False


class InputError(ServiceDeskETLError):
    """The input cannot be used (missing, not SQLite, corrupt, locked, empty, bad arguments)."""


class TargetUnreachable(ServiceDeskETLError):
    """The PostgreSQL target cannot be reached or refuses us; worth retrying later."""

    transient = True


class ResourceExhausted(ServiceDeskETLError):
    """Disk or memory fell below a threshold; the step stopped before damage was done."""

    exit_code = 1


class GateFailed(ServiceDeskETLError):
    """A quality gate stopped the run; nothing live was changed."""

    exit_code = 1

    def __init__(self, gate: str, reason: str) -> None:
        super().__init__(f"gate {gate} failed: {reason}")
        self.gate = gate
        self.reason = reason
