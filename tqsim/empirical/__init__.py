"""The Tail-Quality framework done right: per-batch time distributions (KDE on log-time, whole-pass
resampling), Monte Carlo of simulated passes, rJSD convergence, and MLPerf's early-stopping bound.

NumPy/SciPy only: never imports torch, onnxruntime or PyMC. Formulas: docs/method.md.
"""

from tqsim.empirical.convergence import ConvergenceTracker, jensen_shannon_distance, jsd_floor, qat_histogram
from tqsim.empirical.kde import LatencySampler, PassResampler, LogKDE, silverman_bandwidth
from tqsim.empirical.mlperf import (early_stopping_estimate, min_passing_queries, min_queries, normal_approx_queries,
                                    queries_needed, server_check)
from tqsim.empirical.montecarlo import monte_carlo_qat, qat_from_batches

__all__ = ["ConvergenceTracker", "jensen_shannon_distance", "jsd_floor", "qat_histogram", "LatencySampler",
           "PassResampler", "LogKDE", "silverman_bandwidth", "early_stopping_estimate", "min_passing_queries",
           "min_queries", "normal_approx_queries", "queries_needed", "server_check", "monte_carlo_qat",
           "qat_from_batches"]
