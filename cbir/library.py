"""The Python API: a Library opened once from resolved settings; the CLI is a thin layer on it.

lib = open_library(library="my-lib", model="cbir-tiny")
lib.ingest("photos")
hits = lib.search("a red circle on a gray background", k=5)
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from pathlib import Path

from cbir.background import Background
from cbir.config import Settings, resolve_settings
from cbir.distributed.search import RayOptions
from cbir.encode.choice import check_requested_model, mismatch, precision_to_use
from cbir.encode.registry import list_models
from cbir.encode.spec import Encoder, same_model
from cbir.errors import CbirError, UsageError
from cbir.index.manager import LibraryIndexes
from cbir.ingest import mask_setting
from cbir.library_texts import LibraryTexts
from cbir.preload import load_model
from cbir.query import ImageData, Query
from cbir.query.filter_values import parse_date
from cbir.query.filters import Filters
from cbir.query.request import SearchRequest, command_line_queries
from cbir.query.search import Hit, Results, Searcher, file_gone, require_images
from cbir.status import Status, library_status
from cbir.store.catalog import Catalog
from cbir.store.db import library_db_path
from cbir.store.opening import open_catalogue

# Hit, Results and file_gone live with the search loop and Status in cbir.status; this stays
# their public path. The search request and what fills it are here for the CLI and cbir serve,
# which use the Library rather than the query layer; so are RayOptions (Library.search_on_ray)
# and the models cbir can load by name (`cbir models`).
__all__ = [
    "Filters",
    "Hit",
    "ImageData",
    "Library",
    "Query",
    "RayOptions",
    "Results",
    "SearchRequest",
    "Status",
    "command_line_queries",
    "file_gone",
    "list_models",
    "open_encoder",
    "open_library",
    "parse_date",
]

INDEX_DIR = "index"


def open_library(*, create: bool = False, encoder: Encoder | None = None, **options) -> Library:
    """Resolve settings (defaults < CBIR_* environment < these options) and open the library."""
    return Library.open(resolve_settings(**options), create=create, encoder=encoder)


def open_encoder(**options) -> Encoder:
    """The model for work on image files rather than on a library (cbir classify, cbir locate),
    from settings resolved as by open_library: the library's model when a library is named
    (``library``, CBIR_LIBRARY, a database URL) or, without a ``model``, when the default library
    exists and has one; else ``model`` (or the default model), loaded on its own."""
    settings = resolve_settings(**options)
    named = settings.library_named or bool(settings.database_url)
    if named or (not settings.model and library_db_path(settings.library).is_file()):
        with Library.open(settings) as lib:
            if lib.fingerprint is not None:
                return lib.encoder
    from cbir.encode import load_encoder

    return load_encoder(settings.model_for_new_library, settings.device, settings.backend, settings.precision or "fp32")


class Library(LibraryTexts):
    def __init__(self, settings: Settings, catalog: Catalog, encoder: Encoder | None = None):
        self.settings = settings
        self.path = settings.library
        self.catalog = catalog
        self._encoder = encoder
        self._wrap = None  # see wrap_encoder
        self._preparing: Background[Encoder] | None = None  # see prepare_encoder
        self.indexes = LibraryIndexes(catalog, self.path, self.path / INDEX_DIR, gpu=settings.gpu)
        self._searcher = Searcher(
            catalog,
            self.indexes,
            self.path,
            encoder=lambda: self.encoder,
            loaded=lambda: self._encoder is not None,
            prepare=self.prepare_encoder,
            embed_image=self._embed_image_file,
            image_id=self._library_image,
        )

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        settings: Settings,
        *,
        create: bool = False,
        encoder: Encoder | None = None,
        loading: Background[Encoder] | None = None,
    ):
        """``loading``: the model already loading on a thread (cbir.preload.start_loading)."""
        if settings.gpu:
            from cbir.index.gpu import resolve

            resolve(True)  # a clear error now, not at the first search
        catalog, fingerprint = open_catalogue(settings.library, settings.database_url, create)
        library = cls(settings, catalog, encoder)
        library._preparing = loading
        if fingerprint:
            catalog.dim = fingerprint["dim"]
            check_requested_model(settings.model, fingerprint, library.path)
            precision_to_use(settings.precision, fingerprint, library.path)
        return library

    def close(self) -> None:
        self.indexes.close()
        self.catalog.engine.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the model -----------------------------------------------------------------------------
    @property
    def fingerprint(self) -> dict | None:
        return self.catalog.model_fingerprint()

    @property
    def loaded_encoder(self) -> Encoder | None:
        """The model if it is loaded (None: not needed yet)."""
        return self._encoder

    def wrap_encoder(self, wrap) -> None:
        """Use ``wrap(model)`` instead of the model, now and when it is loaded (cbir serve
        shares one model among request threads this way)."""
        self._wrap = wrap
        if self._encoder is not None:
            self._encoder = wrap(self._encoder)

    @property
    def encoder(self) -> Encoder:
        """The model, loaded on first use: the library's own, or the requested one for a new library."""
        stored = self.fingerprint
        if self._encoder is None:
            self._encoder = self._prepared(stored) or load_model(self.settings, stored)
            mask_setting.apply(self._encoder, mask_setting.stored(self.catalog))  # the library's, for images
            if self._wrap is not None:
                self._encoder = self._wrap(self._encoder)
        actual = self._encoder.fingerprint()
        if stored and not same_model(stored, actual):
            raise mismatch(self.path, stored, actual["spec"], actual["weights"])
        return self._encoder

    def prepare_encoder(self, text: bool = False) -> None:
        """Load the model on a thread, ahead of its first use (``text``: and run its text tower
        once): a search waits for the longer of this and the index load rather than for both."""
        if self._encoder is None and self._preparing is None:
            # the fingerprint read here: the catalogue's connections stay on this thread
            self._preparing = Background(partial(load_model, self.settings, self.fingerprint, text), name="cbir-model")

    def _prepared(self, stored: dict | None) -> Encoder | None:
        """The model loaded on a thread, if one was and it is the library's: a load started from a
        hint (cbir.preload) that failed or got another model is done again here, which then says
        what is wrong."""
        preparing, self._preparing = self._preparing, None
        if preparing is None:
            return None
        try:
            encoder = preparing.result()
        except CbirError:
            return None
        return encoder if stored is None or same_model(stored, encoder.fingerprint()) else None

    # -- the indexes ---------------------------------------------------------------------------
    @property
    def index_dir(self) -> Path:
        return self.path / INDEX_DIR

    def _index(self, name: str):
        return self.indexes.get(name)

    def rebuild_index(self, kind: str = "auto", memory_bytes: int | None = None, gpu: bool | None = None) -> list:
        """Rebuild the indexes from the stored vectors, never re-encoding; ``kind`` (auto, flat,
        hnsw, ivf, ivfpq) and the memory budget apply to the image index, the text index is
        chosen automatically. ``gpu``: True builds on the GPU (an error without one), None when
        one is usable and the index is big enough to gain. Returns a BuildReport per index; the
        switch to them is atomic."""
        self.require_images()
        return self.indexes.rebuild(kind, memory_bytes, gpu)

    def shard_index(self, shards: int, by: str = "hash", kind: str | None = None, gpu: bool | None = None) -> list:
        """Split the image index into ``shards`` files by hash of the id, top-level folder, or
        date taken (each built and tuned on its own, of the current kind unless ``kind``), and
        switch to them atomically. Returns a BuildReport per shard."""
        self.require_images()
        return self.indexes.shard(shards, by, kind, gpu)

    def rebuild_shard(self, number: int, kind: str | None = None, gpu: bool | None = None):
        """Rebuild one shard of a sharded image index on its own; its BuildReport."""
        self.require_images()
        return self.indexes.rebuild_shard(number, kind, gpu)

    def verify_index(self) -> dict[str, list[str]]:
        """Problems of each index (checksums, model, version, ids == the database's ids); an
        index with an empty list is sound."""
        return self.indexes.verify()

    def repair_index(self) -> dict[str, list[str]]:
        """Rebuild every index verify finds broken; returns what was wrong with them."""
        self.require_images()
        return self.indexes.repair()

    def index_info(self) -> dict:
        """The current generation's manifest, with each index's files and sizes."""
        return self.indexes.info()

    def search_on_ray(self, options: RayOptions | None = None):
        """Search the image index on Ray actors from now on, each holding some of its shards
        (cbir.distributed.search; they start when the index loads); ``close()`` stops them.
        Returns the RayEngine serving it."""
        from cbir.distributed.search import attach

        return attach(self, options)

    # -- ingest --------------------------------------------------------------------------------
    def ingest(
        self,
        path: str | Path,
        *,
        progress=None,
        format: str | None = None,
        image_column: str | None = None,
        caption_column: str | None = None,
        decode_device: str | None = "auto",
        retry_failed: bool = False,
        engine: str = "local",
        address: str | None = None,
        gpus_per_worker: float = 0,
        ray_workers: int | None = None,
        exclude: list[str] | tuple[str, ...] | None = None,
        ocr: bool | None = None,
        frame_every: float | None = None,
        max_frames: int | None = None,
        masks: list[str] | list[tuple[float, float, float, float]] | None = None,
    ):
        """Add a folder (or one image) or a dataset to the library: new files are encoded,
        changed ones re-encoded, moved ones followed, deleted ones removed; bad files and rows
        are recorded as skipped. Caption files beside images, descriptions inside them and a
        dataset's captions become the library's texts.

        ``format`` (default: detected from ``path``): folder, csv, tsv, jsonl, parquet (a
        manifest naming image files, with optional caption and other columns) or webdataset
        (tar shards: one, a glob or a brace list). ``decode_device``: where JPEGs are decoded;
        auto is on the GPU (nvJPEG) when the model runs on CUDA, else in the CPU workers (None).
        Files that failed before are retried only once they change, or with ``retry_failed``.

        ``engine``: local (worker processes here) or ray: decode and encode on a Ray cluster
        (cbir.distributed.ingest; ``address`` auto, ray://HOST:PORT or HOST:PORT, none for a
        private local cluster on 127.0.0.1; ``ray_workers`` encode actors of
        ``gpus_per_worker`` GPUs each), committed here as by the local engine.

        ``exclude``: gitignore patterns, relative to the folder's root, that this scan and the
        later ones of that root leave out (cbir.ingest.exclude); they replace the remembered
        ones, ``[]`` clears them, None keeps them. A dataset takes none.

        ``ocr``: read the text inside images (cbir.ingest.ocr_setting), remembered for later
        ingests; None follows the library's setting.

        PDFs and videos in a folder are read too (the media extra): each page, and each video
        frame sampled at scene changes and at least every ``frame_every`` seconds (at most
        ``max_frames`` a video), is an image (cbir.ingest.media). Both are remembered for later
        ingests; None follows the library's setting (default 10 s, 100 frames).

        ``masks``: rectangles (x, y, w, h, fractions of the image; or "x,y,w,h" text) every image
        and query image has covered before the model sees it (cbir.ingest.mask_setting); given on
        a library's first ingest (``[]``: none), None keeps the library's."""
        from cbir.library_folders import ingest

        _user_path(path, "ingest")
        return ingest(
            self,
            path,
            progress=progress,
            format=format,
            image_column=image_column,
            caption_column=caption_column,
            decode_device=decode_device,
            retry_failed=retry_failed,
            engine=engine,
            address=address,
            gpus_per_worker=gpus_per_worker,
            ray_workers=ray_workers,
            exclude=exclude,
            ocr=ocr,
            frame_every=frame_every,
            max_frames=max_frames,
            masks=None if masks is None else mask_setting.parse_masks(masks),
        )

    def forget(self, path: str | Path, *, dry_run: bool = False):
        """Remove a scanned folder's images (rows, vectors, texts, labels) and skip records from
        the library, whether the folder still exists or not; the files are never touched. A
        :class:`cbir.ingest.roots.Forgotten`; with ``dry_run`` it only counts the images."""
        from cbir.library_folders import forget

        return forget(self, _user_path(path, "forget").resolve(), path, dry_run)

    # -- library images by path (labels and tags: cbir.library_texts) ------------------------------
    def _library_image(self, path: str | Path, option: str = "image") -> int:
        image_id = self.catalog.image_at(_user_path(path, option).resolve())
        if image_id is None:
            raise UsageError(f"{option} {path}: not an image of this library (ingest it first)")
        return image_id

    # -- zero-shot labels, tags and duplicates (cbir.classify, cbir.duplicates) ------------------
    def classify(
        self, images: Iterable[str | Path], labels: Iterable[str], *, templates: str = "ensemble", top: int = 5
    ) -> list:
        """Zero-shot labels of image files (in the library or not) with the library's model:
        a :class:`cbir.classify.Classification` per file, best labels first."""
        from cbir.classify import classify_files

        return classify_files(self.encoder, list(images), list(labels), templates, top)

    def tag(
        self,
        vocabulary: Iterable[str],
        *,
        templates: str = "ensemble",
        threshold: float = 0.2,
        top: int = 5,
        min_similarity: float | None = None,
    ):
        """Tag every image from its stored vector with the words of ``vocabulary`` whose
        zero-shot probability is >= ``threshold`` (at most ``top``), replacing earlier tags;
        a :class:`cbir.classify.TagReport`."""
        from cbir.classify import tag_library

        return tag_library(self, list(vocabulary), templates, threshold, top, min_similarity)

    def clear_tags(self) -> int:
        """Remove every tag (labels and captions stay); how many were removed."""
        from cbir.classify import clear_tags

        return clear_tags(self)

    def duplicates(self, *, copy: float = 0.98, near: float = 0.92, neighbours: int = 32):
        """Groups of exact copies, resized/re-encoded copies (cosine >= ``copy``) and similar
        shots (cosine >= ``near``) with a suggested keeper each; nothing is deleted. A
        :class:`cbir.duplicates.DuplicateReport`."""
        from cbir.duplicates import find_duplicates

        return find_duplicates(self, copy, near, neighbours)

    # -- search --------------------------------------------------------------------------------
    def require_images(self) -> None:
        """An EmptyLibrary error until the library has a model and images (searching, indexing
        and tagging need them)."""
        require_images(self.catalog, self.path)

    def search(
        self,
        text: str | None = None,
        *,
        image: str | Path | ImageData | None = None,
        like: str | Path | None = None,
        k: int = 10,
        **options,
    ) -> Results:
        """Images (or, with target="texts", texts) best matching a query, best first.

        ``text`` may combine terms (``'"dog" + "snow" - "indoors"'``, ``'"cat":2 + sofa'``);
        ``image`` is a picture file (or its bytes as :class:`cbir.query.ImageData`) and ``like``
        an image of the library, each optionally combined with ``text`` (``image="a.jpg",
        text='+ "in winter"'``). Options: the fields of :class:`SearchRequest`: ``target``
        ("images" or "texts"), ``mode`` ("semantic", "keyword", "hybrid"), ``filters``
        (:class:`cbir.query.filters.Filters`), ``min_score``, ``sort`` ("score" or "date"),
        ``offset``, ``dedup``, ``frames`` (every matching frame of a video, not only its best),
        ``strategy`` ("auto", "ann", "exact-subset", "ann-post-filter"),
        ``index_params`` (per-query index search parameters: {"nprobe": 32}, {"efSearch": 128}).
        The result is a list of hits with the executed plan as ``.plan``."""
        query = Query(
            text=text,
            image=Path(image) if isinstance(image, (str, Path)) else image,
            like=Path(like) if like is not None else None,
        )
        return self.run_search(SearchRequest((query,), k=k, **options))[0]

    def search_many(self, queries: Iterable[Query], k: int = 10, **options) -> list[Results]:
        """Many queries with one model load, one filter evaluation and one text-encoder batch;
        ``options`` as for search."""
        return self.run_search(SearchRequest(tuple(queries), k=k, **options))

    def run_search(self, request: SearchRequest) -> list[Results]:
        """The results of each query of a request (what `cbir search` and `cbir serve` fill)."""
        return self._searcher.run(request)

    def _embed_image_file(self, path, crop=None):
        from cbir.ingest.query_image import embed_image_data, embed_image_file

        if isinstance(path, ImageData):
            return embed_image_data(path, self.encoder, crop)
        return embed_image_file(_user_path(path, "--image"), path, self.encoder, crop)

    # -- status --------------------------------------------------------------------------------
    def status(self, *, with_skipped: bool = False) -> Status:
        return library_status(self.catalog, self.path, self.index_dir, with_skipped=with_skipped)


def _user_path(path: str | Path, option: str) -> Path:
    """A path given by the user; one the OS cannot take (a NUL byte) is a usage error."""
    if "\x00" in str(path):
        raise UsageError(f"{option}: a path cannot contain a NUL byte")
    return Path(path).expanduser()
