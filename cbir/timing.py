"""Per-stage timing for the pipeline's and the planner's own instrumentation."""

from __future__ import annotations

import time
from contextlib import contextmanager


class Timer:
    """``with timer("stage"):`` adds the block's wall time to ``timings["stage"]``."""

    def __init__(self, timings: dict[str, float]):
        self.timings = timings

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start
