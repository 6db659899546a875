"""The ``tqsim`` command line: each command parses, calls one library function, renders.

Heavy imports (torch, PyMC) happen inside the command that needs them so ``tqsim --help`` is fast.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import typer

from tqsim.cli.common import app

# Each module registers its commands on ``app``; imported for that side effect.
from tqsim.cli import commands_measure  # noqa: F401
from tqsim.cli import commands_quality  # noqa: F401
from tqsim.cli import commands_model  # noqa: F401
from tqsim.cli import commands_whatif  # noqa: F401
from tqsim.cli import commands_report  # noqa: F401
from tqsim.cli import commands_check  # noqa: F401


def _redeliver_swallowed_interrupts(default=sys.unraisablehook):
    """A Ctrl-C that lands inside a garbage-collector callback or a ``__del__`` (JAX registers one) is
    "ignored" by Python as unraisable, and the command would run on to the end; raise it again, so it
    is handled at the next safe point like any other."""
    def hook(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt):  # from another thread: handled after this returns
            threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGINT)).start()
        else:
            default(unraisable)
    return hook


def main() -> None:
    """Entry point: user mistakes exit 2 in one or two lines; internal failures exit 1."""
    from tqsim.errors import UserError

    debug = "--debug" in sys.argv
    sys.unraisablehook = _redeliver_swallowed_interrupts()
    try:
        code = app(standalone_mode=False, prog_name="tqsim")
        if code == 130:  # typer turns KeyboardInterrupt into a returned exit code in this mode
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as exc:
        if debug:
            raise
        typer.secho(f"error: {exc}", err=True, fg="red")
        sys.exit(2)
    except KeyboardInterrupt:
        # A native sampler can take the signal first and return; Python's own handler may then still be
        # pending and would raise again during shutdown (the process then dies by SIGINT, not exit 130).
        signal.signal(signal.SIGINT, lambda *_: None)
        typer.secho("interrupted; nothing finished was lost (a calibration resumes with the same command; an "
                    "interrupted fit left the previous model as it was).", err=True, fg="yellow")
        sys.exit(130)
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
