"""Bayesian models of log batch latency (docs/method.md): spec (:mod:`.spec`) apart from the PyMC backend
(:mod:`.pymc_backend`); :func:`fit_campaign`, :func:`save`, :func:`load`. Never imports torch."""

from tqsim.models.fit import fit_campaign
from tqsim.models.spec import ModelSpec, make_spec
from tqsim.models.store import FittedModel, load, save

__all__ = ["FittedModel", "ModelSpec", "fit_campaign", "load", "make_spec", "save"]
