"""`tqsim quality`: measured latency and Q@T distributions, tail quality, MLPerf's bound."""
