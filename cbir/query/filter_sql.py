"""Search filters as one SQL condition on images: SQLAlchemy Core expressions in which every user
value is a bound parameter.

Text comparisons fold case with ``lower()`` on both sides, so they are case-insensitive for ASCII
letters only in SQLite (and in a PostgreSQL database of the C locale; others fold more). Every
condition is two-valued: a missing camera or date never matches ``=``, ``~`` or ``in`` and always
matches ``!=`` (``a != b`` is exactly ``not a = b``).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, func, not_, or_, select
from sqlalchemy.orm import aliased

from cbir.errors import UsageError
from cbir.query.where import EXTRA, FIELDS, And, Compare, Not, Or, WhereNode, parse_where
from cbir.store.models import Image, ImageText
from cbir.store.records import TAG_SOURCES
from cbir.store.sql import glob, json_number, json_text

if TYPE_CHECKING:
    from cbir.query.filters import Filters

_GLOB_CHARS = re.compile(r"[*?[]")

_COMPARE = {"=": operator.eq, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def image_condition(filters: Filters, roots: dict[int, Path], cwd: Path | None = None) -> ColumnElement[bool] | None:
    """One SQLAlchemy boolean expression over the `images` table that is true for the images
    passing every filter, or None when there are no filters. Values are always bound parameters.

    ``roots`` maps root ids to their absolute folders, ``cwd`` is where relative --folder
    paths start (the current directory by default)."""
    folders = _Folders(roots, cwd or Path.cwd())
    conditions = []
    if filters.after is not None:
        conditions.append(_known(Image.taken, Image.taken >= filters.after))
    if filters.before is not None:
        conditions.append(_known(Image.taken, Image.taken < filters.before))
    if filters.folders:
        conditions.append(or_(*(folders.match(f, f"--folder {f}") for f in filters.folders)))
    if filters.cameras:
        cameras = (Compare("camera", "~", (camera,)) for camera in filters.cameras)
        conditions.append(or_(*(_compare(c, folders) for c in cameras)))
    if filters.min_width is not None:
        conditions.append(Image.width >= filters.min_width)
    if filters.min_height is not None:
        conditions.append(Image.height >= filters.min_height)
    if filters.formats:
        conditions.append(Image.format.in_(filters.formats))
    conditions.extend(_compare(Compare("tag", "=", (tag,)), folders) for tag in filters.tags)
    if filters.where is not None:
        conditions.append(_compile(parse_where(filters.where), folders))
    return and_(*conditions) if conditions else None


def _compile(node: WhereNode, folders: _Folders) -> ColumnElement[bool]:
    match node:
        case Not(operand):
            return not_(_compile(operand, folders))
        case And(operands):
            return and_(*(_compile(o, folders) for o in operands))
        case Or(operands):
            return or_(*(_compile(o, folders) for o in operands))
    return _compare(node, folders)


def _compare(node: Compare, folders: _Folders) -> ColumnElement[bool]:
    field, op = node.field, node.op
    if op == "!=":
        return not_(_compare(Compare(field, "=", node.values), folders))
    if op == "in":
        return or_(*(_compare(Compare(field, "=", (v,)), folders) for v in node.values))
    if field.startswith(EXTRA):
        return _extra_compare(field[len(EXTRA) :], op, node.values)
    if op in ("is null", "is not null"):
        column = getattr(Image, field)
        return column.is_(None) if op == "is null" else column.is_not(None)
    value: Any = FIELDS[field].convert(node.values[0])  # a date period, number or text, by field
    match field:
        case "taken" | "added":
            return _within(Image.taken if field == "taken" else Image.added_at, op, value)
        case "width" | "height" | "size":
            return _COMPARE[op](getattr(Image, field), value)
        case "duration":
            return _known(Image.duration, _COMPARE[op](Image.duration, value))
        case "format":
            return Image.format == value
        case "camera":
            if op == "=":
                return _known(Image.camera, _same_text(Image.camera, value))
            return _known(Image.camera, _like(Image.camera, _contains(value)))
        case "folder":
            if op == "=":
                return folders.match(value, f"--where: folder {value!r}")
            # Contained in the folder part: a "/" must follow the match.
            return _like(Image.path, _contains(value) + "/%")
        case "path":
            return Image.path == value if op == "=" else _like(Image.path, _contains(value))
        case "tag":
            return _has_text(_TEXTS.source.in_(TAG_SOURCES), _same_text(_TEXTS.content, value))
    # text: any text of the image, whatever its source
    if op == "=":
        return _has_text(_same_text(_TEXTS.content, value))
    return _has_text(_like(_TEXTS.content, _contains(value)))


def _extra_compare(key: str, op: str, values: tuple[str, ...]) -> ColumnElement[bool]:
    """A comparison with one extra column (a JSON value): numbers and true/false compare as
    numbers, anything else as text (= ignoring case)."""
    column = json_text(Image.extra, key)
    if op in ("is null", "is not null"):
        return column.is_(None) if op == "is null" else column.is_not(None)
    value = values[0]
    if op == "~":  # (not _known: a JSON value is no table column, so it knows no nullable)
        return and_(column.is_not(None), _like(column, _contains(value)))
    number = _json_number(value)
    if number is not None:
        as_number = json_number(Image.extra, key)
        return and_(as_number.is_not(None), _COMPARE[op](as_number, number))
    if op == "=":
        return and_(column.is_not(None), _same_text(column, value))
    return and_(column.is_not(None), _COMPARE[op](column, value))


def _json_number(text: str) -> float | int | None:
    if text.lower() in ("true", "false"):
        return int(text.lower() == "true")  # json_extract gives JSON true/false as 1/0
    try:
        return int(text) if re.fullmatch(r"[-+]?\d+", text) else float(text)
    except ValueError:
        return None


def _within(column, op: str, period: tuple[datetime, datetime]) -> ColumnElement[bool]:
    """A date comparison with a period: "=" inside it, "<" before it, "<=" before its end ..."""
    start, end = period
    conditions = {
        "=": and_(column >= start, column < end),
        "<": column < start,
        "<=": column < end,
        ">": column >= end,
        ">=": column >= start,
    }
    return _known(column, conditions[op])


def _known(column, condition: ColumnElement[bool]) -> ColumnElement[bool]:
    # false rather than NULL for a missing value, so that "not" includes the image
    return and_(column.is_not(None), condition) if column.expression.nullable else condition


def _same_text(column, value: str) -> ColumnElement[bool]:
    return func.lower(column) == func.lower(value)


def _contains(value: str) -> str:
    """A LIKE pattern for "contains value", its wildcards escaped with a backslash."""
    return "%" + re.sub(r"([\\%_])", r"\\\1", value) + "%"


def _like(column, pattern: str) -> ColumnElement[bool]:
    return func.lower(column).like(func.lower(pattern), escape="\\")


# An alias, so the condition also works in queries that select from texts themselves; and an
# uncorrelated IN, so a selective tag finds its few texts by index instead of probing every image.
_TEXTS = aliased(ImageText, name="filter_texts")


def _has_text(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    return Image.id.in_(select(_TEXTS.image_id).where(*conditions))


def _glob_escape(text: str) -> str:
    return _GLOB_CHARS.sub(lambda m: f"[{m.group()}]", text)


@dataclass(frozen=True)
class _Folders:
    """Turns folder values into conditions: an existing directory by where it is, anything else
    as a run of folder names at any depth of the stored paths."""

    roots: dict[int, Path]
    cwd: Path

    def match(self, folder: str, label: str) -> ColumnElement[bool]:
        directory = self._directory(folder, label)
        return self._under(directory, label) if directory else self._named(folder)

    def _directory(self, folder: str, label: str) -> Path | None:
        try:
            path = Path(folder).expanduser()
        except RuntimeError:  # "~user" with no such user: a folder name after all
            return None
        candidate = self.cwd / path  # just path when that is absolute
        try:
            if candidate.is_dir():
                return candidate.resolve()
        except (OSError, ValueError):  # a name too long or unrepresentable for this file system
            pass
        if path.is_absolute():
            raise UsageError(f"{label}: no such folder")
        return None

    def _under(self, directory: Path, label: str) -> ColumnElement[bool]:
        conditions = []
        for root_id, root in self.roots.items():
            root = Path(root).resolve()
            if root.is_relative_to(directory):  # the directory is the root or above it
                conditions.append(Image.root_id == root_id)
            elif directory.is_relative_to(root):
                prefix = _glob_escape(directory.relative_to(root).as_posix())
                conditions.append(and_(Image.root_id == root_id, glob(Image.path, prefix + "/*")))
        if not conditions:
            known = ", ".join(str(r) for r in self.roots.values()) or "none yet"
            raise UsageError(f"{label}: no library folder is under or above it (library folders: {known})")
        return or_(*conditions)

    @staticmethod
    def _named(folder: str) -> ColumnElement[bool]:
        name = PurePosixPath(folder).as_posix()  # without trailing, doubled or "./" slashes
        # A name always matches literally ("a[1]"); one with wildcards also as a glob pattern.
        patterns = dict.fromkeys([_glob_escape(name), name])
        return or_(*(glob(Image.path, p) for n in patterns for p in (f"{n}/*", f"*/{n}/*")))
