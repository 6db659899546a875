"""Request-log files (``tqsim calibrate --serving-log``): round trips, the accepted forms, every refusal naming the
file and the row or key, the ``--setup`` parser, and the log of tqsim's own server."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tqsim.data.request_log import (MIN_DURATION_S, RequestLog, from_serving_run, parse_log_setup, read_request_log,
                                    write_request_log)
from tqsim.data.serving_run import ServingRun
from tqsim.errors import UserError

HEADER = "arrival_s,completion_s"


def csv_file(tmp_path, rows, header=HEADER, name="run.csv"):
    path = tmp_path / name
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def steady(n=200, step=0.01, latency=0.004):
    """``n`` distinct rows, one every ``step`` s, spanning more than a second."""
    return [f"{i * step!r},{i * step + latency + i * 1e-6!r}" for i in range(n)]


def refused(path, *needles):
    with pytest.raises(UserError) as exc:
        read_request_log(path)
    msg = str(exc.value)
    for needle in (str(path),) + needles:
        assert needle in msg, msg
    assert len(msg.splitlines()) <= 2
    return msg


def full_log(n=300, seed=0):
    rng = np.random.default_rng(seed)
    arrival = 1.7e9 + np.cumsum(rng.exponential(0.01, n))
    ok = rng.random(n) > 0.1
    completion = np.where(ok | (rng.random(n) < 0.5), arrival + rng.uniform(1e-4, 0.02, n), np.nan)
    batch = np.arange(n) // 3
    known = rng.random(n) > 0.2  # optional columns known for most rows only
    return RequestLog.from_arrays(arrival, completion, ok=ok, sample_index=np.where(known, np.arange(n), -1),
                                  batch_id=np.where(known, batch, -1), batch_size=np.where(known, 3, 0),
                                  replica=np.where(known, batch % 2, -1), forward_s=np.where(known, 1e-3, np.nan))


# --- round trips ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".ndjson", ".parquet", ".pq"])
def test_round_trip_is_exact(tmp_path, ext):
    log = full_log()
    path = write_request_log(log, tmp_path / f"run{ext}")
    back, notes = read_request_log(path)
    assert notes == [] and back.source == str(path) and back.driver == "file"
    for col in ("arrival_s", "completion_s", "forward_s"):
        np.testing.assert_allclose(getattr(back, col), getattr(log, col), rtol=0, atol=1e-9, equal_nan=True)
    for col in ("ok", "sample_index", "batch_id", "batch_size", "replica"):
        np.testing.assert_array_equal(getattr(back, col), getattr(log, col))
    assert not list(tmp_path.glob(".*tmp-*"))  # written atomically, nothing left over


def test_unknown_optional_columns_are_not_written(tmp_path):
    log = RequestLog.from_arrays([0.0, 0.5, 1.5], [0.1, 0.6, 1.6])
    path = write_request_log(log, tmp_path / "run.csv")
    assert path.read_text().splitlines()[0] == "arrival_s,completion_s,status"
    write_request_log(RequestLog.from_arrays([0.0, 2.0], [0.5, 2.5]), path)  # replaces the old file
    assert len(read_request_log(path)[0].arrival_s) == 2


# --- accepted forms ------------------------------------------------------------------------------------------


def test_iso_timestamps_become_seconds_from_the_first_arrival(tmp_path):
    path = csv_file(tmp_path, ["2026-12-02T10:00:00.123456Z,2026-12-02T10:00:00.130001Z",
                               "2026-12-02T11:00:01.000001+01:00,2026-12-02T10:00:01.002000Z",
                               "2026-12-02T10:00:02.5Z,2026-12-02T10:00:02.600007Z"])
    log, _ = read_request_log(path)
    np.testing.assert_allclose(log.arrival_s, [0.0, 0.876545, 2.376544], rtol=0, atol=1e-9)
    np.testing.assert_allclose(log.latency_s, [0.006545, 0.001999, 0.100007], rtol=0, atol=1e-9)


def test_parquet_datetime_columns_are_timestamps(tmp_path):
    import pandas as pd

    start = pd.Timestamp("2026-12-02T10:00:00.000001Z")
    arrival = start + pd.to_timedelta([0.0, 0.5, 1.25], unit="s")
    pd.DataFrame({"arrival_s": arrival, "completion_s": arrival + pd.Timedelta("3ms")}).to_parquet(tmp_path / "r.pq")
    log, _ = read_request_log(tmp_path / "r.pq")
    np.testing.assert_allclose(log.arrival_s, [0.0, 0.5, 1.25], atol=1e-9)
    np.testing.assert_allclose(log.latency_s, 3e-3, atol=1e-9)


def test_seconds_may_have_any_origin_and_optional_columns_may_be_missing(tmp_path):
    path = csv_file(tmp_path, [f"{1.7e9 + t},{1.7e9 + t + 0.005}" for t in (0.0, 0.75, 1.5)])
    log, _ = read_request_log(path)
    np.testing.assert_allclose(log.arrival_s, [0.0, 0.75, 1.5], atol=1e-6)
    assert log.ok.all() and not any(log.has(c) for c in ("batch_id", "batch_size", "replica", "forward_s"))
    assert (log.batch_id == -1).all() and (log.batch_size == 0).all() and np.isnan(log.forward_s).all()


@pytest.mark.parametrize("status, ok", [("200", True), ("204", True), ("500", False), ("404", False), ("OK", True),
                                        ("Success", True), ("error", False), ("TIMEOUT", False), ("true", True),
                                        ("False", False), ("", True), ("cancelled", False)])
def test_status_of_csv_rows(tmp_path, status, ok):
    path = csv_file(tmp_path, ["0.0,0.1,200", f"0.5,0.6,{status}", "1.5,1.6,ok", "2.0,2.1,ok"],
                    header=HEADER + ",status")
    assert read_request_log(path)[0].ok[1] == ok


def test_jsonl_status_as_codes_booleans_and_words_and_errors_without_completion(tmp_path):
    rows = [{"arrival_s": 0.0, "completion_s": 0.01, "status": 200}, {"arrival_s": 0.2, "completion_s": 0.21,
            "status": True}, {"arrival_s": 0.4, "completion_s": None, "status": 503},
            {"arrival_s": 0.6, "status": "timeout"}, {"arrival_s": 1.2, "completion_s": 1.3, "status": False},
            {"arrival_s": 1.5, "completion_s": 1.6, "status": "OK", "model": "resnet"}]  # unknown keys ignored
    path = tmp_path / "run.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    log, _ = read_request_log(path)
    assert log.ok.tolist() == [True, True, False, False, False, True]
    assert np.isnan(log.completion_s[2:4]).all()


def test_text_identifiers_are_numbered_and_extra_columns_ignored(tmp_path):
    path = csv_file(tmp_path, ["0.0,0.01,b-1,pod-a,x", "0.1,0.12,b-1,pod-a,y", "1.2,1.3,b-2,pod-b,z"],
                    header=HEADER + ",batch_id,replica,model")
    log, _ = read_request_log(path)
    assert log.batch_id.tolist() == [0, 0, 1] and log.replica.tolist() == [0, 0, 1]
    assert log.batch_sizes().tolist() == [2, 1]


def test_the_documented_example_reads(tmp_path, monkeypatch):
    import tqsim.data.request_log as rl

    doc = (Path(__file__).parents[1] / "docs" / "schema.md").read_text(encoding="utf-8")
    example = doc.split("## Request logs")[1].split("```csv\n")[1].split("```")[0]
    path = tmp_path / "example.csv"
    path.write_text(example)
    refused(path, "span only 0.00356 s")  # an excerpt: shorter than a run
    monkeypatch.setattr(rl, "MIN_DURATION_S", 0.0)
    log, notes = read_request_log(path)
    assert notes == [] and log.n == 9 and log.ok.sum() == 8 and log.batch_size.tolist() == [5] * 5 + [4] * 4
    assert log.replica.tolist() == [0] * 5 + [1] * 4 and log.has("forward_s")


# --- refusals --------------------------------------------------------------------------------------------------


def test_unknown_extension_missing_empty_and_headless_files(tmp_path):
    refused(tmp_path / "run.txt", ".txt", ".csv", ".jsonl", ".parquet")
    refused(tmp_path / "absent.csv", "no such file")
    (tmp_path / "empty.csv").write_text("")
    refused(tmp_path / "empty.csv", "empty")
    refused(csv_file(tmp_path, [], name="header.csv"), "no requests")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    refused(tmp_path / "blank.jsonl", "no requests")
    (tmp_path / "braces.jsonl").write_text("{}\n{}\n")
    refused(tmp_path / "braces.jsonl", "no column arrival_s or completion_s")
    (tmp_path / "twice.jsonl").write_text('{"arrival_s": 0, " arrival_s": 1, "completion_s": 2}\n')
    refused(tmp_path / "twice.jsonl", "arrival_s appears twice")


def test_garbled_files(tmp_path):
    refused(csv_file(tmp_path, ["0.0,0.1", "0.5,0.6,7,8"]), "not a readable CSV")
    (tmp_path / "bad.jsonl").write_text('{"arrival_s": 0, "completion_s": 1}\n{"arrival_s": 1,\n')
    refused(tmp_path / "bad.jsonl", "line 2", "JSON object")
    (tmp_path / "list.jsonl").write_text("[0, 1]\n")
    refused(tmp_path / "list.jsonl", "line 1")
    (tmp_path / "bin.parquet").write_bytes(b"PAR1 not really")
    refused(tmp_path / "bin.parquet", "not a readable PARQUET")
    (tmp_path / "latin.csv").write_bytes(b"arrival_s,completion_s\n\xff\xfe,1\n")
    refused(tmp_path / "latin.csv", "not a readable CSV")


@pytest.mark.parametrize("header, missing", [("arrival_s,done", "completion_s"), ("start,completion_s", "arrival_s"),
                                             ("a,b", "arrival_s or completion_s")])
def test_missing_required_column_is_named(tmp_path, header, missing):
    refused(csv_file(tmp_path, ["0,1"], header=header), f"no column {missing}")


def test_values_that_are_not_times_name_their_row(tmp_path):
    refused(csv_file(tmp_path, ["0.0,0.1", "0.5,soon", "1.5,1.6"]), "row 2", "completion_s", "'soon'")
    refused(csv_file(tmp_path, ["2026-12-02T10:00:00Z,2026-12-02T10:00:01Z", "12.5,2026-12-02T10:00:02Z"]),
            "row 2", "arrival_s")
    refused(csv_file(tmp_path, ["2026-12-02T10:00:00Z,0.1", "2026-12-02T10:00:02Z,2.1"]), "both as seconds")
    refused(csv_file(tmp_path, ["0.0,0.1", ",0.6", "1.5,1.6"]), "row 2", "no arrival_s")
    refused(csv_file(tmp_path, ["0.0,0.1,4", "0.5,0.6,2.5", "1.5,1.6,4"], header=HEADER + ",batch_size"),
            "row 2", "batch_size", "whole number")
    refused(csv_file(tmp_path, ["0.0,0.1,0.001", "0.5,0.6,-1", "1.5,1.6,"], header=HEADER + ",forward_s"),
            "row 2", "forward_s")


def test_answered_requests_need_a_completion(tmp_path):
    refused(csv_file(tmp_path, ["0.0,0.1,200", "0.5,,200", "1.5,1.6,200"], header=HEADER + ",status"),
            "row 2", "completion_s", "error")
    refused(csv_file(tmp_path, ["0.0,0.1", "0.5,", "1.5,1.6"]), "row 2", "status")


def test_completion_before_arrival_names_the_first_row_and_the_count(tmp_path):
    rows = steady()
    rows[7], rows[9] = "0.07,0.06", "0.09,0.01"
    refused(csv_file(tmp_path, rows), "row 8", "2 row(s)", "before it arrives")


def test_too_short_and_too_few_answered(tmp_path):
    refused(csv_file(tmp_path, ["0.0,0.1", "0.4,0.5", "0.8,0.85"]), "0.8 s", f"{MIN_DURATION_S:g} s")
    refused(csv_file(tmp_path, ["0.0,0.1,200", "0.5,,500", "1.5,,timeout"], header=HEADER + ",status"),
            "1 of 3", "answered")


def test_parquet_needs_pyarrow(tmp_path, monkeypatch):
    path = write_request_log(full_log(), tmp_path / "run.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    refused(path, "pip install pyarrow")
    with pytest.raises(UserError, match="pip install pyarrow"):
        write_request_log(full_log(), tmp_path / "again.pq")


# --- the 1 % repair boundary -------------------------------------------------------------------------------------


@pytest.mark.parametrize("k, accepted", [(2, True), (3, False)])
def test_duplicated_rows_up_to_one_percent_are_dropped_with_a_note(tmp_path, k, accepted):
    rows = steady(200 - k)
    rows[10:10] = [rows[10]] * k  # 200 rows, k of them repeats
    path = csv_file(tmp_path, rows)
    if accepted:
        log, notes = read_request_log(path)
        assert log.n == 200 - k and len(notes) == 1 and str(path) in notes[0] and f"{k} duplicated" in notes[0]
    else:
        refused(path, f"{k} of 200 rows", "repeat", "1.5 %")


@pytest.mark.parametrize("k, accepted", [(2, True), (3, False)])
def test_unsorted_rows_up_to_one_percent_are_sorted_with_a_note(tmp_path, k, accepted):
    rows = steady()
    for i in range(k):
        j = 20 + 30 * i
        rows[j], rows[j + 1] = rows[j + 1], rows[j]
    path = csv_file(tmp_path, rows)
    if accepted:
        log, notes = read_request_log(path)
        assert log.n == 200 and (np.diff(log.arrival_s) > 0).all()
        assert len(notes) == 1 and f"sorted {k} row(s)" in notes[0] and str(path) in notes[0]
    else:
        refused(path, f"{k} of 200 rows", "sort the file by arrival_s", "row 22")


# --- --setup ----------------------------------------------------------------------------------------------------


def test_parse_log_setup():
    assert parse_log_setup("replicas=2, threads=4,max-batch=8,max_wait=2ms") == {
        "replicas": 2, "threads": 4, "max_batch": 8, "max_wait_s": pytest.approx(2e-3), "precision": "fp32",
        "backend": "torch", "device": "cpu", "stack": "custom", "capacity_rps": None}
    assert parse_log_setup("replicas=1,threads=1,max_batch=8,max_wait=0,capacity=750")["capacity_rps"] == 750.0
    with pytest.raises(UserError, match="capacity"):
        parse_log_setup("replicas=1,threads=1,max_batch=8,max_wait=0,capacity=fast")
    s = parse_log_setup("replicas=1,threads=1,max_batch=1,max_wait=0,precision=BF16,backend=onnxruntime,"
                        "device=cuda,stack=triton_2-4")
    assert (s["max_wait_s"], s["precision"], s["backend"], s["device"], s["stack"]) == \
        (0.0, "bf16", "onnxruntime", "cuda", "triton_2-4")


@pytest.mark.parametrize("text, needles", [
    ("threads=4,max_batch=8", ["replicas, max_wait", "replicas=2,threads=4,max_batch=8,max_wait=2ms"]),
    ("", ["replicas, threads, max_batch, max_wait"]),
    ("replicas=1,threads=1,max_batch=8,max_wait=1ms,gpus=2", ["gpus=2", "KEY=VALUE"]),
    ("replicas=1,replicas=2,threads=1,max_batch=8,max_wait=1ms", ["replicas is given twice"]),
    ("replicas=two,threads=1,max_batch=8,max_wait=1ms", ["replicas='two'", "whole number"]),
    ("replicas=1,threads=1.5,max_batch=8,max_wait=1ms", ["threads='1.5'"]),
    ("replicas=1,threads=1,max_batch=0,max_wait=1ms", ["max_batch='0'"]),
    ("replicas=1,threads=1,max_batch=8,max_wait=soon", ["max_wait", "20ms"]),
    ("replicas=1,threads=1,max_batch=8,max_wait=1ms,precision=fp8", ["precision", "fp8"]),
    ("replicas=1,threads=1,max_batch=8,max_wait=1ms,stack=my stack", ["stack", "letters"]),
    ("replicas", ["'replicas'", "KEY=VALUE"]),
])
def test_parse_log_setup_refuses_naming_the_key(text, needles):
    with pytest.raises(UserError) as exc:
        parse_log_setup(text)
    for needle in needles:
        assert needle in str(exc.value), str(exc.value)


# --- tqsim's own server ----------------------------------------------------------------------------------------


def test_from_serving_run_maps_batches_back_to_requests():
    # three batches: #0 on replica 0 closes at 1.010 with 2 requests, #1 on replica 1 at 1.012 with 3,
    # #2 on replica 0 at 2.5 with 1; the last request's close time matches no batch (unknown)
    arrival = np.array([1.000, 1.004, 1.006, 1.008, 1.011, 2.4, 2.6])
    close = np.array([1.010, 1.010, 1.012, 1.012, 1.012, 2.5, 2.7])
    done = close + 0.003
    run = ServingRun(50.0, 2, 1, 4, 0.01, "poisson", arrival, close, done, np.arange(7) + 10, np.ones(7, bool),
                     batch_size=np.array([2, 3, 1]), batch_close_s=np.array([1.010, 1.012, 2.5]),
                     batch_forward_s=np.array([1e-3, 2e-3, 5e-4]), batch_busy_s=np.full(3, 3e-3),
                     batch_timer_late_s=np.full(3, np.nan), batch_replica=np.array([0, 1, 0]), duration_s=2.0)
    log = from_serving_run(run)
    assert log.batch_id.tolist() == [0, 0, 1, 1, 1, 2, -1]
    assert log.batch_size.tolist() == [2, 2, 3, 3, 3, 1, 0]
    assert log.replica.tolist() == [0, 0, 1, 1, 1, 0, -1]
    np.testing.assert_array_equal(log.forward_s, [1e-3, 1e-3, 2e-3, 2e-3, 2e-3, 5e-4, np.nan])
    np.testing.assert_allclose(log.arrival_s, arrival - 1.0, atol=1e-12)
    np.testing.assert_allclose(log.latency_s, done - arrival, atol=1e-12)
    assert log.sample_index.tolist() == list(range(10, 17)) and log.driver == "poisson"


def _overloaded_with_a_slow_start(rate=1000.0, capacity=800.0, seconds=3.0, dead_s=0.5) -> RequestLog:
    """``rate`` req/s offered for ``seconds`` to a FIFO server of ``capacity``/s that answers nothing for its first
    ``dead_s`` (connections opening, workers waking)."""
    arr = np.arange(int(rate * seconds)) / rate
    done = np.empty_like(arr)
    free = dead_s
    for i, a in enumerate(arr):
        free = max(free, a) + 1 / capacity
        done[i] = free
    return RequestLog.from_arrays(arr, done, source="overloaded", driver="simulated")


def test_an_overloaded_runs_sustained_throughput_skips_its_start():
    """Over its whole span the run reads ~690/s of an 800/s server; from its first quarter on, 800/s."""
    log = _overloaded_with_a_slow_start()
    assert log.throughput_rps < 720
    assert log.sustained_rps == pytest.approx(800, rel=0.02)
    short = _overloaded_with_a_slow_start(seconds=0.4, dead_s=0.0)  # too short to skip anything: whole span
    assert short.sustained_rps == short.throughput_rps


def test_the_ramp_reports_what_the_stack_sustained_not_its_start():
    from tqsim.serving_calibration import ramp_throughput

    def drive(rate, seconds):  # under 800/s the stack keeps up; above, it is overloaded and starts slowly
        return _overloaded_with_a_slow_start(rate, 800.0 if rate > 800 else 10 * rate, 2.0, 0.6 if rate > 800 else 0)

    best, logs = ramp_throughput(drive, start_rps=100.0)
    assert [round(lg.rate_rps, -1) for lg in logs] == [100, 200, 400, 800, 1600, 1600]  # the overloaded rate twice
    assert best == pytest.approx(800, rel=0.03) and logs[-1].throughput_rps < 0.9 * best


def test_a_ramp_that_stops_on_queueing_climbs_in_finer_steps_to_the_capacity():
    """A stack of 1,100 req/s queues at 800 (its median latency trebles) but still serves all of it: doubling would
    stop there and read 800; the ramp climbs by 1.25 until a step is overloaded and reads the capacity."""
    from tqsim.serving_calibration import RAMP_REFINE, ramp_throughput

    capacity = 1100.0

    def drive(rate, seconds):
        if rate > capacity:
            return _overloaded_with_a_slow_start(rate, capacity, 2.0, 0.0)
        arr = np.arange(int(rate * 2.0)) / rate  # served in full, with an M/M/1-like mean wait
        return RequestLog.from_arrays(arr, arr + 1e-3 / (1 - rate / capacity), source="queued", driver="simulated")

    best, logs = ramp_throughput(drive, start_rps=100.0)
    assert [round(lg.rate_rps, -1) for lg in logs] == [100, 200, 400, 800, 800 * RAMP_REFINE, 1250, 1250]
    assert best == pytest.approx(capacity, rel=0.02)


def test_a_ramp_stops_where_the_driver_cannot_offer_more():
    """A driver that offers at most 850 req/s to a stack of 1,100 that queues from 800: the ramp stops at the first
    step the driver fell short of, instead of asking ever more, and reports what was sustained."""
    from tqsim.serving_calibration import ramp_throughput

    def drive(rate, seconds):
        offered = min(rate, 850.0)
        arr = np.arange(int(offered * 2.0)) / offered
        return RequestLog.from_arrays(arr, arr + 1e-3 / (1 - offered / 1100.0), source="capped", driver="simulated")

    best, logs = ramp_throughput(drive, start_rps=100.0)
    # asked 1,000, offered 850: within the Poisson slack of 1,700 requests; asked 1,250: the driver's limit
    assert [round(lg.rate_rps, -1) for lg in logs] == [100, 200, 400, 800, 850, 850]
    assert best == pytest.approx(850, rel=0.02)

    def poisson(rate, seconds, rng=np.random.default_rng(3)):  # a short light step offers a few % off by chance
        arr = np.cumsum(rng.exponential(1 / rate, max(int(rate * seconds), 2)))
        return RequestLog.from_arrays(arr, arr + 1e-3 * (1 if rate < 700 else 10), source="poisson", driver="simulated")

    assert len(ramp_throughput(poisson, start_rps=20.0)[1]) > 4  # not stopped at 20 req/s by a slow draw
