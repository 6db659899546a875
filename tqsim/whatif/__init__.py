"""Serving what-ifs and capacity planning: simulation only (never imports torch, onnxruntime or PyMC)."""

from tqsim.whatif.overheads import ServingOverheads
from tqsim.whatif.service import (ConstantService, EmpiricalService, ExponentialService, ForecastService,
                                  ServiceModel, WithOverheads)
from tqsim.whatif.simulator import ServingSetup, WhatIf, simulate, simulate_run

__all__ = ["ServiceModel", "EmpiricalService", "ForecastService", "ConstantService", "ExponentialService",
           "ServingOverheads", "WithOverheads", "ServingSetup", "WhatIf", "simulate", "simulate_run"]
