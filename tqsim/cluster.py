"""Dask distributed behind every ``--cluster`` option: one place that connects, so each command refuses an
unreachable scheduler the same way (exit 2 within 10 s, naming it), and one convention for how a worker says
which system it is (a worker resource ``system:<name>``; docs/design.md, "Fleets")."""

from __future__ import annotations

import contextlib
from typing import Iterator

from tqsim.errors import UserError

CONNECT_TIMEOUT_S = 8.0  # the refusal must come within 10 s (issue 17)
SYSTEM_RESOURCE = "system:"
INSTALL_HINT = "pip install 'tqsim[cluster]'"


def system_resource(system: str) -> str:
    """The worker resource a worker of ``system`` declares: ``dask worker ... --resources 'system:NAME=1'``."""
    return f"{SYSTEM_RESOURCE}{system}"


def _distributed():
    try:
        import distributed
    except ImportError:
        raise UserError(f"--cluster needs Dask distributed: {INSTALL_HINT}") from None
    return distributed


@contextlib.contextmanager
def connect(address: str, n_workers: int | None = None, system: str | None = None) -> Iterator:
    """A ``distributed.Client`` for ``address``: ``local`` starts a ``LocalCluster`` (``n_workers`` processes, one
    thread each, default: one per core; each declaring ``system`` when given) and stops it on exit;
    ``tcp://HOST:PORT`` joins a running scheduler."""
    distributed = _distributed()
    if address == "local":
        declared = {"resources": {system_resource(system): 1}} if system else {}
        with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                      dashboard_address=None, **declared) as cluster, \
                distributed.Client(cluster) as client:
            yield client
        return
    if "://" not in address:
        raise UserError(f"--cluster {address}: give the scheduler as tcp://HOST:PORT (e.g. tcp://127.0.0.1:8786), "
                        "or 'local' for a cluster on this machine.")
    try:
        client = distributed.Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise UserError(f"--cluster {address}: no Dask scheduler answered within {CONNECT_TIMEOUT_S:.0f} s ({exc}); "
                        "start one with `dask scheduler`, or check the address.") from None
    try:
        yield client
    finally:
        client.close()


def workers_by_system(client) -> dict[str, list[str]]:
    """The workers' addresses grouped by the system each declares (workers declaring none are left out)."""
    out: dict[str, list[str]] = {}
    for address, info in client.scheduler_info()["workers"].items():
        for resource in info.get("resources", {}):
            if resource.startswith(SYSTEM_RESOURCE):
                out.setdefault(resource[len(SYSTEM_RESOURCE):], []).append(address)
    return out
