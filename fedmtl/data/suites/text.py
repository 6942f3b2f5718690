"""A text column as the input of a table or hub suite: each row's text becomes ``max_length`` token ids.

Two tokenisers, neither of which downloads anything:

* built in (``tokenizer: null``): lower-cased words and punctuation marks (``\\w+|[^\\w\\s]``), the
  ``vocab_size - 2`` most frequent over the column's rows (ties in alphabetical order; no label is
  read, so no target leaks); id 0 pads (BERT's padding id), 1 stands for any other word;
* a Hugging Face tokenizer saved in a local directory (``tokenizer: path/to/dir``, ``save_pretrained``),
  padded with its own padding id (the encoder's config must use the same).

Sequences are cut at ``max_length`` and padded to it. Ids are kept as float32 (exact below 2^24).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedmtl.core.errors import ConfigError, require
from fedmtl.data.suites.columns import Column, data_key
from fedmtl.data.suites.rows import RowData

PAD, UNKNOWN = 0, 1
_WORD = re.compile(r"\w+|[^\w\s]")
MAX_EXACT_ID = 2**24  # float32 holds every integer below it


@dataclass(frozen=True)
class TextInput:
    """``data.text``: which column holds the text and how it becomes token ids."""

    column: str
    max_length: int = 64  # tokens per row (cut or padded)
    vocab_size: int = 10_000  # built-in tokeniser: ids 0 .. vocab_size - 1 (0 pads, 1 unknown)
    tokenizer: str | None = None  # a local Hugging Face tokenizer directory instead of the built-in one

    def __post_init__(self) -> None:
        require(self.max_length >= 1, "max_length", f"must be >= 1, got {self.max_length}")
        require(3 <= self.vocab_size <= MAX_EXACT_ID, "vocab_size", f"must be in [3, 2^24], got {self.vocab_size}")
        if self.tokenizer is not None:
            require(Path(self.tokenizer).is_dir(), "tokenizer", f"no such directory: {self.tokenizer}")

    def token_ids(self, column: Column) -> np.ndarray:
        """``[rows, max_length]`` float32 ids of the column's texts (a missing text is empty)."""
        if column.numeric:
            raise ConfigError(data_key("text", "column"), f"column {self.column!r} holds numbers, not text")
        texts = ["" if v is None else str(v) for v in column.values]
        ids = self._hugging_face(texts) if self.tokenizer is not None else self._words(texts)
        return ids.astype(np.float32)

    def _words(self, texts: Sequence[str]) -> np.ndarray:
        words = [_WORD.findall(text.lower()) for text in texts]
        counts = Counter(word for row in words for word in row)
        ranked = sorted(counts, key=lambda w: (-counts[w], w))[: self.vocab_size - 2]
        vocabulary = {word: i + 2 for i, word in enumerate(ranked)}
        ids = np.full((len(texts), self.max_length), PAD, dtype=np.int64)
        for row, tokens in enumerate(words):
            coded = [vocabulary.get(word, UNKNOWN) for word in tokens[: self.max_length]]
            ids[row, : len(coded)] = coded
        return ids

    def _hugging_face(self, texts: Sequence[str]) -> np.ndarray:
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.tokenizer, local_files_only=True)
        except ImportError:
            raise ConfigError(data_key("text", "tokenizer"), "needs transformers (pip install -e '.[text]')") from None
        except (OSError, ValueError) as err:
            raise ConfigError(data_key("text", "tokenizer"), f"cannot load a tokenizer: {err}") from None
        encoded = tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_length)
        ids = np.asarray(encoded["input_ids"], dtype=np.int64)
        if ids.max(initial=0) >= MAX_EXACT_ID:
            raise ConfigError(data_key("text", "tokenizer"), "token ids beyond 2^24 cannot be kept exactly")
        return ids


def check_text_settings(text: TextInput | None, features: Sequence[str]) -> None:
    if text is not None and features:
        raise ConfigError(data_key("features"), "does not apply with data.text: the input is the text's token ids")


def largest_token(rows: RowData) -> torch.Tensor:
    """``[2, max_length]`` filled with the largest token id of the rows (the encoder's vocabulary must hold it)."""
    count = len(next(iter(rows.targets.values())).values)
    top = float(rows.features(np.arange(count)).max(initial=0.0))
    return torch.full((2, rows.feature_dim), top)
