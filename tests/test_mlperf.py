"""MLPerf LoadGen early stopping (issue 3): reference values from the MLPerf inference rules and
LoadGen, and a brute-force check of the binomial bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tqsim.empirical.mlperf import (early_stopping_estimate, max_overlatency, min_passing_queries, min_queries,
                                    normal_approx_queries, queries_needed, server_check)


def test_reference_minimum_counts():
    assert min_passing_queries(0, 0.99) == 459   # LoadGen's initial bound ceil(log(0.01)/log(0.99))
    assert min_passing_queries(0, 0.90) == 44
    assert min_queries(0.90, 1) == 64            # single-stream: "process at least 64 queries" for p90
    assert min_queries(0.99, 1) == 662           # and 662 for p99


@pytest.mark.parametrize("p,margin,ref", [(0.90, 0.005, 23_886), (0.95, 0.0025, 50_425), (0.97, 0.0015, 85_811),
                                          (0.99, 0.0005, 262_742)])
def test_rules_table_of_fixed_query_counts(p, margin, ref):
    assert round(normal_approx_queries(p, margin=margin)) == ref  # the rules round to nearest
    if p != 0.97:  # the rules' default margin is (1 - p) / 20
        assert round(normal_approx_queries(p)) == ref


def _brute_h(t, p, c=0.99):
    h = 1
    while stats.binom.cdf(t, h + t, 1 - p) >= 1 - c:
        h += 1
    return h


@pytest.mark.parametrize("p", [0.9, 0.95, 0.99])
@pytest.mark.parametrize("t", [0, 1, 2, 5, 13])
def test_binary_search_equals_brute_force(p, t):
    assert min_passing_queries(t, p) == _brute_h(t, p)


def _loadgen_loop(n, p):
    """LoadGen's single-stream loop, verbatim in logic: t = 1, then the first i whose need exceeds n."""
    if n < min_queries(p, 1):
        return 0
    t = 1
    for i in range(2, n + 1):
        if n < min_passing_queries(i, p) + i:
            t = i - 1
            break
    return t


@pytest.mark.parametrize("n", [63, 64, 100, 500, 1000, 1797])
def test_max_overlatency_matches_loadgen_loop(n):
    assert max(max_overlatency(n, 0.9), 0) == _loadgen_loop(n, 0.9) or n < 64


def test_early_stopping_estimate():
    lat = np.arange(1, 1001, dtype=float)  # sorted 1..1000
    es = early_stopping_estimate(lat, 0.9)
    t = _loadgen_loop(1000, 0.9)
    assert es.overlatency == t and es.latency_s == lat[1000 - t] and es.discarded == t - 1
    assert es.latency_s >= np.quantile(lat, 0.9)  # the penalty: a higher percentile than p90
    few = early_stopping_estimate(np.ones(63), 0.9)
    assert math.isnan(few.latency_s) and few.min_queries == 64


def test_server_check_and_queries_needed():
    assert server_check(64, 1, 0.9)["passed"]
    res = server_check(100, 10, 0.9)
    assert not res["passed"] and res["more_needed"] == res["required"] - 100
    assert queries_needed(0.9, 0.1) == math.inf
    assert queries_needed(0.9, 0.0) == 44
    n = queries_needed(0.99, 0.005)
    assert n >= min_queries(0.99, int(0.005 * n))
    assert queries_needed(0.9, 0.05) < queries_needed(0.9, 0.08)
