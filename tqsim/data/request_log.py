"""One serving run as its requests saw it: the record of ``--serving-log`` files, the HTTP driver and tqsim's own server.

A request log is what any serving stack can give: when each request arrived and when it completed. Everything
else (its batch, batch size, replica, in-server forward time, evaluation-set instance, status) is optional and
used when present. Plain arrays, so that the overhead fit (:mod:`tqsim.whatif.log_fit`) needs nothing from the
stack that made the log. The file formats are in docs/schema.md, "Request logs": :func:`read_request_log` and
:func:`write_request_log` read and write them, :func:`parse_log_setup` reads the ``--setup`` a log was served with.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np

from tqsim.errors import UserError

MIN_DURATION_S = 1.0  # a run shorter than this holds too few requests to say anything about a load
MAX_REPAIRED = 0.01   # unsorted or duplicated rows up to this share of a file are repaired with a note, else refused

REQUIRED = ("arrival_s", "completion_s")
UNKNOWN = {"sample_index": -1, "batch_id": -1, "batch_size": 0, "replica": -1, "forward_s": math.nan}  # fill values
COLUMNS = REQUIRED + tuple(UNKNOWN) + ("status",)  # a file's columns; any others are ignored
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
OK_WORDS = frozenset({"ok", "success", "true"})  # status words of an answered request; numbers are HTTP codes


@dataclasses.dataclass
class RequestLog:
    """One run at one load, one row per request in arrival order. Times in seconds from the run's first arrival.

    Unknown optional values: ``batch_id``/``replica``/``sample_index`` -1, ``batch_size`` 0, ``forward_s`` NaN.
    """

    arrival_s: np.ndarray
    completion_s: np.ndarray
    ok: np.ndarray               # status: the request was answered (not an error or a timeout)
    sample_index: np.ndarray     # evaluation-set instance served, -1 unknown
    batch_id: np.ndarray         # -1 unknown
    batch_size: np.ndarray       # 0 unknown
    replica: np.ndarray          # -1 unknown
    forward_s: np.ndarray        # in-server forward time of the request's batch, NaN unknown
    source: str = ""             # the file or URL it came from, for messages
    driver: str = ""             # what produced it: "file", "http-loadgen", "http-poisson", "tqsim-server", ...
    correct: np.ndarray | None = None  # the served prediction was right, where the producer knows it

    def __post_init__(self):
        n = self.arrival_s.size
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray) and v.size != n:
                raise ValueError(f"request log {self.source}: column {f.name} has {v.size} rows, expected {n}")

    @classmethod
    def from_arrays(cls, arrival_s, completion_s, *, ok=None, sample_index=None, batch_id=None, batch_size=None,
                    replica=None, forward_s=None, correct=None, source: str = "", driver: str = "") -> "RequestLog":
        """A log from whatever columns exist (missing ones unknown), sorted by arrival, times from the first."""
        arr = np.asarray(arrival_s, float)
        n = arr.size
        order = np.argsort(arr, kind="stable")

        def col(name, v, dtype=np.int64):
            return np.full(n, UNKNOWN.get(name, True), dtype) if v is None else np.asarray(v, dtype)[order]

        t0 = float(arr[order[0]]) if n else 0.0
        return cls(arr[order] - t0, np.asarray(completion_s, float)[order] - t0, col("ok", ok, bool),
                   col("sample_index", sample_index), col("batch_id", batch_id), col("batch_size", batch_size),
                   col("replica", replica), col("forward_s", forward_s, float), source, driver,
                   None if correct is None else np.asarray(correct, bool)[order])

    @property
    def n(self) -> int:
        return int(self.arrival_s.size)

    @property
    def latency_s(self) -> np.ndarray:
        return self.completion_s - self.arrival_s

    @property
    def duration_s(self) -> float:
        """First arrival to last arrival: the span over which the load was offered."""
        return float(self.arrival_s[-1] - self.arrival_s[0]) if self.n > 1 else 0.0

    @property
    def rate_rps(self) -> float:
        """The offered load: requests per second of the arrival span."""
        return (self.n - 1) / self.duration_s if self.duration_s > 0 else math.nan

    @property
    def span_s(self) -> float:
        """First arrival to last completion: how long the stack was serving this run."""
        return max(float(np.nanmax(self.completion_s)), 1e-9) if self.n else 1e-9

    @property
    def throughput_rps(self) -> float:
        """Answered requests per second of the serving span (an overloaded run's capacity)."""
        return float(self.ok.sum() / self.span_s)

    @property
    def sustained_rps(self) -> float:
        """Answered requests per second completed after the first quarter of the arrivals, to the last completion:
        an overloaded run's capacity without its start (connections opening, an empty pipeline), which a short ramp
        step otherwise counts (a 2 s step here read 765 req/s of a stack whose 6 s runs completed 830-930).
        Whole-span throughput when that stretch is under half a second."""
        if self.n < 8:
            return self.throughput_rps
        begin, end = float(self.arrival_s[self.n // 4]), float(np.nanmax(self.completion_s))
        if end - begin < 0.5:
            return self.throughput_rps
        return float(np.sum(self.completion_s[self.ok] > begin) / (end - begin))

    @property
    def error_rate(self) -> float:
        return float(1.0 - self.ok.mean()) if self.n else 0.0

    def has(self, column: str) -> bool:
        """Whether an optional column is known for every answered request."""
        v = getattr(self, column)[self.ok]
        if column == "forward_s":
            return bool(v.size and np.isfinite(v).all())
        if column == "batch_size":
            return bool(v.size and (v > 0).all())
        return bool(v.size and (v >= 0).all())

    def batches(self, *columns: str) -> tuple[np.ndarray, ...]:
        """Per batch the log names by id (answered requests only): its size, then each of ``columns`` as its
        first request has it (batch-level values such as ``forward_s``, ``replica``)."""
        _, first, counts = np.unique(self.batch_id[self.ok], return_index=True, return_counts=True)
        return (counts, *(getattr(self, c)[self.ok][first] for c in columns))

    def batch_sizes(self) -> np.ndarray:
        """One size per batch, when the log says which requests were batched together (else empty)."""
        if self.has("batch_id"):
            return self.batches()[0]
        if self.has("batch_size"):
            return _sizes_from_per_request(self.batch_size[self.ok])
        return np.array([], np.int64)


def _sizes_from_per_request(per_request: np.ndarray) -> np.ndarray:
    """Batch sizes from each request's own batch size: a batch of k contributes k rows of k."""
    sizes, counts = np.unique(per_request, return_counts=True)
    return np.repeat(sizes, np.maximum(counts // np.maximum(sizes, 1), 1))


def from_serving_run(run) -> RequestLog:
    """The request log of one run of tqsim's own :class:`~tqsim.measure.server.BatchingServer`.

    Each request's batch is the one that closed when the request's did: the server closes one batch at a time
    (under its batch-forming lock), so no two share a close time. A request matching no batch keeps it unknown.
    """
    key = np.round(run.close_s * 1e9).astype(np.int64)
    bkey = np.round(run.batch_close_s * 1e9).astype(np.int64)
    batch = np.full(key.size, -1)
    if bkey.size:
        order = np.argsort(bkey, kind="stable")
        pos = np.clip(np.searchsorted(bkey[order], key), 0, bkey.size - 1)
        batch = np.where(bkey[order][pos] == key, order[pos], -1)

    def per_request(per_batch: np.ndarray, column: str) -> np.ndarray | None:
        return np.where(batch >= 0, per_batch[batch], UNKNOWN[column]) if bkey.size else None

    return RequestLog.from_arrays(run.arrival_s, run.done_s, sample_index=run.sample, batch_id=batch,
                                  batch_size=per_request(run.batch_size, "batch_size"),
                                  replica=per_request(run.batch_replica, "replica"),
                                  forward_s=per_request(run.batch_forward_s, "forward_s"), correct=run.correct,
                                  source=f"tqsim server at {run.rate_rps:g} req/s", driver=run.driver)


# --- files (docs/schema.md, "Request logs") -------------------------------------------------------------------


def read_request_log(path: str | Path) -> tuple[RequestLog, list[str]]:
    """Read one ``--serving-log`` file: the log, and notes on what was repaired (each naming the file).

    Anything the fit could be misled by is refused with a :class:`UserError` naming the file, the row or column
    and the fix; only a few unsorted or duplicated rows (:data:`MAX_REPAIRED`) are repaired, and said so.
    """
    path = Path(path)
    frame = _read_frame(path, _format(path))
    frame.columns = [str(c).strip() for c in frame.columns]
    twice = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if twice:
        raise UserError(f"{path}: column {', '.join(twice)} appears twice; keep one.")
    if len(frame) == 0:
        raise UserError(f"{path} holds no requests; a request log has one row per request (docs/schema.md).")
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: no column {' or '.join(missing)} (it has: {', '.join(map(str, frame.columns))}); "
                        f"a request log needs arrival_s and completion_s (docs/schema.md, \"Request logs\").")
    frame = frame[[c for c in COLUMNS if c in frame.columns]].reset_index(drop=True)
    n_rows, notes = len(frame), []
    dup = frame.astype(str).duplicated().to_numpy()
    _repairable(path, int(dup.sum()), n_rows, "repeat an earlier row exactly", "remove the duplicated rows")
    if dup.any():
        notes.append(f"{path}: dropped {dup.sum()} duplicated row(s) of {n_rows}.")
        frame = frame[~dup]
    rows = frame.index.to_numpy() + 1  # the file's data rows, 1-based, for messages
    arrival, completion = _times(frame, path, rows)
    ok = _answered(frame["status"]) if "status" in frame else np.ones(len(frame), bool)
    _check_times(path, rows, arrival, completion, ok)
    back = np.flatnonzero(arrival[1:] < arrival[:-1]) + 1
    _repairable(path, back.size, n_rows, "arrive earlier than the row before",
                f"sort the file by arrival_s (first: row {rows[back[0]]})" if back.size else "")
    if back.size:
        notes.append(f"{path}: sorted {back.size} row(s) of {n_rows} that arrived earlier than the row before.")
    log = RequestLog.from_arrays(arrival, completion, ok=ok, **{c: _optional(frame, c, path, rows) for c in UNKNOWN},
                                 source=str(path), driver="file")
    if log.ok.sum() < 2:
        raise UserError(f"{path}: {log.ok.sum()} of {log.n} requests were answered; a run needs at least 2.")
    if log.duration_s < MIN_DURATION_S:
        raise UserError(f"{path}: its arrivals span only {log.duration_s:.3g} s; a run must span at least "
                        f"{MIN_DURATION_S:g} s of load to say anything about it.")
    return log, notes


def write_request_log(log: RequestLog, path: str | Path) -> Path:
    """Write ``log`` as CSV, JSONL or Parquet (by extension), atomically; optional columns only where known.

    Seconds are written in full (shortest round-trip repr), so reading the file back gives the same log.
    """
    from tqsim.data.io import replacing

    path = Path(path)
    kind = _format(path)
    if kind == "parquet":
        _need_pyarrow(path)
    frame = _frame(log)
    with replacing(path) as tmp:
        if kind == "csv":
            frame.to_csv(tmp, index=False)
        elif kind == "parquet":
            frame.to_parquet(tmp, index=False)
        else:
            records = frame.astype(object).where(frame.notna(), None).to_dict("records")
            Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _format(path: Path) -> str:
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{path}: unknown request-log format '{path.suffix}'; "
                        "give a .csv, .jsonl (.ndjson) or .parquet (.pq) file.")
    return kind


def _need_pyarrow(path: Path) -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise UserError(f"{path}: Parquet needs pyarrow: pip install pyarrow (or give the log as .csv or .jsonl).") \
            from None


def _read_frame(path: Path, kind: str):
    """The file as a table, every CSV cell as text (so that seconds parse exactly and timestamps stay text)."""
    import pandas as pd

    if not path.is_file():
        raise UserError(f"{path}: no such file.")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty; a request log has one row per request (docs/schema.md).")
    if kind == "parquet":
        _need_pyarrow(path)
    try:
        if kind == "csv":
            return pd.read_csv(path, dtype=str, skipinitialspace=True, encoding="utf-8-sig")
        if kind == "jsonl":
            return pd.DataFrame(_json_lines(path))
        import pyarrow

        try:
            return pd.read_parquet(path)
        except pyarrow.ArrowException as exc:
            raise ValueError(str(exc)) from None
    except (ValueError, OSError) as exc:  # pandas' and pyarrow's parse errors, bad encodings, I/O
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{path}: not a readable {kind.upper()} file ({reason}).") from None


def _json_lines(path: Path) -> list[dict]:
    records = []
    with open(path, encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                record = None
            if not isinstance(record, dict):
                raise UserError(f"{path}: line {line_no} is not a JSON object; write one object per line, "
                                '{"arrival_s": 0.0, "completion_s": 0.0123, ...}.')
            records.append(record)
    return records


def _repairable(path: Path, count: int, n_rows: int, what: str, fix: str) -> None:
    if count > MAX_REPAIRED * n_rows:
        raise UserError(f"{path}: {count} of {n_rows} rows ({100 * count / n_rows:.1f} %) {what}; {fix} "
                        f"(up to {100 * MAX_REPAIRED:g} % are repaired with a note).")


def _times(frame, path: Path, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """arrival_s and completion_s in seconds. Timestamps become seconds from the first arrival, subtracted as
    datetimes (not as floats since 1970), so microseconds survive."""
    import pandas as pd

    (kind_a, arrival), (kind_c, completion) = (_time_column(frame[c], c, path, rows) for c in REQUIRED)
    if kind_a != kind_c:
        raise UserError(f"{path}: arrival_s holds {kind_a} but completion_s holds {kind_c}; "
                        "give both as seconds or both as ISO-8601 timestamps.")
    if kind_a == "timestamps":
        origin = arrival.min()
        try:
            arrival, completion = ((t - origin) / pd.Timedelta(seconds=1) for t in (arrival, completion))
        except (OverflowError, ValueError):  # pandas' out-of-bounds errors: dates centuries apart
            raise UserError(f"{path}: its timestamps lie centuries apart; check the dates.") from None
    return np.asarray(arrival, float), np.asarray(completion, float)


def _time_column(s, name: str, path: Path, rows: np.ndarray):
    """("seconds", floats) or ("timestamps", UTC datetimes); empty cells NaN/NaT; anything else refused by row."""
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(s):
        return "timestamps", pd.to_datetime(s, utc=True)
    empty = s.isna().to_numpy()
    seconds = _floats(s)
    if np.isfinite(seconds[~empty]).all():
        return "seconds", seconds
    stamps = pd.to_datetime(s.astype(object).astype(str), utc=True, format="ISO8601", errors="coerce")
    stamped = stamps.notna().to_numpy() & ~np.isfinite(seconds)  # "2026" is a number, not the year 2026
    if (stamped | empty).all():
        return "timestamps", stamps
    neither = ~(empty | stamped | np.isfinite(seconds))
    i = int(np.argmax(neither)) if neither.any() else int(np.argmax(~(empty | stamped)))
    what = "is neither seconds nor an ISO-8601 timestamp" if neither.any() else "is a number among timestamps"
    raise UserError(f"{path}: row {rows[i]}: {name} {s.iloc[i]!r} {what}; give seconds (e.g. 12.003417) "
                    "or timestamps (e.g. 2026-12-02T10:00:00.123456Z), one kind per column.")


def _floats(s) -> np.ndarray:
    """A column as floats, NaN where a cell is empty or not a number (a true/false is not one)."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(s):
        return np.full(len(s), np.nan)
    try:
        return pd.to_numeric(s, errors="coerce").to_numpy(float)
    except (TypeError, ValueError):  # cells no parser takes (lists, objects in JSON)
        return np.array([v if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
                         for v in s.tolist()], float)


def _check_times(path: Path, rows: np.ndarray, arrival: np.ndarray, completion: np.ndarray, ok: np.ndarray):
    def refuse_first(bad: np.ndarray, what: str, fix: str):
        if bad.any():
            raise UserError(f"{path}: row {rows[np.argmax(bad)]} {what} ({bad.sum()} row(s) in all); {fix}.")

    refuse_first(np.isnan(arrival), "has no arrival_s", "every request needs its arrival")
    refuse_first(np.isnan(completion) & ok, "has no completion_s but its status says answered",
                 "give its completion, or a status marking it an error (e.g. 500, error, timeout)")
    with np.errstate(invalid="ignore"):
        refuse_first(completion < arrival, "completes before it arrives",
                     "check that both columns use the same clock and origin")


def _answered(s) -> np.ndarray:
    """Status → answered: HTTP 2xx, ok/success/true, True; an empty cell means no status given (answered)."""
    import pandas as pd

    def one(v) -> bool:
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            return True
        text = str(v).strip().lower()
        try:
            return 200 <= float(text) < 300
        except ValueError:
            return text in OK_WORDS
    return np.fromiter((one(v) for v in s.tolist()), bool, len(s))


def _optional(frame, name: str, path: Path, rows: np.ndarray) -> np.ndarray | None:
    """An optional column in the record's types (empty cells unknown), or None when the file lacks it.

    ``batch_id`` and ``replica`` are identifiers: whole numbers are kept, other values (``pod-a``, uuids)
    numbered in order of first appearance. The others are refused by row when not what they say."""
    import pandas as pd

    if name not in frame:
        return None
    s = frame[name]
    x, empty = _floats(s), s.isna().to_numpy()
    least = {"batch_size": 1}.get(name, 0)
    with np.errstate(invalid="ignore"):
        valid = (x >= 0) & np.isfinite(x) if name == "forward_s" else (x >= least) & (x == np.floor(x)) & (x < 2**53)
    bad = ~(valid | empty)
    if name in ("batch_id", "replica") and bad.any():
        return pd.factorize(s.astype(object).astype(str).where(~empty, None))[0]
    if bad.any():
        i = int(np.argmax(bad))
        expected = "a duration in seconds (≥ 0)" if name == "forward_s" else f"a whole number ≥ {least}"
        raise UserError(f"{path}: row {rows[i]}: {name} {s.iloc[i]!r} is not {expected}; fix it or leave it empty.")
    x = np.where(empty, UNKNOWN[name], x)
    return x if name == "forward_s" else x.astype(np.int64)


def _frame(log: RequestLog):
    """The log as the file's table: seconds as floats, optional columns that are known somewhere (nullable)."""
    import pandas as pd

    cols = {"arrival_s": log.arrival_s, "completion_s": log.completion_s}
    for name, fill in UNKNOWN.items():
        v = getattr(log, name)
        known = np.isfinite(v) if name == "forward_s" else v != fill
        if known.any():
            cols[name] = v if name == "forward_s" else pd.Series(v).astype("Int64").mask(~known)
    cols["status"] = np.where(log.ok, "ok", "error")
    return pd.DataFrame(cols)


# --- the set-up a log was served with (``--setup``) ------------------------------------------------------------

SETUP_KNOBS = ("replicas", "threads", "max_batch", "max_wait")  # required: a log cannot say how it was served
SETUP_DEFAULTS = {"precision": "fp32", "backend": "torch", "device": "cpu", "stack": "custom"}
SETUP_EXAMPLE = "--setup 'replicas=2,threads=4,max_batch=8,max_wait=2ms'"


def parse_log_setup(text: str) -> dict:
    """``'replicas=2,threads=4,max_batch=8,max_wait=2ms'`` → the set-up a log was served with, as
    ``replicas``/``threads``/``max_batch`` (ints ≥ 1), ``max_wait_s`` (seconds), ``precision``, ``backend``,
    ``device`` and ``stack``. The four knobs are required: guessed ones would bias the fit without a word.
    Any other input raises a UserError naming the key (fuzzed in tests/test_fuzz.py)."""
    from tqsim.factors import parse_level
    from tqsim.units import parse_duration, parse_key_values

    given = parse_key_values(text, SETUP_KNOBS + tuple(SETUP_DEFAULTS) + ("capacity",), "--setup", SETUP_EXAMPLE)
    missing = [k for k in SETUP_KNOBS if k not in given]
    if missing:
        raise UserError(f"--setup lacks {', '.join(missing)}: give the four knobs the log was served with, "
                        f"e.g. {SETUP_EXAMPLE}.")
    setup: dict = {k: _whole(k, given[k]) for k in SETUP_KNOBS[:3]}
    setup["max_wait_s"] = parse_duration(given["max_wait"], "--setup max_wait")
    values = {**SETUP_DEFAULTS, **given}
    for factor in ("precision", "backend", "device"):
        try:
            setup[factor] = parse_level(factor, values[factor])
        except UserError as exc:
            raise UserError(f"--setup: {exc}") from None
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", values["stack"]):
        raise UserError(f"--setup stack={values['stack']!r}: name the serving stack with letters, digits, - and _ "
                        "(e.g. stack=triton).")
    setup["stack"] = values["stack"]
    setup["capacity_rps"] = None
    if "capacity" in given:  # the throughput the stack sustained, where the user measured it
        try:
            setup["capacity_rps"] = float(given["capacity"])
        except ValueError:
            setup["capacity_rps"] = -1.0
        if not setup["capacity_rps"] > 0:
            raise UserError(f"--setup capacity={given['capacity']!r}: give the requests per second the stack "
                            "sustained, e.g. capacity=800.")
    return setup


def _whole(key: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise UserError(f"--setup {key}={value!r}: expected a whole number ≥ 1.")
    return n


def check_errors(log: RequestLog, limit: float = 0.01) -> None:
    """Refuse a run where more than ``limit`` of the requests failed: its latencies describe a broken server."""
    bad = int((~log.ok).sum())
    if bad <= limit * log.n:
        return
    status = getattr(log, "status", None)
    first = int(np.flatnonzero(~log.ok)[0])
    what = (f"HTTP {int(status[first])}" if status is not None and status[first] else
            getattr(log, "first_error", "") or "no answer")
    raise UserError(f"{bad} of {log.n} requests to {log.source or 'the target'} failed ({bad / max(log.n, 1):.1%}, "
                    f"more than {limit:.0%}; first: {what}); check the server's log, or lower the rate.")


def request_scores(log: RequestLog, scores: np.ndarray) -> np.ndarray | None:
    """Each request's score: the stack's own correctness when the log has it, else the calibrated score of the
    instance it asked for; None when neither is known (quality then cannot be observed)."""
    if log.correct is not None:
        return log.correct.astype(float)
    if log.has("sample_index") and int(log.sample_index.max()) < scores.size:
        return scores[log.sample_index]
    return None


def summarise(log: RequestLog, threshold_s: float, scores: np.ndarray, tail_q: float = 0.01) -> dict:
    """A run's own figures: latency quantiles, miss rate, utilisation (when the log names replicas and forward
    times) and Q@T of consecutive windows of the evaluation set's size (when each request's score is known)."""
    lat = np.where(log.ok, log.latency_s, np.inf)   # a failed request is late
    answered = lat[np.isfinite(lat)]
    out = {"source": log.source, "rate_rps": float(log.rate_rps), "requests": log.n, "errors": int((~log.ok).sum()),
           "latency_s": {k: float(np.percentile(answered, p)) for k, p in (("p50", 50), ("p99", 99), ("p99.9", 99.9))},
           "miss_rate": float((lat > threshold_s).mean()), "threshold_s": float(threshold_s),
           "utilisation": None, "mean_batch_size": None, "tail_quality": None, "mean_quality": None, "windows": 0,
           "throughput_rps": log.throughput_rps}
    sizes = log.batch_sizes()
    if sizes.size:
        out["mean_batch_size"] = float(sizes.mean())
    if log.has("forward_s") and log.has("batch_id") and log.has("replica"):
        _, fwd, rep = log.batches("forward_s", "replica")
        out["utilisation"] = float(np.mean([fwd[rep == r].sum() / log.span_s for r in np.unique(rep)]))
    score = request_scores(log, scores)
    window = scores.size
    if score is not None and log.n >= window:
        n = (log.n // window) * window
        q = ((lat[:n] <= threshold_s) * score[:n]).reshape(-1, window).mean(axis=1)
        out.update(tail_quality=float(np.quantile(q, tail_q)), mean_quality=float(q.mean()), windows=int(q.size))
    return out
