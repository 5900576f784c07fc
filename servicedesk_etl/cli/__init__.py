"""The `servicedesk-etl` command line: one Typer app, sub-commands grouped by module.

Errors the user can act on (`ServiceDeskETLError`) become one line on stderr and their exit code;
nothing else is caught here, so a bug still shows its traceback.
"""

from __future__ import annotations

import sys

from servicedesk_etl.cli.app import app, fail
from servicedesk_etl.errors import ServiceDeskETLError

__all__ = ["app", "fail", "main"]


def _register_commands() -> None:
    import servicedesk_etl.cli.pipeline  # noqa: F401
    import servicedesk_etl.cli.safety  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 a gate failed, 2 bad usage or unusable input)."""
    _register_commands()
    try:
        try:
            app(args=argv, prog_name="servicedesk-etl", standalone_mode=True)
        except ServiceDeskETLError as error:
            fail(str(error), error.exit_code)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
