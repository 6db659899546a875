"""The calibration harness: plans, the timing loop, fingerprints, backends and the campaign."""
