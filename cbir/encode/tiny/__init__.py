"""``cbir-tiny``: the project's own tiny CLIP model (open_clip architecture).

Trained by :mod:`cbir.training.tiny` on deterministic synthetic images from
:mod:`cbir.synthetic`, so tests, CI and the demo run offline on CPU. See README.md.

Load it with open_clip's normal local-checkpoint path::

    import open_clip
    from cbir.encode.tiny import CONFIG_DIR, MODEL_NAME, WEIGHTS

    open_clip.add_model_config(CONFIG_DIR)  # registers cbir-tiny.json as "cbir-tiny"
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=str(WEIGHTS))
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)

This module does not import torch or open_clip.
"""

from pathlib import Path

__all__ = ["MODEL_NAME", "CONFIG_DIR", "CONFIG", "WEIGHTS"]

#: open_clip model name; equals the stem of the config file in CONFIG_DIR.
MODEL_NAME = "cbir-tiny"
#: Folder holding the open_clip model config (pass it to ``open_clip.add_model_config``).
CONFIG_DIR = Path(__file__).resolve().parent
#: The open_clip model config file.
CONFIG = CONFIG_DIR / f"{MODEL_NAME}.json"
#: Trained fp16 state dict (pass ``str(WEIGHTS)`` as ``pretrained``).
WEIGHTS = CONFIG_DIR / f"{MODEL_NAME}.pt"
