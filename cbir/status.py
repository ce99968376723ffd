"""What `cbir status` reports about a library: counts, the model, the indexes and whether they are
current, sizes on disk, skipped files, scanned folders gone from disk, what scans of each folder
leave out, and whether ingests read the text inside images (Library.status)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cbir.names import IMAGES, TEXTS
from cbir.store.catalog import OCR, Catalog
from cbir.store.db import database_bytes, is_postgresql, library_db_path


@dataclass
class Status:
    library: Path
    model: str
    fingerprint: dict
    images: int
    texts: int
    skipped: int
    index_type: str
    index_vectors: int
    index_bytes: int
    index_current: bool
    database_bytes: int
    skipped_files: list[tuple[Path, str]] | None = None  # (path, reason); None: not read (with_skipped)
    missing_roots: list[tuple[Path, int]] = field(default_factory=list)  # folders gone from disk, images
    # scanned folders with remembered --exclude patterns or a .cbirignore: (folder, patterns, has one)
    exclusions: list[tuple[Path, tuple[str, ...], bool]] = field(default_factory=list)
    ocr: bool = False  # whether ingests read the text inside images (cbir ingest --ocr)
    ocr_read: int = 0  # images OCR has read
    ocr_texts: int = 0  # texts of source ocr: the images it found text in
    # of the images: PDF pages and the PDFs they come from, video frames and their videos (the
    # files counted by content: two copies of a PDF are one)
    masks: str = ""  # the parts of every image the model does not see (cbir ingest --mask), "x,y,w,h ..."
    pdf_pages: int = 0
    pdfs: int = 0
    video_frames: int = 0
    videos: int = 0

    def as_dict(self) -> dict:
        data = dict(self.__dict__)
        data["library"] = str(self.library)
        data["missing_roots"] = [{"path": str(p), "images": n} for p, n in self.missing_roots]
        if self.skipped_files is None:
            del data["skipped_files"]  # not read: an empty list next to the count would say none
        else:
            data["skipped_files"] = [{"path": str(p), "reason": r} for p, r in self.skipped_files]
        data["exclusions"] = [
            {"path": str(p), "exclude": list(patterns), "cbirignore": has} for p, patterns, has in self.exclusions
        ]
        return data


def library_status(catalog: Catalog, path: Path, index_dir: Path, *, with_skipped: bool = False) -> Status:
    """The Status of the library at ``path`` with this catalogue and its indexes in ``index_dir``."""
    from cbir.index.generations import read_manifest
    from cbir.ingest import mask_setting, ocr_setting

    fingerprint = catalog.model_fingerprint() or {}
    manifest = read_manifest(index_dir)
    entries = manifest.indexes if manifest else {}
    images, texts = entries.get(IMAGES), entries.get(TEXTS)
    index_bytes = manifest.file_bytes(index_dir, [f for e in entries.values() for f in e.files]) if manifest else 0
    if is_postgresql(catalog.engine):
        db_bytes = database_bytes(catalog.engine)
    else:
        db_bytes = sum(p.stat().st_size for p in path.glob(library_db_path(path).name + "*") if p.is_file())
    text_version = catalog.text_version()
    media = catalog.count_media()
    return Status(
        library=path,
        model=fingerprint.get("spec", "(none yet)"),
        fingerprint=fingerprint,
        images=catalog.count_images(),
        texts=catalog.count_texts(),
        skipped=catalog.count_skipped(),
        index_type=images.spec.kind if images else "flat",
        index_vectors=images.count if images else 0,
        index_bytes=index_bytes,
        index_current=images is not None
        and images.vector_version == catalog.vector_version()
        and (texts.vector_version == text_version if texts else text_version == 0),
        database_bytes=db_bytes,
        skipped_files=catalog.skipped() if with_skipped else None,
        missing_roots=missing_roots(catalog),
        exclusions=root_exclusions(catalog),
        ocr=ocr_setting.is_on(catalog),
        ocr_read=catalog.count_ocr_read(),
        ocr_texts=catalog.count_texts(OCR),
        masks=mask_setting.describe(mask_setting.stored(catalog)),
        **dict(zip(("pdf_pages", "pdfs", "video_frames", "videos"), (*media["pdf"], *media["video"]))),
    )


def missing_roots(catalog: Catalog) -> list[tuple[Path, int]]:
    """(folder, images) of every scanned folder that is gone from disk, by root id."""
    from cbir.ingest.roots import vanished_roots

    counts = catalog.root_image_counts()
    return [(path, counts.get(i, 0)) for i, path in sorted(vanished_roots(catalog).items())]


def root_exclusions(catalog: Catalog) -> list[tuple[Path, tuple[str, ...], bool]]:
    """(folder, remembered --exclude patterns, whether it has a .cbirignore) of every scanned
    folder with either, by path."""
    from cbir.ingest.exclude import has_ignore_file, remembered

    found = [(path, remembered(catalog, path), has_ignore_file(path)) for path in catalog.roots().values()]
    return sorted((row for row in found if row[1] or row[2]), key=lambda row: str(row[0]))
