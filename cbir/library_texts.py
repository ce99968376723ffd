"""The texts a user adds to library images (labels), and reading an image's texts and labels:
what Library adds to the catalogue here is the text index kept in step, under the writer lock."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cbir.errors import UsageError
from cbir.fsutil import writer_lock
from cbir.names import TEXTS
from cbir.store.db import catalogue_writer_lock

if TYPE_CHECKING:
    from cbir.encode.spec import Encoder
    from cbir.index.manager import LibraryIndexes
    from cbir.store.catalog import Catalog


class LibraryTexts:
    """Labels and texts of library images: a part of :class:`cbir.library.Library`."""

    catalog: Catalog
    indexes: LibraryIndexes
    path: Path

    @property
    def encoder(self) -> Encoder:
        raise NotImplementedError

    def _library_image(self, path: str | Path, option: str = "image") -> int:
        raise NotImplementedError

    def add_label(self, image: str | Path, label: str) -> bool:
        """Label a library image (a text of its own: searchable, and a --tag filter); False if
        it already had that label."""
        from cbir.store.catalog import LABEL, TextRecord

        label = " ".join(label.split())
        if not label:
            raise UsageError("empty label")
        image_id = self._library_image(image)
        vector = self.encoder.encode_texts([label])[0]
        return self._change_texts(TEXTS, lambda: self.catalog.add_text(image_id, LABEL, TextRecord(label, vector)))

    def remove_label(self, image: str | Path, label: str | None = None) -> bool:
        """Remove one label (any case) from a library image, or all its labels; False if none."""
        from cbir.store.catalog import LABEL

        image_id = self._library_image(image)
        return self._change_texts(TEXTS, lambda: self.catalog.remove_texts(image_id, LABEL, label))

    def texts_of(self, image: str | Path) -> list[tuple[str, str]]:
        """(source, text) of every text a library image has: captions, descriptions, labels."""
        return self.catalog.texts_of(self._library_image(image))

    def labels(self) -> list[tuple[str, int]]:
        """(label, number of images with it) of every label in the library, by label."""
        return self.catalog.labels()

    def tags_of(self, image: str | Path) -> list[tuple[str, float | None]]:
        """(tag, score) of a library image's tags, best first."""
        return self.catalog.tags_of(self._library_image(image))

    def _change_texts(self, name: str, change) -> bool:
        with writer_lock(self.path), catalogue_writer_lock(self.catalog.engine):
            index = self.indexes.load(name, writer=True)
            changes = change()
            if changes is None:
                return False
            index.apply(changes)
            self.indexes.save({name: index})
            return True
