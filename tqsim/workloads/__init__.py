"""Workloads: the built-in models under test and user factories (docs/design.md).
Importing this is cheap."""

from tqsim.workloads.base import METRICS, Workload, collate_stack
from tqsim.workloads.registry import BUILTINS, get_workload, list_workloads

__all__ = ["BUILTINS", "METRICS", "Workload", "collate_stack", "get_workload", "list_workloads"]
