"""A built-in workload behind LitServe, batched by LitServe's own dynamic batcher: a third-party server in the loop.

Each LitServe worker process prepares the workload's runner as tqsim's own server does, and answers every request
(:mod:`tqsim.measure.http_payloads`, json or OIP v2 bodies, at ``/predict``) with its class and a ``tqsim`` block:
the batch it was served in, that batch's size, the worker (replica) and the batch's forward time. Imports
LitServe at once: import this module only when LitServe was asked for (:func:`tqsim.serve.require_stack`).
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time
import warnings
from typing import Any

import litserve as ls
import numpy as np
from fastapi import HTTPException

from tqsim.errors import UserError
from tqsim.measure.http_payloads import answer, instance_arrays, parse_request

API_PATH = "/predict"
BATCH_IDS = 1_000_000_000  # batch ids are replica × this + the replica's own count: unique across workers
LITSERVE_HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # the hosts LitServer.run accepts


class WorkloadAPI(ls.LitAPI):
    """One tqsim workload as a LitAPI. Pickled into every worker process, so it holds only names until setup."""

    def __init__(self, workload: str, threads: int = 1, **litapi: Any):
        super().__init__(api_path=API_PATH, **litapi)
        self.workload_spec, self.threads = workload, threads

    def setup(self, device: str) -> None:
        from tqsim.factors import Config
        from tqsim.measure.backends import prepare
        from tqsim.workloads import get_workload

        self.workload = get_workload(self.workload_spec)
        self.runner = prepare(self.workload, Config(batch_size=self.max_batch_size, threads=self.threads))
        self.labels_n = self.workload.n_instances
        self.dtypes = [r.dtype for r in instance_arrays(self.workload, 0)]
        self.replica = int(os.environ.get("LITSERVE_WORKER_ID", "0"))
        self.batches = 0
        for k in sorted({1, self.max_batch_size}):  # first-call costs (allocations, kernels) before any request
            for _ in range(10):
                self._run([(i % self.labels_n, None, "json") for i in range(k)])
        self.batches = 0

    def decode_request(self, request):  # unannotated: LitServe reads the body's type from this signature
        try:
            index, rows, protocol = parse_request(request)
        except (ValueError, KeyError, TypeError) as exc:
            raise HTTPException(400, f"bad request body: {exc}") from None
        if index is not None and not 0 <= index < self.labels_n:
            raise HTTPException(400, f"index {index} is outside the evaluation set (0..{self.labels_n - 1})")
        return index, rows, protocol

    def batch(self, inputs: list) -> list:
        return inputs  # collated in predict, with the forward: a batch of one never passes through here

    def predict(self, x: Any) -> Any:
        single = isinstance(x, tuple)  # max_batch_size 1: LitServe hands over one decoded request
        out = self._run([x] if single else x)
        return out[0] if single else out

    def unbatch(self, output: list) -> list:
        return output

    def encode_response(self, output):  # unannotated, as decode_request
        prediction, meta, protocol, index = output
        return answer(prediction, meta, protocol, index)

    def _run(self, items: list) -> list[tuple]:
        from tqsim.measure.server import timed_forward

        out, forward_s = timed_forward(self.runner, self._collate(items))
        predictions = self.runner.predicted_classes(out)
        meta = {"batch_id": self.replica * BATCH_IDS + self.batches, "batch_size": len(items),
                "replica": self.replica, "forward_s": forward_s}
        self.batches += 1
        return [(int(p), meta, protocol, index) for p, (index, _, protocol) in zip(predictions, items)]

    def _collate(self, items: list) -> tuple:
        """The batch's forward arguments: the sent instances stacked, or (shapes differing, e.g. sequences of
        several lengths) the workload's own collation of their indices."""
        rows = [r if r is not None else instance_arrays(self.workload, i) for i, r, _ in items]
        try:
            return tuple(np.stack(col).astype(dt, copy=False) for col, dt in zip(zip(*rows), self.dtypes))
        except ValueError:
            if any(i is None for i, _, _ in items):
                raise HTTPException(400, "instances of different shapes cannot be batched; send their index") \
                    from None
            return self.workload.collate(self.workload.inputs, np.array([i for i, _, _ in items]))


def serve_litserve(workload: str, max_batch: int, max_wait_s: float, replicas: int, threads: int = 1,
                   host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``workload`` with LitServe until Ctrl-C: ``replicas`` worker processes of ``threads`` torch threads,
    batches of up to ``max_batch`` collected for up to ``max_wait_s``. Prints the URL once it answers."""
    from tqsim.workloads import get_workload

    if min(max_batch, replicas, threads) < 1 or max_wait_s < 0:
        raise UserError("max-batch, replicas and threads must be ≥ 1 and max-wait ≥ 0.")
    if host not in LITSERVE_HOSTS:
        raise UserError(f"LitServe listens on {', '.join(LITSERVE_HOSTS)} only; give --host 127.0.0.1.")
    if not 1024 <= port <= 65535:
        raise UserError(f"--port {port}: LitServe takes a port from 1024 to 65535.")
    _check_port_free(host, port)
    get_workload(workload)  # a wrong name fails here, in one line, not in every worker's log
    with warnings.catch_warnings():  # LitServe warns that batch/unbatch are defined when max_batch is 1
        warnings.simplefilter("ignore", UserWarning)
        api = WorkloadAPI(workload, threads, max_batch_size=max_batch, batch_timeout=max_wait_s)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=replicas)
    server.uvicorn_graceful_timeout = 3  # Ctrl-C should not wait 30 s for idle keep-alive connections
    local = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    url = f"http://{f'[{local}]' if ':' in local else local}:{port}{API_PATH}"
    print(f"starting LitServe: {workload}, {replicas} worker(s) × {threads} thread(s), batch ≤ {max_batch}, "
          f"batch_timeout {max_wait_s * 1e3:g} ms", flush=True)
    threading.Thread(target=_announce, args=(url, local, port), daemon=True).start()
    try:
        server.run(host=host, port=port, log_level="warning", generate_client_file=False)
    except KeyboardInterrupt:  # before LitServe's own handler was in place: its children are ours to end
        import multiprocessing

        for child in multiprocessing.active_children():
            child.terminate()
    print("LitServe stopped.", flush=True)


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise UserError(f"port {port} on {host} is in use; pick another with --port.") from None


def _announce(url: str, host: str, port: int) -> None:
    """Print the URL once the health check answers 200 (the workers are set up), so a script can wait for it."""
    while True:
        conn = http.client.HTTPConnection(host, port, timeout=1)
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                print(f"serving at {url} (Ctrl-C stops it)", flush=True)
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.2)
