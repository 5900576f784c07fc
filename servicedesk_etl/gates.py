"""A gate's verdict as plain data, shared by the Dagster checks, the CLI and the tests."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from servicedesk_etl.errors import GateFailed


@dataclass(frozen=True)
class GateResult:
    """One evaluated gate: `metadata` holds the evidence (counts, scores, failing samples) as JSON-able data."""

    name: str
    passed: bool
    summary: str
    metadata: dict[str, Any] = field(default_factory=dict)
    blocking: bool = True

    @property
    def stops_the_run(self) -> bool:
        return self.blocking and not self.passed


def first_blocking_failure(gates: Iterable[GateResult]) -> GateResult | None:
    return next((gate for gate in gates if gate.stops_the_run), None)


def raise_if_blocked(gates: Iterable[GateResult]) -> None:
    """Raise GateFailed for the first blocking gate that failed."""
    failed = first_blocking_failure(gates)
    if failed is not None:
        raise GateFailed(failed.name, failed.summary)
