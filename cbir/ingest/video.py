"""Video files (the media extra, PyAV): a few frames of each, chosen where the picture changes,
each a library item `clip.mp4#t=12.5`.

Which frames. Every decoded frame gets a 32x18 greyscale thumbnail, the means of luma samples read
in place (0.1 ms at 720p, against 1.3 ms to decode the frame); only a kept frame is converted,
straight to the size the model needs. A frame is kept when
- it is the first (always kept, t=0);
- it follows a cut: a quarter of its thumbnail's cells (CUT_THRESHOLD) or more changed by over 8
  grey levels from the previous frame's, and 3 times (CUT_RATIO) the running mean of that fraction.
  Measured on generated 720p pictures: cuts between unrelated ones change 0.37-0.9 of the cells
  (smooth gradients that differ little 0.37-0.45, sharp blocks 0.86-0.9); noise (sigma 30) none,
  a 100-pixel object jumping across the picture 0.03, pans of up to 4 pixels a frame over sharp
  detail 0.14 at most, over smooth gradients none. The ratio keeps a faster pan over sharp
  detail (0.3-0.4 at 8-16 pixels a frame) from reading as a run of cuts;
- or the picture drifted: the 8x4 cell means of its thumbnail differ from the last kept frame's
  by DRIFT_THRESHOLD (16) or more: a dissolve, or a pan that brought new content (a pan over
  sharp blocks reaches it after ~10% of the width, one over smooth gradients never);
- or `every` seconds passed since the last kept frame (a long static shot still gets one);
- and never within MIN_GAP (1 s) of the last kept frame, so flashes and fast editing do not
  flood the library: a cut inside the gap is kept at the gap's end if the picture still differs
  from the last kept one as a cut would.
When more frames qualify than `max_frames`, the one whose removal leaves the smallest hole, times
its strength (1 for a periodic frame, 1 + difference / threshold for a change), is dropped at
once, so no more than max_frames + 1 are ever held; the first and the latest stay. For a video
whose length is known, `every` is first stretched to length / max_frames.

What it costs. Decoding dominates. It runs on one thread: each ingest worker is one core. A video
whose full decoding would take more than DECODE_BUDGET pixels (duration x frame rate x width x
height) has only its keyframes decoded (two a second at most), from the start; one of unknown
length (or longer than it said) switches to keyframes once it has spent the budget. Encoders put a keyframe at a cut (x264
and most others do) and at least every few seconds in phone and camera videos, so cuts are still
found, to the keyframe.

Memory: three thumbnails, the kept frames at `side` (100 at 224 px: ~27 MB) and FFmpeg's decoder
(its reference frames: ~20 MB at 1080p). A frame over `max_pixels` is refused before it is decoded.

Broken files. A video that cannot be opened, has no video stream or yields no frame raises
BadImage with a one-line reason; one that breaks after some frames keeps them, with a note.
Pillow, numpy and cbir.ingest.limits only; PyAV is imported when a video is read, so a plain
install records such files as skipped, naming the extra to install."""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from PIL import Image

from cbir.fsutil import special_file
from cbir.ingest.limits import BadImage

# What people's libraries hold and the FFmpeg bundled in PyAV's wheels demuxes (mov/mp4, matroska,
# avi, mpeg-ps, mpeg-ts, 3gp, asf, ogg).
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".3gp", ".mts", ".m2ts", ".wmv", ".ogv"}
)
EVERY = 10.0  # default: at least one frame every this many seconds
MAX_FRAMES = 100  # default: frames kept per video at most
NEEDS_MEDIA = "video: reading it needs the media extra: pip install 'cbir[media]'"

CELL_CHANGE = 8.0  # grey levels (0-255) a thumbnail cell must change by to count as changed
CUT_THRESHOLD = 0.25  # the fraction of cells changed from one frame to the next for a cut,
CUT_RATIO = 3.0  # ... and this many times the running mean of those fractions
DRIFT_THRESHOLD = 16.0  # mean absolute difference (0-255) of 8x4 cell means from the last kept frame
MIN_GAP = 1.0  # seconds between two kept frames at least
DECODE_BUDGET = 180 * 30 * 1280 * 720  # pixels decoded in full at most: 3 min of 720p30
MAX_PIXELS = 2 * 89_478_485  # as cbir.ingest.decode's: Pillow's bomb limit, twice
_MAX_ERRORS = 8  # packets the demuxer or decoder may refuse before the rest is given up
_THUMB = (32, 18)
_UPRIGHT = {90: Image.Transpose.ROTATE_90, -90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180}


def is_video_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def video_installed() -> bool:
    return importlib.util.find_spec("av") is not None


@dataclass(frozen=True)
class VideoFrame:
    seconds: float  # from the start of the video (first frame = 0.0), rounded to 0.01
    image: Image.Image  # RGB, upright, its shorter side `side` pixels (or the video's own when smaller)


@dataclass(frozen=True)
class Video:
    duration: float | None  # seconds (container or stream duration); None when unknown
    width: int  # display size of the video stream (rotation and pixel aspect applied)
    height: int
    codec: str  # e.g. "h264"
    frames: list[VideoFrame]  # in time order, at least one
    note: str | None  # what was bounded or broken but still usable


def fragment(seconds: float) -> str:
    """The W3C media fragment of a time, in its shortest form: "t=0", "t=12.5", "t=61.04"."""
    text = f"{max(0.0, seconds):.2f}".rstrip("0").rstrip(".")
    return f"t={text}"


@dataclass
class _Kept:
    seconds: float
    image: Image.Image
    weight: float  # how strong a change it marked: 1 for a periodic frame, more for a cut


def _one_line(e: BaseException) -> str:
    """FFmpeg's reason, without the errno and the file name PyAV adds to it."""
    text = getattr(e, "strerror", None) or str(e)
    return " ".join(str(text).split()) or type(e).__name__


def _import_av():
    try:
        import av
    except ImportError:
        raise BadImage(NEEDS_MEDIA) from None
    return av


def _open(av, path: str):
    """The container and its video stream, single-threaded; BadImage for anything unusable."""
    st = os.stat(path)  # a FIFO would block FFmpeg's reader, /dev/zero never ends
    kind = special_file(st.st_mode)
    if kind == "a folder":
        raise IsADirectoryError(path)
    if kind:
        raise BadImage(f"not a regular file: {kind}")
    if st.st_size == 0:
        raise BadImage("corrupt or truncated video: the file is empty")
    try:
        container = av.open(path, "r", metadata_errors="ignore")
    except av.FFmpegError as e:
        if isinstance(e, FileNotFoundError | PermissionError):
            raise OSError(e.errno, e.strerror, path) from None
        raise BadImage(f"corrupt or truncated video: {_one_line(e)}") from None
    if not container.streams.video:
        audio = bool(container.streams.audio)
        container.close()
        # an MP4 cut inside its index (moov) may read as nothing, or as one stream of unknown data
        raise BadImage("no video stream" if audio else "corrupt or truncated video: no video stream found")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # a stream FFmpeg has no decoder for, or could not probe
        container.close()
        raise BadImage("corrupt or unsupported video: no decoder for its video stream")
    stream.codec_context.thread_count = 1
    return container, stream


def _seconds(stream, frame) -> float | None:
    if frame.pts is None or stream.time_base is None:
        return None
    return float((frame.pts - (stream.start_time or 0)) * stream.time_base)


def _duration(container, stream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _display_size(stream, width: int, height: int, rotation: int) -> tuple[int, int]:
    """The size a player shows: non-square pixels stretched (widths), turned by the rotation."""
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    if sar and sar > 0 and sar != 1:
        width = max(1, round(width * Fraction(sar)))
    return (height, width) if rotation in (90, -90) else (width, height)


def _rotation(frame) -> int:
    try:
        degrees = frame.rotation
    except (AttributeError, ValueError):
        return 0
    return min((0, 90, -90, 180), key=lambda r: abs(((degrees or 0) - r + 180) % 360 - 180))


def _convert(stream, frame, side: int, longest: bool = False) -> Image.Image:
    """One frame as an upright RGB image whose shorter (or longer) side is ``side`` pixels, or
    the frame's own when smaller: scaled by FFmpeg from the decoded planes, never held in RGB at
    full size."""
    rotation = _rotation(frame)
    w, h = _display_size(stream, frame.width, frame.height, 0)
    ref = max(w, h) if longest else min(w, h)
    scale = min(1.0, side / ref)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    image = frame.reformat(width=tw, height=th, format="rgb24", interpolation="AREA").to_image()
    if rotation:
        image = image.transpose(_UPRIGHT[rotation])
    return image


# Pixel formats whose first plane is 8-bit luma: read in place (0.1 ms a 720p frame, where FFmpeg's
# scaler takes 2-3 ms, as long as decoding the frame).
_LUMA8 = frozenset(
    {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv440p", "yuvj440p", "yuv411p",
     "yuv410p", "yuva420p", "nv12", "nv21", "gray"}
)  # fmt: skip


def _thumb(frame) -> np.ndarray:
    """A frame's 32x18 greyscale thumbnail: each cell the mean of 16 luma samples spread over it."""
    tw, th = _THUMB
    h, w = frame.height, frame.width
    cy, cx = h // th, w // tw
    if frame.format.name not in _LUMA8 or not cy or not cx:
        small = frame.reformat(width=tw, height=th, format="gray", interpolation="AREA")
        return small.to_ndarray().astype(np.float32)
    plane = frame.planes[0]
    luma = np.frombuffer(plane, np.uint8).reshape(h, plane.line_size)
    rows = (np.arange(th)[:, None] * cy + np.arange(0, cy, max(1, cy // 4))[None, :]).ravel()
    cols = (np.arange(tw)[:, None] * cx + np.arange(0, cx, max(1, cx // 4))[None, :]).ravel()
    samples = luma[np.ix_(rows, cols)].astype(np.float32)
    return samples.reshape(th, len(rows) // th, tw, len(cols) // tw).mean(axis=(1, 3))


def _drop_one(kept: list[_Kept]) -> None:
    """Drop the kept frame whose removal leaves the smallest hole, weighted by its strength; the
    first frame stays, and so does the latest while there are others to drop (what comes next
    may make an interior frame redundant, not the newest)."""
    if len(kept) <= 2:
        del kept[1:]
        return
    best, best_cost = None, math.inf
    for i in range(1, len(kept) - 1):
        hole = kept[i + 1].seconds - kept[i - 1].seconds
        cost = hole * kept[i].weight
        if cost < best_cost:
            best, best_cost = i, cost
    if best is not None:
        del kept[best]


def read_video(
    path: str,
    side: int,
    *,
    every: float = EVERY,
    max_frames: int = MAX_FRAMES,
    max_pixels: int = MAX_PIXELS,
    decode_budget: int = DECODE_BUDGET,
) -> Video:
    """The frames of a video worth indexing (see the module's docstring for which), each an
    upright RGB image with its shorter side ``side`` pixels. Raises BadImage with a one-line
    reason when no frame can be used."""
    if max_frames < 1 or every <= 0:
        raise ValueError("read_video: max_frames must be at least 1 and every positive")
    av = _import_av()
    container, stream = _open(av, path)
    try:
        return _read(av, container, stream, side, every, max_frames, max_pixels, decode_budget)
    except MemoryError:
        raise BadImage("video too large to decode in memory") from None
    finally:
        container.close()


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise BadImage(f"refused: {width}x{height} video frames are over the {max_pixels:,} pixel limit")


def _changed(a: np.ndarray, b: np.ndarray) -> float:
    """The fraction of thumbnail cells that changed by more than CELL_CHANGE."""
    return float((np.abs(a - b) > CELL_CHANGE).mean())


def _coarse(thumb: np.ndarray) -> np.ndarray:
    """A thumbnail's 8x4 cell means (its bottom 2 rows left out): what drift is measured on, so
    that a pan moving detail by a few thumbnail pixels does not count as a new picture."""
    return thumb[:16].reshape(4, 4, 8, 4).mean(axis=(1, 3))


class Sampler:
    """Which frames to keep, from their times and thumbnails alone (see the module docstring):
    ``weigh`` says, frame by frame in time order, whether to keep one (its weight, over 0) or
    not (0)."""

    def __init__(self, every: float, sparse: bool = False) -> None:
        self.every = every
        # Frames seconds apart (keyframes only): any motion is a big step, so the running mean
        # says nothing; a cut is then CUT_THRESHOLD alone.
        self.sparse = sparse
        self.kept_at: float | None = None  # the last kept frame's time
        self._kept_thumb: np.ndarray | None = None
        self._prev: np.ndarray | None = None
        self._usual = 0.0  # the running mean of frame-to-frame differences (motion, noise)
        self._cut_seen = False

    def weigh(self, t: float, thumb: np.ndarray) -> float:
        weight = 0.0
        if self.kept_at is None or self._kept_thumb is None or self._prev is None:
            weight = 1.0
        else:
            step = _changed(thumb, self._prev)
            drift = float(np.abs(_coarse(thumb) - _coarse(self._kept_thumb)).mean())
            if step >= max(CUT_THRESHOLD, 0 if self.sparse else CUT_RATIO * self._usual):
                self._cut_seen = True
            self._usual += (step - self._usual) * 0.2
            if t - self.kept_at >= MIN_GAP:
                if self._cut_seen and _changed(thumb, self._kept_thumb) >= CUT_THRESHOLD:
                    weight = 1.0 + drift / DRIFT_THRESHOLD
                elif drift >= DRIFT_THRESHOLD:
                    weight = 1.0 + drift / DRIFT_THRESHOLD
                elif t - self.kept_at >= self.every - 1e-6:
                    weight = 1.0
                self._cut_seen = False  # a flash inside the gap, gone by its end, is forgotten
        self._prev = thumb
        if weight:
            self.kept_at, self._kept_thumb = t, thumb
        return weight


def _read(av, container, stream, side, every, max_frames, max_pixels, decode_budget) -> Video:
    cc = stream.codec_context
    _check_pixels(cc.width or 0, cc.height or 0, max_pixels)
    duration = _duration(container, stream)
    rate = stream.average_rate or stream.guessed_rate
    keyframes_only = False
    if duration and rate and cc.width and cc.height:
        keyframes_only = duration * float(rate) * cc.width * cc.height > decode_budget
        every = max(every, duration / max_frames)
    if keyframes_only:
        cc.skip_frame = "NONKEY"
    sampler = Sampler(every, sparse=keyframes_only)
    kept: list[_Kept] = []
    candidates, decoded_pixels, errors, last_t = 0, 0, 0, 0.0
    size: tuple[int, int] | None = None
    stopped: str | None = None
    keyframe_at = None
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.FFmpegError as e:  # the demuxer may find its feet again past damaged bytes
            errors += 1
            if errors > _MAX_ERRORS:
                stopped = _one_line(e)
                break
            packets = container.demux(stream)
            continue
        if keyframes_only and packet.size:
            at = packet.pts * stream.time_base if packet.pts is not None and stream.time_base else None
            if not packet.is_keyframe or (at is not None and keyframe_at is not None and at - keyframe_at < 0.5):
                continue  # only keyframes, two a second at most (intra-only codecs: all are)
            keyframe_at = at
        try:
            frames = packet.decode()
        except av.FFmpegError as e:
            errors += 1
            if errors > _MAX_ERRORS:
                stopped = _one_line(e)
                break
            continue
        for frame in frames:
            _check_pixels(frame.width, frame.height, max_pixels)
            decoded_pixels += frame.width * frame.height
            t = _seconds(stream, frame)
            if t is None:
                t = last_t + (1 / float(rate) if rate else 0.04)
            t = 0.0 if not kept else max(last_t, t)  # the first frame is t=0, whatever its pts
            last_t = t
            weight = sampler.weigh(t, _thumb(frame))
            if weight:
                candidates += 1
                size = size or _display_size(stream, frame.width, frame.height, _rotation(frame))
                kept.append(_Kept(round(t, 2), _convert(stream, frame, side), weight))
                if len(kept) > max_frames:
                    _drop_one(kept)
        if not keyframes_only and decoded_pixels > decode_budget:
            keyframes_only = sampler.sparse = True  # of unknown length, or longer than it said
            cc.skip_frame = "NONKEY"
    if not kept or size is None:
        raise BadImage(f"corrupt or truncated video: {stopped or 'no frame could be decoded'}")
    notes = []
    if stopped:
        notes.append(f"decoding stopped at {last_t:.1f} s: {stopped}")
    elif errors:
        notes.append(f"{errors} damaged packet{'s' if errors > 1 else ''} skipped")
    if not stopped and duration and last_t < duration - max(2.0, duration / 10) and not keyframes_only:
        notes.append(f"the video ends at {last_t:.1f} s of the {duration:.1f} s it declares (truncated?)")
    if candidates > len(kept):
        notes.append(f"{len(kept)} frames kept of {candidates} candidates")
    if keyframes_only:
        notes.append("keyframes only: a long video")
    frames = [VideoFrame(k.seconds, k.image) for k in kept]
    return Video(duration, size[0], size[1], cc.name or "unknown", frames, "; ".join(notes) or None)


def frame_at(path: str, seconds: float, longest_side: int, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The frame shown at ``seconds`` from the start (the last one at or before it; the last
    frame past the end), upright RGB with its longer side ``longest_side`` pixels at most: for
    showing people. It seeks to the keyframe before and decodes forward. BadImage for a bad file."""
    av = _import_av()
    container, stream = _open(av, path)
    try:
        cc = stream.codec_context
        _check_pixels(cc.width or 0, cc.height or 0, max_pixels)
        if seconds > 0 and stream.time_base:
            try:
                container.seek((stream.start_time or 0) + int(seconds / stream.time_base), stream=stream)
            except av.FFmpegError:
                container.seek(0, stream=stream)
        shown = None
        try:
            for frame in container.decode(stream):
                _check_pixels(frame.width, frame.height, max_pixels)
                t = _seconds(stream, frame)
                if shown is not None and t is not None and t > seconds + 0.005:  # kept times are rounded
                    break
                shown = frame
        except av.FFmpegError as e:
            if shown is None:
                raise BadImage(f"corrupt or truncated video: {_one_line(e)}") from None
        if shown is None:
            raise BadImage("corrupt or truncated video: no frame could be decoded")
        return _convert(stream, shown, longest_side, longest=True)
    except MemoryError:
        raise BadImage("video too large to decode in memory") from None
    finally:
        container.close()
