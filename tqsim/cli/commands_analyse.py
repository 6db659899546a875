"""Commands that read a workspace: quality, fit, predict, validate."""
