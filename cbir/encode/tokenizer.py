"""CLIP's byte-level BPE tokenizer without torch or open_clip: a port of open_clip's
``SimpleTokenizer`` (open_clip/tokenizer.py) in its default mode (clean "lower", no reduction mask,
no extra special tokens), which every open_clip model without an HF or SigLIP tokenizer uses.
Checked token for token against open_clip by tests/test_tokenizer.py."""

from __future__ import annotations

import gzip
import html
import importlib.util
from functools import cache
from itertools import pairwise
from pathlib import Path

import numpy as np
import regex

KIND = "clip-bpe"  # what meta.json of an ONNX export calls this tokenizer
VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"
MERGES = 49152 - 256 - 2  # the merges CLIP's vocabulary uses (the file holds more)
SOT, EOT = "<start_of_text>", "<end_of_text>"


def open_clip_vocab() -> Path:
    """open_clip's vocabulary file, found without running open_clip's __init__ (which imports
    torch): find_spec only locates the package."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / VOCAB_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"open_clip's {VOCAB_NAME} not found")


@cache
def bytes_to_unicode() -> dict[int, str]:
    """Each byte as a printable character, so BPE never sees whitespace or control bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def clean(text: str) -> str:
    """open_clip's "lower" clean: ftfy, HTML entities unescaped twice, whitespace runs collapsed.
    ftfy (and the 40 ms of its import) is skipped for printable ASCII without "&", which each of
    its fixes leaves as it is (they undo mojibake, curly quotes, control characters, entities)."""
    if not (text.isascii() and text.isprintable() and "&" not in text):
        import ftfy

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(pairwise(word))


class ClipTokenizer:
    """``tokenizer(texts)`` -> int64 [len(texts), context_length]: start token, BPE ids, end token,
    zero padding; longer texts are cut to context_length with the end token kept last."""

    def __init__(self, vocab: Path, context_length: int):
        # Merges stay the file's "first second" lines (dict keys as they are; maxsplit leaves the
        # unused rest of the file whole): 30 ms to load rather than 80, in a cold text search.
        with gzip.open(vocab) as f:
            merges = f.read().decode("utf-8").split("\n", MERGES + 1)[1 : MERGES + 1]
        symbols = list(bytes_to_unicode().values())
        symbols += [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in merges] + [SOT, EOT]
        self.encoder = dict(zip(symbols, range(len(symbols))))
        self.ranks = dict(zip(merges, range(len(merges))))
        self.sot, self.eot = self.encoder[SOT], self.encoder[EOT]
        self.context_length = context_length
        self._byte_chars = bytes_to_unicode()
        self._cache = {SOT: SOT, EOT: EOT}
        self._pattern = regex.compile(
            rf"{SOT}|{EOT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+",
            regex.IGNORECASE,
        )

    def bpe(self, token: str) -> str:
        """Space-separated BPE symbols of one pre-token (a word of byte characters)."""
        if token in self._cache:
            return self._cache[token]
        word = (*token[:-1], token[-1] + "</w>")
        pairs = _pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            first, second = min(pairs, key=lambda pair: self.ranks.get(f"{pair[0]} {pair[1]}", MERGES))
            if f"{first} {second}" not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    merged.extend(word[i:])
                    break
                merged.extend(word[i:j])
                i = j
                if i < len(word) - 1 and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            if len(word) == 1:
                break
            pairs = _pairs(word)
        self._cache[token] = " ".join(word)
        return self._cache[token]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for token in self._pattern.findall(clean(text)):
            chars = "".join(self._byte_chars[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[symbol] for symbol in self.bpe(chars).split(" "))
        return ids

    def __call__(self, texts: list[str]) -> np.ndarray:
        result = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in zip(result, texts):
            ids = [self.sot, *self.encode(text), self.eot]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot
            row[: len(ids)] = ids
        return result


def trim_padding(tokens: np.ndarray) -> np.ndarray:
    """``tokens`` without the columns of padding after every row's end token (at least one
    column): what a text graph of any length needs to read."""
    used = np.flatnonzero(tokens.any(axis=0))
    return tokens[:, : int(used[-1]) + 1 if len(used) else 1]
