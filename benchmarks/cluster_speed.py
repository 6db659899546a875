"""Speed-up of `tqsim plan` on Dask workers, and a campaign's per-pass overhead through the cluster (issue 17).

1. `plan --systems all --cost`: the default candidate grid (max_batch 1–32 × max_wait 0–5 ms × replicas ×
   threads within ``--cores``) for two simulated systems (``tqsim.testing``'s law; the second one 2× slower),
   on a ``distributed.LocalCluster`` of 1 and of 2 worker processes (one thread each), after a warm-up that
   loads the simulator on every worker; also in this process (serial) for reference. Prints wall times, the
   speed-up of 2 workers over 1 (target ≥ 1.7× on 2 idle cores) and checks that the answers are identical.
2. If this checkout's `tqsim calibrate` has ``--cluster``: the per-pass overhead of a campaign run through
   ``--cluster local`` over a local one, from the slope of wall time against passes (start-up cancels out).

    python benchmarks/cluster_speed.py [--cores 4] [--draws 30] [--repeats 3] [--tiny]

``--tiny`` is a smoke run (small grid, few draws): its times mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("PYTENSOR_FLAGS", "blas__ldflags=")
warnings.simplefilter("ignore")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's tqsim, whichever one the environment installed


def make_home(tiny: bool) -> Path:
    from tqsim.testing import Law, grid, simulate_campaign, write_campaign

    home = Path(tempfile.mkdtemp(prefix="tqsim-cluster-speed-"))
    sizes = (1, 4, 16) if tiny else (1, 2, 4, 8, 16, 32)
    for system, law, seed in (("fast", Law(), 0), ("slow", Law(intercept=math.log(140e-6)), 1)):
        write_campaign(simulate_campaign(grid(sizes, (1, 2)), passes=10, seed=seed, law=law, system=system,
                                         n_instances=240 if tiny else 540), home)
    (home / "prices.toml").write_text("[systems.fast]\nreplica_hour = 0.30\n[systems.slow]\nreplica_hour = 0.12\n")
    return home


def plan_once(home: Path, args, on) -> tuple[float, dict]:
    from tqsim.whatif.fleet import plan_fleet, priced_systems
    from tqsim.whatif.objective import parse_objective

    priced, workload = priced_systems(home, ["all"], None, home / "prices.toml")
    extra = dict(max_batches=[1, 8], max_waits_s=[0.0, 1e-3]) if args.tiny else {}
    t0 = time.perf_counter()
    res = plan_fleet(parse_objective(args.objective), args.rate, args.cores, priced, workload, home=home,
                     draws=args.draws, pool=on, **extra)
    return time.perf_counter() - t0, res.as_dict()


def warm(client) -> None:
    """Load tqsim's simulator (numba cache) on every worker, so that the timing is the plan's."""
    def load():
        import numpy as np

        from tqsim.whatif import ConstantService, ServingSetup, simulate

        simulate(ConstantService(1e-3), ServingSetup(1, 1, 2, 1e-3), thresholds_s=[0.01], rate_rps=100,
                 score=np.ones(10), draws=1, n_windows=2)
        return True

    client.run(load)


def bench_plan(home: Path, args) -> None:
    import distributed

    from tqsim.parallel import SERIAL, Cluster

    print(f"plan --systems all --cost: 2 systems, rate {args.rate:g}/s, cores {args.cores}, draws {args.draws}, "
          f"objective {args.objective}")
    t_serial, ref = min((plan_once(home, args, SERIAL) for _ in range(args.repeats)), key=lambda r: r[0])
    from tqsim.whatif.planner import MAX_BATCHES, MAX_WAITS_S, candidates

    grid = ([1, 8], [0.0, 1e-3]) if args.tiny else (MAX_BATCHES, MAX_WAITS_S)
    n_cands = len(candidates(args.cores, max_batches=grid[0], max_waits_s=grid[1]))
    print(f"  {'in this process':28s} {t_serial:7.2f} s   ({n_cands} candidates per system; best: "
          f"{ref['best']['system'] if ref['best'] else 'none'})")
    times = {}
    for n in (1, 2):
        with distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster, distributed.Client(cluster) as client:
            warm(client)
            runs = [plan_once(home, args, Cluster(client)) for _ in range(args.repeats)]
        times[n], got = min(runs, key=lambda r: r[0])
        same = all(json.dumps(r[1], sort_keys=True, default=str) == json.dumps(ref, sort_keys=True, default=str)
                   for r in runs)
        print(f"  {f'LocalCluster, {n} worker(s)':28s} {times[n]:7.2f} s   same answer as serial: {same}")
    speed = times[1] / times[2]
    print(f"  speed-up 2 workers / 1: {speed:.2f}×  (target ≥ 1.7×: {'met' if speed >= 1.7 else 'NOT met'})")


def has_cluster_calibrate() -> bool:
    from tqsim.cli import app

    for cmd in app.registered_commands:
        if (cmd.name or cmd.callback.__name__) == "calibrate":
            import inspect

            return "cluster" in inspect.signature(cmd.callback).parameters
    return False


def bench_campaign(args) -> None:
    if not has_cluster_calibrate():
        print("campaign overhead: skipped — `tqsim calibrate --cluster` does not exist in this checkout "
              "(the campaign half of issue 17 is on another branch).")
        return
    workload = f"{ROOT / 'examples' / 'my_workload.py'}:make"
    passes = (2, 4) if args.tiny else (4, 16)
    n = 2 * (passes[1] - passes[0])  # two configurations per round
    overheads, slopes = [], []
    for _ in range(1 if args.tiny else args.repeats):
        wall = {}
        for how in ("local", "cluster"):
            for p in passes:
                home = tempfile.mkdtemp(prefix="tqsim-cluster-campaign-")
                cmd = [sys.executable, "-m", "tqsim", "calibrate", "--workload", workload, "--grid",
                       "batch_size=1,8", "--passes", str(p), "--warmup", "0", "--home", home, "--system", "bench",
                       "--json"]
                if how == "cluster":
                    cmd += ["--cluster", "local"]
                t0 = time.perf_counter()
                r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                wall[how, p] = time.perf_counter() - t0
                if r.returncode != 0:
                    print(f"campaign overhead: `{' '.join(cmd[3:])}` failed ({r.returncode}): {r.stderr.strip()[-400:]}")
                    return
        slope = {how: (wall[how, passes[1]] - wall[how, passes[0]]) / n for how in ("local", "cluster")}
        slopes.append(slope)
        overheads.append(slope["cluster"] - slope["local"])
    med = sorted(overheads)[len(overheads) // 2]
    print(f"campaign (2 configs, {passes[0]} vs {passes[1]} passes, {len(overheads)} repeats): per pass "
          + ", ".join(f"{s['local'] * 1e3:.0f}/{s['cluster'] * 1e3:.0f}" for s in slopes)
          + f" ms (local/cluster); overhead median {med * 1e3:+.0f} ms per pass (each: "
          + ", ".join(f"{o * 1e3:+.0f}" for o in overheads) + "; target ≤ 50 ms)")


def bench_worker_deaths(args) -> None:
    """A loopback scheduler and one worker of system ``gamma``; a 2-configuration campaign; the worker (with its
    nanny) SIGKILLed once passes are on disk, a new one started; then counted: passes expected, written,
    written twice (a round number repeated), and passes written before the kill that changed afterwards."""
    import signal
    import socket

    import numpy as np

    from tqsim.data.io import calibration_files, read_calibration

    if not has_cluster_calibrate():
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), DASK_DISTRIBUTED__SCHEDULER__LOCKS__LEASE_TIMEOUT="3s",
               DASK_DISTRIBUTED__SCHEDULER__LOCKS__LEASE_VALIDATION_INTERVAL="1s")
    dask = str(Path(sys.executable).with_name("dask"))
    procs = []

    def start(cmd):
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
        return procs[-1]

    def worker():
        return start([dask, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
                      "--resources", "system:gamma=1"])

    def on_disk(folder):
        return {f.stem: read_calibration(f) for f in calibration_files(folder)} if folder.is_dir() else {}

    passes, totals = (6 if args.tiny else 20), {"expected": 0, "written": 0, "twice": 0, "changed": 0}
    try:
        start([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"])
        for trial in range(1 if args.tiny else 3):
            first = worker()
            home = Path(tempfile.mkdtemp(prefix="tqsim-cluster-deaths-"))
            folder = home / "calibration" / "gamma" / "digits-mlp"
            cmd = [sys.executable, "-m", "tqsim", "calibrate", "--workload", "digits-mlp", "--grid", "batch_size=1,4",
                   "--warmup", "1", "--passes", str(passes), "--cluster", address, "--system", "gamma", "--json",
                   "--home", str(home)]
            run = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            while not ((on := on_disk(folder)) and len(on) == 2 and min(d.sizes["pass"] for d in on.values()) >= 2 + trial):
                time.sleep(0.05)
            os.killpg(first.pid, signal.SIGKILL)
            before = {k: d["latency_s"].values.copy() for k, d in on_disk(folder).items()}
            worker()
            run.communicate(timeout=600)
            after = on_disk(folder)
            totals["expected"] += 2 * passes
            for name, d in after.items():
                rounds = d["round"].values
                totals["written"] += len(rounds)
                totals["twice"] += int(len(rounds) - len(set(rounds.tolist())))
                b = before.get(name)
                totals["changed"] += 0 if b is None or np.array_equal(d["latency_s"].values[:len(b)], b) else 1
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    print(f"worker killed mid-campaign ({1 if args.tiny else 3} trials, 2 configs × {passes} passes): "
          f"{totals['written']} of {totals['expected']} passes written, {totals['twice']} measured twice, "
          f"{totals['changed']} files whose earlier passes changed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=4)
    ap.add_argument("--rate", type=float, default=6000.0)
    ap.add_argument("--objective", default="tail_quality>=0.95@2ms")
    ap.add_argument("--draws", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="a smoke run: small grid, few draws")
    ap.add_argument("--no-campaign", action="store_true")
    args = ap.parse_args()
    if args.tiny:
        args.cores, args.draws, args.repeats = 2, 4, 1
    home = make_home(args.tiny)
    bench_plan(home, args)
    if not args.no_campaign:
        bench_campaign(args)
        bench_worker_deaths(args)


if __name__ == "__main__":
    main()
