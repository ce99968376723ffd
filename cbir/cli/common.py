"""Helpers the commands share: opening the library, the ingest progress bar, comma lists."""

from __future__ import annotations

from cbir.cli import database_url
from cbir.config import resolve_settings


def _open(create=False, **options):
    from cbir.library import Library

    return Library.open(resolve_settings(database_url=database_url(), **options), create=create)


class _Progress:
    """A tqdm bar fed by the pipeline's (done, total) callback; silent when not a terminal.
    Used as a context manager so the bar is closed however the run ends."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total == 0:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", desc="ingest", disable=None, smoothing=0.1)
        self.bar.update(done - self.bar.n)


def _split(values) -> tuple[str, ...]:
    """Repeatable options that also take comma-separated lists: --format jpeg,png."""
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())
