"""`tqsim fit`, `tqsim predict`, `tqsim validate`: Bayesian forecasts and their scores."""
