"""Validation against held-out runs of the simulated system."""

import numpy as np
import pytest

from tqsim.errors import UserError
from tqsim.testing import example_fit
from tqsim.validate import crps_sample, validate


def test_crps_matches_closed_form_for_normal():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, 200_000)
    # CRPS of N(0,1) at y=0 is 2*phi(0) - 1/sqrt(pi)
    expected = 2 / np.sqrt(2 * np.pi) - 1 / np.sqrt(np.pi)
    assert crps_sample(x, np.array([0.0])) == pytest.approx(expected, abs=0.01)


def test_validate_object_and_summaries():
    home, fm, _ = example_fit()
    res = validate(fm, home / "heldout", n_draws=60)
    assert {"system", "workload", "configs", "summary", "summary_conditioned"} <= set(res.as_dict())
    assert len(res.configs) == 2
    for row in res.configs:
        for k in ("p50", "p90", "p99"):
            v = row["latency_s"][k]
            assert {"observed", "predicted", "rel_error", "inside"} <= set(v)
            assert abs(v["rel_error"]) < 0.3
        assert 0 <= row["rjsd"] <= 1 and 0 <= row["rjsd_floor"] <= 1
        assert row["w1_rel"] >= 0 and row["crps_rel"] >= 0
        assert [t["threshold"] for t in row["tail_quality"]] == ["T90", "T95", "T99"]
        assert row["passes"] == 10
    s = res.summary
    for k in ("median_rel_error_p99", "max_rel_error_p99", "coverage", "median_abs_error_tail_quality"):
        assert k in s
    assert s["median_rel_error_p99"] <= s["max_rel_error_p99"]
    assert 0 <= s["coverage"] <= 1


def test_validate_empty_folder_refused(tmp_path):
    _, fm, _ = example_fit()
    with pytest.raises(UserError, match="no sim configuration files.*OTHER_DIR"):
        validate(fm, tmp_path)


def test_validate_takes_the_held_out_workspace(tmp_path):
    """`--heldout` may name the other workspace (its --home): its calibration of this workload is used."""
    import shutil

    home, fm, _ = example_fit()
    folder = tmp_path / "calibration" / fm.system / fm.workload
    shutil.copytree(home / "heldout", folder)
    assert len(validate(fm, tmp_path, n_draws=20).configs) == 2
