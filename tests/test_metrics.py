"""Quality metrics (tqsim/workloads/metrics.py): top_k, user callables, per-instance scores through
Q@T and the files, refusals with the fix, and old files without ``score``."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest

from tests.cli_runner import run_cli
from tests.quality_fixtures import calibration_dataset
from tqsim.data.io import read_calibration, write_atomic
from tqsim.data.schema import instance_scores
from tqsim.errors import UserError
from tqsim.factors import Config
from tqsim.quality import no_deadline_quality, quality_at_deadline, scoring_of
from tqsim.workloads.metrics import check_scores, resolve_metric, top_k_scores

# 4 instances × 5 classes; by hand, the label's rank (0 = largest) in each row is 0, 2, 4, 1
OUTPUTS = np.array([[0.9, 0.05, 0.02, 0.02, 0.01],
                    [0.3, 0.5, 0.1, 0.05, 0.05],
                    [0.3, 0.25, 0.2, 0.15, 0.1],
                    [0.2, 0.5, 0.1, 0.1, 0.1]])
LABELS = np.array([0, 2, 4, 0])


def _rank_by_sorting(outputs, labels):
    """The label's 0-based rank in its row by a stable descending sort (independent of top_k_scores)."""
    return np.array([list(np.argsort(-row, kind="stable")).index(lab) for row, lab in zip(outputs, labels)])


@pytest.mark.parametrize("k, expected", [(1, [1, 0, 0, 0]), (2, [1, 0, 0, 1]), (3, [1, 1, 0, 1]),
                                         (5, [1, 1, 1, 1])])
def test_top_k_scores_a_hand_made_output_matrix(k, expected):
    got = resolve_metric(f"top_k:{k}").score(OUTPUTS, LABELS, OUTPUTS.argmax(axis=1))
    assert got.tolist() == expected
    assert got.tolist() == (_rank_by_sorting(OUTPUTS, LABELS) < k).astype(float).tolist()


def test_top_k_counts_ties_in_the_labels_favour():
    tied = np.array([[0.5, 0.5, 0.0], [0.2, 0.4, 0.4]])
    assert top_k_scores(tied, np.array([1, 0]), 1).tolist() == [1.0, 0.0]  # 0 larger; 2 larger
    assert top_k_scores(tied, np.array([1, 2]), 1).tolist() == [1.0, 1.0]


def test_top_k_1_equals_accuracy_and_reads_torch_and_logits_outputs():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    outputs = rng.normal(size=(200, 7))
    labels = rng.integers(0, 7, 200)
    pred = outputs.argmax(axis=1)
    acc = resolve_metric("accuracy").score(outputs, labels, pred)
    assert np.array_equal(resolve_metric("top_k:1").score(outputs, labels, pred), acc)
    assert acc.mean() == pytest.approx(np.mean(pred == labels))

    class ModelOutput:  # what a transformers model returns
        logits = torch.tensor(outputs, dtype=torch.bfloat16)
    top3 = resolve_metric("top_k:3").score(ModelOutput(), labels, pred)
    assert np.array_equal(top3, top_k_scores(ModelOutput.logits.float().numpy(), labels, 3))
    assert np.array_equal(top_k_scores(outputs, labels, 3), (_rank_by_sorting(outputs, labels) < 3).astype(float))


def within_tol(outputs, labels):
    """A regression metric: full score within 0.1, falling linearly to 0 at 0.5."""
    err = np.abs(outputs[:, 0] - labels)
    return np.clip((0.5 - err) / 0.4, 0, 1)


def test_a_callable_gives_fractional_scores_and_q_at_t_is_the_mean_of_score_times_on_time():
    outputs = np.array([[1.0], [2.2], [3.3], [4.0]])
    labels = np.array([1.0, 2.0, 3.0, 5.0])
    metric = resolve_metric(within_tol)
    assert metric.name == f"callable:{__name__}:within_tol"
    score = metric.score(outputs, labels, np.zeros(4))
    assert score == pytest.approx([1.0, 0.75, 0.5, 0.0])
    lat = np.array([[1.0, 2.0, 3.0, 1.0],
                    [3.0, 1.0, 1.0, 1.0]])
    q = quality_at_deadline(lat, [2.5], score=score, metric=metric.name)[:, 0]
    # pass 0: instances 0 and 1 on time -> (1 + .75) / 4; pass 1: 1, 2, 3 on time -> (.75 + .5 + 0) / 4
    assert q == pytest.approx([1.75 / 4, 1.25 / 4])
    assert no_deadline_quality(score=score, metric=metric.name) == pytest.approx(2.25 / 4)


def test_a_callable_by_spec_from_a_file_and_from_a_module(tmp_path, monkeypatch):
    (tmp_path / "my_metrics.py").write_text(textwrap.dedent("""
        import numpy as np
        def half(outputs, labels):
            return np.full(len(labels), 0.5)
    """))
    by_file = resolve_metric(f"{tmp_path}/my_metrics.py:half")
    assert by_file.name == f"callable:{tmp_path}/my_metrics.py:half"
    assert by_file.score(np.zeros((3, 2)), np.zeros(3), np.zeros(3)).tolist() == [0.5] * 3
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    assert resolve_metric("my_metrics:half").name == "callable:my_metrics:half"


@pytest.mark.parametrize("metric, fragment", [
    ("auc", "unknown metric 'auc'; choose accuracy, top_k:K"),
    ("top_k:0", "top_k:K with K a positive whole number"),
    ("top_k", "top_k:K with K a positive whole number"),
    ("no_such_metric_module_xyz:fn", "cannot import module 'no_such_metric_module_xyz' for metric"),
    ("missing/metrics.py:fn", "metric file 'missing/metrics.py' not found"),
    ("numpy:no_such_function", "'numpy' has no function 'no_such_function'"),
])
def test_unknown_or_unimportable_metrics_are_refused_naming_the_fix(metric, fragment):
    with pytest.raises(UserError, match=fragment) as err:
        resolve_metric(metric)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("returned, fragment", [
    (np.ones((3, 1)), r"returned shape \(3, 1\) for 3 instances"),
    (np.ones(2), r"returned shape \(2,\) for 3 instances"),
    (np.array([0.5, 1.5, 0.0]), r"outside \[0, 1\] \(e.g. 1.5\)"),
    (np.array([-0.1, 1.0, 0.0]), r"outside \[0, 1\] \(e.g. -0.1\)"),
    (np.array([0.5, np.nan, 0.0]), "returned 1 NaN score"),
    ("good", "returned str, not numbers"),
])
def test_a_callable_returning_bad_scores_is_refused_naming_the_metric_and_what_it_returned(returned, fragment):
    def bad(outputs, labels):
        return returned
    with pytest.raises(UserError, match=fragment) as err:
        resolve_metric(bad).score(np.zeros((3, 2)), np.zeros(3), np.zeros(3))
    assert str(err.value).startswith(f"metric callable:{__name__}:") and ".bad returned" in str(err.value)
    with pytest.raises(UserError, match="top_k:4: the model has only 2 outputs"):
        resolve_metric("top_k:4").score(np.zeros((3, 2)), np.zeros(3, int), np.zeros(3))
    assert check_scores([0, 1, 0.25], 3, "x").dtype == float


def test_old_files_without_score_are_still_read_and_scored(tmp_path):
    old = calibration_dataset(Config(1), n_passes=3, n_instances=6)  # accuracy: 'correct' only
    assert "score" not in old and "correct" in old
    write_atomic(old, tmp_path / "old.nc")
    ds = read_calibration(tmp_path / "old.nc")
    assert np.array_equal(ds["score"].values, old["correct"].values.astype(float))
    f1 = calibration_dataset(Config(1), n_passes=3, n_instances=6, metric="macro_f1")  # prediction + label only
    assert np.array_equal(instance_scores(f1).values, (f1["prediction"] == f1["label"]).values.astype(float))
    assert scoring_of(f1)["metric"] == "macro_f1"


def test_a_score_outside_0_1_in_a_file_is_refused(tmp_path):
    ds = calibration_dataset(Config(1), n_passes=3, n_instances=4)
    ds["score"] = ("instance", np.array([0.0, 1.0, 1.2, 0.5]))
    write_atomic(ds, tmp_path / "bad.nc")
    with pytest.raises(UserError, match="'score' holds values outside"):
        read_calibration(tmp_path / "bad.nc")


def test_calibrating_a_user_workload_with_top_k_3_stores_the_models_own_top_3(tmp_path, capsys, monkeypatch):
    torch = pytest.importorskip("torch")
    (tmp_path / "topk_wl.py").write_text(textwrap.dedent("""
        import numpy as np, torch
        from tqsim.workloads import Workload
        def make():
            torch.manual_seed(0)
            model = torch.nn.Linear(6, 8).eval()
            inputs = torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
            labels = np.random.default_rng(2).integers(0, 8, 40)
            return Workload(name="x", task="random 8-way classifier", model=model, inputs=inputs,
                            labels=labels, metric="top_k:3")
    """))
    spec = f"{tmp_path}/topk_wl.py:make"
    code, out, err = run_cli(["calibrate", "--workload", spec, "--grid", "batch_size=16", "--passes", "2",
                              "--warmup", "0", "--system", "ci", "--home", tmp_path / "home", "--json"],
                             capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["metric"] == "top_k:3"
    ds = read_calibration(tmp_path / "home/calibration/ci/topk_wl-make/bs16-th1-fp32-torch-cpu.nc")
    assert ds.attrs["quality_metric"] == "top_k:3" and "correct" not in ds
    from tqsim.workloads.registry import get_workload

    w = get_workload(spec)
    with torch.no_grad():
        logits = w.model(w.inputs).numpy()
    expected = (_rank_by_sorting(logits, w.labels) < 3).astype(float)
    assert 0 < expected.mean() < 1  # a random model: some labels in its top 3, some not
    assert np.array_equal(ds["score"].values, expected)
    assert np.array_equal(ds["prediction"].values, logits.argmax(axis=1))
    assert summary["configs"][0]["quality"] == pytest.approx(expected.mean())


def test_a_workload_with_a_bad_metric_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    (tmp_path / "bad_wl.py").write_text(textwrap.dedent("""
        import numpy as np, torch
        from tqsim.workloads import Workload
        def make():
            return Workload(name="x", task="t", model=torch.nn.Linear(2, 2).eval(), inputs=torch.zeros(3, 2),
                            labels=np.zeros(3, dtype=int), metric="no_such_metric_module_xyz:fn")
    """))
    code, out, err = run_cli(["calibrate", "--workload", f"{tmp_path}/bad_wl.py:make", "--grid", "batch_size=1",
                              "--passes", "2", "--home", tmp_path / "home"], capsys, monkeypatch)
    assert code == 2 and "cannot import module 'no_such_metric_module_xyz' for metric" in err, err
    assert not (tmp_path / "home" / "calibration").exists()
