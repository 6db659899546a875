"""How much the first call of a pass is inflated by the calibration's interleaving, with and without priming.

A calibration interleaves passes of different configurations (other weights, thread counts and
batch shapes run in between, and the harness writes a file), so the first forward call of a pass
runs in a cold machine. This runs the same interleaved calibration twice, with 0 and with 1 untimed
priming call per pass (``tqsim.measure.timing.time_pass(prime=...)``), and reports per
configuration the median latency of batch 0 and batch 1 over the median of batches 3.. (the
steady state), and how much the first three batches raise the configuration's p99.

Run: python benchmarks/pass_priming.py [--grid batch_size=1,8,32 --grid threads=1,2] [--device cuda]
"""

from __future__ import annotations

import argparse
import functools
import tempfile

import numpy as np

import tqsim.measure.campaign as campaign
from tqsim.data.io import calibration_files, read_calibration
from tqsim.measure.run import calibrate
from tqsim.measure.timing import time_pass


def position_ratios(path) -> tuple[float, float, float]:
    """(batch 0, batch 1) median over the steady median, and p99 of all calls over p99 without batches 0-2."""
    ds = read_calibration(path)
    batch = ds["batch"].values
    first_instance = [int(np.argmax(batch == k)) for k in range(batch.max() + 1)]
    per_batch = ds["latency_s"].values[:, first_instance]  # (pass, batch)
    steady = per_batch[:, 3:]
    return (float(np.median(per_batch[:, 0]) / np.median(steady)), float(np.median(per_batch[:, 1]) / np.median(steady)),
            float(np.percentile(per_batch, 99) / np.percentile(steady, 99)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="digits-cnn")
    parser.add_argument("--grid", action="append", help="FACTOR=V1,V2 (repeatable)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--passes", type=int, default=10)
    args = parser.parse_args()
    grid = (args.grid or ["batch_size=1,8,32", "threads=1,2"]) + [f"device={args.device}"]
    for prime in (0, 1):
        campaign.time_pass = functools.partial(time_pass, prime=prime)
        with tempfile.TemporaryDirectory() as home:
            out = calibrate(None, grid, home=home, workload=args.workload, passes=args.passes, warmup=1,
                            show_progress=False)
            rows = [(p.stem, *position_ratios(p)) for p in calibration_files(out["folder"])]
        print(f"\nprime={prime}: {args.workload}, {args.passes} interleaved passes per configuration")
        print(f"{'config':<30}{'batch0/steady':>14}{'batch1/steady':>14}{'p99 / p99 steady':>18}")
        for stem, b0, b1, p99 in rows:
            print(f"{stem:<30}{b0:>14.2f}{b1:>14.2f}{p99:>18.2f}")
        medians = np.median(np.array([r[1:] for r in rows]), axis=0)
        print(f"{'median over configs':<30}{medians[0]:>14.2f}{medians[1]:>14.2f}{medians[2]:>18.2f}", flush=True)


if __name__ == "__main__":
    main()
