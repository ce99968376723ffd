"""WebDataset tar shards (what img2dataset and LAION produce).

Plain ``.tar`` files in which the files of a sample share a key: the member name up to the
first dot of its base name (``dir/abc.jpg``, ``dir/abc.txt``, ``dir/abc.json`` are sample
``dir/abc``). The image is located by its byte offset in the tar, so it is read in place
(``read_member``) without unpacking; ``.txt`` is the caption, ``.json`` the metadata. A sample
or shard that cannot be used comes out as a ``BadRow`` (see :mod:`cbir.ingest.datasets`).
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cbir.errors import UsageError
from cbir.ingest.datasets import (
    COMPRESSED_TAR,
    PATTERN,
    SURROGATE,
    BadRow,
    caption_texts,
    expand_braces,
)

# Tar members that are images, in order of preference when a sample has several.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "jpe", "png", "webp", "gif", "bmp", "tif", "tiff", "heic", "heif", "avif")
MAX_SIDECAR_BYTES = 8 * 1024 * 1024  # a .txt/.json member larger than this is not metadata
_COMPRESSED_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}


@dataclass(frozen=True)
class TarSample:
    tar: Path
    key: str
    member: str  # the image member's name
    offset: int  # of the member's data in the tar: read_member(tar, offset, size)
    size: int
    mtime: int
    captions: tuple[str, ...]
    extra: dict = field(hash=False)  # the parsed .json member ({"json": value} if not an object)
    problems: tuple[str, ...] = ()  # usable, but something in the sample was ignored


def expand_shards(pattern: str) -> list[Path]:
    """The tar files a shard argument names: one path, a glob (``shards/*.tar``), a brace list
    (``shards/{00000..00009}.tar``, ``{a,b}.tar``) or both; sorted, each once. A name the braces
    spell out must exist (a missing shard is an error, not a silent gap; use a glob to take
    whatever is there); a glob must match something."""
    paths: set[Path] = set()
    for part in expand_braces(pattern):
        if os.path.isfile(part):
            paths.add(Path(os.path.normpath(part)))
        elif PATTERN.search(part):
            matches = glob.glob(part, recursive=True)
            paths.update(Path(os.path.normpath(p)) for p in matches if os.path.isfile(p))
        elif "{" in pattern:
            raise UsageError(f"shard not found: {part} (from {pattern})")
    if not paths:
        raise UsageError(f"no shard matches {pattern}")
    _refuse_compressed(paths)
    return sorted(paths)


def _refuse_compressed(paths: Iterable[Path]) -> None:
    for path in paths:
        if str(path).lower().endswith(COMPRESSED_TAR):
            raise UsageError(
                f"compressed tar shards are not supported: {path} "
                "(img2dataset writes plain .tar; decompress with gunzip)"
            )


def read_webdataset(shards: list[Path]) -> Iterator[TarSample | BadRow]:
    """The samples of each shard in order. Files of a sample are grouped while consecutive (as
    webdataset writes them); a key that comes back later is read as another sample."""
    shards = [Path(s) for s in shards]
    _refuse_compressed(shards)
    for shard in shards:
        yield from _read_shard(shard)


# One tar member of a sample: (key, extension, member, the sidecar's bytes or None).
_Member = tuple[str, str, tarfile.TarInfo, bytes | None]


def _read_shard(path: Path) -> Iterator[TarSample | BadRow]:
    source = str(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        yield BadRow(source, None, f"cannot read shard: {e.strerror or e}")
        return
    with f:
        file_size = os.fstat(f.fileno()).st_size
        magic = f.read(6)
        for prefix, kind in _COMPRESSED_MAGIC.items():
            if magic.startswith(prefix):
                reason = f"compressed tar shards are not supported: {kind} data"
                yield BadRow(source, None, f"{reason} (img2dataset writes plain .tar)")
                return
        f.seek(0)
        try:
            tar = tarfile.open(fileobj=f, mode="r:")
        except (tarfile.TarError, OSError) as e:
            yield BadRow(source, None, f"not a tar file: {e}")
            return
        samples, error = 0, None
        group: list[_Member] = []
        try:
            while (member := tar.next()) is not None:
                # tarfile keeps every member it reads; we need none of them (typeshed omits members)
                tar.members = []  # type: ignore[attr-defined]
                if not member.isfile() or member.issparse():
                    continue
                key, ext = _split_name(member.name)
                if key is None:
                    continue
                if group and key != group[0][0]:
                    sample = _sample(path, group, file_size)
                    if sample is not None:  # (None only for a group cut off by the end of the file)
                        samples += isinstance(sample, TarSample)
                        yield sample
                    group = []
                payload = None
                if ext in ("txt", "json") and member.size <= MAX_SIDECAR_BYTES:
                    sidecar = tar.extractfile(member)  # None only for members that are not files
                    payload = sidecar.read() if sidecar is not None else None
                group.append((key, ext, member, payload))
        except (tarfile.TarError, OSError) as e:
            error = str(e) or type(e).__name__
        if error is None and not _ends_cleanly(f, tar.offset):
            error = "no end-of-archive marker"
        if group:  # after an error, only a sample whose image is all there
            sample = _sample(path, group, file_size)
            if sample is not None and (error is None or isinstance(sample, TarSample)):
                samples += isinstance(sample, TarSample)
                yield sample
        if error is not None:
            yield BadRow(source, None, f"truncated or corrupt tar after {samples} samples: {error}")


def _split_name(name: str) -> tuple[str | None, str]:
    """(key, extension) by the webdataset convention: the key is the name up to the first dot
    of its base name. Hidden names (``._abc.jpg`` from macOS, ``.DS_Store``) give no key."""
    folder, _, base = name.rpartition("/")
    if not base or base.startswith("."):
        return None, ""
    stem, _, ext = base.partition(".")
    folder = folder.removeprefix("./")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _sample(tar: Path, group: list[_Member], file_size: int) -> TarSample | BadRow | None:
    """One sample from its members; None when its image lies past the end of a truncated tar
    (the tar's own BadRow reports that)."""
    key = group[0][0]
    images, problems = [], []
    sidecars: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
    for _, ext, member, payload in group:
        suffix = ext.rpartition(".")[2]  # "seg.png" is a png too
        if suffix in IMAGE_EXTENSIONS:
            images.append((IMAGE_EXTENSIONS.index(suffix), member))
        elif ext in ("txt", "json"):
            sidecars.setdefault(ext, (member, payload))
    if not images:
        return BadRow(str(tar), None, f"no image in sample {_safe(key)}")
    image = min(images, key=lambda ranked: ranked[0])[1]  # the first of the preferred kind
    if SURROGATE.search(image.name):  # tarfile's stand-ins for undecodable bytes
        return BadRow(str(tar), None, f"member name {_safe(image.name)} is not valid UTF-8")
    if len(images) > 1:
        problems.append(f"{len(images)} images in sample {key}; using {image.name}")
    if image.offset_data + image.size > file_size:
        return None
    text = meta = None
    if "txt" in sidecars:
        member, payload = sidecars["txt"]
        try:
            text = payload.decode("utf-8-sig") if payload is not None else None
        except UnicodeDecodeError:
            problems.append(f"caption {member.name} is not valid UTF-8; ignored")
    if "json" in sidecars:
        member, payload = sidecars["json"]
        try:
            meta = json.loads(payload) if payload is not None else None
        except ValueError:
            problems.append(f"metadata {member.name} is not valid JSON; ignored")
    for member, payload in sidecars.values():
        if payload is None:
            problems.append(f"{member.name} is larger than {MAX_SIDECAR_BYTES} bytes; ignored")
    extra = meta if isinstance(meta, dict) else ({} if meta is None else {"json": meta})
    captions = caption_texts(text)
    if not captions:  # no .txt, or an empty or unreadable one: the .json's caption, if any
        captions = caption_texts(extra.get("caption")) or caption_texts(extra.get("text"))
    return TarSample(
        tar, key, image.name, image.offset_data, image.size, int(image.mtime), captions, extra, tuple(problems)
    )


def _safe(name: str) -> str:
    """A name for messages: undecodable bytes (surrogates) shown as escapes."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _ends_cleanly(f, offset: int) -> bool:
    """Whether an end-of-archive block is where tarfile stopped. tarfile ends quietly on a
    missing or cut-off header, which is how a tar cut at a member boundary looks."""
    f.seek(offset)
    block = f.read(tarfile.BLOCKSIZE)
    return len(block) == tarfile.BLOCKSIZE and block.count(0) == tarfile.BLOCKSIZE


def read_member(tar: Path, offset: int, size: int) -> bytes:
    """The ``size`` bytes at ``offset`` in a tar (a ``TarSample``'s image); OSError if fewer."""
    with open(tar, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise OSError(f"{tar}: expected {size} bytes at offset {offset}, read {len(data)}")
    return data
