"""The ``qcli`` command: registers the four commands and maps errors to exit codes.

Exit codes: 0 success; 1 error (bad input, load failure, unsupported model); 2 usage error;
3 a gate failed (the report and artifact are still written); 4 a gate the measurements could not
decide (``bench --inconclusive``); 130/143 interrupted (SIGINT/SIGTERM).
Set QCLI_DEBUG=1 to see the traceback of an error.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from types import FrameType
from typing import Any

import typer
from typer.exceptions import Abort, TyperException

from qcli import __version__
from qcli.cli import bench, calibrate, convert, inspect
from qcli.cli.common import recipe_defaults
from qcli.config import Recipe
from qcli.errors import EXIT_ERROR, EXIT_SIGINT, EXIT_SIGTERM, QcliError

EPILOG = (
    "Exit codes: 0 success, 1 error, 2 usage error, 3 gate failed (report still written), "
    "4 gate undecided by the measurements (report still written), 130/143 interrupted. "
    "QCLI_DEBUG=1 shows tracebacks."
)

app = typer.Typer(
    name="qcli",
    help="Quantize saved PyTorch models to INT8 and prove the result: FP32-vs-INT8 latency and accuracy.",
    epilog=EPILOG,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)
app.command("inspect", epilog=EPILOG)(inspect.inspect_command)
app.command("calibrate", epilog=EPILOG)(calibrate.calibrate_command)
app.command("convert", epilog=EPILOG)(convert.convert_command)
app.command("bench", epilog=EPILOG)(bench.bench_command)


def _version(value: bool) -> None:
    if value:
        print(f"qcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Quantize saved PyTorch models to INT8 and prove the result."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM: unwinds like KeyboardInterrupt (atomic writes clean up), exits 130/143."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM)


def run(argv: list[str] | None = None) -> int:
    """Run the app on ``argv`` and return the exit code; every failure is one line on stderr.

    Usage errors (a missing path, a bad option value) are printed as one line too, with a pointer to
    ``--help``, instead of Typer's framed panel, so CI logs stay greppable.
    """
    debug = os.environ.get("QCLI_DEBUG", "") not in ("", "0")
    _warnings_to_stderr()
    from qcli.private import click_errors

    NoArgsIsHelpError, UsageError = click_errors()  # noqa: N806 (exception classes)
    try:
        result = app(args=argv, prog_name="qcli", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except NoArgsIsHelpError as exc:
        exc.show()
        return exc.exit_code
    except UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "qcli"
        print(f"qcli: error: {exc.format_message()} (see '{where} --help')", file=sys.stderr)
        return exc.exit_code
    except TyperException as exc:  # other click errors, e.g. a file that cannot be opened
        print(f"qcli: error: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    except QcliError as exc:
        if debug:
            traceback.print_exc()
        print(f"qcli: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Interrupted as exc:
        print("qcli: interrupted; no partial output was left", file=sys.stderr)
        return exc.code
    except Abort:  # EOF on a prompt
        print("qcli: error: aborted", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # a bug in qcli or its libraries: still one line unless debugging
        if debug:
            traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0]
        print(
            f"qcli: internal error: {type(exc).__name__}: {first} (set QCLI_DEBUG=1 for the traceback)", file=sys.stderr
        )
        return EXIT_ERROR


def _warnings_to_stderr() -> None:
    """The library's warnings (logger ``qcli``) as ``qcli: warning: ...`` lines on stderr; torchao's
    and torch's noise for CPU users (``engine.LIBRARY_NOISE``) hidden."""
    import logging

    logger = logging.getLogger("qcli")
    if not logger.handlers:
        handler = logging.StreamHandler()  # sys.stderr at the time of each message
        handler.setFormatter(logging.Formatter("qcli: warning: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    from qcli.engine import LIBRARY_NOISE

    for name in LIBRARY_NOISE:  # however torchao gets imported (dynamic mode, a user's --arch)
        logging.getLogger(name).setLevel(logging.ERROR)


def main() -> None:
    """Entry point: SIGINT/SIGTERM unwind like KeyboardInterrupt (temporary files are removed)."""
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    sys.exit(run())


if __name__ == "__main__":
    main()


def recipe_defaults_for(command: str, recipe: Recipe) -> dict[str, Any]:
    """The option values ``qcli COMMAND --config`` would take from ``recipe`` (checked as the CLI
    checks them); for tests and tools that read recipes without running a command."""
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    ctx = typer.Context(click_command, info_name=command)
    return recipe_defaults(ctx, recipe)
