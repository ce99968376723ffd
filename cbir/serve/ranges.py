"""A whole file streamed from an open descriptor, in the byte range a client asks for (RFC 9110
section 14): browsers seek a video by asking for the bytes at the new position, and a PDF viewer
asks for the pages it shows.

Starlette's FileResponse does ranges too, but it opens the file again by path, after any check:
a FIFO swapped in between would block its thread for good. Here the file is the one
cbir.serve.files opened (cbir.ingest.limits.open_regular), read a chunk at a time, never whole.
One range is served; a request for several gets the whole file, which a server may always send.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import BinaryIO

CHUNK = 256 * 1024  # bytes read and sent at a time
_ONE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class Unsatisfiable(Exception):
    """The range starts at or past the end of the file (HTTP 416)."""


def requested_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end exclusive) of the one range ``header`` asks for in a file of ``size`` bytes;
    None for the whole file (no header, several ranges, or one this does not read).
    Unsatisfiable when it starts past the end."""
    match = _ONE_RANGE.fullmatch((header or "").strip().lower().replace(" ", ""))
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None  # "bytes=-": nothing asked
        length = int(last)  # the last N bytes
        if length == 0:
            raise Unsatisfiable
        return max(0, size - length), size
    start = int(first)
    if start >= size:
        raise Unsatisfiable
    end = size if not last else min(size, int(last) + 1)
    if end <= start:
        return None  # "bytes=9-3": invalid, ignored
    return start, end


def chunks(file: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    """Bytes ``start`` to ``end`` of ``file``, CHUNK at a time; the file is closed at the end (or
    when the client goes away and the iterator is dropped)."""
    try:
        fd = file.fileno()
        while start < end:
            data = os.pread(fd, min(CHUNK, end - start), start)
            if not data:
                return  # the file shrank while it was sent: the client sees a short body
            start += len(data)
            yield data
    finally:
        file.close()
