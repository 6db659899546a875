"""Where a real serving run's p99 comes from: 8 runs of set-up A (1 replica, 1 thread, batch <= 8, wait
0.5 ms) at one rate, each with its p99 beside its stalled batches (busy > 5x the run's median busy time).

    python benchmarks/serving_stalls.py [RATE]     (~1.5 min; default 2,932 req/s)
"""
import os, sys, warnings
os.environ.setdefault("PYTENSOR_FLAGS", "blas__ldflags=")
warnings.simplefilter("ignore")
import numpy as np
from tqsim.measure.load_drivers import run_load
from tqsim.measure.server import BatchingServer
from tqsim.workloads.registry import get_workload
wl = get_workload("digits-cnn")
server = BatchingServer(wl, 1, 1, 8, 0.5e-3)
rate = float(sys.argv[1]) if len(sys.argv) > 1 else 2931.9
for j in range(8):
    r = run_load(server, rate, 8.0, seed=900 + j)
    lat = r.done_s - r.arrival_s
    busy = np.sort(r.batch_busy_s)[::-1]
    fwd = np.sort(r.batch_forward_s)[::-1]
    # stall time: busy beyond 5x the median busy, summed
    med = np.median(r.batch_busy_s)
    excess = np.clip(r.batch_busy_s - 5 * med, 0, None).sum()
    print(f"run {j}: p99 {np.percentile(lat, 99)*1e3:6.2f} ms  p50 {np.median(lat)*1e3:5.2f}  batches {len(busy)}  median busy {med*1e6:4.0f} us  "
          f"busy>5x median: {(r.batch_busy_s > 5*med).sum():3d} (excess {excess*1e3:6.1f} ms)  top busy {busy[0]*1e3:5.1f} {busy[1]*1e3:5.1f} {busy[2]*1e3:5.1f} ms  "
          f"top fwd {fwd[0]*1e3:5.1f} ms  mean fwd {r.batch_forward_s.mean()*1e6:4.0f} us", flush=True)
