"""`cbir eval` on a library: the metrics of cbir.evaluate computed from the library's stored
vectors (nothing is re-encoded; zero-shot encodes only the class prompts).

Retrieval uses every image that has captions (a dataset's, or caption files) as the candidates
and every caption as a query, as image-caption benchmarks (COCO, Flickr30k) do. Zero-shot takes
each image's class from the folder that holds it (a class-per-folder dataset) or from a dataset
column (``extra.label``).
"""

from __future__ import annotations

import numpy as np

from cbir.errors import UsageError
from cbir.evaluate.retrieval import RetrievalResult, retrieval_metrics
from cbir.evaluate.templates import resolve_templates
from cbir.evaluate.zeroshot import ZeroShotResult, class_embeddings, classname_from_folder, zero_shot_metrics


def _condition(lib, filters):
    from cbir.query.filter_sql import image_condition

    return image_condition(filters, lib.catalog.roots()) if filters is not None else None


def evaluate_retrieval(lib, filters=None) -> RetrievalResult:
    """Text->image and image->text recall of the library's captioned images."""
    caption_images, text_ids = lib.catalog.captions(_condition(lib, filters))
    if not len(text_ids):
        raise UsageError(
            "no captions to evaluate with: ingest an image-caption dataset (a manifest with a "
            "caption column, or WebDataset shards) or put caption files beside the images"
        )
    candidates = np.unique(caption_images)
    found, image_vectors = lib.catalog.vectors_of("images", candidates)
    _, text_vectors = lib.catalog.vectors_of("texts", text_ids)
    if len(found) != len(candidates):
        raise UsageError("the library changed during the evaluation; run it again")
    return retrieval_metrics(image_vectors, text_vectors, np.searchsorted(candidates, caption_images))


def evaluate_zeroshot(
    lib, templates: str = "ensemble", label: str = "folder", filters=None, worst: int = 5
) -> ZeroShotResult:
    """Zero-shot top-1/top-5 accuracy over the library's labelled images, with the class names
    filled into ``templates`` (single, ensemble, openai, or a file)."""
    if label != "folder" and not (label.startswith("extra.") and len(label) > 6):
        raise UsageError(f"--label {label!r}: use folder (the folder holding each image) or extra.COLUMN")
    prompts = resolve_templates(templates)
    ids, labels = lib.catalog.image_labels(label, _condition(lib, filters))
    classes = sorted(set(labels))
    if len(classes) < 2:
        where = "folders" if label == "folder" else f"values of {label}"
        raise UsageError(f"zero-shot evaluation needs images in at least 2 classes; found {len(classes)} ({where})")
    names = [classname_from_folder(c) for c in classes] if label == "folder" else classes
    class_vectors = class_embeddings(lib.encoder.encode_texts, names, prompts)
    found, vectors = lib.catalog.vectors_of("images", ids)
    if len(found) != len(ids):
        raise UsageError("the library changed during the evaluation; run it again")
    index = {c: i for i, c in enumerate(classes)}
    return zero_shot_metrics(vectors, np.asarray([index[v] for v in labels]), class_vectors, names, worst)
