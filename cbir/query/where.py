"""The --where language of search filters: its fields, its grammar (parsed with lark) and its
syntax errors, which point at the column of the mistake.

An expression parses into a small AST (``Compare``, ``Not``, ``And``, ``Or``) whose ``str`` is
canonical: ``parse_where(str(node)) == node``. ``cbir.query.filter_sql`` compiles it to SQL.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, cast

from cbir.errors import UsageError
from cbir.query.filter_values import (
    DATE_FORMS,
    folder_value,
    normalise_format,
    parse_count,
    parse_date,
    parse_duration,
)
from cbir.units import parse_bytes

if TYPE_CHECKING:  # lark itself loads with the first --where (30 ms a search without one saves)
    from lark import Lark, Token, Tree

MAX_DEPTH = 32  # of and/or/not: deeper trees would exhaust Python's stack compiling them
MAX_VALUES = 200  # SQLite rejects expressions deeper than 1000, which long or-chains become

_BARE_RE = re.compile(r"[\w./:-]+")  # the grammar's BARE terminal


# -- fields of the --where language --------------------------------------------------------------

_ORDERED = ("=", "!=", "<", "<=", ">", ">=", "in")


@dataclass(frozen=True)
class _Field:
    ops: tuple[str, ...]
    convert: Callable[[str], object] = str  # value text -> what the SQL needs; UsageError if none
    expected: str = ""  # what convert accepts, for error messages
    words: bool = False  # values print unquoted when they are bare words (dates, numbers)


_DATE = _Field(_ORDERED, parse_date, f"a date: {DATE_FORMS}", words=True)
_PIXELS = _Field(_ORDERED, parse_count, "a whole number of pixels", words=True)
FIELDS: dict[str, _Field] = {
    "taken": _DATE,
    "added": _DATE,
    "width": _PIXELS,
    "height": _PIXELS,
    "size": _Field(_ORDERED, parse_bytes, "bytes, or a size such as 500K, 2MB or 1.5GiB", words=True),
    # a video frame's video's length; other images have none (only != matches them)
    "duration": _Field(_ORDERED, parse_duration, "a length of time: 90, 90s, 2min, 1:30", words=True),
    "format": _Field(("=", "!=", "in"), normalise_format, "a format such as jpeg or png", words=True),
    "camera": _Field(("=", "!=", "~", "in", "is null", "is not null")),
    "folder": _Field(("=", "!=", "~"), folder_value, "a folder name or path"),
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
    from lark import Lark

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
    from lark.exceptions import UnexpectedInput, UnexpectedToken

    parser = _parser().parse_interactive(text)
    tokens = parser.lexer_thread.lex(parser.parser_state)
    values = 0
    while True:
        try:
            token = next(tokens, None)
        except UnexpectedInput as e:  # no token here (lark tried the parser's state first)
            # lark declares pos_in_stream None on the base class; the lexer's error sets the position.
            raise _syntax_error(text, e.pos_in_stream, parser.accepts()) from None  # type: ignore[arg-type]
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
    shown_match = _SHOWN.match(text, position)
    assert shown_match is not None  # lark stops at a character, never at a blank (it skips those)
    shown = shown_match.group()
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
    field_token, op_token, *value_tokens = cast("list[Token]", tree.children)  # the grammar: all tokens
    prefix, dot, key = str(field_token).partition(".")
    field = prefix.lower() + dot + key  # the names of a dataset's columns keep their case
    if field not in FIELDS and prefix.lower() + dot != EXTRA:
        raise _where_error(
            text,
            _column(field_token),
            f"unknown field {str(field_token)!r}",
            "fields: " + ", ".join(FIELDS) + ", extra.COLUMN",
        )
    spec = _field(field)
    op = {"is_null": "is null", "is_not_null": "is not null"}.get(tree.data) or op_token.lower()
    op = "=" if op == "==" else op
    if op not in spec.ops:
        raise _where_error(
            text, _column(op_token), f"{field} does not take {op!r}", f"{field} takes {', '.join(spec.ops)}"
        )
    values = tuple(_value_text(token) for token in value_tokens)
    for token, value in zip(value_tokens, values):
        try:
            spec.convert(value)
        except UsageError:
            raise _where_error(
                text, _column(token), f"bad value {value!r} for {field}", f"expected {spec.expected}"
            ) from None
    return Compare(field, op, values)


def _column(token: Token) -> int:
    """Where the token starts in the text: lark declares start_pos optional, but sets it on every
    token its lexer makes."""
    return token.start_pos or 0


def _value_text(token: Token) -> str:
    if token.type == "BARE":
        return str(token)
    # Only \\, \" and \' are escapes: other backslashes stay, as in a Windows path.
    return re.sub(r"""\\([\\"'])""", r"\1", token[1:-1])
