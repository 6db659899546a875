"""Issue 17, the planning half: what-ifs and plans on a local pool give the serial answers seed for seed, and
`plan --systems --cost` chooses the cheapest system that meets the objective and says why the others lost."""

from __future__ import annotations

import json

import pytest

from cli_runner import run_cli
from test_planner import make_workspace
from tqsim.parallel import SERIAL, pool
from tqsim.whatif.objective import parse_objective

PLAN = ["plan", "--objective", "tail_quality>=0.9@2ms", "--rate", "3000", "--cores", "2", "--max-batch", "1,8",
        "--max-wait", "0,1ms", "--draws", "6"]


def _same(a, b) -> bool:
    """Equal, NaN included (JSON text of both)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


@pytest.fixture(scope="module")
def fleet_home(tmp_path_factory):
    """Three systems of one workload: fast (dear), cheap (3× slower, cheaper per replica) and crawl (20× slower,
    cheapest, but no set-up of it meets a 2 ms deadline at 3000 requests/s)."""
    home = tmp_path_factory.mktemp("fleet")
    for system, slower in (("fast", 1.0), ("cheap", 3.0), ("crawl", 20.0)):
        make_workspace(home, threads=(1, 2), system=system, slower=slower)
    (home / "prices.toml").write_text('currency = "EUR"\n[systems.fast]\nreplica_hour = 0.5\n'
                                      '[systems.cheap]\nmachine_hour = 0.2\ncores = 2\n'
                                      '[systems.crawl]\nreplica_hour = 0.01\n')
    return home


def test_whatif_and_plan_on_a_thread_pool_equal_the_serial_answers(fleet_home):
    from tqsim.whatif.inputs import plan_from_workspace, whatif_sweep

    sweep = dict(home=fleet_home, system="fast", rates=[1000, 4000], replicas=[1, 2], max_batch=8, max_wait_s=5e-4,
                 thresholds_s=[2e-3], draws=4, windows=20, seed=3)
    goal = parse_objective("tail_quality>=0.9@2ms")
    args = dict(home=fleet_home, system="cheap", max_batches=[1, 8], max_waits_s=[0, 1e-3], draws=6, seed=5)
    serial = whatif_sweep(**sweep).as_dict(), plan_from_workspace(goal, 3000, 2, **args).as_dict()
    with pool(workers=3) as threads:
        assert threads.workers == 3
        parallel = (whatif_sweep(**sweep, pool=threads).as_dict(),
                    plan_from_workspace(goal, 3000, 2, **args, pool=threads).as_dict())
    assert _same(serial, parallel)
    assert serial[1]["best"] is not None and len(serial[0]["results"]) == 4


def test_pool_keeps_the_order_reports_each_task_and_raises_the_tasks_error():
    from tqsim.errors import UserError

    def square(shared, x):
        if x == 7:
            raise UserError("seven")
        return shared * x * x

    seen = []
    with pool(workers=2) as threads:
        assert threads.map(square, list(range(6)), 2, lambda i, r: seen.append((i, r))) == [2 * x * x for x in range(6)]
        assert sorted(seen) == [(x, 2 * x * x) for x in range(6)]
        with pytest.raises(UserError, match="seven"):
            threads.map(square, [1, 7, 2], 1)
    assert SERIAL.map(square, [3], 1) == [9]
    with pytest.raises(UserError, match="--workers 0"):
        with pool(workers=0):
            pass


def test_plan_across_systems_picks_the_cheapest_that_meets_and_explains_the_others(fleet_home, capsys, monkeypatch):
    prices = fleet_home / "prices.toml"
    code, out, err = run_cli([*PLAN, "--home", fleet_home, "--systems", "all", "--cost", prices, "--json"], capsys,
                             monkeypatch)
    assert code == 0, err
    res = json.loads(out)
    for key in ("objective", "rate_rps", "cores", "confidence", "feasible", "best", "runners_up", "closest",
                "rejected", "screened_only", "notes"):  # the one-system plan contract, kept
        assert key in res
    assert res["feasible"] and res["best"]["system"] == "cheap" and res["workload"] == "toy"
    assert res["cost"] == {"kind": "prices", "source": str(prices)}
    assert res["best"]["cost_per_hour"] == pytest.approx(0.2) and res["best"]["meets"]
    verdict = {s["system"]: s for s in res["systems"]}
    assert verdict["cheap"]["chosen"] and verdict["cheap"]["reason"] == ""
    assert verdict["fast"]["reason"].startswith("costlier") and "0.5/h" in verdict["fast"]["reason"]
    assert verdict["crawl"]["reason"].startswith("no set-up within 2 cores meets")
    assert verdict["crawl"]["plan"]["feasible"] is False
    assert {r["system"] for r in res["rejected"]} >= {"crawl"}
    # the table says the same in words, and --systems takes a list
    code, out, err = run_cli([*PLAN, "--home", fleet_home, "--systems", "fast,crawl", "--cost", prices], capsys,
                             monkeypatch)
    assert code == 0, err
    assert "plan: fast:" in out and "no set-up within 2 cores meets" in " ".join(out.split())


def test_the_prices_file_is_refused_naming_the_fix(fleet_home, tmp_path, capsys, monkeypatch):
    def refused(text: str | None, *extra) -> str:
        prices = tmp_path / "prices.toml"
        if text is not None:
            prices.write_text(text)
        code, out, err = run_cli([*PLAN, "--home", fleet_home, *extra, "--cost", prices], capsys, monkeypatch)
        assert code == 2 and out == "" and 0 < len(err.strip().splitlines()) <= 2, (code, out, err)
        return " ".join(err.split())

    msg = refused("[systems.fast]\nreplica_hour = 0.5\n", "--systems", "all")
    assert "no price for systems cheap, crawl" in msg and "[systems.cheap] replica_hour" in msg
    assert "no price for system crawl;" in refused("[systems.fast]\nreplica_hour = 0.5\n", "--systems", "crawl")
    assert "exactly one of replica_hour or machine_hour" in refused(
        "[systems.fast]\nreplica_hour = 0.5\nmachine_hour = 1\n", "--system", "fast")
    assert "price ≥ 0" in refused("[systems.fast]\nreplica_hour = -1\n", "--system", "fast")
    assert "cores = 0" in refused("[systems.fast]\nreplica_hour = 1\ncores = 0\n", "--system", "fast")
    assert "not a readable TOML" in refused("[systems.fast\n", "--system", "fast")
    assert "no [systems.NAME] table" in refused("price = 3\n", "--system", "fast")
    (tmp_path / "prices.toml").unlink()
    assert "no such prices file" in refused(None, "--systems", "all")
    code, out, err = run_cli([*PLAN, "--home", fleet_home, "--systems", "all"], capsys, monkeypatch)
    assert code == 2 and "--cost prices.toml" in err
    code, out, err = run_cli([*PLAN, "--home", fleet_home, "--systems", "nowhere", "--cost", fleet_home / "prices.toml"],
                             capsys, monkeypatch)
    assert code == 2 and "no calibration for system 'nowhere'" in err
