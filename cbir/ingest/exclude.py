"""What a folder scan leaves out, in gitignore's syntax and with its rules (read by ``pathspec``).

Three sources, each overriding the one before, as git's do (the last pattern that matches a
path decides, a ``!pattern`` re-includes): the defaults (DEFAULT_EXCLUDES), the ``.cbirignore``
files (the root's, then each folder's for what lies below it, deeper ones winning), and the
patterns remembered for the root (``cbir ingest --exclude``). A pattern with a slash before its
end is anchored to the folder its rules belong to (the root for ``--exclude``); one without
matches at any depth; a trailing slash matches folders only. An excluded folder is not walked
at all, which is also git's rule that nothing below an excluded folder can be re-included.

An excluded file is not part of the library: it is neither an image nor a skip, and a stored
image that an exclusion now covers is removed by the next scan, like a deleted file. Datasets
(manifests, WebDataset shards) list their images themselves and ignore exclusions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pathspec import GitIgnoreSpec

from cbir.errors import CbirError, UsageError
from cbir.store.catalog import Catalog

IGNORE_FILE = ".cbirignore"

# Left out of every folder scan. ".*" is the hidden-entry rule scans always had: it covers
# macOS's AppleDouble files (._*) and .DS_Store, .thumbnails, .Trash-* and the lock files of
# LibreOffice (.~lock.*, listed too for the record); a .cbirignore can re-include one with "!".
DEFAULT_EXCLUDES = (
    ".*",  # hidden files and folders
    ".~lock.*",  # LibreOffice lock files (hidden too)
    "@eaDir/",  # Synology's thumbnails and metadata, JPEGs included
    "\\#recycle/",  # Synology's recycle bin (escaped: a leading # starts a comment)
    "Thumbs.db",  # Windows' thumbnail cache
    "*~",  # editors' backups
    "~$*",  # Microsoft Office's lock files
    "*.tmp",  # temporary files
    "*.part",  # downloads in progress (Firefox, wget, rsync --partial-dir)
    "*.crdownload",  # downloads in progress (Chrome)
)

EXCLUDES = "root_excludes"  # meta key: JSON {root path: the --exclude patterns remembered for it}


@dataclass(frozen=True)
class _Rules:
    """The patterns of one source, relative to the folder ``base`` ("" for the root)."""

    base: str
    spec: GitIgnoreSpec
    source: str  # where they come from, for messages
    any_match: re.Pattern | None = field(init=False, default=None)

    def __post_init__(self):
        object.__setattr__(self, "any_match", _any_match(self.spec))

    def check(self, rel: str) -> tuple[bool, str] | None:
        """(excluded, the deciding pattern) for ``rel`` (a folder's ends with "/"), or None
        when no pattern of these rules speaks of it."""
        if self.base:
            if not rel.startswith(self.base + "/") or len(rel) == len(self.base) + 1:
                return None  # outside its folder, or the folder itself
            rel = rel[len(self.base) + 1 :]
        if self.any_match is not None and self.any_match.match(rel) is None:
            return None  # no pattern matches: the answer for most files, in one regex call
        result = self.spec.check_file(rel)
        if result.include is None or result.index is None:
            return None
        return result.include, str(self.spec.patterns[result.index].pattern)


def _any_match(spec: GitIgnoreSpec) -> re.Pattern | None:
    """One regex matching what any of ``spec``'s patterns matches (include or exclude), so that
    a scan asks pathspec, which tries every pattern in Python, only about the few paths some
    pattern speaks of (20,000 files: the defaults cost 0.1 s that way). None when a pattern's
    regex cannot be combined (then every path is asked about)."""
    parts = []
    for pattern in spec.patterns:
        regex = getattr(pattern, "regex", None)
        if pattern.include is None or regex is None:
            continue  # blank lines and comments
        if not isinstance(regex, re.Pattern) or regex.flags & ~re.UNICODE:
            return None
        parts.append("(?:" + regex.pattern.replace("(?P<ps_d>", "(?:") + ")")
    if not parts:
        return None
    try:
        return re.compile("|".join(parts))
    except re.error:
        return None


def _compile(lines: Sequence[str], where) -> GitIgnoreSpec:
    """The rules of ``lines``; a usage error naming the first invalid one (``where(n)`` says
    where line ``n`` is)."""
    for n, line in enumerate(lines, 1):
        try:
            GitIgnoreSpec.from_lines([line])
        except ValueError:
            raise UsageError(f"{where(n)}: not a valid gitignore pattern: {line!r}") from None
    return GitIgnoreSpec.from_lines(lines)


def check_patterns(patterns: Sequence[str], dataset: bool = False) -> None:
    """A usage error for the first ``--exclude`` pattern gitignore's syntax refuses, or for
    patterns given with a ``dataset``, which lists its images itself: checked before a model
    loads."""
    if isinstance(patterns, str):
        raise UsageError("exclude takes a list of patterns, not one string")
    if dataset:
        raise UsageError("--exclude and --no-exclude are for folders: a dataset lists its images itself")
    _compile(patterns, lambda n: "--exclude")
    for pattern in patterns:  # a blank or a comment line, harmless in a file, is a mistake here
        if all(p.include is None for p in GitIgnoreSpec.from_lines([pattern]).patterns):
            raise UsageError(f"--exclude {pattern!r} matches nothing (blank, or a comment: escape a leading # as \\#)")


def _read_ignore_file(path: Path, base: str) -> _Rules | None:
    """The rules of the ``.cbirignore`` at ``path``, None when there is none. One that cannot
    be read stops the scan: ingesting without it would add the very files it leaves out."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text; a {IGNORE_FILE} holds one gitignore pattern a line") from None
    except OSError as e:
        raise CbirError(f"cannot read {path}: {e.strerror}") from None
    return _Rules(base, _compile(text.splitlines(), lambda n: f"{path}, line {n}"), str(path))


class Exclusions:
    """The rules a scan of one root applies at one folder: ``excludes`` decides a path (relative
    to the root), ``below`` adds a subfolder's ``.cbirignore`` for what lies under it."""

    def __init__(self, root: Path, layers: tuple[_Rules, ...], given: _Rules | None):
        self.root = root
        self._layers = layers  # the defaults, then the .cbirignore files, shallowest first
        self._given = given  # --exclude: above every file
        # who decides first: --exclude, then the deepest .cbirignore ... the defaults (once, not per file)
        self._order = ((given,) if given else ()) + tuple(reversed(layers))

    @classmethod
    def for_root(cls, root: Path, patterns: Sequence[str] = ()) -> Exclusions:
        """The defaults, the root's ``.cbirignore`` and ``patterns`` (gitignore lines relative
        to ``root``)."""
        layers = [_Rules("", GitIgnoreSpec.from_lines(DEFAULT_EXCLUDES), "the defaults")]
        own = _read_ignore_file(root / IGNORE_FILE, "")
        if own:
            layers.append(own)
        given = _Rules("", _compile(patterns, lambda n: "--exclude"), "--exclude")
        return cls(root, tuple(layers), given if patterns else None)

    def below(self, folder: Path, rel: str) -> Exclusions:
        """These rules and, for what lies under ``rel`` (``folder``, not the root), its own
        ``.cbirignore``."""
        own = _read_ignore_file(folder / IGNORE_FILE, rel)
        return Exclusions(self.root, (*self._layers, own), self._given) if own else self

    def _decision(self, rel: str, is_dir: bool) -> tuple[bool, str, str] | None:
        path = rel + "/" if is_dir else rel
        for rules in self._order:
            found = rules.check(path)
            if found is not None:
                return found[0], found[1], rules.source
        return None

    def excludes(self, rel: str, is_dir: bool) -> bool:
        """Whether the file or folder ``rel`` (relative to the root, POSIX) is left out."""
        decision = self._decision(rel, is_dir)
        return decision is not None and decision[0]

    def why(self, rel: str, is_dir: bool) -> str | None:
        """The pattern that leaves ``rel`` out and where it comes from; None if it is kept."""
        decision = self._decision(rel, is_dir)
        if decision is None or not decision[0]:
            return None
        _, pattern, source = decision
        if source == "--exclude":
            return f"--exclude {pattern!r} (remembered for this folder; --no-exclude clears it)"
        return f"{pattern!r} of {source}"

    def descend(self, scope: str) -> Exclusions:
        """The rules a scan of the root's ``scope`` starts with: the ``.cbirignore`` files of
        the folders above it read (its own is the scan's to read). A usage error when ``scope``
        or a folder above it is left out: ingesting it would add images that the next scan of
        the root removes."""
        here, rel = self, ""
        parts = scope.split("/") if scope else []
        for n, part in enumerate(parts):
            if rel:
                here = here.below(self.root / rel, rel)
            rel = f"{rel}/{part}" if rel else part
            why = here.why(rel, n < len(parts) - 1 or (self.root / rel).is_dir())
            if why:
                raise UsageError(f"{self.root / rel} is excluded from the scanned folder {self.root} by {why}")
        return here


# -- remembered per root ----------------------------------------------------------------------


def _read_all(catalog: Catalog) -> dict[str, list[str]]:
    raw = catalog.get_meta(EXCLUDES)
    return json.loads(raw) if raw else {}


def remembered(catalog: Catalog, root: Path) -> tuple[str, ...]:
    """The ``--exclude`` patterns remembered for the root folder ``root``."""
    return tuple(_read_all(catalog).get(str(root), ()))


def remember(catalog: Catalog, root: Path, patterns: Sequence[str]) -> None:
    """Remember ``patterns`` for ``root`` in place of its earlier ones (none: forget them)."""
    every = _read_all(catalog)
    if list(patterns) == every.get(str(root), []):
        return
    if patterns:
        every[str(root)] = list(patterns)
    else:
        every.pop(str(root), None)
    catalog.set_meta(EXCLUDES, json.dumps(every))


def has_ignore_file(root: Path) -> bool:
    try:
        return (root / IGNORE_FILE).is_file()
    except OSError:
        return False
