"""SQL that differs between SQLite and PostgreSQL, behind one expression each.

Filter conditions are built before anyone knows which database runs them, so each expression
here carries both spellings and picks one when compiled. Both are built up front, with every
value bound, so SQLAlchemy's statement cache never reuses one database's values for another.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Numeric, String, case, cast, false, func, literal
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal

POSTGRESQL = "postgresql"


class PerDialect(ColumnElement):
    """An expression written for SQLite and for PostgreSQL; compiles as the one that applies."""

    inherit_cache = True
    _traverse_internals = [
        ("sqlite", InternalTraversal.dp_clauseelement),
        ("postgresql", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, sqlite: ColumnElement, postgresql: ColumnElement, type_=None):
        self.sqlite = sqlite
        self.postgresql = postgresql
        self.type = type_ if type_ is not None else sqlite.type


@compiles(PerDialect)
def _compile_per_dialect(element: PerDialect, compiler, **kw):
    chosen = element.postgresql if compiler.dialect.name == POSTGRESQL else element.sqlite
    return compiler.process(chosen, **kw)


def _json_path(key: str) -> str:
    return '$."' + key.replace('"', '""') + '"'


def json_text(column, key: str) -> ColumnElement:
    """The value of ``key`` in a JSON-object text column: text for a string, NULL when missing
    or null (SQLite's json_extract; on PostgreSQL ->>, which gives other values as JSON text)."""
    return PerDialect(
        func.json_extract(column, _json_path(key)),
        func.jsonb_extract_path_text(cast(column, JSONB), literal(key, String)),
    )


def json_number(column, key: str) -> ColumnElement:
    """The value of ``key`` as a number: JSON numbers as themselves, true/false as 1/0 (what
    SQLite's json_extract gives); on PostgreSQL anything else is NULL."""
    value = func.jsonb_extract_path(cast(column, JSONB), literal(key, String))
    postgresql = case(
        (
            func.jsonb_typeof(value) == "number",
            cast(func.jsonb_extract_path_text(cast(column, JSONB), literal(key, String)), Numeric),
        ),
        (func.jsonb_typeof(value) == "boolean", case((cast(value, String) == "true", 1), else_=0)),
    )
    return PerDialect(func.json_extract(column, _json_path(key)), postgresql)


def position(column, text: str) -> ColumnElement:
    """Where ``text`` first occurs in ``column`` (1-based; 0 if nowhere)."""
    return PerDialect(func.instr(column, text), func.strpos(column, text))


def glob(column, pattern: str) -> ColumnElement[bool]:
    """SQLite's GLOB (case-sensitive ``*``, ``?``, ``[...]``, ``[^...]``); on PostgreSQL the
    same pattern as an anchored regular expression."""
    regex = glob_to_regex(pattern)
    return PerDialect(
        column.op("GLOB", is_comparison=True)(literal(pattern, String)),
        column.op("~", is_comparison=True)(literal(regex, String)) if regex is not None else false(),
        Boolean(),
    )


def glob_to_regex(pattern: str) -> str | None:
    """A GLOB pattern as a PostgreSQL regular expression matching exactly the same strings;
    None for a pattern that matches nothing (an unclosed set)."""
    out, i, n = ["^"], 0, len(pattern)
    while i < n:
        char = pattern[i]
        i += 1
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char != "[":
            out.append(_literal(char))
        else:
            # Read the set as SQLite does: an optional ^; a ] first is a member; "a-z" a range
            # (not after a ] first, nor before the closing ]); the set ends at the next ].
            negate = i < n and pattern[i] == "^"
            i += negate
            singles, ranges, prior = [], [], None
            if i < n and pattern[i] == "]":
                singles.append("]")
                i += 1
            while i < n and pattern[i] != "]":
                char = pattern[i]
                if char == "-" and prior is not None and i + 1 < n and pattern[i + 1] != "]":
                    ranges.append((prior, pattern[i + 1]))
                    prior = None
                    i += 2
                    continue
                singles.append(char)
                prior = char
                i += 1
            if i >= n:
                return None
            i += 1  # the closing ]
            members = "".join(_set_member(c) for c in singles) + "".join(
                f"{_set_member(a)}-{_set_member(b)}"
                for a, b in ranges
                if a <= b  # z-a: nothing
            )
            if members:
                out.append("[" + ("^" if negate else "") + members + "]")
            elif negate:
                out.append(".")
            else:
                return None
    out.append("$")
    return "".join(out)


def _set_member(char: str) -> str:
    # Inside a bracket expression \, [, ], ^ and - are special in PostgreSQL's regular
    # expressions; escaped, each is itself.
    return "\\" + char if char in "\\[]^-" else char


def _literal(char: str) -> str:
    # In PostgreSQL's regular expressions a backslash before a character that is not a letter
    # or digit makes it literal.
    return "\\" + char if char.isascii() and not char.isalnum() else char
