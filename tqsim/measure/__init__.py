"""The calibration harness: plans, the timing loop, fingerprints, backends, the campaign, and the serving loop."""
