"""The Typer application object and what every command shares: the target DSN, logging, failure."""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer
from rich.console import Console

from servicedesk_etl.settings import ENV_PG_DSN, state_dir

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


TargetDsn = Annotated[
    str | None,
    typer.Option(
        "--target-dsn",
        envvar=ENV_PG_DSN,
        show_envvar=True,
        help="PostgreSQL DSN (prefer the environment variable: a command line is visible in ps); "
        "default: the embedded server.",
    ),
]


def start_logging(*dsns: str | None) -> None:
    """This command's JSON log file in the state directory, with these DSNs' passwords scrubbed."""
    from servicedesk_etl.observability import configure_logging, register_secret_dsn

    for dsn in dsns:
        register_secret_dsn(dsn)
    configure_logging(state_dir(), console=False)


def resolve_target(given: str | None, *, check: bool = True) -> str:
    """The DSN to use (given, else the embedded server, started if needed), optionally checked reachable."""
    from servicedesk_etl.embedded_pg import embedded_dsn
    from servicedesk_etl.pg import connect

    dsn = given or embedded_dsn(state_dir())
    start_logging(dsn)
    if check:
        with connect(dsn) as conn:
            conn.execute("SELECT 1")
    return dsn
