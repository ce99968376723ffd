"""Prompt templates for zero-shot classification.

A template turns a class name into a sentence for the text encoder, as in the CLIP paper
(Radford et al. 2021, section 3.1.4 "prompt engineering and ensembling"). In cbir a template is
either a ``str`` holding exactly one ``{}`` (filled with the class name) or a callable
``classname -> str``, the two forms open_clip's ``build_zero_shot_classifier`` accepts.

Named sets (``resolve_templates``):

- ``single``: ``"a photo of a {}."``, the CLIP paper's default prompt.
- ``ensemble``: open_clip's ``SIMPLE_IMAGENET_TEMPLATES`` (7 prompts; open_clip's recommended,
  faster subset of the OpenAI ensemble).
- ``openai``: open_clip's ``OPENAI_IMAGENET_TEMPLATES``, the 80 prompts of the CLIP paper.
- any other value is a file: one template per line, blank lines and ``#`` comments ignored.

The two ensembles are taken from the installed open_clip (not copied) and converted to format
strings. open_clip imports torch, so they are loaded on first access of ``ENSEMBLE`` / ``OPENAI``
(module ``__getattr__``), keeping ``import cbir.evaluate`` light.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

from cbir.errors import UsageError

Template = str | Callable[[str], str]

SINGLE: tuple[str, ...] = ("a photo of a {}.",)
NAMED = ("single", "ensemble", "openai")
PLACEHOLDER = "{}"

__all__ = ["SINGLE", "NAMED", "Template", "fill", "load_templates", "resolve_templates"]


def fill(template: Template, classname: str) -> str:
    """The prompt for ``classname``: the ``{}`` replaced (no other brace is interpreted), or the
    callable applied."""
    if isinstance(template, str):
        return template.replace(PLACEHOLDER, classname)
    return template(classname)


def _as_format_string(template: Callable[[str], str]) -> Template:
    """open_clip's ``lambda c: f"a photo of a {c}."`` as ``"a photo of a {}."``; a callable
    that does not simply insert the name once is kept as it is."""
    text = template(PLACEHOLDER)
    probe = "zq"
    if text.count(PLACEHOLDER) == 1 and template(probe) == text.replace(PLACEHOLDER, probe):
        return text
    return template


@cache
def _open_clip_templates(name: str) -> tuple[Template, ...]:
    return tuple(_as_format_string(t) for t in getattr(_zero_shot_metadata(), name))


def _zero_shot_metadata():
    """open_clip/zero_shot_metadata.py, a module of plain lists, loaded from its file: importing
    it as open_clip.zero_shot_metadata runs open_clip's __init__, which imports torch (2-3 s
    that cbir classify on ONNX Runtime never otherwise pays)."""
    import importlib.util
    import sys

    if "open_clip.zero_shot_metadata" in sys.modules:
        return sys.modules["open_clip.zero_shot_metadata"]
    package = importlib.util.find_spec("open_clip")
    folders = list(package.submodule_search_locations or []) if package else []
    if not folders:
        raise ModuleNotFoundError("open_clip is not installed")
    spec = importlib.util.spec_from_file_location(
        "cbir_open_clip_zero_shot_metadata", Path(folders[0]) / "zero_shot_metadata.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def __getattr__(name: str):  # PEP 562: load open_clip's lists on first use
    if name == "ENSEMBLE":
        return _open_clip_templates("SIMPLE_IMAGENET_TEMPLATES")
    if name == "OPENAI":
        return _open_clip_templates("OPENAI_IMAGENET_TEMPLATES")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_templates(path: str | Path) -> tuple[str, ...]:
    """Templates from a text file: one per line, each with exactly one ``{}``; blank lines and
    lines whose first non-blank character is ``#`` are ignored. Surrounding whitespace is
    stripped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"templates file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read templates file {path}: {e}") from None
    templates = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        count = line.count(PLACEHOLDER)
        if count != 1:
            raise UsageError(
                f"{path}, line {number}: a template needs exactly one {{}} for the class name, found {count}: {line!r}"
            )
        templates.append(line)
    if not templates:
        raise UsageError(f"templates file {path} holds no templates")
    return tuple(templates)


def resolve_templates(name_or_path: str) -> tuple[Template, ...]:
    """``single`` | ``ensemble`` | ``openai`` | the path of a templates file."""
    key = (name_or_path or "").strip()
    if key.lower() == "single":
        return SINGLE
    if key.lower() == "ensemble":
        return _open_clip_templates("SIMPLE_IMAGENET_TEMPLATES")
    if key.lower() == "openai":
        return _open_clip_templates("OPENAI_IMAGENET_TEMPLATES")
    if not key or not Path(key).expanduser().is_file():
        raise UsageError(
            f"unknown templates {name_or_path!r}: use single, ensemble, openai or the path of a "
            "file with one template per line (each with one {} for the class name)"
        )
    return load_templates(Path(key).expanduser())
