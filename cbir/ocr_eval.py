"""How well and how fast the OCR engine reads the generated text photos (cbir.synthetic_text).

:func:`measure` generates ``n`` photos, reads each with an :class:`cbir.ocr.OcrEngine` and
reports:

- character accuracy: 1 - the character error rate, the edit distance between the drawn texts
  and the text read (both normalised: case folded, whitespace collapsed) over the drawn
  characters, summed over all photos with text;
- word recall: the fraction of drawn words and numbers found among the words read;
- keyword recall@k: the fraction of drawn words for which a keyword search for that word ranks
  its photo in the top ``k``, over an in-memory SQLite FTS5 index of the texts read, with the
  tokenizer and BM25 ranking of cbir's own keyword index (migration 0002);
- false lines: lines read from the photos without text;
- seconds per photo with text and without (the engine's networks loaded beforehand).

Run it as ``python -m cbir.ocr_eval [N] [SEED]``.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from dataclasses import asdict, dataclass

from cbir.ocr import OcrEngine, text_of
from cbir.synthetic_text import TextImage, make_text_images, words_of

__all__ = ["OcrMeasurement", "Reading", "edit_distance", "measure", "normalise", "read_all", "score"]

#: The tokenizer of cbir's keyword index over texts (migration 0002, SQLite).
_FTS_TOKENIZER = "porter unicode61 remove_diacritics 2"


@dataclass(frozen=True)
class Reading:
    """One photo's ground truth, what was read from it, and how long that took."""

    texts: tuple[str, ...]
    read: str
    seconds: float
    confidences: tuple[float, ...]


@dataclass(frozen=True)
class OcrMeasurement:
    images_with_text: int
    images_without_text: int
    character_accuracy: float
    word_recall: float
    keyword_recall_at_k: float
    k: int
    false_lines: int
    seconds_with_text: float
    seconds_without_text: float


def normalise(text: str) -> str:
    """Case folded, runs of whitespace as one space, no leading or trailing space."""
    return " ".join(text.casefold().split())


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions, each costing 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def read_all(engine: OcrEngine, images: list[TextImage]) -> list[Reading]:
    """Each image read by ``engine``, timed."""
    readings = []
    for sample in images:
        start = time.perf_counter()
        lines = engine.read(sample.image)
        seconds = time.perf_counter() - start
        readings.append(Reading(sample.texts, text_of(lines), seconds, tuple(ln.confidence for ln in lines)))
    return readings


def _keyword_recall(readings: list[Reading], k: int) -> float:
    db = sqlite3.connect(":memory:")
    try:
        db.execute(f"CREATE VIRTUAL TABLE t USING fts5(content, tokenize='{_FTS_TOKENIZER}')")
        db.executemany("INSERT INTO t(rowid, content) VALUES (?, ?)", [(i, r.read) for i, r in enumerate(readings)])
        found = total = 0
        for i, reading in enumerate(readings):
            for word in words_of(" ".join(reading.texts)):
                total += 1
                top = db.execute("SELECT rowid FROM t WHERE t MATCH ? ORDER BY rank LIMIT ?", (f'"{word}"', k))
                found += i in {row[0] for row in top}
        return found / total if total else 1.0
    finally:
        db.close()


def score(readings: list[Reading], k: int = 5) -> OcrMeasurement:
    """The measures over ``readings`` (see the module's docstring)."""
    texted = [r for r in readings if r.texts]
    blank = [r for r in readings if not r.texts]
    errors = sum(edit_distance(normalise(" ".join(r.texts)), normalise(r.read)) for r in texted)
    chars = sum(len(normalise(" ".join(r.texts))) for r in texted)
    drawn = [(w, set(words_of(r.read))) for r in texted for w in words_of(" ".join(r.texts))]
    return OcrMeasurement(
        images_with_text=len(texted),
        images_without_text=len(blank),
        character_accuracy=max(0.0, 1.0 - errors / chars) if chars else 1.0,
        word_recall=sum(w in read for w, read in drawn) / len(drawn) if drawn else 1.0,
        keyword_recall_at_k=_keyword_recall(readings, k),
        k=k,
        false_lines=sum(len(r.confidences) for r in blank),
        seconds_with_text=sum(r.seconds for r in texted) / len(texted) if texted else 0.0,
        seconds_without_text=sum(r.seconds for r in blank) / len(blank) if blank else 0.0,
    )


def measure(n: int = 40, seed: int = 0, engine: OcrEngine | None = None, k: int = 5) -> OcrMeasurement:
    """Generate ``n`` photos (a quarter without text), read them, and score the readings. The
    engine's networks are loaded (on a photo outside the set) before the clock starts."""
    engine = engine or OcrEngine()
    images = make_text_images(n, seed)
    engine.read(make_text_images(1, seed + 1, text_fraction=1.0)[0].image)
    return score(read_all(engine, images), k)


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 40
    seed = int(argv[1]) if len(argv) > 1 else 0
    for key, value in asdict(measure(n, seed)).items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
