"""Does the harness time GPU work correctly? (issue 2's CUDA path; needs a CUDA device.)

For each workload × precision × batch size on the GPU, the same forward calls are timed three ways:

- **harness**: :func:`tqsim.measure.timing.time_pass`, i.e. wall clock around forward + ``synchronize``;
- **events**: CUDA events recorded around each forward on the stream (the device's own time);
- **no sync**: wall clock around forward alone, as a harness that forgot to synchronise would read.

The harness should read at least the event time and exceed it by only the host's launch and
synchronisation cost (tens of µs); the no-sync reading shows what forgetting the synchronisation
hides. Accuracy per precision checks that fp16/bf16 still classify (≥ 95 % on the digits set).

Run: python benchmarks/cuda_timing.py [--passes 10] [--compile] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from tqsim.factors import Config
from tqsim.measure.backends import prepare
from tqsim.measure.timing import time_pass
from tqsim.workloads import get_workload


def _event_pass(runner) -> np.ndarray:
    """Device time of every forward call of one pass, in ns, from CUDA events on the current stream."""
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in runner.batches]
    with runner.pass_context():
        for (start, end), args in zip(pairs, runner.batches):
            start.record()
            runner.raw_forward(args)
            end.record()
    torch.cuda.synchronize()
    return np.array([start.elapsed_time(end) * 1e6 for start, end in pairs])


def _nosync_pass(runner) -> np.ndarray:
    """Wall time of every forward call without waiting for the device: launch cost only."""
    out = np.empty(len(runner.batches), dtype=np.int64)
    with runner.pass_context():
        for i, args in enumerate(runner.batches):
            t0 = time.perf_counter_ns()
            runner.raw_forward(args)
            out[i] = time.perf_counter_ns() - t0
    torch.cuda.synchronize()
    return out


def _accuracy(runner) -> float:
    with runner.pass_context():
        predicted = np.concatenate([runner.predicted_classes(runner.raw_forward(a)) for a in runner.batches])
    return float(np.mean(predicted == runner.workload.labels))


def measure(workload_name: str, config: Config, passes: int) -> dict:
    workload = get_workload(workload_name)
    t0 = time.perf_counter()
    runner = prepare(workload, config)
    prepare_s = time.perf_counter() - t0
    for _ in range(3):
        time_pass(runner)  # warm-up: cuDNN autotuning, allocator growth, clocks
    harness = np.concatenate([time_pass(runner) for _ in range(passes)])
    events = np.concatenate([_event_pass(runner) for _ in range(passes)])
    nosync = np.concatenate([_nosync_pass(runner) for _ in range(passes)])
    row = {
        "workload": workload_name, "config": config.id, "calls": int(harness.size), "prepare_s": prepare_s,
        "harness_p50_us": float(np.median(harness)) / 1e3, "harness_p99_us": float(np.percentile(harness, 99)) / 1e3,
        "events_p50_us": float(np.median(events)) / 1e3, "events_p99_us": float(np.percentile(events, 99)) / 1e3,
        "nosync_p50_us": float(np.median(nosync)) / 1e3, "accuracy": _accuracy(runner),
    }
    runner.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time compile=on (inductor/Triton) configs")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; this benchmark runs on a machine with a GPU.")
    print(f"{torch.cuda.get_device_name()} · torch {torch.__version__} · CUDA {torch.version.cuda}")
    configs = [(w, Config(batch_size=b, device="cuda", precision=p))
               for w in ("digits-mlp", "digits-cnn", "digits-transformer")
               for p in ("fp32", "fp16", "bf16") for b in (1, 32, 540)]
    if args.compile:
        configs += [(w, Config(batch_size=32, device="cuda", precision="fp16", compile=True))
                    for w in ("digits-cnn", "digits-transformer")]
    rows = []
    header = (f"{'workload':<19}{'config':<34}{'harness p50':>12}{'events p50':>11}{'ratio':>7}"
              f"{'harness p99':>12}{'no-sync p50':>12}{'acc':>7}")
    print(header)
    for name, config in configs:
        row = measure(name, config, args.passes)
        rows.append(row)
        print(f"{name:<19}{config.id:<34}{row['harness_p50_us']:>10.1f}µs{row['events_p50_us']:>9.1f}µs"
              f"{row['harness_p50_us'] / row['events_p50_us']:>7.2f}{row['harness_p99_us']:>10.1f}µs"
              f"{row['nosync_p50_us']:>10.1f}µs{row['accuracy']:>7.3f}", flush=True)
    gap = np.array([r["harness_p50_us"] - r["events_p50_us"] for r in rows])
    print(f"harness − events at the median: min {gap.min():.1f} µs, median {np.median(gap):.1f} µs, "
          f"max {gap.max():.1f} µs; harness below events in {int((gap < 0).sum())} of {len(rows)} configs")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
