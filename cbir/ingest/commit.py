"""The committer of an ingest: the batch being built, persisted before it is indexed.

Every batch goes to the database (metadata and vectors together) before the in-memory indexes
see it, so a run stopped at any moment resumes where it stopped on the next run."""

from __future__ import annotations

from cbir.encode.spec import TEXT_BATCH, Encoder, encode_texts_batched
from cbir.index.vector_index import VectorIndex
from cbir.ingest.report import IngestReport
from cbir.store.catalog import Catalog, Changes, TextRecord
from cbir.timing import Timer

MAX_CHANGES = 1000  # changes (moves, touches, skips, ...) committed together at most


class Committer:
    """The changes and the texts to encode gathered since the last ``flush``, and how many
    images of them were encoded (``encoded``): the caller decides when a batch is big enough."""

    def __init__(
        self,
        catalog: Catalog,
        index: VectorIndex,
        text_index: VectorIndex,
        encoder: Encoder,
        root_id: int,
        report: IngestReport,
        timer: Timer,
    ):
        self.catalog, self.index, self.text_index, self.encoder = catalog, index, text_index, encoder
        self.root_id, self.report, self.timer = root_id, report, timer
        self.changes = Changes(root_id)
        # (image path, source) -> its texts (content, caption file's size, mtime): they replace
        # that image's texts of that source; an empty list deletes them
        self.texts: dict[tuple[str, str], list[tuple[str, int | None, int | None]]] = {}
        self.encoded = 0  # images with a vector in `changes`
        self.ocr_read = 0  # kept images (no new vector) whose OCR text is in `texts`

    def full(self) -> bool:
        """Enough changes or texts for one transaction (images are counted by the caller)."""
        return len(self.changes) >= MAX_CHANGES or len(self.texts) >= TEXT_BATCH

    def flush(self) -> None:
        """Encode the queued texts, commit the batch, then apply it to the indexes."""
        if self.texts:
            with self.timer("encode"):
                self.changes.texts = _embed_texts(self.encoder, self.texts)
            self.report.texts += sum(len(v) for v in self.changes.texts.values())
            self.texts.clear()
        if len(self.changes):
            with self.timer("persist"):
                applied = self.catalog.apply(self.changes)
            with self.timer("index"):
                self.index.apply(applied.images)
                self.text_index.apply(applied.texts)
            self.changes = Changes(self.root_id)
        self.encoded = self.ocr_read = 0


def _embed_texts(encoder: Encoder, texts: dict) -> dict[tuple[str, str], list[TextRecord]]:
    """Encode every queued text in batches; keys with no texts stay (they delete old ones)."""
    flat = [(key, item) for key, items in texts.items() for item in items]
    out: dict[tuple[str, str], list[TextRecord]] = {key: [] for key in texts}
    if not flat:
        return out
    vectors = encode_texts_batched(encoder, [content for _, (content, _, _) in flat])
    for (key, (content, size, mtime_ns)), vector in zip(flat, vectors):
        out[key].append(TextRecord(content, vector, size, mtime_ns))
    return out
