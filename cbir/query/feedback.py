"""Relevance feedback: "more like these, less like those" as one weighted query (Rocchio).

    q' = alpha * q + beta * mean(liked) - gamma * mean(unliked)

with alpha = 1 and beta = 0.75, the values Manning, Raghavan and Schütze suggest (*Introduction
to Information Retrieval*, section 9.1.1), and gamma = 0.25, above their 0.15, which moved fewer
results on the demo library (docs/searching.md has the figures). beta < alpha keeps the query's own
words in charge: a few liked images steer it rather than replace it. gamma is small because an
image one does not want says little about what one does want: it is like the results in many
ways (that is why it was shown), so subtracting it strongly pushes the query away from the whole
neighbourhood, good results included.

The result is an ordinary weighted expression (:class:`cbir.query.expression.Expression`): the
query's own terms scaled so that their positive weights sum to alpha, each liked image
beta / n, each unliked one -gamma / m. Everything downstream (the normalised sum of unit
vectors, the plan, filters, batches) is unchanged, and ``--explain`` shows the terms with
these weights. With no positive term of its own (``--like a.jpg --like b.jpg``, maybe with
``- "indoors"``), the liked images carry the whole positive weight, alpha / n each.

One ``--like`` with no ``--unlike`` and no ``--image`` never gets here: it is the query itself,
weight 1, with any words added by query arithmetic, as before relevance feedback existed
(cbir.query.Query.expression).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from cbir.errors import UsageError
from cbir.query.expression import Expression, Term

ALPHA = 1.0  # the query's own terms, in total
BETA = 0.75  # the liked images, in total
GAMMA = 0.25  # the unliked images, in total


def rocchio(
    own: Sequence[Term],
    liked: Sequence[str],
    unliked: Sequence[str],
    *,
    alpha: float = ALPHA,
    beta: float = BETA,
    gamma: float = GAMMA,
) -> Expression:
    """The query of terms ``own`` moved towards the library images ``liked`` and away from
    ``unliked`` (paths, as --like takes them), as one expression (see the module docstring)."""
    positive = sum(t.weight for t in own if t.weight > 0)
    if positive > 0:
        terms = [replace(t, weight=t.weight * alpha / positive) for t in own]
        like_total = beta
    else:  # only subtractions of its own, or no terms: the likes are the query
        if not liked:
            raise UsageError("nothing to search for: give a query or --like with --unlike")
        terms = list(own)
        like_total = alpha
    terms += [Term(like_total / len(liked), like=path) for path in liked]
    terms += [Term(-gamma / len(unliked), like=path) for path in unliked]
    return Expression(tuple(terms))
