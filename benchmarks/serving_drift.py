"""How much do a serving calibration, and the real p99 it should forecast, move from minute to minute?

Set-up A of whatif_accuracy.py (1 replica, 1 thread, batch <= 8, wait 0.5 ms) is calibrated 4 times in a
row (~1 min each); after each, `tqsim whatif`'s p99 forecast at one fixed rate (half the first
calibration's predicted capacity) is printed beside two real 8 s runs at that rate.

    python benchmarks/serving_drift.py [--home DIR]     (~5 min on 2 cores)
"""
import os, sys, json, time, subprocess, warnings
os.environ.setdefault("PYTENSOR_FLAGS", "blas__ldflags=")
warnings.simplefilter("ignore")
from tqsim.data.workspace import Workspace
from tqsim.measure.load_drivers import run_load
from tqsim.measure.server import BatchingServer
from tqsim.serving_calibration import calibrate_serving
from tqsim.whatif.inputs import WorkspaceInputs
from tqsim.whatif.simulator import ServingSetup, saturation_rps, simulate
from tqsim.workloads.registry import get_workload
home = sys.argv[sys.argv.index("--home") + 1] if "--home" in sys.argv else "/tmp/tqsim-serving-drift"
wl = "digits-cnn"
if not Workspace.at(home).systems():
    subprocess.run([sys.executable, "-m", "tqsim", "calibrate", "--grid", "batch_size=1,2,4,8,16", "--passes", "20", "--home", home,
                    "--workload", wl], check=True, stdout=subprocess.DEVNULL)
workload = get_workload(wl)
reps, th, mb, mw = 1, 1, 8, 0.5e-3
setup = ServingSetup(reps, th, mb, mw)
server = BatchingServer(workload, reps, th, mb, mw)
rate = None
for k in range(4):
    calibrate_serving(wl, home=home, replicas=reps, threads=th, max_batch=mb, max_wait_s=mw, duration_s=6.0,
                      workload=workload, seed=10 * k)
    src = WorkspaceInputs.open(home, None, wl)
    svc = src.service(th, "fp32", reps)
    entry = svc.oh.to_dict()  # the overheads this calibration fitted
    cap = saturation_rps(svc, setup)
    rate = rate or round(0.5 * cap, 1)
    wi = simulate(svc, setup, thresholds_s=[0.01], rate_rps=rate, score=src.scores("fp32"), n_windows=20, draws=30,
                  seed=k, samples="random").result()
    p = wi["latency_s"]["p99"]
    obs = [run_load(server, rate, 8.0, seed=500 + k + 10 * j).summary(0.01, workload.n_instances)["latency_s"]["p99"] for j in range(2)]
    keep = {key: entry.get(key) for key in ("scale", "per_batch_s", "per_request_s", "response_s", "run_log_sd", "inflation_s", "pause_prob")}
    print(json.dumps({"k": k, "t": time.strftime("%H:%M:%S"), "capacity_pred": round(cap), "rate": rate, **{a: (round(b, 6) if isinstance(b, float) else b) for a, b in keep.items()},
                      "p99_pred_ms": [round(p["mean"] * 1e3, 3), round(p["lo"] * 1e3, 3), round(p["hi"] * 1e3, 3)],
                      "p99_obs_ms": [round(v * 1e3, 3) for v in obs]}), flush=True)
