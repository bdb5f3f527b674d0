"""BERT's uncased WordPiece tokenizer, from the model's own vocab.txt.

What HF `tokenizers` does for all-MiniLM-L6-v2 (BertNormalizer with lowercasing,
BertPreTokenizer, WordPiece with `##` continuations and [UNK] for a word that cannot
be pieced), without the package: `tokenizers` brings huggingface-hub and its
download clients, which an egress proxy's image has no business carrying.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from pathlib import Path

MAX_WORD = 100  # characters; a longer word is [UNK], as in BERT


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _normalized(text: str) -> str:
    """Control characters out, every whitespace a space, CJK ideographs spaced apart,
    lower case, accents stripped."""
    out = []
    for ch in text:
        cp = ord(ch)
        if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            out.append(" ")
        elif cp == 0 or cp == 0xFFFD or unicodedata.category(ch) in ("Cc", "Cf"):
            continue
        elif _is_cjk(cp):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    decomposed = unicodedata.normalize("NFD", "".join(out).lower())
    return "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")


def _words(text: str) -> list[str]:
    words = []
    for chunk in text.split():
        word = []
        for ch in chunk:
            if _is_punctuation(ch):
                if word:
                    words.append("".join(word))
                    word = []
                words.append(ch)
            else:
                word.append(ch)
        if word:
            words.append("".join(word))
    return words


class WordPiece:
    def __init__(self, vocab: Path) -> None:
        tokens = vocab.read_text(encoding="utf-8").split("\n")
        self.ids = {t: i for i, t in enumerate(tokens) if t}
        self.unk = self.ids["[UNK]"]
        self.cls, self.sep = self.ids["[CLS]"], self.ids["[SEP]"]
        self._piece = lru_cache(maxsize=65536)(self._piece_uncached)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without [CLS] and [SEP]."""
        out: list[int] = []
        for word in _words(_normalized(text)):
            out.extend(self._piece(word))
        return out

    def _piece_uncached(self, word: str) -> tuple[int, ...]:
        if len(word) > MAX_WORD:
            return (self.unk,)
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if (found := self.ids.get(piece)) is not None:
                    pieces.append(found)
                    break
                end -= 1
            else:
                return (self.unk,)
            start = end
        return tuple(pieces)
