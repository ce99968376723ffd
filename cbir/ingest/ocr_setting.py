"""Whether an ingest reads the text inside images (cbir.ocr): a library setting, so that the
ingests after ``cbir ingest --ocr`` keep reading it until ``--no-ocr``.

The setting lives in the meta table (``OCR_SETTING``: "on" or "off"). Turning it off stops the
reading only: the OCR texts already stored stay, until their files change."""

from __future__ import annotations

from cbir.errors import ModelLoadError
from cbir.store.catalog import OCR_SETTING, Catalog

ON, OFF = "on", "off"


def is_on(catalog: Catalog) -> bool:
    """Whether the library's ingests read text (the setting as last given)."""
    return catalog.get_meta(OCR_SETTING) == ON


def wanted(catalog: Catalog, ocr: bool | None) -> bool:
    """Whether this ingest reads text: ``ocr`` as given (--ocr / --no-ocr), None for the library's
    setting. When it does, the ocr extra must be installed: else the one-line MISSING_EXTRA
    error, before any work (an import, not a model load)."""
    on = is_on(catalog) if ocr is None else ocr
    if on:
        from cbir.ocr import MISSING_EXTRA

        try:
            import rapidocr  # noqa: F401  (only whether it imports)
        except ImportError as err:
            raise ModelLoadError(MISSING_EXTRA) from err
    return on


def remember(catalog: Catalog, ocr: bool | None) -> None:
    """Record ``ocr`` (None: no change) as the library's setting, for the ingests to come."""
    if ocr is not None and is_on(catalog) != ocr:
        catalog.set_meta(OCR_SETTING, ON if ocr else OFF)
