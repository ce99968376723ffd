"""Metadata filters of a search (--after, --folder, --where ...) as one SQL condition on images.

The --where language is parsed with lark into a small AST (``Compare``, ``Not``, ``And``, ``Or``)
whose ``str`` is canonical: ``parse_where(str(node)) == node``. Conditions are SQLAlchemy Core
expressions in which every user value is a bound parameter.

Text comparisons fold case with ``lower()`` on both sides, so they are case-insensitive for ASCII
letters only in SQLite (and in a PostgreSQL database of the C locale; others fold more). Every condition is two-valued: a missing camera or date never matches
``=``, ``~`` or ``in`` and always matches ``!=`` (``a != b`` is exactly ``not a = b``).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Callable

from lark import Lark, Tree
from lark.exceptions import UnexpectedInput, UnexpectedToken
from sqlalchemy import ColumnElement, and_, func, not_, or_, select
from sqlalchemy.orm import aliased

from cbir.errors import UsageError
from cbir.store.models import Image, ImageText
from cbir.store.sql import glob, json_number, json_text

DATE_FORMS = "YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]"
TAG_SOURCES = ("label", "tag")
MAX_DEPTH = 32  # of and/or/not: deeper trees would exhaust Python's stack compiling them
MAX_VALUES = 200  # SQLite rejects expressions deeper than 1000, which long or-chains become

_FORMAT_ALIASES = {"jpg": "jpeg", "jpe": "jpeg", "tif": "tiff"}
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
    "kib": 2**10, "mib": 2**20, "gib": 2**30,
}
_MAX_INTEGER = 2**63 - 1  # SQLite's INTEGER
_DATE_RE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2}))?)?)?)?")
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)", re.IGNORECASE)
_BARE_RE = re.compile(r"[\w./:-]+")  # the grammar's BARE terminal
_GLOB_CHARS = re.compile(r"[*?[]")


# -- values ------------------------------------------------------------------------------------


def parse_date(text: str) -> tuple[datetime, datetime]:
    """A date literal as the period [start, end) it names: YYYY, YYYY-MM, YYYY-MM-DD,
    YYYY-MM-DDTHH:MM[:SS] (also with a space). Anything else -> UsageError naming the accepted forms."""
    match = _DATE_RE.fullmatch(text.strip())
    try:
        if match is None:
            raise ValueError
        parts = [int(p) for p in match.groups() if p is not None]
        start = datetime(*parts, *[1] * (3 - len(parts)))  # a missing month or day is the 1st
    except ValueError:  # no match, or no such day (2019-02-30)
        raise UsageError(f"invalid date {text!r}: use {DATE_FORMS}") from None
    return start, _period_end(start, len(parts))


def _period_end(start: datetime, precision: int) -> datetime:
    try:
        if precision == 1:
            return start.replace(year=start.year + 1)
        if precision == 2:
            return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
        step = {3: timedelta(days=1), 5: timedelta(minutes=1), 6: timedelta(seconds=1)}[precision]
        return start + step
    except (ValueError, OverflowError):  # a period at the end of year 9999
        return datetime.max


def normalise_format(name: str) -> str:
    """A format name as the library stores it: lower case, "jpg" -> "jpeg", "tif" -> "tiff"."""
    name = name.strip().lower().lstrip(".")
    if not name:
        raise UsageError("empty image format")
    return _FORMAT_ALIASES.get(name, name)


def parse_size(text: str) -> int:
    """Bytes from "1500", "2MB", "500k", "1.5GiB" (K/M/G are powers of 1000, KiB/MiB/GiB of 1024;
    fractions of a byte are dropped)."""
    match = _SIZE_RE.fullmatch(text.strip())
    unit = _SIZE_UNITS.get(match.group(2).lower()) if match else None
    if unit is None:
        raise UsageError(f"invalid size {text!r}: use bytes, or a number with K, KB, KiB, M, MB, "
                         "MiB, G, GB or GiB")
    return _checked_integer(Decimal(match.group(1)) * unit, text)


def _parse_count(text: str) -> int:
    if not re.fullmatch(r"\s*[0-9]+\s*", text):
        raise UsageError(f"invalid number {text!r}: use a whole number")
    return _checked_integer(Decimal(text), text)


def _checked_integer(value: Decimal, text: str) -> int:
    # Decimal first: int() refuses strings of more than 4300 digits with a ValueError.
    if value > _MAX_INTEGER:
        raise UsageError(f"number too large: {text}")
    return int(value)


def _folder_value(text: str) -> str:
    if not text.strip():
        raise UsageError("empty folder")
    return text


# -- fields of the --where language --------------------------------------------------------------

_ORDERED = ("=", "!=", "<", "<=", ">", ">=", "in")


@dataclass(frozen=True)
class _Field:
    ops: tuple[str, ...]
    convert: Callable[[str], object] = str  # value text -> what the SQL needs; UsageError if none
    expected: str = ""  # what convert accepts, for error messages
    words: bool = False  # values print unquoted when they are bare words (dates, numbers)


_DATE = _Field(_ORDERED, parse_date, f"a date: {DATE_FORMS}", words=True)
_PIXELS = _Field(_ORDERED, _parse_count, "a whole number of pixels", words=True)
FIELDS: dict[str, _Field] = {
    "taken": _DATE,
    "added": _DATE,
    "width": _PIXELS,
    "height": _PIXELS,
    "size": _Field(_ORDERED, parse_size, "bytes, or a size such as 500K, 2MB or 1.5GiB", words=True),
    "format": _Field(("=", "!=", "in"), normalise_format, "a format such as jpeg or png", words=True),
    "camera": _Field(("=", "!=", "~", "in", "is null", "is not null")),
    "folder": _Field(("=", "!=", "~"), _folder_value, "a folder name or path"),
    "path": _Field(("=", "!=", "~", "in")),
    "tag": _Field(("=", "!=", "in")),
    "text": _Field(("=", "!=", "~", "in")),
}
# extra.NAME: a column of the dataset row that added the image (cbir ingest of a manifest or of
# WebDataset shards), e.g. extra.split = train, extra.aesthetic >= 6. Numbers compare as numbers.
EXTRA = "extra."
_EXTRA_FIELD = _Field(_ORDERED + ("~", "is null", "is not null"), words=True)


def _field(name: str) -> _Field:
    return _EXTRA_FIELD if name.startswith(EXTRA) else FIELDS[name]


# -- the AST ---------------------------------------------------------------------------------------


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Compare:
    """``field op value``; ``in`` has one or more values, ``is null`` / ``is not null`` none.
    Values are kept as written (unquoted): what they mean depends on the field."""

    field: str
    op: str
    values: tuple[str, ...] = ()

    def __str__(self) -> str:
        if not self.values:
            return f"{self.field} {self.op}"
        words = _field(self.field).words
        shown = [v if words and _BARE_RE.fullmatch(v) else _quote(v) for v in self.values]
        if self.op == "in":
            return f"{self.field} in ({', '.join(shown)})"
        return f"{self.field} {self.op} {shown[0]}"


@dataclass(frozen=True)
class Not:
    operand: WhereNode

    def __str__(self) -> str:
        return f"not {_grouped(self.operand, (And, Or))}"


@dataclass(frozen=True)
class And:
    operands: tuple[WhereNode, ...]  # two or more

    def __str__(self) -> str:
        return " and ".join(_grouped(o, (And, Or)) for o in self.operands)


@dataclass(frozen=True)
class Or:
    operands: tuple[WhereNode, ...]  # two or more

    def __str__(self) -> str:
        return " or ".join(_grouped(o, (Or,)) for o in self.operands)


WhereNode = Compare | Not | And | Or


def _grouped(node: WhereNode, kinds: tuple[type, ...]) -> str:
    # Parentheses exactly where the parser would otherwise build a different tree.
    return f"({node})" if isinstance(node, kinds) else str(node)


# -- parsing ---------------------------------------------------------------------------------------

# Keywords are regexes ending in \b (so "andd" is not "and" + "d") with priority over FIELD.
# The contextual lexer only tries the terminals the parser can take next, so a keyword in a value
# position ("camera = null") is just a bare word.
GRAMMAR = r"""
?start: disjunction
?disjunction: conjunction (_OR conjunction)*
?conjunction: negation (_AND negation)*
?negation: _NOT negation                            -> not_
         | comparison
         | _LPAR disjunction _RPAR
comparison: FIELD OP value
          | FIELD IN _LPAR value (_COMMA value)* _RPAR
          | FIELD IS _NULL                          -> is_null
          | FIELD IS _NOT _NULL                     -> is_not_null
?value: BARE | STRING

_OR.2: /or\b/i
_AND.2: /and\b/i
_NOT.2: /not\b/i
IN.2: /in\b/i
IS.2: /is\b/i
_NULL.2: /null\b/i
FIELD: /[a-z_][a-z0-9_]*(\.[a-z0-9_][\w-]*)?/i
OP: "==" | "!=" | "<=" | ">=" | "=" | "<" | ">" | "~"
BARE: /[\w.\/:-]+/
STRING: /"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/s
_LPAR: "("
_RPAR: ")"
_COMMA: ","
%ignore /\s+/
"""

# How error messages name what the parser could have taken, in this order.
_EXPECTED = {
    "FIELD": "a field",
    "_NOT": "not",
    "_LPAR": "'('",
    "OP": "an operator (= != < <= > >= ~)",
    "IN": "in",
    "IS": "is",
    "_NULL": "null",
    "BARE": "a value",
    "STRING": "a value",
    "_COMMA": "','",
    "_AND": "and",
    "_OR": "or",
    "_RPAR": "')'",
    "$END": "the end",
}
# What an error message shows as the unexpected text: a whole string, word or operator.
_SHOWN = re.compile(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[\w./:-]+|[=!<>]=|\S""")


@cache
def _parser() -> Lark:
    return Lark(GRAMMAR, parser="lalr", lexer="contextual")


def parse_where(text: str) -> WhereNode:
    """The AST of a --where expression; UsageError pointing at the column of any mistake."""
    if not text.strip():
        raise UsageError("--where: empty expression")
    return _build(_parse_tree(text), text, depth=0)


def _parse_tree(text: str) -> Tree:
    # Fed token by token so that an error can list exactly what the parser could take there:
    # lark's own sets come from merged LALR states (listing ")" with no "(" open) or from a state
    # already reduced by the bad token.
    parser = _parser().parse_interactive(text)
    tokens = parser.lexer_thread.lex(parser.parser_state)
    values = 0
    while True:
        try:
            token = next(tokens, None)
        except UnexpectedInput as e:  # no token here (lark tried the parser's state first)
            raise _syntax_error(text, e.pos_in_stream, parser.accepts()) from None
        values += token is not None and token.type in ("BARE", "STRING")
        if values > MAX_VALUES:
            raise UsageError(f"--where: too long (more than {MAX_VALUES} values)")
        before = parser.copy(deepcopy_values=False)
        try:
            if token is None:
                return parser.feed_eof()
            parser.feed_token(token)
        except UnexpectedToken:
            position = len(text) if token is None else token.start_pos
            raise _syntax_error(text, position, before.accepts()) from None


def _syntax_error(text: str, position: int, accepts: set[str]) -> UsageError:
    expected = list(dict.fromkeys(name for t, name in _EXPECTED.items() if t in accepts))
    hint = "expected " + _or_list(expected) if expected else ""
    if position >= len(text.rstrip()):
        return _where_error(text, len(text), "unexpected end", hint)
    shown = _SHOWN.match(text, position).group()
    if shown in ("'", '"'):
        return _where_error(text, position, f"unclosed quote {shown}", "")
    if len(shown) > 30:
        shown = shown[:30] + "..."
    return _where_error(text, position, f"unexpected {shown!r}", hint)


def _or_list(items: list[str]) -> str:
    if len(items) <= 2:
        return " or ".join(items)
    return ", ".join(items[:-1]) + ", or " + items[-1]


def _where_error(text: str, position: int, problem: str, hint: str) -> UsageError:
    """'--where: PROBLEM at column N (HINT)', then the expression with a caret under column N."""
    column = position + 1
    one_line = re.sub(r"\s", " ", text)  # keeps every character one column wide for the caret
    hint = f" ({hint})" if hint else ""
    return UsageError(f"--where: {problem} at column {column}{hint}\n  {one_line}\n  {' ' * position}^")


def _build(tree: Tree, text: str, depth: int) -> WhereNode:
    if depth > MAX_DEPTH:
        raise UsageError(f"--where: nested more than {MAX_DEPTH} levels deep")
    if tree.data == "comparison" or tree.data.startswith("is_"):
        return _comparison(tree, text)
    operands = tuple(_build(child, text, depth + 1) for child in tree.children)
    if tree.data == "not_":
        return Not(operands[0])
    return Or(operands) if tree.data == "disjunction" else And(operands)


def _comparison(tree: Tree, text: str) -> Compare:
    field_token, op_token, *value_tokens = tree.children
    prefix, dot, key = str(field_token).partition(".")
    field = prefix.lower() + dot + key  # the names of a dataset's columns keep their case
    if field not in FIELDS and prefix.lower() + dot != EXTRA:
        raise _where_error(text, field_token.start_pos, f"unknown field {str(field_token)!r}",
                           "fields: " + ", ".join(FIELDS) + ", extra.COLUMN")
    spec = _field(field)
    op = {"is_null": "is null", "is_not_null": "is not null"}.get(tree.data) or op_token.lower()
    op = "=" if op == "==" else op
    if op not in spec.ops:
        raise _where_error(text, op_token.start_pos, f"{field} does not take {op!r}",
                           f"{field} takes {', '.join(spec.ops)}")
    values = tuple(_value_text(token) for token in value_tokens)
    for token, value in zip(value_tokens, values):
        try:
            spec.convert(value)
        except UsageError:
            raise _where_error(text, token.start_pos, f"bad value {value!r} for {field}",
                               f"expected {spec.expected}") from None
    return Compare(field, op, values)


def _value_text(token) -> str:
    if token.type == "BARE":
        return str(token)
    # Only \\, \" and \' are escapes: other backslashes stay, as in a Windows path.
    return re.sub(r"""\\([\\"'])""", r"\1", token[1:-1])


# -- SQL -------------------------------------------------------------------------------------------

_COMPARE = {"=": operator.eq, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def image_condition(
    filters: Filters, roots: dict[int, Path], cwd: Path | None = None
) -> ColumnElement[bool] | None:
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
        return _extra_compare(field[len(EXTRA):], op, node.values)
    if op in ("is null", "is not null"):
        column = getattr(Image, field)
        return column.is_(None) if op == "is null" else column.is_not(None)
    value = FIELDS[field].convert(node.values[0])
    match field:
        case "taken" | "added":
            return _within(Image.taken if field == "taken" else Image.added_at, op, value)
        case "width" | "height" | "size":
            return _COMPARE[op](getattr(Image, field), value)
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
            raise UsageError(
                f"{label}: no library folder is under or above it (library folders: {known})"
            )
        return or_(*conditions)

    @staticmethod
    def _named(folder: str) -> ColumnElement[bool]:
        name = PurePosixPath(folder).as_posix()  # without trailing, doubled or "./" slashes
        # A name always matches literally ("a[1]"); one with wildcards also as a glob pattern.
        patterns = dict.fromkeys([_glob_escape(name), name])
        return or_(*(glob(Image.path, p) for n in patterns for p in (f"{n}/*", f"*/{n}/*")))


# -- the filters of one search ----------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """What a search's results must satisfy besides the query: all of these (AND)."""

    after: datetime | None = None  # taken >= after
    before: datetime | None = None  # taken <  before
    folders: tuple[str, ...] = ()  # as the user typed them; any of them matches (OR)
    cameras: tuple[str, ...] = ()  # case-insensitive substring of Image.camera; any matches
    min_width: int | None = None
    min_height: int | None = None
    formats: tuple[str, ...] = ()  # normalised: lower case, "jpg"/"jpe" -> "jpeg", "tif" -> "tiff"
    tags: tuple[str, ...] = ()  # a label or tag equal (case-insensitive) to each (AND over tags)
    where: str | None = None  # the --where expression text

    def __post_init__(self):
        # frozen, so set through object: callers may pass "JPG" straight from the command line
        object.__setattr__(self, "formats", tuple(normalise_format(f) for f in self.formats))
        if self.where is not None:
            parse_where(self.where)  # fail now, before a model is loaded
        if self.after is not None and self.before is not None and self.after >= self.before:
            after, before = _date_text(self.after), _date_text(self.before)
            raise UsageError(f"--after {after} is not before --before {before}")

    def is_empty(self) -> bool:
        return self == Filters()

    def describe(self) -> str:
        """The filters in the --where language, e.g. 'taken >= 2019-06-01 and camera ~ "Pixel"'."""
        parts = []
        if self.after is not None:
            parts.append(Compare("taken", ">=", (_date_text(self.after),)))
        if self.before is not None:
            parts.append(Compare("taken", "<", (_date_text(self.before),)))
        parts.append(_any_of("folder", "=", self.folders))
        parts.append(_any_of("camera", "~", self.cameras))
        if self.min_width is not None:
            parts.append(Compare("width", ">=", (str(self.min_width),)))
        if self.min_height is not None:
            parts.append(Compare("height", ">=", (str(self.min_height),)))
        if self.formats:
            parts.append(Compare("format", "in" if len(self.formats) > 1 else "=", self.formats))
        parts.extend(Compare("tag", "=", (tag,)) for tag in self.tags)
        if self.where is not None:
            where = parse_where(self.where)
            parts.extend(where.operands if isinstance(where, And) else [where])
        parts = [p for p in parts if p is not None]
        return str(And(tuple(parts))) if len(parts) > 1 else "".join(map(str, parts))

    def as_dict(self) -> dict:
        return {
            "after": self.after and self.after.isoformat(),
            "before": self.before and self.before.isoformat(),
            "folders": list(self.folders),
            "cameras": list(self.cameras),
            "min_width": self.min_width,
            "min_height": self.min_height,
            "formats": list(self.formats),
            "tags": list(self.tags),
            "where": self.where,
        }


def _any_of(field: str, op: str, values: tuple[str, ...]) -> WhereNode | None:
    nodes = [Compare(field, op, (v,)) for v in values]
    return Or(tuple(nodes)) if len(nodes) > 1 else (nodes[0] if nodes else None)


def _date_text(moment: datetime) -> str:
    if moment.time() == time():
        return moment.date().isoformat()
    return moment.isoformat(timespec="minutes" if moment.second == moment.microsecond == 0 else "auto")
