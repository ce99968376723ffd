"""Settings, resolved once: defaults < environment (CBIR_*) < explicit options.

The one place that reads the CBIR_* variables, except three the CLI reads itself: click reads
CBIR_ENGINE and CBIR_TOKEN as defaults of the --engine and --token options (shown in --help),
and CBIR_DEBUG is read when an error is shown, which may be one resolving the settings raised."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cbir.errors import UsageError

DEFAULT_MODEL = "ViT-B-32:laion2b_s34b_b79k"
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "torch", "onnx")  # auto: ONNX Runtime on the CPU, torch on CUDA
PRECISIONS = ("fp32", "int8")  # int8: ONNX Runtime only, opt-in per library


def default_library_home(cwd: Path | None = None) -> Path:
    """Where libraries live when nothing is configured.

    A checkout has an ``indexes/`` folder: use it, so a clone keeps its data beside the code.
    Anywhere else, the platform's user data directory (e.g. ~/.local/share/cbir on Linux).
    """
    cwd = Path.cwd() if cwd is None else cwd
    if (cwd / "indexes").is_dir():
        return cwd / "indexes"
    import platformdirs

    return Path(platformdirs.user_data_dir("cbir", appauthor=False))


@dataclass(frozen=True)
class Settings:
    library: Path
    # The model to use. None means "whatever the library was built with" (or DEFAULT_MODEL for a
    # new library); a value that differs from an existing library's model is an error.
    model: str | None = None
    device: str = "auto"
    backend: str = "auto"
    # None means "whatever the library records" (fp32 for a new one), as for model.
    precision: str | None = None
    batch_size: int | None = None  # None: chosen from the device
    workers: int | None = None  # decode processes; None: one per CPU core
    gpu: bool = False  # search the indexes on the GPU (faiss GPU)
    # The catalogue in PostgreSQL (postgresql+psycopg://...), shared by many machines; None:
    # SQLite in the library folder. Kept out of repr: it may hold a password.
    database_url: str | None = field(default=None, repr=False)
    # Whether ``library`` was named (an option or CBIR_LIBRARY) rather than the default one.
    library_named: bool = False

    @property
    def model_for_new_library(self) -> str:
        return self.model or DEFAULT_MODEL


def _positive_int(name: str, value) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a whole number, got {value!r}") from None
    if number < 1:
        raise UsageError(f"{name} must be at least 1, got {number}")
    return number


def resolve_settings(
    *,
    library: str | os.PathLike | None = None,
    model: str | None = None,
    device: str | None = None,
    backend: str | None = None,
    precision: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    gpu: bool = False,
    database_url: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    default_library_name: str = "default",
) -> Settings:
    """Merge defaults, ``CBIR_*`` environment variables and explicit options (highest wins)."""
    env = os.environ if env is None else env

    def pick(option, var):
        return option if option not in (None, "") else (env.get(var) or None)

    library = pick(library, "CBIR_LIBRARY")
    library_path = Path(library).expanduser() if library else default_library_home(cwd) / default_library_name
    device = (pick(device, "CBIR_DEVICE") or "auto").lower()
    if device not in DEVICES and not device.startswith("cuda:"):
        raise UsageError(f"unknown device {device!r}: use one of auto, cpu, cuda (or cuda:N)")
    return Settings(
        library=library_path.absolute(),
        library_named=bool(library),
        model=pick(model, "CBIR_MODEL"),
        device=device,
        backend=_one_of("backend", (pick(backend, "CBIR_BACKEND") or "auto").lower(), BACKENDS),
        precision=_one_of("precision", (pick(precision, "CBIR_PRECISION") or "").lower() or None, PRECISIONS),
        batch_size=_positive_int("batch size", pick(batch_size, "CBIR_BATCH_SIZE")),
        workers=_positive_int("workers", pick(workers, "CBIR_WORKERS")),
        gpu=bool(gpu),
        database_url=_database_url(pick(database_url, "CBIR_DATABASE_URL")),
    )


_Choice = TypeVar("_Choice", str, str | None)  # _one_of keeps a setting's None-ness


def _one_of(name: str, value: _Choice, choices: tuple[str, ...]) -> _Choice:
    if value is not None and value not in choices:
        raise UsageError(f"unknown {name} {value!r}: use one of {', '.join(choices)}")
    return value


def _database_url(text: str | None) -> str | None:
    if text is None:
        return None
    from cbir.dburl import parse_database_url  # lazy: sqlalchemy only when a URL is given

    return parse_database_url(text).render_as_string(hide_password=False)
