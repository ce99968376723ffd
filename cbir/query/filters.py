"""The metadata filters of a search (--after, --folder, --where ...): what its results must
satisfy besides the query.

Their parts: ``filter_values`` reads the values (dates, formats ...), ``where`` the --where
language, and ``filter_sql`` turns a ``Filters`` into one SQL condition on images.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time

from cbir.errors import UsageError
from cbir.query.filter_values import normalise_format
from cbir.query.where import And, Compare, Or, WhereNode, parse_where


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
        parts: list[WhereNode | None] = []
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
        nodes = [p for p in parts if p is not None]
        return str(And(tuple(nodes))) if len(nodes) > 1 else "".join(map(str, nodes))

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
