"""Query arithmetic: several text and image terms, weighted, added and subtracted.

    cbir search "dog" + "snow" - "indoors"
    cbir search "cat":2 + sofa
    cbir search --image a.jpg + "in winter"
    cbir search two dogs in a frosty field          (one term: plain text)

The grammar is flat: an optional sign, then terms separated by ``+`` or ``-``.

* ``+`` and ``-`` are operators only when they stand alone (whitespace, a double quote or an end
  of the query on both sides) or touch a quoted term (``"dog"+cat``, ``cat-"dog"``,
  ``"cat":2+sofa``). Anywhere else they are text, so ``t-shirt``, ``covid-19``, ``black-and-white
  photo`` and even ``-indoors`` (a sign glued to a word) stay inside their term. Write
  ``- indoors`` to subtract.
* A term is a double-quoted string or a run of bare words. Inside quotes, ``\\"`` and ``\\\\`` are
  escapes, every other backslash is literal, and ``+``/``-`` are plain text. Whitespace inside
  a text is collapsed to single spaces, quoted or not. Single quotes are ordinary characters.
* A weight ``:NUMBER`` (``2``, ``0.5``, ``.5``) goes right after a closing quote (``"cat":2``) or
  is glued to the last word of a bare run when the character before the ``:`` is not a digit
  (``cat:2`` is weight 2; ``meeting at 10:30`` stays text). Weights are positive; the operator
  gives the sign (``- "indoors":0.5`` is -0.5).
* ``image:"PATH"`` is an image file and ``like:"PATH"`` an image already in the library. They are
  recognised only at the start of a term with the quote right after the colon; ``image:cat`` is
  text. These two forms exist so that ``str(expression)`` can be stored and replayed.
* At least one term must be positive: a query made only of subtractions finds nothing.

The query vector itself (the normalised sum of weight * unit embedding) is built elsewhere.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, NamedTuple

from cbir.errors import UsageError

if TYPE_CHECKING:
    from cbir.query import Crop, ImageData

__all__ = ["Term", "Expression", "parse_expression", "parse_terms", "expression_from_argv"]

# ASCII digits only: float() would accept other scripts' digits, but nobody types weights in them.
_NUMBER = r"(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
_NUMBER_RE = re.compile(_NUMBER)
# A weight glued to the last bare word: "cat:2" but not "10:30" (digit before ':') nor ":2" (nothing).
_BARE_WEIGHT_RE = re.compile(rf"(.*[^0-9]):({_NUMBER})\Z", re.DOTALL)
_PATH_KINDS = {'image:"': "image", 'like:"': "like"}


@dataclass(frozen=True)
class Term:
    """One part of a query: exactly one of text, image (a file) or like (a library image). An
    image may be cropped to a box (``crop``, a :class:`cbir.query.Crop`): it is embedded from
    that part of the picture alone."""

    weight: float = 1.0  # signed: a subtracted term has a negative weight
    text: str | None = None
    image: str | ImageData | None = None  # a path, or bytes (cbir.query.ImageData)
    like: str | None = None
    crop: Crop | None = None

    def __post_init__(self):
        if sum(v is not None for v in (self.text, self.image, self.like)) != 1:
            raise UsageError("a query term is exactly one of a text, an image file or a library image")
        if self.crop is not None and self.image is None:
            raise UsageError("only a query image (--image) can be cropped")
        weight = float(self.weight)
        if weight == 0 or not math.isfinite(weight):
            raise UsageError(f"a query term's weight must be finite and non-zero, not {self.weight!r}")
        object.__setattr__(self, "weight", weight)
        if self.text is not None:
            # Collapsed here rather than only in the parser, so that equal queries compare equal
            # and str() always reads back to the same Term.
            text = " ".join(self.text.split())
            if not text:
                raise UsageError("empty query text")
            object.__setattr__(self, "text", text)
        else:
            kind = "image" if self.image is not None else "like"
            if not isinstance(getattr(self, kind), (str, os.PathLike)):
                return  # image bytes (cbir.query.ImageData), not a path
            path = os.fspath(getattr(self, kind))
            if not path:
                raise UsageError(f"empty {kind} path in query")
            object.__setattr__(self, kind, path)

    def __str__(self) -> str:
        """The term without its sign, e.g. ``"cat":2`` or ``image:"a.jpg"`` (a crop is not part
        of the syntax: :meth:`Expression.describe` shows it)."""
        if self.text is not None:
            body = _quote(self.text)
        elif self.like is not None:
            body = "like:" + _quote(self.like)
        else:
            body = "image:" + _quote(str(self.image))
        size = abs(self.weight)
        return body if size == 1 else f"{body}:{_format_number(size)}"


@dataclass(frozen=True)
class Expression:
    """A parsed query: terms in the order given, at least one of them positive."""

    terms: tuple[Term, ...]

    def __post_init__(self):
        object.__setattr__(self, "terms", tuple(self.terms))
        if not self.terms:
            raise UsageError("empty query")
        if not any(t.weight > 0 for t in self.terms):
            raise UsageError("nothing to search for: every term is subtracted")

    def __str__(self) -> str:
        """Canonical form: every text quoted, weights only where not 1; parse_expression reads it back."""
        out = "- " if self.terms[0].weight < 0 else ""
        out += str(self.terms[0])
        for term in self.terms[1:]:
            out += (" - " if term.weight < 0 else " + ") + str(term)
        return out

    def describe(self) -> str:
        """How the query vector is formed, for --explain: every term with its weight, in the
        order summed, e.g. ``1.00 "red car" + 0.38 like:a.jpg - 0.25 like:c.jpg``; a cropped
        image shows its box, ``image:a.jpg[crop 0.5,0,0.5,1]``."""
        out = ""
        for n, term in enumerate(self.terms):
            sign = ("- " if term.weight < 0 else "") if n == 0 else (" - " if term.weight < 0 else " + ")
            out += f"{sign}{abs(term.weight):.2f} {_described(term)}"
        return out

    @property
    def texts(self) -> list[str]:
        """The text of every positive text term, e.g. for a keyword search alongside."""
        return [t.text for t in self.terms if t.text is not None and t.weight > 0]

    @property
    def is_plain_text(self) -> bool:
        """A single text term of weight 1: what a query was before arithmetic."""
        return len(self.terms) == 1 and self.terms[0].text is not None and self.terms[0].weight == 1


def parse_expression(text: str | None, *, first: Term | None = None) -> Expression:
    """Parse TEXT (syntax in the module docstring).

    ``first`` is an image or library-image term given by an option (``--image``, ``--like``); it
    becomes the first term, and TEXT is joined to it by its leading operator, ``+`` when it has
    none. TEXT may be None or blank only when ``first`` is given. Errors are UsageErrors that
    show the query with a caret under the problem."""
    if (text is None or not text.strip()) and first is None:
        raise UsageError("query: empty query")
    terms = parse_terms(text, first=first)
    if not any(t.weight > 0 for t in terms):
        raise _Scanner(text or "").error("nothing to search for: every term is subtracted")
    return Expression(tuple(terms))


def parse_terms(text: str | None, *, first: Term | None = None) -> list[Term]:
    """The terms of TEXT after ``first`` (as parse_expression), which may be none at all or
    only subtractions: relevance feedback (cbir.query.feedback) adds the positive side."""
    terms = [first] if first is not None else []
    if text is None or not text.strip():
        return terms
    return terms + _Scanner(text).terms()


def expression_from_argv(args: Sequence[str]) -> str:
    """Rebuild one expression string from the words the shell passed (its quotes already gone).

    One argument is returned unchanged: the user quoted the whole query, so it is read with the
    full syntax. Otherwise an argument that is exactly ``+`` or ``-`` is an operator, and the
    arguments between operators make one term. That term stays bare words unless an argument in
    it held whitespace or a double quote: the shell quoted it, so it is meant literally and is
    written as a quoted string ("a - b" is text, not a subtraction). A weight glued to its end
    stays outside the quotes (``two cats:2`` becomes ``"two cats":2``). Among several arguments,
    ``image:"a.jpg"`` is therefore text; use --image, or quote the whole query."""
    args = list(args)
    if len(args) == 1:
        return args[0]
    out: list[str] = []
    run: list[str] = []  # the arguments of the term being collected
    for arg in args:
        if arg in ("+", "-"):
            if run:
                out.append(_argv_term(run))
                run = []
            out.append(arg)
        elif arg.strip():  # a blank argument adds nothing to a term
            run.append(arg)
    if run:
        out.append(_argv_term(run))
    return " ".join(out)


def _argv_term(run: list[str]) -> str:
    text = " ".join(" ".join(run).split())
    if not any(ch.isspace() or ch == '"' for ch in "".join(run)):
        return text
    head, _, last = text.rpartition(" ")
    weighted = _BARE_WEIGHT_RE.match(last)
    if weighted is None:
        return _quote(text)
    # Keep the number as typed, so that a bad one (":0") fails in the parser as it would bare.
    return _quote(f"{head} {weighted[1]}".strip()) + ":" + weighted[2]


def _described(term: Term) -> str:
    """A term without sign or weight for describe(): a text quoted, a path quoted only when it
    holds whitespace or a quote (``like:a.jpg``, ``image:"my photo.jpg"``)."""
    if term.text is not None:
        return _quote(term.text)
    kind = "like" if term.like is not None else "image"
    path = str(term.like if term.like is not None else term.image)
    shown = path if path and not any(ch.isspace() or ch == '"' for ch in path) else _quote(path)
    return f"{kind}:{shown}" + (f"[crop {term.crop}]" if term.crop is not None else "")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _format_number(x: float) -> str:
    """Shortest repr of X written without an exponent (the parser reads no exponents)."""
    digits = format(Decimal(repr(x)), "f")
    return digits.rstrip("0").rstrip(".") if "." in digits else digits


class _Token(NamedTuple):
    kind: str  # "op", "word", "text", "image", "like"
    pos: int  # index of its first character in the query
    value: str  # the operator, the word, or the unescaped quoted content
    weight: float = 1.0  # a quoted term's weight (a bare run's is found when its words are joined)


class _Scanner:
    """A hand-written scanner: the grammar is flat, so tokens plus one pass over them suffice."""

    def __init__(self, query: str):
        self.query = query

    def error(self, message: str, pos: int | None = None) -> UsageError:
        """``query: MESSAGE at column N``, then the query and a caret under column N."""
        shown = "".join(" " if ch.isspace() else ch if ch.isprintable() else "?" for ch in self.query)
        if pos is None:
            return UsageError(f"query: {message}" + (f"\n  {shown}" if shown.strip() else ""))
        caret = " " * sum(_cells(ch) for ch in shown[:pos]) + "^"
        return UsageError(f"query: {message} at column {pos + 1}\n  {shown}\n  {caret}")

    def terms(self) -> list[Term]:
        terms: list[Term] = []
        operator: _Token | None = None  # the operator waiting for its term
        for token in self._joined(self._tokens()):
            if token.kind == "op":
                if operator is not None:
                    raise self.error(f"missing term after '{operator.value}'", operator.pos)
                operator = token
                continue
            if terms and operator is None:
                raise self.error("expected + or - between terms", token.pos)
            sign = -1 if operator is not None and operator.value == "-" else 1
            weight = sign * token.weight
            if token.kind == "text":
                terms.append(Term(weight, text=token.value))
            else:
                terms.append(
                    Term(weight, image=token.value) if token.kind == "image" else Term(weight, like=token.value)
                )
            operator = None
        if operator is not None:
            raise self.error(f"missing term after '{operator.value}'", operator.pos)
        return terms

    def _joined(self, tokens: Iterator[_Token]) -> Iterator[_Token]:
        """Merge each run of bare words into one text token, taking a weight glued to its end."""
        words: list[_Token] = []
        for token in [*tokens, None]:
            if token is not None and token.kind == "word":
                words.append(token)
                continue
            if words:
                last = words[-1]
                weight = 1.0
                weighted = _BARE_WEIGHT_RE.match(last.value)
                if weighted is not None:
                    weight = self._weight(weighted[2], last.pos + len(weighted[1]) + 1)
                    words[-1] = last._replace(value=weighted[1])
                yield _Token("text", words[0].pos, " ".join(w.value for w in words), weight)
                words = []
            if token is not None:
                yield token

    def _tokens(self) -> Iterator[_Token]:
        q, pos = self.query, 0
        quoted_end = -1  # where the last quoted term ended: a sign right there is an operator
        while pos < len(q):
            if q[pos].isspace():
                pos += 1
            elif q[pos] in "+-" and (self._boundary(pos + 1) or pos == quoted_end):
                # A token starts after whitespace, a quote or a finished term, so a sign here
                # stands alone when its right side is a boundary too, or it touches a quoted term.
                yield _Token("op", pos, q[pos])
                pos += 1
            elif (kind := self._quoted_kind(pos)) is not None:
                quote = q.index('"', pos)
                value, end = self._quoted(quote)
                if not (value.strip() if kind == "text" else value):
                    raise self.error("empty quoted string" if kind == "text" else f"empty {kind} path", quote)
                weight, end = self._after_quote(end)
                yield _Token(kind, pos, value, weight)
                pos = quoted_end = end
            else:  # a bare word runs to whitespace or a quote
                end = pos
                while end < len(q) and not q[end].isspace() and q[end] != '"':
                    end += 1
                if end < len(q) and q[end] == '"' and end - 1 > pos and q[end - 1] in "+-":
                    # A sign touching an opening quote is an operator: cat-"dog".
                    end -= 1
                yield _Token("word", pos, q[pos:end])
                pos = end

    def _quoted_kind(self, pos: int) -> str | None:
        """ "text" for a string opening at POS, "image"/"like" for image:"..."/like:"...", else None."""
        if self.query[pos] == '"':
            return "text"
        starts = (kind for prefix, kind in _PATH_KINDS.items() if self.query.startswith(prefix, pos))
        return next(starts, None)

    def _quoted(self, quote: int) -> tuple[str, int]:
        """The unescaped content of the string opening at QUOTE, and the index after it."""
        q, pos = self.query, quote + 1
        chars: list[str] = []
        while pos < len(q):
            ch = q[pos]
            if ch == '"':
                return "".join(chars), pos + 1
            if ch == "\\" and q[pos + 1 : pos + 2] in ('"', "\\"):
                pos += 1
                ch = q[pos]
            chars.append(ch)
            pos += 1
        raise self.error("unterminated quote", quote)

    def _after_quote(self, pos: int) -> tuple[float, int]:
        """An optional ``:NUMBER`` after a closing quote; then the term must end (a sign may touch it)."""
        weight = 1.0
        if pos < len(self.query) and self.query[pos] == ":":
            number = _NUMBER_RE.match(self.query, pos + 1)
            if number is None or not self._term_ends(number.end()):
                raise self.error("bad weight after ':' (expected a number such as :2 or :0.5)", pos)
            weight = self._weight(number.group(), number.start())
            pos = number.end()
        if not self._term_ends(pos):
            raise self.error("expected + or - between terms", pos)
        return weight, pos

    def _weight(self, number: str, pos: int) -> float:
        weight = float(number)
        if weight == 0:
            raise self.error("a weight must be greater than 0 (use - to subtract)", pos)
        if not math.isfinite(weight):
            raise self.error("weight too large", pos)
        return weight

    def _boundary(self, pos: int) -> bool:
        q = self.query
        return pos >= len(q) or q[pos].isspace() or q[pos] == '"'

    def _term_ends(self, pos: int) -> bool:
        """Whether a quoted term may end at POS: a boundary, or an operator touching it (``"a"+b``)."""
        return self._boundary(pos) or self.query[pos] in "+-"


def _cells(ch: str) -> int:
    """Terminal columns CH takes, so that the caret lines up under wide and combining characters."""
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
