"""tqsim: latency and tail quality of deep-learning inference under a deadline."""

__version__ = "0.1.0"
