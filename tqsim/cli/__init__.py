"""The ``tqsim`` command line: each command parses, calls one library function, renders.

Heavy imports (torch, PyMC) happen inside the command that needs them so ``tqsim --help`` is fast.
"""

from __future__ import annotations

import os
import sys

import typer

from tqsim import interrupts
from tqsim.cli.common import app

# Each module registers its commands on ``app``; imported for that side effect.
from tqsim.cli import commands_measure  # noqa: F401
from tqsim.cli import commands_quality  # noqa: F401
from tqsim.cli import commands_model  # noqa: F401
from tqsim.cli import commands_whatif  # noqa: F401
from tqsim.cli import commands_report  # noqa: F401
from tqsim.cli import commands_check  # noqa: F401
from tqsim.cli import commands_design  # noqa: F401
from tqsim.cli import commands_explain  # noqa: F401
from tqsim.cli import commands_serve  # noqa: F401


def main() -> None:
    """Entry point: user mistakes exit 2 in one or two lines; internal failures exit 1."""
    from tqsim.errors import UserError

    debug = "--debug" in sys.argv
    interrupts.install()
    try:
        code = app(standalone_mode=False, prog_name="tqsim")
        if code == 130 or interrupts.seen():  # typer returns 130 for KeyboardInterrupt in this mode; or swallowed
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as exc:
        if debug:
            raise
        typer.secho(f"error: {exc}", err=True, fg="red")
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted; nothing finished was lost (a calibration resumes with the same command; an "
                    "interrupted fit left the previous model as it was).", err=True, fg="yellow")
        # Every file is complete or untouched by now (atomic writes clean up as the exception unwinds).
        # Leave without the interpreter's shutdown: the sampler's native threads can deliver the signal
        # again there, and the process then dies by SIGINT instead of exiting 130.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    except (typer.Exit, SystemExit) as exc:
        code = exc.exit_code if isinstance(exc, typer.Exit) else exc.code
        sys.exit(code)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:
        if hasattr(exc, "exit_code") and hasattr(exc, "show"):  # usage errors of typer's bundled click
            exc.show()
            sys.exit(exc.exit_code)
        if debug:
            raise
        typer.secho(f"internal error: {exc.__class__.__name__}: {exc} (re-run with --debug for the traceback)",
                    err=True, fg="red")
        sys.exit(1)
