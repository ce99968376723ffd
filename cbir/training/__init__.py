"""Training, outside the runtime package path: :mod:`cbir.training.loop` is the contrastive
training loop that ``cbir finetune`` (:mod:`cbir.finetune`) and the maintainers' cbir-tiny trainer
:mod:`cbir.training.tiny` share; ``tiny`` trains the bundled ``cbir-tiny`` model (whose config
and weights live in :mod:`cbir.encode.tiny`) on :mod:`cbir.synthetic` scenes; ``images``,
``views`` and ``image_sources`` are ``cbir finetune --images-only``'s data and objective
(:mod:`cbir.finetune_images`).

A feature-level package: no layer below the Library imports it, so ``encode`` never reaches up
to a feature; and it does not import ``cbir.finetune``, which uses the loop, not the other way
round."""
