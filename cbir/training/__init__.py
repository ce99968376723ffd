"""Maintainers' training tools, outside the runtime package path: :mod:`cbir.training.tiny`
trains the bundled ``cbir-tiny`` model (whose config and weights live in :mod:`cbir.encode.tiny`).

A feature-level package: it may use :mod:`cbir.finetune` and :mod:`cbir.synthetic`, and no layer
below the Library imports it, so ``encode`` never reaches up to a feature."""
