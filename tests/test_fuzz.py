"""Property-based tests of every parser a user types into: any input parses to a valid value or raises
the user-error type (exit 2, a message naming the fix) — never anything else (an internal error, exit 1).

`benchmarks/fuzz_parsers.py` runs the same properties with 10,000 examples each; here a few hundred.
"""

from __future__ import annotations

import collections
import json
import math
import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tqsim.errors import UserError

EXAMPLES = int(os.environ.get("TQSIM_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

# text close to what parsers expect (numbers, units, separators), and arbitrary text
NUMBER = st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.sampled_from(["1e309", "-0", "0", "nan", "inf", ".5", "5.", "1e-400", "０", "٣"]))
UNIT = st.sampled_from(["", "s", "ms", "us", "µs", "ns", "min", "m", "h", "%", "x", " ms", "MS"])
NEAR = st.builds(lambda a, u, b: f"{a}{u}{b}", NUMBER, UNIT, st.sampled_from(["", " ", "p", "@", "=", ",", "..."]))
TEXT = st.one_of(st.text(max_size=40), NEAR, st.builds(lambda n: f"p{n}", NUMBER))


OUTCOMES: collections.Counter = collections.Counter()   # accepted / refused, read by benchmarks/fuzz_parsers.py


def returns_or_user_error(fn, *args):
    """The property: ``fn(*args)`` returns, or raises UserError; anything else fails the test."""
    try:
        value = fn(*args)
    except UserError as exc:
        assert str(exc).strip(), "a user error must say something"
        OUTCOMES["refused"] += 1
        return None, exc
    OUTCOMES["accepted"] += 1
    return value, None


def check_threshold(text):
    from tqsim.quality import parse_threshold

    th, _ = returns_or_user_error(parse_threshold, text)
    if th is not None:
        assert (th.seconds is not None and math.isfinite(th.seconds) and th.seconds > 0) or \
            (th.percentile is not None and 0 < th.percentile < 100)


def check_duration(text):
    from tqsim.units import parse_duration

    v, _ = returns_or_user_error(parse_duration, text)
    if v is not None:
        assert math.isfinite(v) and v >= 0


def check_assignment(text):
    from tqsim.factors import FACTORS, parse_assignment

    v, _ = returns_or_user_error(parse_assignment, text)
    if v is not None:
        factor, levels = v
        assert factor in FACTORS and levels


def check_objective(text):
    from tqsim.whatif.objective import parse_objective

    returns_or_user_error(parse_objective, text)


def check_serving(text):
    from tqsim.serving_calibration import parse_serving_setup

    v, _ = returns_or_user_error(parse_serving_setup, text)
    if v is not None:
        setup, duration, repeats = v
        assert setup.replicas >= 1 and setup.threads >= 1 and duration > 0 and repeats >= 1


def check_plan(body):
    from tqsim.measure.plan import build_plan

    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False, encoding="utf-8") as fh:
        fh.write(body)
    try:
        plan, _ = returns_or_user_error(build_plan, fh.name, None)
        if plan is not None:
            assert plan.passes >= 1 and plan.warmup >= 0 and plan.seed >= 0 and plan.configs
    finally:
        os.unlink(fh.name)


def check_trace(body):
    from tqsim.whatif.simulator import read_trace

    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as fh:
        fh.write(body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass"))
    try:
        a, _ = returns_or_user_error(read_trace, fh.name)
        if a is not None:
            assert a.size >= 2 and (a[1:] >= a[:-1]).all() and a[-1] > a[0]
    finally:
        os.unlink(fh.name)


def check_log_setup(text):
    from tqsim.data.request_log import parse_log_setup

    v, _ = returns_or_user_error(parse_log_setup, text)
    if v is not None:
        assert min(v["replicas"], v["threads"], v["max_batch"]) >= 1
        assert math.isfinite(v["max_wait_s"]) and v["max_wait_s"] >= 0


def json_cell(text):
    """The cell as JSON: itself where it is JSON already (numbers, true, [1]), else as a string."""
    try:
        json.loads(text)
        return text
    except ValueError:
        return json.dumps(text)


def check_request_log(case):
    from tqsim.data.request_log import read_request_log

    suffix, body = case
    with tempfile.NamedTemporaryFile("wb", suffix=suffix, delete=False) as fh:
        fh.write(body.encode("utf-8", "surrogatepass"))
    try:
        v, _ = returns_or_user_error(read_request_log, fh.name)
        if v is not None:
            log, _ = v
            assert log.ok.sum() >= 2 and log.duration_s >= 1 and (np.diff(log.arrival_s) >= 0).all()
    finally:
        os.unlink(fh.name)


PLAN_VALUE = st.one_of(NUMBER, st.integers(-5, 10**6).map(str), st.sampled_from(
    ['"abc"', "[1, 2]", "[[1]]", "true", "{}", '"digits-cnn"', "2.7", "nan", "inf", "1e400", '""']))
PLAN_KEY = st.sampled_from(["passes", "warmup", "seed", "workload", "description", "bogus"])
GRID_LINE = st.builds(lambda f, v: f"{f} = {v}", st.sampled_from(["batch_size", "threads", "precision", "backend",
                                                                   "device", "compile", "bogus"]), PLAN_VALUE)
PLAN = st.one_of(
    st.builds(lambda kv, grid: "\n".join(f"{k} = {v}" for k, v in kv) + "\n[grid]\n" + "\n".join(grid),
              st.lists(st.tuples(PLAN_KEY, PLAN_VALUE), max_size=4, unique_by=lambda t: t[0]),
              st.lists(GRID_LINE, max_size=3, unique_by=lambda t: t.split("=")[0])),
    st.text(max_size=60))
SERVING = st.one_of(st.text(max_size=50), st.lists(st.builds(
    lambda k, v: f"{k}={v}", st.sampled_from(["replicas", "threads", "max_batch", "max_wait", "precision",
                                              "duration", "repeats", "bogus", "max-batch"]),
    st.one_of(NUMBER, NEAR, st.sampled_from(["fp32", "fp64", "bf16", ""]))), max_size=5).map(",".join))
OBJECTIVE = st.one_of(st.text(max_size=40), st.builds(
    lambda m, op, v, at: f"{m}{op}{v}{at}", st.sampled_from(["tail_quality", "mean_quality", "miss_rate", "p99", "p9",
                                                             "p100.5", "bogus"]),
    st.sampled_from([">=", "<=", "=", ">"]), st.one_of(NUMBER, NEAR), st.one_of(st.just(""), NEAR.map(lambda t: "@" + t))))
TRACE = st.one_of(st.binary(max_size=60), st.lists(NUMBER, max_size=6).map("\n".join), st.text(max_size=60))
SETUP_VALUE = st.one_of(NUMBER, NEAR, st.sampled_from(["1", "4", "2ms", "0", "fp32", "bf16", "cuda", "onnxruntime",
                                                       "triton", "a b", ""]))
LOG_SETUP = st.one_of(st.text(max_size=50), st.builds(  # the four knobs, mostly valid, plus any other keys
    lambda knobs, extra: ",".join(f"{k}={v}" for k, v in knobs + extra),
    st.tuples(*(st.tuples(st.just(k), st.one_of(st.just(v), SETUP_VALUE)) for k, v in
                (("replicas", "2"), ("threads", "4"), ("max_batch", "8"), ("max_wait", "2ms")))).map(list),
    st.lists(st.tuples(st.sampled_from(["precision", "backend", "device", "stack", "bogus", "max-batch", "replicas"]),
                       SETUP_VALUE), max_size=3)))
LOG_CELL = st.one_of(NUMBER, st.sampled_from(["", "2026-12-02T10:00:00.5Z", "2026-13-02T10:00:00Z", "ok", "500",
                                              "true", '"x"', "null", "[1]", "{}"]))
LOG_COLUMN = st.sampled_from(["arrival_s", "completion_s", "status", "batch_id", "batch_size", "replica", "forward_s",
                              "sample_index", "other"])
REQUEST_LOG = st.one_of(
    st.tuples(st.just(".csv"), st.builds(
        lambda cols, rows: "\n".join([",".join(cols)] + [",".join(r) for r in rows]),
        st.lists(LOG_COLUMN, min_size=1, max_size=4), st.lists(st.lists(LOG_CELL, max_size=4), max_size=6))),
    st.tuples(st.just(".jsonl"), st.lists(st.dictionaries(LOG_COLUMN, LOG_CELL, max_size=4).map(
        lambda d: "{" + ", ".join(f'"{k}": {json_cell(v)}' for k, v in d.items()) + "}"), max_size=6).map("\n".join)),
    st.tuples(st.just(".csv"), st.lists(st.tuples(  # sorted numbers with a status: often a valid log
        st.floats(0, 3), st.floats(-0.01, 0.1), st.sampled_from(["200", "500", "ok", "", "x"])), max_size=8).map(
        lambda rows: "arrival_s,completion_s,status\n" + "\n".join(f"{a!r},{a + d!r},{c}"
                                                                   for a, d, c in sorted(rows)))),
    st.tuples(st.sampled_from([".csv", ".jsonl", ".parquet"]), st.text(max_size=60)))
GRID = st.one_of(st.text(max_size=40), st.builds(lambda f, v: f"{f}={v}", st.sampled_from(
    ["batch_size", "threads", "precision", "compile", "device", "backend", "bogus", "batch-size", ""]),
    st.lists(st.one_of(NUMBER, st.sampled_from(["fp32", "on", "off", "cuda", "onnxruntime", ""])), max_size=4).map(",".join)))

CASES = {"threshold": (check_threshold, TEXT), "duration": (check_duration, TEXT), "grid / --set": (check_assignment, GRID),
         "objective": (check_objective, OBJECTIVE), "serving set-up": (check_serving, SERVING),
         "log set-up": (check_log_setup, LOG_SETUP), "request log": (check_request_log, REQUEST_LOG),
         "plan TOML": (check_plan, PLAN), "trace": (check_trace, TRACE)}


@pytest.mark.parametrize("name", list(CASES))
def test_parser_accepts_or_refuses_every_input(name):
    check, strategy = CASES[name]

    @FUZZ
    @given(strategy)
    def run(value):
        check(value)

    run()
