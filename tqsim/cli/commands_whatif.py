"""`tqsim whatif`, `tqsim plan`: serving what-ifs and capacity planning (simulation only)."""
