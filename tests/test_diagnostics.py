"""The graded diagnostics policy: clean, usable-with-a-warning, refused."""

import arviz as az
import numpy as np
import pytest

from tqsim.models.fit import diagnostics_of


def _idata(shift: float, diverging: int = 0, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 1000))
    x[1] += shift  # chains that disagree by `shift` standard deviations
    stats = np.zeros((2, 1000), bool)
    stats.flat[:diverging] = True
    return az.from_dict(posterior={"a": x}, sample_stats={"diverging": stats})


@pytest.mark.parametrize("shift, diverging, status", [
    (0.0, 0, "ok"),
    (0.3, 0, "warn"),    # r-hat ≈ 1.02
    (0.0, 1, "warn"),    # one divergence in 2,000 draws
    (1.0, 0, "fail"),    # r-hat ≈ 1.2
    (0.0, 50, "fail"),   # 2.5 % divergent
])
def test_diagnostics_are_graded(shift, diverging, status):
    d = diagnostics_of(_idata(shift, diverging), "nuts")
    assert d["status"] == status
    assert d["ok"] == (status != "fail")
