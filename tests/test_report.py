"""`tqsim report` as a user runs it: the page, its figures, the sections that say what is missing, exit 2."""

import json
import re
import shutil
import sys

import pytest

from tqsim.testing import example_fit, grid, simulate_campaign, write_campaign

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


from tests.cli_runner import run_cli as run  # noqa: E402


def check_page(folder):
    """index.html exists, embeds every PNG of figures/ (and nothing else), each a valid PNG."""
    import matplotlib.image as mpimg

    page = (folder / "index.html").read_text()
    files = sorted(p.name for p in (folder / "figures").glob("*.png"))
    referenced = sorted(m.split("/")[-1] for m in re.findall(r'data-file="([^"]+)"', page))
    assert files and referenced == files
    assert page.count("data:image/png;base64,") == len(files)
    for name in files:
        raw = (folder / "figures" / name).read_bytes()
        assert raw[:8] == PNG_MAGIC
        img = mpimg.imread(folder / "figures" / name)
        assert img.shape[0] > 200 and img.shape[1] > 300
    return page, files


@pytest.fixture(scope="module")
def measured_home(tmp_path_factory):
    """A calibration (batch 1/4/16 × threads 1/2), no fit, no serving calibration."""
    home = tmp_path_factory.mktemp("measured")
    write_campaign(simulate_campaign(grid((1, 4, 16), (1, 2)), passes=6, seed=3, n_instances=120), home)
    return home


@pytest.fixture(scope="module")
def fitted_home(tmp_path_factory):
    """The shared quick ADVI fit, copied (so this module writes nowhere others read), plus serving.json."""
    from tqsim.data.serving_store import SERVING_FILE, serving_key
    from tqsim.whatif.overheads import ServingOverheads

    src, _, _ = example_fit()
    home = tmp_path_factory.mktemp("fitted") / "ws"
    shutil.copytree(src, home)
    oh = ServingOverheads(scale=1.5, per_batch_s=2e-5, per_request_s=2e-6)
    (home / "calibration" / "simbox" / "sim" / SERVING_FILE).write_text(json.dumps(
        {"workload": "sim", "system": "simbox", "setups": {serving_key(1, 1): oh.to_dict()}}))
    return home


def test_measured_only_page_says_what_is_missing(measured_home, capsys, monkeypatch):
    code, out, err = run(["report", "--home", str(measured_home)], capsys, monkeypatch)
    assert code == 0, err
    folder = measured_home / "reports" / "simbox" / "sim"  # the default output folder
    page, files = check_page(folder)
    assert "latency.png" in files and "heatmap.png" in files
    assert any(f.startswith("quality-") for f in files)  # tqsim quality's band plot, one panel per thread count
    assert not {"validation.png", "whatif.png", "model.png", "explain.png"} & set(files)
    # each missing input is named with the command that produces it
    assert "tqsim fit" in page and "--heldout" in page and "tqsim calibrate --serving" in page
    assert "Not shown:" in page and "Partly missing:" in page
    md = (folder / "index.md").read_text()
    assert "figures/latency.png" in md and "tqsim fit" in md
    assert str(folder / "index.html") in out.replace("\n", "")


def test_json_prints_the_report_numbers(measured_home, tmp_path, capsys, monkeypatch):
    code, out, err = run(["report", "--home", str(measured_home), "--out", str(tmp_path / "r"), "--threshold", "2ms",
                          "--no-markdown", "--json"], capsys, monkeypatch)
    assert code == 0, err
    obj = json.loads(out)
    assert obj["system"] == "simbox" and obj["workload"] == "sim" and obj["settings"]["thresholds"] == ["2ms"]
    secs = obj["sections"]
    assert secs["validation"]["available"] is False and "--heldout" in secs["validation"]["missing"]
    assert secs["model"]["available"] is False and "tqsim fit" in secs["model"]["missing"]
    assert secs["explain"]["available"] is False and "tqsim fit" in secs["explain"]["missing"]
    heat = secs["heatmap"]
    assert heat["x_factor"] == "batch_size" and heat["y_factor"] == "threads"
    assert {c["source"] for c in heat["cells"]} == {"measured"} and len(heat["cells"]) == 6
    assert all(c["threshold_s"] == pytest.approx(2e-3) for c in heat["cells"])
    q = secs["quality"]["configs"]
    assert len(q) == 6 and all(0 <= t["tail"] <= t["mean"] <= 1 for c in q for t in c["quality"]["thresholds"])
    lat = secs["latency"]["configs"][0]["observed_s"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["p99.9"]
    assert not (tmp_path / "r" / "index.md").exists() and (tmp_path / "r" / "index.html").exists()


def test_full_report_with_fit_heldout_and_serving(fitted_home, tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "full"
    code, out, err = run(["report", "--home", str(fitted_home), "--out", str(out_dir), "--heldout",
                          str(fitted_home / "heldout"), "--draws", "20", "--whatif-rate", "2000,6000",
                          "--whatif-deadline", "2ms", "--json"], capsys, monkeypatch)
    assert code == 0, err
    obj = json.loads(out)
    secs = obj["sections"]
    assert all(s["available"] for k, s in secs.items() if k != "serving_validation"), {
        k: s["missing"] for k, s in secs.items()}
    assert "validate --serving-log" in secs["serving_validation"]["missing"]  # no what-if validation run here
    page, files = check_page(out_dir)
    assert {"latency.png", "heatmap.png", "validation.png", "whatif.png", "model.png", "explain.png"} <= set(files)
    # what each factor does: the calibrated centre's contrasts, the variance split, the same deadline for all
    ex = secs["explain"]
    assert ex["base_id"] == "bs4-th1-fp32-torch-cpu" and [e["label"] for e in ex["effects"]] == [
        "batch 4 → 16 at threads 1", "threads 1 → 2 at batch 4"]
    assert ex["interaction"] is not None and ex["variance"][0]["source"] == "session"
    assert "What each factor does" in page
    # forecast bands beside the observed distribution
    assert all("forecast_s" in c for c in secs["latency"]["configs"])
    # heatmap: calibrated batch sizes 1/4/16/64 measured, the powers of two between them forecast
    cells = {(c["batch_size"], c["threads"]): c["source"] for c in secs["heatmap"]["cells"]}
    assert cells[(4, 2)] == "measured" and cells[(8, 1)] == "forecast" and cells[(32, 2)] == "forecast"
    assert "forecast" in page
    val = secs["validation"]
    assert len(val["configs"]) == 2 and 0 <= val["summary"]["coverage"] <= 1
    assert [r["rate_rps"] for r in secs["whatif"]["results"]] == [2000, 6000]
    assert "serving overheads of r1-th1" in " ".join(secs["whatif"]["notes"])


def test_failed_diagnostics_hide_forecasts_unless_forced(fitted_home, tmp_path):
    from tqsim.models import load, save
    from tqsim.report.build import build_report
    from tqsim.report.html import render_html

    home = tmp_path / "ws"
    shutil.copytree(fitted_home / "calibration", home / "calibration")
    (home / "calibration" / "simbox" / "sim" / "serving.json").unlink()
    fm = load(fitted_home / "models" / "simbox" / "sim.nc")
    fm.diagnostics.update(ok=False, rhat_max=1.2, ess_bulk_min=12.0, divergences=3)
    save(fm, home / "models" / "simbox" / "sim.nc")
    rep = build_report(home=home, draws=10)
    lat = rep.section("latency")
    assert "failed its diagnostics" in lat.missing and "--force" in lat.missing
    assert all("forecast_s" not in c for c in lat.data["configs"])
    assert {c["source"] for c in rep.section("heatmap").data["cells"]} == {"measured"}
    assert "calibrate --serving" in rep.section("whatif").missing
    rep = build_report(home=home, draws=10, force=True)
    assert "FAILED ITS DIAGNOSTICS" in rep.warnings[0]
    assert all("forecast_s" in c for c in rep.section("latency").data["configs"])
    assert "FAILED ITS DIAGNOSTICS" in render_html(rep, tmp_path)  # no figures drawn: nothing to embed


def test_unreadable_fit_is_reported_not_fatal(measured_home, tmp_path):
    from tqsim.report.build import build_report

    home = tmp_path / "ws"
    shutil.copytree(measured_home / "calibration", home / "calibration")
    (home / "models" / "simbox").mkdir(parents=True)
    (home / "models" / "simbox" / "sim.nc").write_bytes(b"not a model")
    model = build_report(home=home).section("model")
    assert model.available is False and "re-run `tqsim fit`" in model.missing


@pytest.mark.parametrize("extra, message", [
    (["--threshold", "fast"], "threshold 'fast'"),
    (["--tail-q", "2"], "--tail-q"),
    (["--heldout", "/nonexistent/heldout"], "--heldout"),
    (["--whatif-rate", "-5"], "rate"),
    (["--system", "nope"], "no calibration for system 'nope'"),
])
def test_bad_input_exits_2(extra, message, measured_home, tmp_path, capsys, monkeypatch):
    code, out, err = run(["report", "--home", str(measured_home), "--out", str(tmp_path / "r"), *extra],
                         capsys, monkeypatch)
    assert code == 2 and message in err and out == ""
    assert len(err.strip().splitlines()) <= 3


def test_out_is_a_file_and_empty_home_exit_2(measured_home, tmp_path, capsys, monkeypatch):
    target = tmp_path / "file.html"
    target.write_text("x")
    code, _, err = run(["report", "--home", str(measured_home), "--out", str(target)], capsys, monkeypatch)
    assert code == 2 and "is a file" in err
    code, _, err = run(["report", "--home", str(tmp_path / "empty")], capsys, monkeypatch)
    assert code == 2 and "tqsim calibrate" in err
