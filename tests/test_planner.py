"""Objective grammar and the capacity planner."""

from __future__ import annotations

import numpy as np
import pytest

from tqsim.errors import UserError
from tqsim.whatif import ExponentialService
from tqsim.whatif.objective import parse_duration, parse_objective
from tqsim.whatif.planner import candidates, plan


def test_parse_duration():
    assert parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("250us") == pytest.approx(250e-6)
    assert parse_duration("0.5") == 0.5
    with pytest.raises(UserError):
        parse_duration("soon")


def test_parse_objectives():
    o = parse_objective("tail_quality>=0.95@20ms")
    assert (o.metric, o.op, o.target, o.threshold_s) == ("tail_quality", ">=", 0.95, pytest.approx(0.02))
    assert parse_objective("p99<=15ms").target == pytest.approx(0.015)
    assert parse_objective("miss_rate<=1%@10ms").target == pytest.approx(0.01)
    for bad in ("tail_quality>0.9@20ms", "p99>=5ms", "quality>=0.9", "tail_quality>=1.5@20ms",
                "miss_rate>=0.1@5ms", "tail_quality>=0.9"):
        with pytest.raises(UserError, match="grammar"):
            parse_objective(bad)


def test_candidates_respect_the_core_budget():
    cs = candidates(2)
    assert all(c.replicas * c.threads <= 2 for c in cs)
    assert {(c.replicas, c.threads) for c in cs} == {(1, 1), (2, 1), (1, 2)}
    assert all(c.max_wait_s == 0 for c in cs if c.max_batch == 1)
    with pytest.raises(UserError, match="smaller than one replica"):
        candidates(1, threads=[2])


def _service(threads, precision, replicas):
    if threads > 1:
        raise UserError("threads=2 not calibrated")
    return ExponentialService(1e-3, 0.1e-3)


def _correct(precision):
    return np.random.default_rng(0).random(100) < 0.97


def test_plan_finds_the_cheapest_feasible_setup():
    obj = parse_objective("tail_quality>=0.8@10ms")
    p = plan(obj, 800, 2, _service, _correct, draws=8, screen_draws=3, n_windows=40,
             max_batches=(1, 4), max_waits_s=(0.0, 1e-3))
    assert p.feasible and p.best.setup.cores == 1  # one replica handles 800/s at ~1 ms
    assert p.best.probability >= 0.9
    assert any("not calibrated" in c.reason for c in p.rejected)


def test_plan_infeasible_gives_closest_candidate():
    obj = parse_objective("p99<=1.5ms")
    p = plan(obj, 900, 2, _service, _correct, draws=6, screen_draws=3, n_windows=30,
             max_batches=(1, 2), max_waits_s=(0.0,))
    assert not p.feasible and p.closest is not None
    assert p.as_dict()["feasible"] is False


def test_plan_refuses_deadline_below_fastest_service():
    obj = parse_objective("tail_quality>=0.9@1us")
    with pytest.raises(UserError, match="fastest possible"):
        plan(obj, 100, 1, _service, _correct, draws=2, screen_draws=2, n_windows=20, max_batches=(1,))
