"""Ctrl-C that no library can swallow: the handler records it before raising ``KeyboardInterrupt``.

A ``KeyboardInterrupt`` raised inside a garbage-collector callback or a ``__del__`` (JAX registers
one), or caught by a library's broad ``except``, is lost and the command would run on to the end and
write its result. Commands call :func:`check` before each write that an interrupt must prevent (a
model, a pass), and the CLI exits 130 when one was seen.
"""

from __future__ import annotations

import signal
import threading

_seen = threading.Event()


def _handler(signum, frame) -> None:
    _seen.set()
    raise KeyboardInterrupt


def install() -> None:
    """Record every SIGINT; an inherited "ignore" (``nohup``, a background job) is left alone."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _handler)


def seen() -> bool:
    return _seen.is_set()


def check() -> None:
    """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed, even if the exception it raised was swallowed."""
    if _seen.is_set():
        raise KeyboardInterrupt
