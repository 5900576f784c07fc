"""Preflight, backup, verify, restore, prune and pg-restore commands (Gate 0)."""

from __future__ import annotations

from servicedesk_etl.cli.app import app  # noqa: F401
