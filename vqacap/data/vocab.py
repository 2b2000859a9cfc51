"""Word tokenizer and vocabulary shared by captions and questions.

Tokenisation is Karpathy's caption preprocessing: lowercase, every run of characters other than a-z and 0-9 is a separator
(so punctuation disappears). Ids 0-3 are reserved: <pad>, <bos>, <eos>, <unk>.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch

from vqacap.data.formats import normal_text
from vqacap.tokens import BOS, BOS_ID, EOS, EOS_ID, PAD, PAD_ID, SPECIALS, UNK, UNK_ID

__all__ = [
    "BOS",
    "BOS_ID",
    "EOS",
    "EOS_ID",
    "PAD",
    "PAD_ID",
    "SPECIALS",
    "UNK",
    "UNK_ID",
    "Vocabulary",
    "tokenize",
]

# Anything but letters and digits separates words; letters of every script count ("café", not "caf"), as in the PTB
# tokenizer the caption metrics use.
_SEPARATOR = re.compile(r"[\W_]+")


def tokenize(text: str) -> list[str]:
    """'A man, riding a horse.' -> ['a', 'man', 'riding', 'a', 'horse']; 'Un café.' -> ['un', 'café']."""
    return [w for w in _SEPARATOR.split(normal_text(text).lower()) if w]


class Vocabulary:
    """Words <-> ids, with the rare words of the training text mapped to <unk>."""

    def __init__(self, words: Iterable[str], max_length: int = 16, min_count: int = 1) -> None:
        self.words = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.index = {w: i for i, w in enumerate(self.words)}
        self.max_length = int(max_length)
        self.min_count = int(min_count)

    @classmethod
    def from_words(cls, words: Iterable[str], max_length: int = 16) -> Vocabulary:
        """The vocabulary of a full id -> word list, specials first (`vocab.words`, as a checkpoint stores it)."""
        words = list(words)
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a word list starts with {', '.join(SPECIALS)}, not {words[: len(SPECIALS)]}")
        return cls(words[len(SPECIALS) :], max_length=max_length)

    @classmethod
    def build(cls, texts: Iterable[str | list[str]], min_count: int = 5, max_length: int = 16) -> Vocabulary:
        """Words seen at least `min_count` times, most frequent first (ties alphabetical, so the order is stable)."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(tokenize(text) if isinstance(text, str) else text)
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(kept, max_length=max_length, min_count=min_count)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str | list[str], field: str = "text") -> list[int]:
        """Token ids, truncated to `max_length`, without <bos>/<eos>. An empty text is an error naming `field`."""
        tokens = tokenize(text) if isinstance(text, str) else list(text)
        if not tokens:
            raise ValueError(f"{field}: empty text {text!r} has no words")
        return [self.index.get(w, UNK_ID) for w in tokens[: self.max_length]]

    def encode_batch(self, texts: list[str], add_bos_eos: bool = False, field: str = "text") -> torch.Tensor:
        """(N, L) padded id tensor; L = max_length (+2 with <bos>/<eos>)."""
        width = self.max_length + (2 if add_bos_eos else 0)
        out = torch.full((len(texts), width), PAD_ID, dtype=torch.long)
        for n, text in enumerate(texts):
            ids = self.encode(text, field=f"{field}[{n}]")
            if add_bos_eos:
                ids = [BOS_ID, *ids, EOS_ID]
            out[n, : len(ids)] = torch.tensor(ids)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Ids to text, stopping at the first <eos> or <pad>; <bos> is skipped."""
        words = []
        for i in ids:
            i = int(i)
            if i in (EOS_ID, PAD_ID):
                break
            if i != BOS_ID:
                words.append(self.words[i])
        return " ".join(words)

    def decode_batch(self, ids: torch.Tensor) -> list[str]:
        return [self.decode(row) for row in ids.tolist()]

    def save(self, path: str | os.PathLike) -> None:
        data = {
            "words": self.words[len(SPECIALS) :],
            "max_length": self.max_length,
            "min_count": self.min_count,
        }
        Path(path).write_text(json.dumps(data, indent=0))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        try:
            data = json.loads(Path(path).read_text())
            return cls(data["words"], max_length=data["max_length"], min_count=data.get("min_count", 1))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: vocabulary file not found") from None
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a vocabulary file ({err})") from None
