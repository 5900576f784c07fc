"""The Typer application object and the one way commands report a failure."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

app = typer.Typer(
    name="servicedesk-etl",
    help="Move ServiceDesk SQLite snapshots into a verified, typed PostgreSQL schema.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def fail(message: str, exit_code: int) -> NoReturn:
    """Print one line to stderr and exit with `exit_code` (1 = a gate failed, 2 = unusable input)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise SystemExit(exit_code)
