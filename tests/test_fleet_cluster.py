"""Issue 17 on real Dask workers: what-ifs and plans on a two-worker ``distributed.LocalCluster`` give the serial
answers seed for seed, and `fit --cluster local` fits every system of a workspace, the same models as local fits."""

from __future__ import annotations

import json

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from cli_runner import run_cli  # noqa: E402
from test_planner import make_workspace  # noqa: E402

PLAN = ["plan", "--objective", "tail_quality>=0.9@2ms", "--rate", "3000", "--cores", "2", "--max-batch", "1,8",
        "--max-wait", "0,1ms", "--draws", "6", "--json"]
WHATIF = ["whatif", "--rate", "1000,4000", "--replicas", "1,2", "--max-batch", "8", "--max-wait", "0.5ms",
          "--threshold", "2ms", "--draws", "4", "--windows", "20", "--seed", "3", "--json"]


@pytest.fixture(scope="module")
def scheduler():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def test_whatif_and_plan_on_two_dask_workers_equal_one_core(scheduler, tmp_path, capsys, monkeypatch):
    make_workspace(tmp_path, threads=(1, 2))
    answers = {}
    for how in (["--workers", "1"], ["--cluster", scheduler]):
        for name, args in (("whatif", WHATIF), ("plan", PLAN)):
            code, out, err = run_cli([*args, "--home", tmp_path, *how], capsys, monkeypatch)
            assert code == 0, err
            answers.setdefault(name, []).append(json.loads(out))
    assert answers["whatif"][0] == answers["whatif"][1] and len(answers["whatif"][0]["results"]) == 4
    assert answers["plan"][0] == answers["plan"][1] and answers["plan"][0]["feasible"]


def test_fleet_plan_on_dask_workers_equals_one_core(scheduler, tmp_path, capsys, monkeypatch):
    for system, slower in (("fast", 1.0), ("cheap", 3.0)):
        make_workspace(tmp_path, threads=(1, 2), system=system, slower=slower)
    (tmp_path / "p.toml").write_text("[systems.fast]\nreplica_hour = 0.5\n[systems.cheap]\nreplica_hour = 0.1\n")
    got = []
    for how in (["--workers", "1"], ["--cluster", scheduler]):
        code, out, err = run_cli([*PLAN, "--home", tmp_path, "--systems", "all", "--cost", tmp_path / "p.toml", *how],
                                 capsys, monkeypatch)
        assert code == 0, err
        got.append(json.loads(out))
    assert got[0] == got[1] and got[0]["best"]["system"] == "cheap"


@pytest.mark.slow  # waits out the connection timeout (8 s)
def test_an_unreachable_scheduler_exits_2_naming_it(tmp_path, capsys, monkeypatch):
    make_workspace(tmp_path)
    code, out, err = run_cli([*WHATIF, "--home", tmp_path, "--cluster", "tcp://127.0.0.1:9"], capsys, monkeypatch)
    assert code == 2 and "tcp://127.0.0.1:9" in err and out == ""


def test_fit_on_a_local_cluster_writes_every_system_the_same_model_as_a_local_fit(tmp_path, capsys, monkeypatch):
    from tqsim.data.io import load_campaign
    from tqsim.data.workspace import Workspace
    from tqsim.models.fit import fit_campaign
    from tqsim.models.store import load
    from tqsim.testing import grid, simulate_campaign, write_campaign

    for system, seed in (("alpha", 0), ("beta", 1)):
        write_campaign(simulate_campaign(grid((1, 4, 16), (1,)), passes=6, seed=seed, n_instances=240,
                                         system=system), tmp_path)
    code, out, err = run_cli(["fit", "--home", tmp_path, "--cluster", "local", "--workers", "2", "--draws", "150",
                              "--tune", "150", "--seed", "4", "--json"], capsys, monkeypatch)
    assert code == 0, err
    fits = json.loads(out)["fits"]
    assert [(f["system"], f["workload"]) for f in fits] == [("alpha", "sim"), ("beta", "sim")]
    ws = Workspace.at(tmp_path)
    remote = load(ws.model_path("beta", "sim"))
    here = fit_campaign(load_campaign(ws.calibration_dir("beta", "sim")), draws=150, tune=150, seed=4)
    for name in here.idata.posterior.data_vars:
        assert np.array_equal(remote.idata.posterior[name].values, here.idata.posterior[name].values), name
    assert ws.model_path("alpha", "sim").exists()
