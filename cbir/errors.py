"""Typed errors. Library code raises these; only the CLI turns them into a message and an exit code."""

from __future__ import annotations


class CbirError(Exception):
    """Base class: a problem the user can act on. ``str(err)`` is a complete one-line message."""

    exit_code = 1


class UsageError(CbirError):
    """A bad argument: wrong path, malformed query line, impossible option."""

    exit_code = 2


class LibraryNotFound(CbirError):
    """No library exists where one was expected."""


class EmptyLibrary(CbirError):
    """The library exists but holds no images yet."""


class LibraryLocked(CbirError):
    """Another process is writing to the library."""


class EngineUnavailable(CbirError):
    """The search engine (a Ray cluster) cannot answer now; it may again soon."""


class LibraryCorrupt(CbirError):
    """The library's files cannot be read as a cbir library."""


class ModelMismatch(CbirError):
    """The library was built with a different model than the one requested."""


class ModelLoadError(CbirError):
    """A model could not be found, downloaded or loaded."""


class DeviceError(CbirError):
    """The requested compute device is not available."""


class OnnxUnavailable(CbirError):
    """A model cannot run on ONNX Runtime (it does not export, fails the check against torch, or
    its tokenizer has no torch-free port); the message says why, and the caller uses torch."""


class StorageError(CbirError):
    """Writing to disk failed (disk full, permissions); what was committed before is kept."""


class CbirWarning(UserWarning):
    """Something went wrong that did not stop the command (an index searched from memory because
    it could not be saved); the CLI shows it as one line."""
