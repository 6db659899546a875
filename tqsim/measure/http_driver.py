"""Drive an external inference endpoint over HTTP, open loop, and record every request it served.

Requests leave at their scheduled Poisson times whatever the server does (open loop: a slow server meets more
load, as in production, not less), from one asyncio loop over a pool of keep-alive HTTP/1.1 connections (stdlib
streams; a connection is opened when every one is busy). MLPerf LoadGen's Server scenario schedules them when it
is installed (its issue callback hands queries to the loop), else :func:`poisson_schedule` does. Per request:
arrival when it was handed to the socket, completion when its whole answer was read, both ``perf_counter``
seconds, its HTTP status and whatever the answer says (:mod:`tqsim.measure.http_payloads`). Bodies are encoded
once per instance before the run and parsed after it, so the loop does little per request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import threading
import time
import urllib.parse
from typing import Any

import numpy as np

from tqsim.data.request_log import RequestLog
from tqsim.errors import UserError
from tqsim.measure.http_payloads import read_answer, request_body, resolve_protocol
from tqsim.measure.load_drivers import complete_queries, have_loadgen, loadgen_server_test, poisson_schedule

now = time.perf_counter
MAX_CONNECTIONS = 256  # beyond this a request waits for a free connection (and is recorded as sent late)
START_HINT = "start it with `tqsim serve --stack litserve --workload digits-cnn`"


@dataclasses.dataclass
class HttpRequestLog(RequestLog):
    """A :class:`RequestLog` with each request's HTTP status (0: no answer) and what went wrong first."""

    status: np.ndarray | None = None
    first_error: str = ""


@dataclasses.dataclass(frozen=True)
class Target:
    """Where requests go: host, port and the request line's path (with its query)."""

    url: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> "Target":
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise UserError(f"target {url}: give an http:// URL, e.g. http://127.0.0.1:8000/predict.")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            port = parts.port or 80
        except ValueError:
            raise UserError(f"target {url}: the port is not a number.") from None
        return cls(url, parts.hostname, port, path)

    def request(self, body: bytes) -> bytes:
        """The whole HTTP/1.1 request for one body, encoded once and reused for every request of its instance."""
        head = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
        return head.encode("latin-1") + body


def probe_endpoint(url: str, timeout_s: float = 5.0, *, body: bytes = b"{}") -> tuple[int, bytes]:
    """One POST of ``body``: its (status, answer). A target that cannot be reached, or does not answer within
    ``timeout_s``, is a :class:`UserError` naming the URL and how to start a server there."""
    t = Target.parse(url)
    conn = http.client.HTTPConnection(t.host, t.port, timeout=timeout_s)
    try:
        conn.request("POST", t.path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException) as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
        raise UserError(f"no server answered at {url} ({why}); {START_HINT} (or fix the URL).") from None
    finally:
        conn.close()


def drive_http(url: str, workload: Any, rate_rps: float, duration_s: float, *, seed: int = 0,
               protocol: str = "auto", use_loadgen: bool | None = None, timeout_s: float = 10.0) -> HttpRequestLog:
    """Send ``workload``'s instances to ``url`` at ``rate_rps`` Poisson arrivals for about ``duration_s``.

    The target is probed first (an unreachable one is a UserError at once). Returns every request in arrival
    order, with ``driver`` "http-loadgen" or "http-poisson" and ``source`` the URL.
    """
    if not (rate_rps > 0 and duration_s > 0 and timeout_s > 0):
        raise UserError("rate, duration and timeout of an HTTP run must be positive.")
    target = Target.parse(url)
    proto = resolve_protocol(protocol, target.path)
    bodies = [request_body(workload, i, proto) for i in range(workload.n_instances)]
    status, _ = probe_endpoint(url, min(timeout_s, 5.0), body=bodies[0])
    if not 200 <= status < 300:
        raise UserError(f"{url} answered HTTP {status} to instance 0 of {workload.name} ({proto} protocol); check "
                        "the URL's path, and that the server speaks this protocol (json or v2).")
    use_loadgen = have_loadgen() if use_loadgen is None else use_loadgen
    client = _Client(target, [target.request(b) for b in bodies], timeout_s)
    if use_loadgen:
        client.run_loadgen(rate_rps, duration_s, seed, workload.n_instances)
    else:
        client.run_poisson(*poisson_schedule(rate_rps, duration_s, workload.n_instances, seed))
    return client.log(np.asarray(workload.labels), url, "http-loadgen" if use_loadgen else "http-poisson")


class _Client:
    """The asyncio side: a connection pool, one task per request, the per-request records."""

    def __init__(self, target: Target, requests: list[bytes], timeout_s: float):
        self.target, self.requests, self.timeout_s = target, requests, timeout_s
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.arrival: list[float] = []
        self.completion: list[float] = []
        self.sample: list[int] = []
        self.status: list[int] = []
        self.body: list[bytes] = []
        self.first_error = ""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.slots: asyncio.Semaphore | None = None

    # -- schedules -----------------------------------------------------------------------------------------------
    def run_poisson(self, offsets: np.ndarray, samples: np.ndarray) -> None:
        async def go():
            await self._open_pool(len(offsets) / max(float(offsets[-1]), 1e-9) if len(offsets) else 1.0)
            tasks = []
            t0 = now()
            for off, s in zip(offsets.tolist(), samples.tolist()):
                delay = t0 + off - now()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(self.send(int(s))))
            await asyncio.gather(*tasks)
            self._close_pool()

        asyncio.run(go())

    def run_loadgen(self, rate_rps: float, duration_s: float, seed: int, n_instances: int) -> None:
        ready = threading.Event()

        def serve_loop():
            self.loop = asyncio.new_event_loop()
            self.loop.run_until_complete(self._open_pool(rate_rps))
            ready.set()
            self.loop.run_forever()
            self._close_pool()
            self.loop.close()

        def issue(queries):  # LoadGen's thread
            for q in queries:
                self.loop.call_soon_threadsafe(self._issue, q.id, q.index)

        thread = threading.Thread(target=serve_loop, name="tqsim-http-driver", daemon=True)
        thread.start()
        ready.wait()
        try:
            loadgen_server_test(issue, n_instances, rate_rps, duration_s, seed)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            thread.join(timeout=self.timeout_s + 5)

    def _issue(self, query_id: int, sample: int) -> None:
        task = self.loop.create_task(self.send(int(sample)))
        task.add_done_callback(lambda _: complete_queries([query_id]))

    # -- one request ---------------------------------------------------------------------------------------------
    async def send(self, sample: int) -> None:
        async with self.slots:
            status, body, t_sent = 0, b"", now()  # a request never sent arrived when it was due
            for attempt in range(2):  # a reused connection the server closed while idle is retried once, fresh
                try:
                    reader, writer, reused = await self._connection()
                except (OSError, asyncio.TimeoutError) as exc:
                    self._error(f"connect: {exc or type(exc).__name__}")
                    break
                t_sent = now()
                writer.write(self.requests[sample])
                try:
                    status, body, close = await asyncio.wait_for(_read_response(reader), self.timeout_s)
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    writer.close()
                    if reused and attempt == 0:
                        continue
                    self._error(f"connection: {exc or type(exc).__name__}")
                    break
                except asyncio.TimeoutError:
                    writer.close()
                    self._error(f"no answer within {self.timeout_s:g} s")
                    break
                if close:
                    writer.close()
                else:
                    self.idle.append((reader, writer))
                break
            t_done = now()
            self.arrival.append(t_sent)
            self.completion.append(t_done)
            self.sample.append(sample)
            self.status.append(status)
            self.body.append(body)

    def _error(self, what: str) -> None:
        if not self.first_error:
            self.first_error = what

    async def _connection(self):
        """An idle connection (reused: True), else a new one."""
        if self.idle:
            return (*self.idle.pop(), True)
        return (*await self._connect(), False)

    async def _connect(self):
        return await asyncio.wait_for(asyncio.open_connection(self.target.host, self.target.port), self.timeout_s)

    async def _open_pool(self, rate_rps: float) -> None:
        """Connect before the first arrival, enough for the requests a few tens of ms hold in flight."""
        self.slots = asyncio.Semaphore(MAX_CONNECTIONS)
        for _ in range(int(min(32, 2 + rate_rps * 0.02))):
            try:
                self.idle.append(await self._connect())
            except (OSError, asyncio.TimeoutError):
                break

    def _close_pool(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()

    # -- the record ----------------------------------------------------------------------------------------------
    def log(self, labels: np.ndarray, source: str, driver: str) -> HttpRequestLog:
        status = np.asarray(self.status, np.int64)
        ok = (status >= 200) & (status < 300)
        answers = [read_answer(b) if good else (None, {}) for b, good in zip(self.body, ok)]
        sample = np.asarray(self.sample, np.int64)

        def meta(key: str, fill, dtype):
            values = (m.get(key) for _, m in answers)
            return np.array([v if isinstance(v, (int, float)) and not isinstance(v, bool) else fill for v in values],
                            dtype)

        pred = [p for p, _ in answers]
        correct = None
        if any(p is not None for p in pred):
            correct = np.array([p is not None and p == labels[s] for p, s in zip(pred, sample)], bool)
        arrival = np.asarray(self.arrival, float)
        order = np.argsort(arrival, kind="stable")  # from_arrays sorts the same way: status follows its rows
        log = RequestLog.from_arrays(
            arrival, self.completion, ok=ok, sample_index=sample, batch_id=meta("batch_id", -1, np.int64),
            batch_size=meta("batch_size", 0, np.int64), replica=meta("replica", -1, np.int64),
            forward_s=meta("forward_s", np.nan, float), correct=correct, source=source, driver=driver)
        return HttpRequestLog(**{f.name: getattr(log, f.name) for f in dataclasses.fields(RequestLog)},
                              status=status[order], first_error=self.first_error)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One HTTP/1.1 answer: (status, body, whether the server closes the connection)."""
    line = await reader.readline()
    if not line:
        raise ConnectionError("closed by the server")
    status = int(line.split(None, 2)[1])
    length, chunked, close = None, False, line.startswith(b"HTTP/1.0")
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n"):
            break
        if not h:
            raise ConnectionError("closed in the headers")
        key, _, value = h.partition(b":")
        key, value = key.strip().lower(), value.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"transfer-encoding":
            chunked = b"chunked" in value
        elif key == b"connection":
            close = value == b"close"
    if chunked:
        parts = []
        while size := int((await reader.readline()).split(b";")[0], 16):
            parts.append(await reader.readexactly(size))
            await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return status, b"".join(parts), close
    if length is None:
        return status, await reader.read(), True
    return status, await reader.readexactly(length), close
