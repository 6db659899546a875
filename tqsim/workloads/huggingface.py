"""Wrap a Hugging Face ``transformers`` text classifier and its tokenizer as a tqsim :class:`Workload`.

    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from tqsim.workloads.huggingface import text_classification

    def make():
        path = "path/to/my-finetuned-model"  # a local directory: nothing is downloaded
        model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        return text_classification(model, tokenizer, texts, labels, name="my-model")

Tokenisation happens in ``collate``, which tqsim runs before the clock starts, so only the forward
call is timed. A batch is padded to its own longest member (truncated at ``max_length``), so it
costs what its longest member costs; ``instance_size`` is each text's token count, the cost
covariate of the latency models. Token ids and attention masks are integers: they are never cast
to bf16/fp16 (``float_inputs`` is empty). ``transformers`` is imported only when a tokenizer is
used, so ``import tqsim`` stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from tqsim.errors import UserError
from tqsim.workloads.base import Workload

EXTRA_HINT = "pip install 'tqsim[hf]'"


def require_transformers() -> Any:
    """``transformers``, or a UserError naming the extra that installs it."""
    try:
        import transformers
    except ImportError as exc:
        raise UserError(f"this workload needs the Hugging Face packages ({exc.name or 'transformers'} is "
                        f"missing); install them with {EXTRA_HINT}.") from None
    return transformers


class Logits(nn.Module):
    """``forward(input_ids, attention_mask) -> logits tensor`` around any transformers classifier.

    Positional, tensor-only arguments and a plain tensor output are what tqsim's runners (and the
    ONNX export) call and return; a transformers model takes keywords and returns a ModelOutput.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        if hasattr(out, "logits"):
            return out.logits
        return out[0] if isinstance(out, (tuple, list)) else out


class Tokenize:
    """A picklable ``collate``: the texts ``index`` as (input_ids, attention_mask), padded to the longest.

    Calls are serialised by a lock: the serving loop collates from several replica threads, and a
    fast (Rust) tokenizer that is asked to pad/truncate from two threads at once raises
    "Already borrowed".
    """

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"tokenizer": self.tokenizer, "max_length": self.max_length}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["tokenizer"], state["max_length"])

    def __call__(self, texts: Sequence[str], index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        with self._lock:
            batch = self.tokenizer([texts[i] for i in np.asarray(index).ravel()], padding="longest",
                                   truncation=True, max_length=self.max_length, return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"]

    def lengths(self, texts: Sequence[str]) -> np.ndarray:
        """Token count of each text as the model sees it (special tokens included, after truncation)."""
        with self._lock:
            ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        return np.array([len(row) for row in ids], dtype=np.int64)


def tokenizer_digest(tokenizer: Any, max_length: int) -> str:
    """sha256 of the vocabulary, the tokenizer's class and the truncation length: the same ids for the same text."""
    vocab = sorted(tokenizer.get_vocab().items())
    text = json.dumps({"class": type(tokenizer).__name__, "vocab": vocab, "max_length": max_length,
                       "lower": getattr(tokenizer, "do_lower_case", None)}, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def text_classification(model: nn.Module, tokenizer: Any, texts: Sequence[str], labels: Sequence[int], *,
                        name: str = "hf-text", task: str = "classify texts (transformers)",
                        metric: str = "accuracy", max_length: int = 128) -> Workload:
    """A :class:`Workload` that classifies ``texts`` with a transformers ``model`` (logits → argmax).

    ``model`` is any module called as ``model(input_ids=..., attention_mask=...)`` that returns
    logits, a ModelOutput with ``.logits`` (e.g. ``AutoModelForSequenceClassification``) or a tuple
    whose first item is the logits; ``labels`` are class indices into those logits. The digest
    hashes the weights and the tokenizer, so a calibration notices when either changes.
    """
    from tqsim.workloads.training import state_digest

    texts = [str(t) for t in texts]
    labels = np.asarray(labels)
    if len(texts) != len(labels):
        raise UserError(f"{name}: {len(texts)} texts but {len(labels)} labels; give one label per text.")
    if max_length < 2:
        raise UserError(f"{name}: max_length={max_length} leaves no room for a token; give at least 2.")
    wrapped = Logits(model).eval()
    wrapped.requires_grad_(False)
    collate = Tokenize(tokenizer, max_length)
    digest = hashlib.sha256(f"{state_digest(wrapped)}:{tokenizer_digest(tokenizer, max_length)}".encode())
    return Workload(name=name, task=task, model=wrapped, inputs=texts, labels=labels, metric=metric,
                    collate=collate, instance_size=collate.lengths(texts), digest=digest.hexdigest()[:16],
                    float_inputs=())
