"""What a workload is: a model under test, its evaluation set and its quality metric.

A user workload is a factory (``path/to/file.py:factory`` or ``module:factory``) that takes no
arguments and returns a :class:`Workload`. See README "Your own workload".
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from tqsim.workloads.metrics import BUILTIN_METRICS as METRICS  # noqa: F401 - the names a workload may give


def collate_stack(inputs: Any, index: np.ndarray) -> tuple:
    """Default collation: rows ``index`` of a single input tensor, as a one-argument tuple."""
    return (inputs[index],)


@dataclasses.dataclass
class Workload:
    """A model under test + its evaluation set + its metric.

    ``model`` is an fp32 ``torch.nn.Module`` on the CPU in eval mode; tqsim moves and casts it per
    configuration. ``collate(inputs, index)`` returns the positional arguments of one forward call
    for the instances ``index`` (a batch). ``predict(output)`` turns the model output of a batch
    into one predicted class per instance. ``metric`` is ``accuracy``, ``top_k:K``, ``macro_f1``, a
    function ``fn(outputs, labels) -> per-instance scores in [0, 1]`` or its spec ``module:function``
    / ``path/to/file.py:function`` (tqsim.workloads.metrics). ``instance_size`` (optional) is a per-instance cost
    covariate, e.g. the token count of a sequence, used by the latency models. ``source`` (set for
    model-file workloads) says where the workload came from; each calibration file records it so
    ``tqsim check`` can rebuild the workload without the user naming it again.
    """

    name: str
    task: str
    model: Any
    inputs: Any
    labels: np.ndarray
    metric: str | Callable[[np.ndarray, np.ndarray], np.ndarray] = "accuracy"
    collate: Callable[[Any, np.ndarray], tuple] = collate_stack
    predict: Callable[[Any], np.ndarray] | None = None
    instance_size: np.ndarray | None = None
    digest: str = ""
    float_inputs: Sequence[int] = (0,)
    source: dict = dataclasses.field(default_factory=dict)

    @property
    def n_instances(self) -> int:
        return int(len(self.labels))

    @property
    def metric_name(self) -> str:
        """The metric as calibration files record it (``quality_metric``), e.g. ``top_k:5``."""
        from tqsim.workloads.metrics import resolve_metric

        return resolve_metric(self.metric).name

    def predicted_classes(self, output: Any) -> np.ndarray:
        if self.predict is not None:
            return np.asarray(self.predict(output))
        return output.float().argmax(dim=-1).cpu().numpy()
