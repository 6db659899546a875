"""Objective grammar and the capacity planner."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tqsim.errors import UserError
from tqsim.units import parse_duration
from tqsim.whatif import ExponentialService
from tqsim.whatif.objective import parse_objective
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


def _service(threads, precision, replicas, backend="torch", device="cpu"):
    if threads > 1:
        raise UserError("threads=2 not calibrated")
    return ExponentialService(1e-3, 0.1e-3)


def _correct(*variant):
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


# --- the commands, on a small synthetic workspace -------------------------------------------------

def make_workspace(home, sizes=(1, 4, 16), threads=(1,), n_inst=120, passes=4, seed=0, system="box", slower=1.0,
                   accuracy=0.97, **variant):
    """Calibration files of ``system`` with a known law: ``slower`` × 70 µs × k^0.6 × lognormal noise × pass effect;
    ``variant``: precision, backend, device levels (default fp32 torch cpu)."""
    import json as _json

    import xarray as xr

    from tqsim.data.io import write_atomic
    from tqsim.data.schema import SCHEMA_VERSION
    from tqsim.data.workspace import Workspace
    from tqsim.factors import Config

    rng = np.random.default_rng(seed)
    correct = rng.random(n_inst) < accuracy
    for th in threads:
        for k in sizes:
            cfg = Config(batch_size=k, threads=th, **variant)
            batch = np.arange(n_inst) // k
            nb = batch[-1] + 1
            per_batch = slower * 70e-6 * k**0.6 / th**0.3 * np.exp(rng.normal(0, 0.1, (passes, nb)))
            per_batch *= np.exp(rng.normal(0, 0.03, (passes, 1)))
            ds = xr.Dataset({"latency_s": (("pass", "instance"), per_batch[:, batch]),
                             "batch": ("instance", batch), "round": ("pass", np.arange(passes)),
                             "pass_started_at": ("pass", np.arange(passes) * 1.0),
                             "correct": ("instance", correct)})
            ds.attrs.update(workload="toy", system=system, fingerprint=_json.dumps({}), quality_metric="accuracy",
                            tqsim_version="0", created_at="now", units="s", schema_version=SCHEMA_VERSION,
                            **{f: (int(v) if isinstance(v, bool) else v) for f, v in cfg.as_dict().items()})
            write_atomic(ds, Workspace.at(home).config_path(system, "toy", cfg.id))
    return home


def test_whatif_command_json_and_sweep(tmp_path):
    import json

    from typer.testing import CliRunner

    from tqsim.cli import app

    make_workspace(tmp_path)
    res = CliRunner().invoke(app, ["whatif", "--home", str(tmp_path), "--rate", "1000,4000", "--replicas", "1,2",
                                   "--max-batch", "8", "--max-wait", "0.5ms", "--threshold", "2ms", "--draws", "4",
                                   "--windows", "20", "--json", "--plot", str(tmp_path / "w.png")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert len(out["results"]) == 4 and out["workload"] == "toy"
    assert (tmp_path / "w.png").stat().st_size > 1000
    res = CliRunner().invoke(app, ["whatif", "--home", str(tmp_path), "--rate", "500", "--threshold", "2ms",
                                   "--draws", "3", "--windows", "10"])
    assert res.exit_code == 0 and "tail quality" in res.stdout


def test_every_list_option_takes_repeats_and_comma_lists_alike(tmp_path):
    import json

    from typer.testing import CliRunner

    from tqsim.cli import app

    make_workspace(tmp_path)
    common = ["whatif", "--home", str(tmp_path), "--draws", "3", "--windows", "10", "--json"]
    comma = CliRunner().invoke(app, [*common, "--rate", "1000,4000", "--replicas", "1,2", "-t", "2ms,3ms"])
    repeated = CliRunner().invoke(app, [*common, "--rate", "1000", "--rate", "4000", "--replicas", "1",
                                        "--replicas", "2", "-t", "2ms", "-t", "3ms"])
    assert comma.exit_code == 0 and repeated.exit_code == 0, comma.output + repeated.output
    a, b = json.loads(comma.stdout)["results"], json.loads(repeated.stdout)["results"]
    assert len(a) == 8 and a == b                       # same sweep, same seeds, same numbers


def test_plan_command(tmp_path):
    import json

    from typer.testing import CliRunner

    from tqsim.cli import app

    make_workspace(tmp_path, threads=(1, 2))
    res = CliRunner().invoke(app, ["plan", "--home", str(tmp_path), "--objective", "tail_quality>=0.9@2ms",
                                   "--rate", "3000", "--cores", "2", "--max-batch", "1,8", "--max-wait", "0,1ms",
                                   "--draws", "6", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["feasible"] and out["best"]["cores"] <= 2


def test_bad_input_exits_2(tmp_path, monkeypatch, capsys):
    import subprocess
    import sys

    from tqsim.cli import main

    make_workspace(tmp_path)
    cases = (["whatif", "--rate", "-5", "--threshold", "2ms"],
             ["whatif", "--rate", "100", "--threshold", "1us"],
             ["whatif", "--rate", "100", "--replicas", "0", "--threshold", "2ms"],
             ["whatif", "--rate", "100", "--max-batch", "0", "--threshold", "2ms"],
             ["whatif", "--rate", "100", "--threshold", "2ms", "--trace", str(tmp_path / "none.txt")],
             ["plan", "--objective", "tail_quality>0.9", "--rate", "100", "--cores", "2"],
             ["plan", "--objective", "p99<=2ms", "--rate", "100", "--cores", "0"],
             ["plan", "--objective", "p99<=2ms", "--rate", "0", "--cores", "2"])
    for args in cases:
        monkeypatch.setattr(sys, "argv", ["tqsim"] + args + ["--home", str(tmp_path)])
        with pytest.raises(SystemExit) as exc:
            main()
        err = capsys.readouterr().err
        assert exc.value.code == 2, (args, err)
        assert 0 < len(err.strip().splitlines()) <= 2, err
    r = subprocess.run([sys.executable, "-m", "tqsim"] + cases[-3] + ["--home", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "grammar" in r.stderr


def test_whatif_with_the_fitted_model_as_service(tmp_path):
    """--service forecast: forward times from the posterior predictive (tqsim.testing's example fit)."""
    import json

    from typer.testing import CliRunner

    from tqsim.cli import app
    from tqsim.testing import example_fit

    home, _, _ = example_fit()
    res = CliRunner().invoke(app, ["whatif", "--home", str(home), "--service", "forecast", "--rate", "300",
                                   "--max-batch", "8", "--max-wait", "1ms", "--threshold", "50ms", "--draws", "4",
                                   "--windows", "10", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["service_model"] == "forecast"
    r = out["results"][0]
    assert 0 < r["latency_s"]["p50"]["mean"] <= r["latency_s"]["p99"]["mean"] < 1.0
    res = CliRunner().invoke(app, ["whatif", "--home", str(tmp_path), "--service", "forecast", "--rate", "1",
                                   "--threshold", "1ms"])
    assert res.exit_code != 0


# --- backend, device and precision as factors; the planner's cost -----------------------------------

PLAN_FAST = ["plan", "--objective", "tail_quality>=0.85@2ms", "--rate", "4500", "--cores", "2", "--max-batch", "1",
             "--draws", "6"]


@pytest.fixture(scope="module")
def variants_home(tmp_path_factory):
    """One workload calibrated three ways: torch/cpu (slow: one replica cannot keep up at 4500/s), onnxruntime/cpu
    (3× faster, batch sizes 1 and 4 only, less accurate) and torch/cuda (6× faster); serving overheads of r1-th1."""
    from tqsim.data.serving_store import save_setup
    from tqsim.data.workspace import Workspace
    from tqsim.whatif import ServingOverheads

    home = tmp_path_factory.mktemp("variants")
    make_workspace(home, slower=3.0)
    make_workspace(home, sizes=(1, 4), accuracy=0.9, seed=1, backend="onnxruntime")
    make_workspace(home, slower=0.5, seed=2, device="cuda")
    save_setup(Workspace.at(home).calibration_dir("box", "toy"), 1, 1, ServingOverheads(per_batch_s=1e-6).to_dict(),
               workload="toy", system="box")
    return home


def test_workspace_inputs_keep_each_backend_and_device_apart(variants_home, tmp_path):
    from tqsim.factors import Variant
    from tqsim.whatif.inputs import WorkspaceInputs, whatif_sweep

    src = WorkspaceInputs.open(variants_home, None, None, overheads=False)
    onnx, torch, cuda = Variant("fp32", "onnxruntime"), Variant(), Variant(device="cuda")
    assert src.variants() == [onnx, torch, cuda] and src.precisions() == ["fp32"]
    assert src.batch_sizes(1, *onnx) == [1, 4] and src.batch_sizes(1, *torch) == [1, 4, 16]
    models = {v: src.service(1, v.precision, 1, v.backend, v.device) for v in (onnx, torch, cuda)}
    assert list(models[onnx].sizes) == [1, 4]  # never mixed with the other backends' files
    assert models[torch].level_s[1] / models[onnx].level_s[1] == pytest.approx(3.0, rel=0.15)
    assert models[torch].level_s[1] / models[cuda].level_s[1] == pytest.approx(6.0, rel=0.15)
    assert src.scores(*onnx).mean() < src.scores(*torch).mean()  # quality is per backend too
    with pytest.raises(UserError, match="threads=2 fp32 onnxruntime/cpu"):
        src.service(2, "fp32", 1, "onnxruntime")
    # a what-if defaults to torch/cpu/fp32 when calibrated, else to the only calibrated level
    kw = dict(rates=[500], thresholds_s=[2e-3], draws=2, windows=5)
    assert whatif_sweep(home=variants_home, **kw).results[0]["backend"] == "torch"
    make_workspace(tmp_path, sizes=(1,), backend="onnxruntime", precision="fp16")
    only = whatif_sweep(home=tmp_path, **kw).results[0]
    assert (only["precision"], only["backend"], only["device"]) == ("fp16", "onnxruntime", "cpu")


def test_whatif_backend_uses_that_backends_calibration(variants_home, capsys, monkeypatch):
    from cli_runner import run_cli

    def whatif(*extra):
        code, out, err = run_cli(["whatif", "--home", variants_home, "--rate", "1000", "--threshold", "2ms",
                                  "--max-batch", "16", "--draws", "3", "--windows", "10", "--json", *extra],
                                 capsys, monkeypatch)
        assert code == 0, err
        return json.loads(out)

    torch, onnx = whatif(), whatif("--backend", "onnxruntime", "--device", "cpu", "--precision", "fp32")
    t, o = torch["results"][0], onnx["results"][0]
    assert (t["backend"], t["device"], o["backend"], o["device"]) == ("torch", "cpu", "onnxruntime", "cpu")
    assert o["latency_s"]["p50"]["mean"] < t["latency_s"]["p50"]["mean"] / 2
    assert o["tail_quality"]["mean"] < t["tail_quality"]["mean"]
    # onnxruntime calibrated batch sizes up to 4 only; torch up to 16
    assert any("above 4 were never calibrated" in n for n in onnx["notes"])
    assert not any("never calibrated" in n for n in torch["notes"])
    # the serving overheads were measured on torch/cpu: used, and said so, for another backend
    assert any("torch/cpu: used as the nearest for onnxruntime/cpu" in n for n in onnx["notes"])
    assert not any("nearest for" in n for n in torch["notes"])


def test_plan_chooses_among_backends_by_cost_and_reports_the_choice(variants_home, capsys, monkeypatch):
    from cli_runner import run_cli

    code, out, err = run_cli([*PLAN_FAST, "--home", variants_home, "--device", "cpu", "--json"], capsys, monkeypatch)
    assert code == 0, err
    res = json.loads(out)
    assert res["cost"]["kind"] == "cores"
    best = res["best"]
    assert (best["backend"], best["device"], best["cores"], best["gpus"]) == ("onnxruntime", "cpu", 1, 0)
    assert {c["backend"] for c in res["rejected"] + res["runners_up"]} == {"torch", "onnxruntime"}
    code, out, err = run_cli([*PLAN_FAST, "--home", variants_home, "--backend", "torch", "--device", "cpu"], capsys,
                             monkeypatch)
    assert code == 0, err
    text = " ".join(out.split())
    assert "plan: 2×th1 batch≤1 wait 0ms fp32 — 2 core(s)" in text and "cost cores" in text
    code, out, err = run_cli([*PLAN_FAST, "--home", variants_home, "--device", "cpu"], capsys, monkeypatch)
    assert "fp32 onnxruntime/cpu — 1 core(s)" in " ".join(out.split())


def test_plan_cost_gpus_counts_cuda_replicas_then_cores(variants_home, capsys, monkeypatch):
    from cli_runner import run_cli

    def best(*extra):
        code, out, err = run_cli([*PLAN_FAST, "--home", variants_home, "--backend", "torch", *extra, "--json"],
                                 capsys, monkeypatch)
        assert code == 0, err
        res = json.loads(out)
        return res["cost"]["kind"], res["best"], res["notes"]

    kind, b, _ = best()                                  # by cores: one fast cuda replica (1 core)
    assert (kind, b["device"], b["cores"], b["gpus"]) == ("cores", "cuda", 1, 1)
    kind, b, notes = best("--cost", "gpus")              # by GPUs: two CPU replicas cost none
    assert (kind, b["device"], b["cores"], b["gpus"]) == ("gpus", "cpu", 2, 0)
    assert any("ties go to fewer cores" in n for n in notes)
    kind, b, _ = best("--cost", "gpus", "--device", "cuda")  # among cuda set-ups: the fewest GPUs
    assert (b["device"], b["replicas"], b["gpus"]) == ("cuda", 1, 1)
    code, out, err = run_cli([*PLAN_FAST, "--home", variants_home, "--backend", "torch", "--cost", "gpus"], capsys,
                             monkeypatch)
    text = " ".join(out.split())
    assert code == 0 and "0 GPU(s), 2 core(s)" in text and "cost gpus" in text


def test_levels_never_calibrated_and_unknown_costs_exit_2_naming_the_fix(variants_home, capsys, monkeypatch):
    from cli_runner import run_cli

    def refused(*args) -> str:
        code, out, err = run_cli([*args, "--home", variants_home], capsys, monkeypatch)
        assert code == 2 and out == "" and 0 < len(err.strip().splitlines()) <= 2, (args, code, out, err)
        return " ".join(err.split())

    whatif = ["whatif", "--rate", "100", "--threshold", "2ms"]
    msg = refused(*whatif, "--precision", "fp16")
    assert "precision fp16 was never calibrated (calibrated: fp32)" in msg
    assert "tqsim calibrate --grid precision=fp16" in msg
    msg = refused(*PLAN_FAST, "--backend", "onnxruntime", "--device", "cuda")
    assert "never calibrated together" in msg and "--grid backend=onnxruntime --grid device=cuda" in msg
    assert "choose one of: torch, onnxruntime" in refused(*whatif, "--backend", "tensorflow")
    msg = refused(*PLAN_FAST, "--cost", "money")
    assert all(w in msg for w in ("--cost cores", "--cost gpus", "--cost prices.toml"))
