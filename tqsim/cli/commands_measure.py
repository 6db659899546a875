"""Commands that measure or list: workloads, systems, calibrate."""
