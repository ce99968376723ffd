"""Query arithmetic: parsing, canonical form, argv reconstruction, error positions."""

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cbir.errors import UsageError
from cbir.query.expression import Expression, Term, expression_from_argv, parse_expression

props = settings(deadline=None)  # no timing flakes on a loaded machine; each example is microseconds


def T(text=None, weight=1.0, **kw):
    return Term(weight, text=text, **kw)


def terms(query, **kw):
    return list(parse_expression(query, **kw).terms)


# --- examples ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, expected",
    [
        ('"dog" + "snow" - "indoors"', [T("dog"), T("snow"), T("indoors", -1)]),
        ("dog + snow - indoors", [T("dog"), T("snow"), T("indoors", -1)]),
        ('"dog"+"snow"-"indoors"', [T("dog"), T("snow"), T("indoors", -1)]),
        ('"cat":2 + "sofa"', [T("cat", 2), T("sofa")]),
        ("cat:2 + sofa", [T("cat", 2), T("sofa")]),
        ('"cat":0.5+sofa', [T("cat", 0.5), T("sofa")]),  # a sign touching a quoted term is an operator
        ('"dog"-cat + sofa-"snow"', [T("dog"), T("cat", -1), T("sofa"), T("snow", -1)]),
        ('"cat":2-3', [T("cat", 2), T("3", -1)]),
        ("two cats:.5 - dog", [T("two cats", 0.5), T("dog", -1)]),
        ('- "indoors":0.5 + dog', [T("indoors", -0.5), T("dog")]),
        ("+ dog", [T("dog")]),
        ("two dogs in a frosty field", [T("two dogs in a frosty field")]),
        ("  two \t dogs\n in a  field ", [T("two dogs in a field")]),
        ("black-and-white photo + t-shirt", [T("black-and-white photo"), T("t-shirt")]),
        ("covid-19 masks", [T("covid-19 masks")]),
        ("dog -indoors +snow", [T("dog -indoors +snow")]),  # a sign glued to a word is text
        ("dog- cat + x+ y", [T("dog- cat"), T("x+ y")]),
        ("meeting at 10:30", [T("meeting at 10:30")]),
        ("cat:2 dog", [T("cat:2 dog")]),  # a weight only at the end of the run
        ("cat :2", [T("cat :2")]),  # ... glued to the last word
        ("it's sunny", [T("it's sunny")]),
        ('"a + b - c" - d', [T("a + b - c"), T("d", -1)]),
        (r'"say \"hi\" \\ now" + x', [T('say "hi" \\ now'), T("x")]),
        (r'"C:\photos"', [T("C:\\photos")]),  # other backslashes are literal
        ('"  spaced   out "', [T("spaced out")]),
        (
            'image:"a b.jpg":2 - like:"lib/x.jpg"',
            [
                T(image="a b.jpg", weight=2),
                T(like="lib/x.jpg", weight=-1),
            ],
        ),
        ("image:cat + like:x", [T("image:cat"), T("like:x")]),  # no quote after the colon: text
        ('"image:\\"x\\""', [T('image:"x"')]),
    ],
)
def test_examples(query, expected):
    assert terms(query) == expected


def test_first_term_from_an_option():
    img = T(image="a.jpg")
    assert terms("+ in winter", first=img) == [img, T("in winter")]
    assert terms("in winter", first=img) == [img, T("in winter")]
    assert terms('- "snow":0.5', first=img) == [img, T("snow", -0.5)]
    assert terms(None, first=img) == [img]
    assert terms("   ", first=img) == [img]
    assert terms("dog", first=T(like="x.jpg", weight=-1)) == [T(like="x.jpg", weight=-1), T("dog")]


def test_properties():
    e = parse_expression('"cat":2 - sofa + like:"x.jpg" + chair')
    assert e.texts == ["cat", "chair"]
    assert not e.is_plain_text
    assert parse_expression("a cat").is_plain_text
    assert not parse_expression("cat:2").is_plain_text
    assert not parse_expression("", first=T(image="a.jpg")).is_plain_text


@pytest.mark.parametrize(
    "expression, text",
    [
        (Expression((T("dog"), T("snow"), T("indoors", -1))), '"dog" + "snow" - "indoors"'),
        (Expression((T("cat", 2), T("sofa", -0.5))), '"cat":2 - "sofa":0.5'),
        (Expression((T("x", -1), T('a "b" \\', 1e-7))), r'- "x" + "a \"b\" \\":0.0000001'),
        (
            Expression((T(image="a.jpg"), T(like="b\\c.jpg", weight=1e20))),
            r'image:"a.jpg" + like:"b\\c.jpg":100000000000000000000',
        ),
    ],
)
def test_canonical_form(expression, text):
    assert str(expression) == text
    assert parse_expression(text) == expression


def test_term_and_expression_invariants():
    assert T("  a \n b ") == T("a b")
    for bad in (
        {},
        {"text": "a", "image": "b"},
        {"text": "  "},
        {"image": ""},
        {"text": "a", "weight": 0},
        {"text": "a", "weight": float("inf")},
    ):
        with pytest.raises(UsageError):
            Term(**bad)
    with pytest.raises(UsageError, match="every term is subtracted"):
        Expression((T("a", -1),))
    with pytest.raises(UsageError, match="empty query"):
        Expression(())


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, message, column",
    [
        ('"dog', "unterminated quote", 1),
        ('dog + "snow', "unterminated quote", 7),
        (r'"dog\"', "unterminated quote", 1),
        ('"dog" + ', "missing term after '+'", 7),
        ("dog + - cat", "missing term after '+'", 5),
        ("-", "missing term after '-'", 1),
        ('""', "empty quoted string", 1),
        ('a + "  "', "empty quoted string", 5),
        ('image:""', "empty image path", 7),
        ('"dog"cat', "expected + or - between terms", 6),
        ('"dog" cat', "expected + or - between terms", 7),
        ('dog "cat"', "expected + or - between terms", 5),
        ('dog"cat"', "expected + or - between terms", 4),
        ('"dog":2"cat"', "expected + or - between terms", 8),
        ('"dog":', "bad weight", 6),
        ('"dog":x', "bad weight", 6),
        ('"dog":2x', "bad weight", 6),
        ('dog+image:"x"', "expected + or - between terms", 11),
        ('"dog":-1', "bad weight", 6),
        ('"dog":0', "a weight must be greater than 0 (use - to subtract)", 7),
        ("dog:0.0 + cat", "a weight must be greater than 0 (use - to subtract)", 5),
        ('"dog":' + "9" * 400, "weight too large", 7),
    ],
)
def test_errors_point_at_the_column(query, message, column):
    with pytest.raises(UsageError) as info:
        parse_expression(query)
    first, shown, caret = str(info.value).split("\n")
    assert first.startswith(f"query: {message}") and first.endswith(f" at column {column}")
    assert shown == "  " + query
    assert caret == " " * (2 + column - 1) + "^"


def test_caret_under_wide_characters_and_control_characters():
    with pytest.raises(UsageError) as info:
        parse_expression('猫\t"x')
    _, shown, caret = str(info.value).split("\n")
    assert shown == '  猫 "x' and caret == "     ^"  # the wide cat takes two columns


@pytest.mark.parametrize(
    "query, first, message",
    [
        (None, None, "query: empty query"),
        (" \n ", None, "query: empty query"),
        ("- dog", None, "nothing to search for: every term is subtracted"),
        ("- a - b", T(image="x.jpg", weight=-1), "every term is subtracted"),
    ],
)
def test_whole_query_errors(query, first, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_expression(query, first=first)


# --- argv -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, text",
    [
        (["dog", "+", "snow", "-", "indoors"], "dog + snow - indoors"),
        (["two cats:2", "+", "sofa"], '"two cats":2 + sofa'),
        (["it's", "sunny"], "it's sunny"),
        (["two", "dogs", "in", "snow"], "two dogs in snow"),
        (["a - b", "-", "c"], '"a - b" - c'),
        (['say "hi"', "+", "x"], r'"say \"hi\"" + x'),
        (["+x", "y"], "+x y"),
        (["+", "in winter"], '+ "in winter"'),
        (["meeting at 10:30", "-", "x"], '"meeting at 10:30" - x'),
        (['"dog" + "snow"'], '"dog" + "snow"'),  # one argument: the user quoted the whole query
        ([], ""),
    ],
)
def test_expression_from_argv(args, text):
    assert expression_from_argv(args) == text


def test_argv_examples_parse_as_meant():
    assert terms(expression_from_argv(["it's", "sunny"])) == [T("it's sunny")]
    assert terms(expression_from_argv(["two cats:2", "+", "sofa"])) == [T("two cats", 2), T("sofa")]
    assert terms(expression_from_argv(["a - b", "-", "c"])) == [T("a - b"), T("c", -1)]


# --- properties -------------------------------------------------------------------------------

# Characters that matter to the syntax, mixed with arbitrary unicode.
SYNTAX = st.sampled_from(list("+-:\"\\' .019") + [" ", "\t", "\n", "image:", 'like:"', "é", "猫"])
tricky_text = st.lists(SYNTAX | st.characters(), min_size=1, max_size=12).map("".join)
texts = tricky_text.filter(lambda s: s.split())
paths = tricky_text
any_size = st.floats(min_value=0, exclude_min=True, allow_infinity=False)  # subnormals to the largest float
sizes = st.sampled_from([1.0, 2.0, 0.5, 0.1, 3.25]) | any_size
weights = st.tuples(sizes, st.sampled_from([1, 1, -1])).map(lambda p: p[0] * p[1])
term_st = st.one_of(
    st.builds(Term, weights, text=texts),
    st.builds(Term, weights, image=paths),
    st.builds(Term, weights, like=paths),
)
expressions = (
    st.lists(term_st, min_size=1, max_size=5)
    .filter(lambda ts: any(t.weight > 0 for t in ts))
    .map(lambda ts: Expression(tuple(ts)))
)


@props
@given(expressions)
@example(Expression((Term(5e-324, text="x"), Term(-1.7976931348623157e308, image='"\\'))))
def test_canonical_form_reads_back_equal(e):
    assert parse_expression(str(e)) == e


@props
@given(expressions, st.sampled_from(["image", "like"]), paths, weights)
def test_first_term_joins_the_canonical_form(e, kind, path, weight):
    first = Term(weight, **{kind: path})
    assert parse_expression(str(e), first=first).terms == (first, *e.terms)


_WEIGHT = re.compile(r"(.*[^0-9]):([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\Z", re.DOTALL)


def meant(args):
    """What the user meant by ARGS (two or more): arguments between operators make one term,
    whitespace collapsed, with a weight glued to its last word. None where that is an error."""
    runs, signs, run = [], [1], []
    for arg in args:
        if arg in ("+", "-"):
            runs.append(run)
            signs.append(1 if arg == "+" else -1)
            run = []
        elif arg.strip():
            run.append(arg)
    runs.append(run)
    if not runs[0] and len(runs) > 1:  # a leading operator signs the first term
        runs.pop(0)
        signs.pop(0)
    result = []
    for sign, run in zip(signs, runs):
        if not run:
            return None
        words = " ".join(run).split()
        weight, m = 1.0, _WEIGHT.match(words[-1])
        if m:
            words[-1], weight = m[1], float(m[2])
            if weight == 0 or weight == float("inf"):
                return None
        result.append(Term(sign * weight, text=" ".join(words)))
    return result if any(t.weight > 0 for t in result) else None


ARG_CHARS = st.sampled_from(list("ab+-:\"'\\ 07.") + ["\t", "猫", "image:", "x:2", ":0"]) | st.characters()
argv_words = st.lists(ARG_CHARS, max_size=6).map("".join)
ops = st.sampled_from(["+", "-"])


def _flatten(lead, rest):
    return [*lead, *(arg for op, run in rest for arg in (op, *run))]


# Mostly well-formed (runs of words between operators), with empty runs now and then.
argv = st.builds(
    _flatten,
    st.lists(argv_words, max_size=3),
    st.lists(st.tuples(ops, st.lists(argv_words, min_size=1, max_size=3)), max_size=3),
).filter(lambda args: len(args) >= 2) | st.lists(ops | argv_words, min_size=2, max_size=8)


@props
@given(argv)
@example(["two cats:2", "+", "sofa"])
@example(["a - b", "-", "c:0"])
@example(["x", '"y":2'])
def test_argv_parses_to_what_the_user_meant(args):
    expected = meant(args)
    text = expression_from_argv(args)
    if expected is None:
        with pytest.raises(UsageError):
            parse_expression(text)
    else:
        assert list(parse_expression(text).terms) == expected


@props
@given(st.text() | st.lists(SYNTAX | st.characters(), max_size=30).map("".join))
def test_any_input_parses_or_is_a_usage_error(text):
    try:
        e = parse_expression(text)
    except UsageError as err:
        assert str(err).startswith("query: ")
        return
    assert e.terms and any(t.weight > 0 for t in e.terms)
    assert parse_expression(str(e)) == e
