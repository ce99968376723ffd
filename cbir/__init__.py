"""cbir: content-based image retrieval with CLIP, FAISS and SQLite.

    >>> import cbir
    >>> lib = cbir.open_library(library="photos-lib", model="cbir-tiny")
    >>> lib.ingest("~/Pictures")
    >>> for hit in lib.search("a red circle on a gray background", k=5):
    ...     print(hit.rank, hit.score, hit.path)

Importing cbir is cheap: torch, open_clip and faiss load only when a model or index is used.
"""

from __future__ import annotations

__version__ = "0.1.0"

# The public API, each name imported from its module on first use.
_LAZY = {
    "Library": "cbir.library",
    "open_library": "cbir.library",
    "Hit": "cbir.library",
    "Query": "cbir.query",
    "Filters": "cbir.query.filters",
    "CbirError": "cbir.errors",
    "Settings": "cbir.config",
    "resolve_settings": "cbir.config",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cbir' has no attribute {name!r}")


__all__ = [*_LAZY, "__version__"]
