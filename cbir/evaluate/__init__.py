"""Evaluation core for ``cbir eval``: retrieval and zero-shot metrics computed from vectors.

Pure numpy over embedding matrices; it reads no library and prints nothing (the CLI does both).
The conventions follow the CLIP paper and open_clip; see each module's docstring.
"""

from cbir.evaluate.retrieval import RetrievalResult, retrieval_metrics, retrieval_table
from cbir.evaluate.templates import SINGLE, load_templates, resolve_templates
from cbir.evaluate.zeroshot import (
    ZeroShotResult,
    class_embeddings,
    classname_from_folder,
    zero_shot_metrics,
    zeroshot_table,
)

__all__ = [
    "RetrievalResult",
    "retrieval_metrics",
    "retrieval_table",
    "SINGLE",
    "load_templates",
    "resolve_templates",
    "ZeroShotResult",
    "class_embeddings",
    "classname_from_folder",
    "zero_shot_metrics",
    "zeroshot_table",
]
