"""One configuration's measurements in memory, and their exact mapping to the file contract (docs/schema.md).

Raw per-call times are kept as measured (nanoseconds per forward call); every statistic is
derived later, never stored instead of the data.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone

import numpy as np
import xarray as xr

from tqsim import __version__
from tqsim.data.schema import SCHEMA_VERSION, batch_starts, instance_scores
from tqsim.factors import FACTORS, Config


LOAD_VARS = {
    "other_cpu": "CPU used by other programs during the pass, in cores (NaN where unreadable)",
    "steal": "share of CPU time stolen by the hypervisor during the pass",
    "load_avg": "1-minute load average at the start of the pass",
}


@dataclasses.dataclass
class ConfigRecord:
    config: Config
    workload: str
    system: str
    metric: str
    batch_of_instance: np.ndarray
    prediction: np.ndarray
    label: np.ndarray
    fingerprint: dict
    model_digest: str
    score: np.ndarray | None = None  # per-instance score in [0, 1] under ``metric``; None: prediction == label
    instance_size: np.ndarray | None = None
    warmup_ns: list[np.ndarray] = dataclasses.field(default_factory=list)
    pass_ns: list[np.ndarray] = dataclasses.field(default_factory=list)
    rounds: list[int] = dataclasses.field(default_factory=list)
    started_at: list[float] = dataclasses.field(default_factory=list)
    sessions: list[int] = dataclasses.field(default_factory=list)
    loads: list[dict] = dataclasses.field(default_factory=list)  # other_cpu, steal, load_avg per pass
    created_at: str = dataclasses.field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    extra_attrs: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.score is None:
            self.score = (np.asarray(self.prediction) == np.asarray(self.label)).astype(np.float64)

    @property
    def n_passes(self) -> int:
        return len(self.pass_ns)

    def add_pass(self, ns: np.ndarray, round_id: int, started_at: float, session: int = 0,
                 load: dict | None = None) -> None:
        self.pass_ns.append(np.asarray(ns, dtype=np.int64))
        self.rounds.append(int(round_id))
        self.started_at.append(float(started_at))
        self.sessions.append(int(session))
        self.loads.append(dict(load or {}))

    def keep_passes(self, n: int) -> None:
        """Drop every pass after the first ``n`` (what a kill in the middle of a round leaves)."""
        for name in ("pass_ns", "rounds", "started_at", "sessions", "loads"):
            setattr(self, name, getattr(self, name)[:n])

    def batch_latency_s(self) -> np.ndarray:
        """(pass, batch) seconds."""
        n_batches = int(self.batch_of_instance.max()) + 1
        if not self.pass_ns:
            return np.empty((0, n_batches))
        return np.stack(self.pass_ns).astype(np.float64) / 1e9

    def to_dataset(self) -> xr.Dataset:
        b = self.batch_of_instance
        n = b.size
        lat = self.batch_latency_s()[:, b]
        warm = (np.stack(self.warmup_ns).astype(np.float64) / 1e9)[:, b] if self.warmup_ns else np.empty((0, n))
        data = {
            "latency_s": (("pass", "instance"), lat, {"units": "s", "long_name": "latency of the batch holding the instance"}),
            "warmup_latency_s": (("warmup_pass", "instance"), warm, {"units": "s"}),
            "batch": ("instance", b.astype(np.int64)),
            "prediction": ("instance", _stored(self.prediction)),
            "label": ("instance", _stored(self.label)),
            "score": ("instance", np.asarray(self.score, dtype=np.float64),
                      {"long_name": f"per-instance score under {self.metric}, in [0, 1] (late instances score 0)"}),
            "round": ("pass", np.asarray(self.rounds, dtype=np.int64)),
            "pass_started_at": ("pass", np.asarray(self.started_at, dtype=np.float64),
                                {"long_name": "wall-clock start of the pass, seconds since the Unix epoch"}),
            "session": ("pass", np.asarray(self.sessions, dtype=np.int64),
                        {"long_name": "the tqsim calibrate invocation (or resume) that measured the pass"}),
        }
        for key, long_name in LOAD_VARS.items():
            values = [d.get(key, np.nan) for d in self.loads]
            data[key] = ("pass", np.asarray(values, dtype=np.float64), {"long_name": long_name})
        if self.instance_size is not None:
            data["instance_size"] = ("instance", np.asarray(self.instance_size, dtype=np.float64))
        attrs = {
            "workload": self.workload, "system": self.system, "fingerprint": json.dumps(self.fingerprint),
            "quality_metric": self.metric, "tqsim_version": __version__, "created_at": self.created_at,
            "units": "seconds", "schema_version": SCHEMA_VERSION, "model_digest": self.model_digest,
            "config_id": self.config.id, **self.extra_attrs,
        }
        for f in FACTORS:
            value = getattr(self.config, f)
            attrs[f] = int(value) if isinstance(value, bool) else value
        coords = {"instance": np.arange(n), "pass": np.arange(self.n_passes),
                  "warmup_pass": np.arange(len(self.warmup_ns))}
        return xr.Dataset(data, coords=coords, attrs=attrs)

    @classmethod
    def from_dataset(cls, ds: xr.Dataset) -> "ConfigRecord":
        """Rebuild the record from its file, so a resumed campaign appends to exactly what is on disk."""
        b = ds["batch"].values.astype(np.int64)
        first = batch_starts(b)
        attrs = dict(ds.attrs)
        config = Config.from_mapping({f: attrs[f] for f in FACTORS})
        known = {"workload", "system", "fingerprint", "quality_metric", "tqsim_version", "created_at", "units",
                 "schema_version", "model_digest", "config_id", *FACTORS}
        rec = cls(config=config, workload=attrs["workload"], system=attrs["system"], metric=attrs["quality_metric"],
                  batch_of_instance=b, prediction=ds["prediction"].values, label=ds["label"].values,
                  score=instance_scores(ds).values,
                  fingerprint=json.loads(attrs["fingerprint"]), model_digest=str(attrs.get("model_digest", "")),
                  instance_size=ds["instance_size"].values if "instance_size" in ds else None,
                  created_at=attrs["created_at"], extra_attrs={k: v for k, v in attrs.items() if k not in known})
        to_ns = lambda a: np.rint(a[first] * 1e9).astype(np.int64)  # noqa: E731
        if "warmup_latency_s" in ds:
            rec.warmup_ns = [to_ns(row) for row in ds["warmup_latency_s"].values]
        n = ds.sizes["pass"]
        # files written before sessions were recorded: one session (0) for all their passes
        sessions = ds["session"].values if "session" in ds else np.zeros(n, np.int64)
        loads = [{k: float(ds[k].values[i]) for k in LOAD_VARS if k in ds} for i in range(n)]
        for row, r, t, s, ld in zip(ds["latency_s"].values, ds["round"].values, ds["pass_started_at"].values,
                                    sessions, loads):
            rec.add_pass(to_ns(row), int(r), float(t), int(s), ld)
        return rec


def _stored(values: np.ndarray) -> np.ndarray:
    """Classes as int64; anything else (a regression's targets under a callable metric) as float64."""
    values = np.asarray(values)
    kind = np.int64 if np.issubdtype(values.dtype, np.integer) or values.dtype == bool else np.float64
    return values.astype(kind)
