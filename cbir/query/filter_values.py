"""The values of search filters, as options and the --where language take them: dates (a period
each), image formats, whole numbers and folders. Sizes are read by ``cbir.units.parse_bytes``."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from decimal import Decimal

from cbir.errors import UsageError

DATE_FORMS = "YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]"

_FORMAT_ALIASES = {"jpg": "jpeg", "jpe": "jpeg", "tif": "tiff"}
_MAX_INTEGER = 2**63 - 1  # SQLite's INTEGER
_DATE_RE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2}))?)?)?)?")


def parse_date(text: str) -> tuple[datetime, datetime]:
    """A date literal as the period [start, end) it names: YYYY, YYYY-MM, YYYY-MM-DD,
    YYYY-MM-DDTHH:MM[:SS] (also with a space). Anything else -> UsageError naming the accepted forms."""
    match = _DATE_RE.fullmatch(text.strip())
    try:
        if match is None:
            raise ValueError
        parts = [int(p) for p in match.groups() if p is not None]
        # A missing month or day is the 1st, a missing time midnight.
        year, month, day, hour, minute, second = parts + [1] * (3 - len(parts)) + [0] * (6 - max(3, len(parts)))
        start = datetime(year, month, day, hour, minute, second)
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


def parse_count(text: str) -> int:
    """A whole number, e.g. of pixels; UsageError for anything else or one too large for SQLite."""
    if not re.fullmatch(r"\s*[0-9]+\s*", text):
        raise UsageError(f"invalid number {text!r}: use a whole number")
    # Decimal first: int() refuses strings of more than 4300 digits with a ValueError.
    if Decimal(text) > _MAX_INTEGER:
        raise UsageError(f"number too large: {text}")
    return int(text)


_DURATION_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """A length of time in seconds: 90, 1.5, 90s, 2min, 1h, or a clock's 1:30 and 1:02:03."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(:[0-5]\d){1,2}(\.\d+)?", t):
        *whole, last = t.split(":")
        return sum(int(part) * 60 ** (len(whole) - i) for i, part in enumerate(whole)) + float(last)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?", t)
    if not match:
        raise UsageError(f"invalid duration {text!r}: use seconds (90), 90s, 2min, 1.5h or 1:30")
    return float(match[1]) * _DURATION_UNITS[match[2] or "s"]


def folder_value(text: str) -> str:
    """A folder as typed; UsageError for a blank one."""
    if not text.strip():
        raise UsageError("empty folder")
    return text
