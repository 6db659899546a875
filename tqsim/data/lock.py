"""One calibration at a time per ``<system>/<workload>``: an advisory file lock.

``fcntl.flock`` is released by the kernel when its holder exits, however it exits (Ctrl-C, kill -9,
a crash), so a lock left by a dead process never blocks anyone: there is nothing stale to clean.
The lock file holds the holder's pid, start time and command line, which the refusal names.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

from tqsim.errors import UserError

LOCK_NAME = ".calibrate.lock"


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
    except ValueError:
        return "another process"
    started = time.strftime("%H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} ({info.get('command', 'tqsim')}), started {started}"


@contextlib.contextmanager
def calibration_lock(folder: Path):
    """Hold the lock of a calibration folder for the block; refuse at once if another process holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking, as before
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = _describe(fh.read())
            raise UserError(f"another calibration is measuring {folder} ({holder}); wait for it to finish, "
                            "or calibrate into another --home.") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "started": time.time(),
                             "command": " ".join(os.path.basename(a) for a in sys.argv[:6])}))
        fh.flush()
        yield
    finally:
        fh.close()  # closing releases the lock
