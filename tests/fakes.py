"""Fakes for harness tests: a workload and runner with no torch, and a scripted clock."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from tqsim.workloads.base import Workload


def fake_workload(n: int = 10, name: str = "fake", accuracy_every: int = 5) -> Workload:
    labels = np.arange(n) % 3
    return Workload(name=name, task="fake", model=None, inputs=np.arange(n), labels=labels, digest="d1")


@dataclass
class FakeRunner:
    """Batches of ``batch_size`` over ``n`` instances; predicts the label except every 5th instance."""

    n: int
    batch_size: int
    sleep_s: float = 0.0
    closed: int = 0
    calls: list = field(default_factory=list)

    def __post_init__(self):
        idx = np.arange(self.n)
        self.batch_of_instance = idx // self.batch_size
        self.batches = [(idx[i:i + self.batch_size],) for i in range(0, self.n, self.batch_size)]

    def forward(self, args):
        self.calls.append(int(args[0][0]))  # first instance of the batch called
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return args[0]

    def synchronize(self):
        pass

    def predicted_classes(self, output):
        pred = output % 3
        return np.where(output % 5 == 4, (pred + 1) % 3, pred)

    def close(self):
        self.closed += 1


def fake_prepare(sleep_s: float = 0.0):
    return lambda workload, config: FakeRunner(workload.n_instances, config.batch_size, sleep_s)


class ScriptedClock:
    """Each call returns the next value: lets a test know every measured time exactly."""

    def __init__(self, step_ns: list[int]):
        self.t = 0
        self.steps = list(step_ns)
        self.i = 0

    def __call__(self) -> int:
        self.t += self.steps[self.i % len(self.steps)]
        self.i += 1
        return self.t
