"""The HTTP driver against fake loopback endpoints, LitServe in the loop, and the plan's stack configuration."""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from tests.cli_runner import run_cli
from tests.conftest import ENV, ROOT
from tqsim.errors import UserError
from tqsim.data.request_log import check_errors
from tqsim.measure.http_driver import drive_http, probe_endpoint
from tqsim.measure.http_payloads import read_answer, request_body
from tqsim.measure.load_drivers import have_loadgen, poisson_schedule
from tqsim.workloads.base import Workload

N = 40


def toy_workload() -> Workload:
    """Just what the driver reads: instances (1×4 floats), labels, a name. Its true class is index % 3."""
    inputs = torch.arange(N * 4, dtype=torch.float32).reshape(N, 1, 4)
    return Workload(name="toy", task="toy", model=None, inputs=inputs, labels=np.arange(N) % 3)


class FakeEndpoint(http.server.ThreadingHTTPServer):
    """Answers every instance right (class index % 3) with a tqsim block; /flaky fails every 20th request."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.bodies: list[dict] = []
        self.count = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the driver's pool expects
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall between

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.bodies.append(body)
            self.server.count += 1
            k = self.server.count
        if self.path == "/flaky" and k % 20 == 0:
            return self._send(500, {"detail": "boom"})
        index = int(body["id"]) if "inputs" in body else body["index"]
        meta = {"batch_id": k // 2, "batch_size": 2, "replica": k % 2, "forward_s": 1e-4}
        if self.path.startswith("/v2/models/"):
            return self._send(200, {"id": body["id"], "outputs": [{"name": "p", "shape": [1, 3], "datatype": "FP32",
                                                                   "data": np.eye(3)[index % 3].tolist()}]})
        self._send(200, {"prediction": index % 3, "tqsim": meta})

    def _send(self, status: int, obj: dict):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def endpoint():
    server = FakeEndpoint()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("use_loadgen", [False, pytest.param(True, marks=pytest.mark.skipif(
    not have_loadgen(), reason="mlcommons-loadgen not installed"))])
def test_driver_records_every_request(endpoint, use_loadgen):
    w = toy_workload()
    log = drive_http(f"{endpoint.url}/predict", w, 200, 1.5, use_loadgen=use_loadgen, seed=1)
    assert log.driver == ("http-loadgen" if use_loadgen else "http-poisson") and log.source.endswith("/predict")
    assert log.n >= 200 and log.ok.all() and (log.status == 200).all()
    assert abs(log.rate_rps / 200 - 1) < 0.15, log.rate_rps  # seed 1's schedules are near their mean rate
    if not use_loadgen:  # open loop: each request left when the schedule said, whatever the answers did
        offsets, samples = poisson_schedule(200, 1.5, N, seed=1)
        late = log.arrival_s - (offsets - offsets[0])
        assert np.median(np.abs(late)) < 2e-3 and np.abs(late).max() < 0.03
        assert (log.sample_index == samples).all()
    assert (np.diff(log.arrival_s) >= 0).all() and (log.latency_s > 0).all() and (log.latency_s < 0.5).all()
    sent = sorted(b["index"] for b in endpoint.bodies[1:])  # the first one was the probe
    assert sorted(log.sample_index.tolist()) == sent and log.sample_index.max() < N
    assert log.has("batch_id") and log.has("replica") and set(log.batch_size) == {2}
    assert np.allclose(log.forward_s, 1e-4) and log.correct.all()
    check_errors(log)


def test_v2_bodies_follow_the_open_inference_protocol(endpoint):
    w = toy_workload()
    log = drive_http(f"{endpoint.url}/v2/models/toy/infer", w, 100, 1.0, use_loadgen=False)
    body = endpoint.bodies[-1]
    assert set(body) == {"id", "inputs"} and len(body["inputs"]) == 1
    tensor = body["inputs"][0]
    assert set(tensor) == {"name", "shape", "datatype", "data"}
    assert tensor["shape"] == [1, 1, 4] and tensor["datatype"] == "FP32"
    assert tensor["data"] == w.inputs[int(body["id"])].ravel().tolist()
    assert log.ok.all() and log.correct.all()  # class read from outputs[0].data (scores: argmax)
    assert not log.has("batch_id")              # this endpoint says nothing about batches


def test_payloads_round_trip():
    w = toy_workload()
    as_json = json.loads(request_body(w, 7, "json"))
    assert as_json == {"index": 7, "instance": [w.inputs[7].tolist()]}
    assert read_answer(b'{"prediction": 2, "tqsim": {"batch_size": 4}}') == (2, {"batch_size": 4})
    assert read_answer(b'{"outputs": [{"data": [1]}]}') == (1, {})
    assert read_answer(b"not json") == (None, {})


def test_a_failing_endpoint_is_refused(endpoint):
    log = drive_http(f"{endpoint.url}/flaky", toy_workload(), 200, 1.0, use_loadgen=False)
    assert 0.02 < log.error_rate < 0.08 and set(log.status[~log.ok]) == {500}
    with pytest.raises(UserError, match=r"HTTP 500") as exc:
        check_errors(log)
    assert f"of {log.n} requests" in str(exc.value)
    check_errors(log, limit=0.1)


def test_an_unreachable_target_fails_fast():
    url = f"http://127.0.0.1:{free_port()}/predict"
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="tqsim serve --stack litserve") as exc:
        drive_http(url, toy_workload(), 100, 1.0)
    assert url in str(exc.value) and time.perf_counter() - t0 < 5
    with pytest.raises(UserError, match="http://"):
        probe_endpoint("https://127.0.0.1:1/predict")


def test_calibrate_against_an_http_target_end_to_end(endpoint, tmp_path, capsys, monkeypatch):
    """`calibrate --serving 'target=URL,...'`: ramp, runs, fit, store under the stack, logs kept; then `whatif --stack`
    answers from it, and a run the fit used is refused by `validate --serving-log`."""
    import tqsim.serving_calibration as sc
    import tqsim.workloads.registry as registry
    from tqsim.testing import grid, simulate_campaign, write_campaign

    write_campaign(simulate_campaign(grid((1, 2, 4), (1,)), passes=3, seed=0, n_instances=N, workload="toy"), tmp_path)
    monkeypatch.setattr(registry, "get_workload", lambda spec, **kw: toy_workload())
    monkeypatch.setattr(sc, "RAMP_S", 0.3)
    monkeypatch.setattr(sc, "ramp_throughput", lambda drive: _short_ramp(sc, drive))
    target = f"target={endpoint.url}/predict,replicas=1,max_batch=2,max_wait=1ms,stack=fake,duration=1s,repeats=1"
    code, out, err = run_cli(["calibrate", "--serving", target, "--home", tmp_path], capsys, monkeypatch)
    assert code == 0, err
    folder = tmp_path / "calibration/simbox/toy"
    store = json.loads((folder / "serving.json").read_text())
    entry = store["setups"]["fake:r1-th1"]
    assert entry["stack"] == "fake" and len(entry["rates_rps"]) == 2 and "frontend_s" in entry
    logs = sorted((folder / "serving-logs").glob("fake-r1-th1-*.csv"))
    assert len(logs) == 2 and "each run against its replay" in out
    code, out, err = run_cli(["whatif", "--stack", "fake", "--rate", "50", "--max-batch", "2", "--max-wait", "1ms",
                              "-t", "50ms", "--json", "--home", tmp_path], capsys, monkeypatch)
    assert code == 0, err
    assert any("fake:r1-th1" in n for n in json.loads(out)["notes"])
    code, out, err = run_cli(["validate", "--serving-log", logs[0], "--setup",
                              "replicas=1,threads=1,max_batch=2,max_wait=1ms,stack=fake", "--home", tmp_path],
                             capsys, monkeypatch)
    assert code == 2 and "used to fit" in err  # the kept logs are the fitted runs
    code, out, err = run_cli(["calibrate", "--serving", "target=http://127.0.0.1:9/predict,replicas=1,max_batch=2,"
                              "max_wait=1ms", "--home", tmp_path], capsys, monkeypatch)
    assert code == 2 and "no server answered" in err
    code, out, err = run_cli(["calibrate", "--serving", f"target={endpoint.url}/predict,replicas=1", "--home",
                              tmp_path], capsys, monkeypatch)
    assert code == 2 and "max_batch, max_wait" in err


def _short_ramp(sc, drive):
    """A ramp of two short steps: enough to exercise it in a test."""
    logs = [drive(r, sc.RAMP_S) for r in (100.0, 200.0)]
    return max(lg.throughput_rps for lg in logs), logs


def test_stack_config_maps_the_plan_knobs():
    from tqsim.serve import stack_config
    from tqsim.whatif.simulator import ServingSetup

    cfg = stack_config(ServingSetup(replicas=2, threads=1, max_batch=8, max_wait_s=0.002), "litserve",
                       workload="digits-cnn")
    assert cfg["litapi"] == {"max_batch_size": 8, "batch_timeout": 0.002}
    assert cfg["litserver"] == {"accelerator": "cpu", "workers_per_device": 2} and cfg["torch_threads"] == 1
    assert cfg["command"] == ("tqsim serve --stack litserve --workload digits-cnn --max-batch 8 --max-wait 2ms "
                              "--replicas 2 --threads 1 --port 8000")
    assert any("batch_timeout counts from when a worker starts" in n for n in cfg["notes"])
    cycle = stack_config(ServingSetup(max_batch=8, max_wait_s=0.002), "litserve", batch_timer="cycle")
    assert not any("batch_timeout" in n for n in cycle["notes"])  # the plan simulated LitServe's own rule
    with pytest.raises(UserError, match="supported: litserve"):
        stack_config(ServingSetup(), "triton")


def test_plan_prints_the_stack_configuration(tmp_path, capsys, monkeypatch):
    from tests.test_planner import make_workspace

    make_workspace(tmp_path)
    args = ["plan", "--home", tmp_path, "--objective", "tail_quality>=0.9@2ms", "--rate", "3000", "--cores", "2",
            "--max-batch", "1,8", "--max-wait", "0,1ms", "--draws", "6", "--stack", "litserve"]
    code, out, err = run_cli(args + ["--json"], capsys, monkeypatch)
    assert code == 0, err
    res = json.loads(out)
    best, cfg = res["best"], res["stack_config"]
    assert cfg["litapi"] == {"max_batch_size": best["max_batch"], "batch_timeout": best["max_wait_s"]}
    assert cfg["litserver"]["workers_per_device"] == best["replicas"] and "--workload toy" in cfg["command"]
    assert any("batch_timeout counts" in n for n in cfg["notes"])  # no litserve calibration: the plan ran "oldest"
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0 and "tqsim serve --stack litserve" in out and "workers_per_device" in out
    code, _, err = run_cli(args[:-1] + ["nginx"], capsys, monkeypatch)
    assert code == 2 and "--stack nginx" in err and "tqsim serves: litserve" in err


def test_serve_refuses_an_unknown_or_missing_stack(capsys, monkeypatch):
    code, _, err = run_cli(["serve", "--stack", "foo", "--workload", "digits-mlp"], capsys, monkeypatch)
    assert code == 2 and "supported: litserve" in err
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    code, _, err = run_cli(["serve", "--stack", "litserve", "--workload", "digits-mlp"], capsys, monkeypatch)
    assert code == 2 and "pip install 'tqsim[litserve]'" in err


@pytest.mark.skipif(importlib.util.find_spec("litserve") is None, reason="litserve not installed")
def test_litserve_in_the_loop(tmp_path):
    """`tqsim serve --stack litserve` batches under load, answers right, and stops on Ctrl-C."""
    from tqsim.workloads import get_workload

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tqsim", "serve", "--stack", "litserve", "--workload", "digits-mlp",
                             "--max-batch", "4", "--max-wait", "5ms", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                            env=dict(ENV, PYTHONPATH=str(ROOT)), start_new_session=True)
    try:
        lines = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            lines.append(proc.stdout.readline())
            if lines[-1].startswith("serving at "):
                break
        assert lines and lines[-1].startswith(f"serving at http://127.0.0.1:{port}/predict"), "".join(lines)
        log = drive_http(f"http://127.0.0.1:{port}/predict", get_workload("digits-mlp"), 100, 2.0)
        check_errors(log)
        assert log.batch_sizes().max() > 1 and log.has("forward_s") and log.correct.mean() > 0.9
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert "LitServe stopped." in proc.stdout.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the server and the workers it started
            proc.wait()
    assert not (tmp_path / "client.py").exists()  # LitServe's generated client is not left behind
