"""How an ingest samples videos (cbir.ingest.video): at least one frame every N seconds, at most M
frames a video. A library setting, so that the ingests after ``cbir ingest --frame-every 5`` (and
``cbir watch``) keep sampling the same way; it applies to the videos read from then on (new or
changed ones), not to those the library holds.

The setting lives in the meta table (``FRAMES_SETTING``: "EVERY MAX")."""

from __future__ import annotations

from cbir.ingest.video import EVERY, MAX_FRAMES
from cbir.store.catalog import Catalog

FRAMES_SETTING = "video_frames"


def sampling(catalog: Catalog, every: float | None = None, max_frames: int | None = None) -> tuple[float, int]:
    """(every, max_frames) for this ingest: each as given, else as the library was last told,
    else the defaults."""
    stored = catalog.get_meta(FRAMES_SETTING)
    known_every, known_most = (float(stored.split()[0]), int(stored.split()[1])) if stored else (EVERY, MAX_FRAMES)
    return (known_every if every is None else every), (known_most if max_frames is None else max_frames)


def remember(catalog: Catalog, chosen: tuple[float, int]) -> None:
    """Record ``chosen`` as the library's sampling, for the ingests to come."""
    value = f"{chosen[0]:g} {chosen[1]}"
    if catalog.get_meta(FRAMES_SETTING) != value and (
        catalog.get_meta(FRAMES_SETTING) or chosen != (EVERY, MAX_FRAMES)
    ):
        catalog.set_meta(FRAMES_SETTING, value)
