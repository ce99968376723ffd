"""Video files (cbir.ingest.video): short videos encoded here with PyAV from generated frames
(three scenes of solid colours with a moving square and noise), read back frame by frame, and
hostile ones (truncated, random bytes, empty, audio only, too many pixels). The tests that read
videos need PyAV (the media extra, also in the test extra) and are skipped without it, failed with
CBIR_REQUIRE_MEDIA=1; the skip without the extra and the sampling rule run everywhere."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from cbir.ingest.limits import BadImage
from cbir.ingest.video import (
    NEEDS_MEDIA,
    Sampler,
    fragment,
    frame_at,
    is_video_name,
    read_video,
    video_installed,
)
from tests.conftest import media_module

W, H, RATE = 160, 90, 25
COLOURS = [(200, 30, 30), (30, 60, 200), (30, 180, 60), (220, 200, 40)]


@pytest.fixture
def av():
    return media_module("av")


def scene_frames(seconds: list[float], seed: int = 0, rate: int = RATE):
    """RGB frames of scenes lasting ``seconds`` each: a solid colour, a white square moving
    across it and noise, so that no two frames of a scene are equal."""
    rng = np.random.default_rng(seed)
    for s, length in enumerate(seconds):
        for i in range(round(length * rate)):
            a = np.empty((H, W, 3), np.int16)
            a[:] = COLOURS[s % len(COLOURS)]
            x = (i * 2) % (W - 20)
            a[30:50, x : x + 20] = 255
            a += rng.integers(-8, 9, a.shape, dtype=np.int16)
            yield np.clip(a, 0, 255).astype(np.uint8)


def write_video(av, path, frames, codec: str = "libx264", rotate: int | None = None, rate: int = RATE):
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        if rotate is not None:
            stream.set_display_rotation(rotate)
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def colour_of(image) -> tuple[int, int, int]:
    """The colour of a frame away from the moving square (its bottom rows)."""
    a = np.asarray(image)[-max(1, image.height // 5) :].reshape(-1, 3)
    r, g, b = (int(v) for v in np.median(a, axis=0))
    return r, g, b


def near(colour, expected, tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, expected, strict=True))


def no_hang(fn, *args, seconds: float = 60, **kwargs):
    """fn(*args) on a thread, failed if it does not return within ``seconds``."""
    result: dict = {}

    def run():
        try:
            result["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001  (handed to the test)
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn.__name__} still running after {seconds} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


# -- everywhere ----------------------------------------------------------------------------------


def test_fragment_is_the_shortest_media_fragment():
    assert fragment(0) == "t=0"
    assert fragment(0.0) == "t=0"
    assert fragment(12.5) == "t=12.5"
    assert fragment(61.04) == "t=61.04"
    assert fragment(10.0) == "t=10"
    assert fragment(3.999) == "t=4"
    assert fragment(-0.01) == "t=0"


def test_video_names():
    for name in ("clip.mp4", "a/b/HOLIDAY.MOV", "x.mkv", "x.webm", "x.m2ts", "x.3gp", "x.ogv"):
        assert is_video_name(name), name
    for name in ("photo.jpg", "clip.mp4.txt", "mp4", "song.mp3"):
        assert not is_video_name(name), name


def test_without_pyav_a_video_is_a_skip_naming_the_extra(monkeypatch, tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\0\0\0\x18ftypmp42" + bytes(100))
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    with pytest.raises(BadImage) as e:
        read_video(str(path), 32)
    assert str(e.value) == NEEDS_MEDIA
    with pytest.raises(BadImage, match="pip install 'cbir\\[media\\]'"):
        frame_at(str(path), 1.0, 32)


def _sample(sampler: Sampler, thumbs, step: float = 0.04) -> list[float]:
    return [round(i * step, 2) for i, thumb in enumerate(thumbs) if sampler.weigh(i * step, thumb)]


def test_sampler_keeps_cuts_not_noise_and_every_n_seconds():
    rng = np.random.default_rng(0)
    a, b = np.full((18, 32), 60.0), np.full((18, 32), 75.0)  # a low-contrast cut: 15 levels
    noisy = [(a if i < 100 else b) + rng.normal(0, 3, (18, 32)) for i in range(400)]
    # 16 s at 25 frames/s: the first frame, the cut at 4 s, then every 5 s
    assert _sample(Sampler(every=5.0), noisy) == [0.0, 4.0, 9.0, 14.0]


def test_sampler_min_gap_and_flashes():
    dark, bright = np.zeros((18, 32)), np.full((18, 32), 200.0)
    # a one-frame flash at 0.4 s and a real cut at 0.6 s (inside the 1 s gap): kept at the gap's end
    frames = [dark] * 10 + [bright] + [dark] * 4 + [bright] * 60
    assert _sample(Sampler(every=100.0), frames) == [0.0, 1.0]
    # a flash alone is forgotten
    assert _sample(Sampler(every=100.0), [dark] * 10 + [bright] + [dark] * 60) == [0.0]


def test_sampler_ignores_a_fast_pan_over_detail():
    # a pan moving sharp detail by one thumbnail pixel every frame: big steps, but steady ones
    rng = np.random.default_rng(1)
    wide = rng.uniform(0, 255, (18, 32 * 40))
    thumbs = [np.full((18, 32), 128.0)] * 25 + [wide[:, i : i + 32] for i in range(25)]
    kept = _sample(Sampler(every=100.0), thumbs)
    assert kept[0] == 0.0 and len(kept) <= 2  # the pan's start may read as a cut; no more


# -- with PyAV -----------------------------------------------------------------------------------


@pytest.fixture
def three_scenes(av, tmp_path):
    """2 s red, 2 s blue, 3 s green."""
    return write_video(av, tmp_path / "scenes.mp4", scene_frames([2, 2, 3]))


@pytest.mark.parametrize("codec, suffix", [("libx264", "mp4"), ("mpeg4", "mp4"), ("libvpx", "webm")])
def test_one_frame_per_scene_at_its_cut(av, tmp_path, codec, suffix):
    path = write_video(av, tmp_path / f"scenes.{suffix}", scene_frames([2, 2, 3]), codec=codec)
    video = read_video(path, 48)
    assert [f.seconds for f in video.frames] == pytest.approx([0.0, 2.0, 4.0], abs=2 / RATE)
    for frame, colour in zip(video.frames, COLOURS, strict=False):
        assert near(colour_of(frame.image), colour), (frame.seconds, colour_of(frame.image))
    assert video.duration == pytest.approx(7.0, abs=0.1)
    assert (video.width, video.height) == (W, H)
    assert video.codec == {"libx264": "h264", "libvpx": "vp8"}.get(codec, codec)
    assert video.note is None
    for frame in video.frames:  # the shorter side at the size asked for, the aspect kept
        assert frame.image.mode == "RGB" and frame.image.size == (85, 48)


def test_every_adds_frames_to_a_long_scene(av, tmp_path):
    path = write_video(av, tmp_path / "long.mp4", scene_frames([1, 9]))  # a cut at 1 s, then 9 s
    assert [f.seconds for f in read_video(path, 32).frames] == pytest.approx([0, 1], abs=0.1)
    times = [f.seconds for f in read_video(path, 32, every=3).frames]
    assert times == pytest.approx([0, 1, 4, 7], abs=0.1)  # no more than the cut + every 3 s


def test_max_frames_bounds_the_count_and_keeps_the_first(av, tmp_path):
    path = write_video(av, tmp_path / "cuts.mp4", scene_frames([1.2] * 8))  # 8 scenes
    full = read_video(path, 32)
    assert len(full.frames) == 8 and full.note is None
    video = read_video(path, 32, max_frames=3)
    times = [f.seconds for f in video.frames]
    assert len(times) == 3 and times[0] == 0.0 and times == sorted(times)
    assert set(times) <= {f.seconds for f in full.frames}
    assert video.note == "3 frames kept of 8 candidates"
    assert len(read_video(path, 32, max_frames=1).frames) == 1


def test_a_small_video_is_not_upscaled(three_scenes):
    assert read_video(three_scenes, 500).frames[0].image.size == (W, H)


def test_rotation_is_applied(av, tmp_path):
    # left half red, right half blue; the display matrix turns it 90 degrees anticlockwise
    a = np.zeros((H, W, 3), np.uint8)
    a[:, : W // 2], a[:, W // 2 :] = (255, 0, 0), (0, 0, 255)
    path = write_video(av, tmp_path / "phone.mp4", [a] * 10, rotate=90)
    video = read_video(path, 45)
    assert (video.width, video.height) == (H, W)
    image = video.frames[0].image
    assert image.size == (45, 80)
    assert near(image.getpixel((22, 70)), (255, 0, 0)) and near(image.getpixel((22, 10)), (0, 0, 255))
    shown = frame_at(path, 0.1, 40)
    assert shown.size == (22, 40) and near(shown.getpixel((11, 35)), (255, 0, 0))


def test_frame_at_shows_the_scene_at_that_time(three_scenes):
    for seconds, colour in [(0, COLOURS[0]), (1.9, COLOURS[0]), (2.5, COLOURS[1]), (6.0, COLOURS[2])]:
        image = frame_at(three_scenes, seconds, 80)
        assert image.size == (80, 45)
        assert near(colour_of(image), colour), (seconds, colour_of(image))
    assert near(colour_of(frame_at(three_scenes, 999, 80)), COLOURS[2])  # past the end: the last


def test_frame_at_a_kept_time_shows_that_frame(av, tmp_path):
    # at 30 frames/s a cut at frame 61 is at 2.0333 s, kept as 2.03: still the new scene's frame
    path = write_video(av, tmp_path / "thirty.mp4", scene_frames([61 / 30, 2], rate=30), rate=30)
    video = read_video(path, 32)
    assert [f.seconds for f in video.frames] == [0.0, 2.03]
    assert near(colour_of(frame_at(path, video.frames[1].seconds, 80)), COLOURS[1])
    assert near(colour_of(frame_at(path, 2.0, 80)), COLOURS[0])


@pytest.mark.parametrize(
    "suffix, codec", [("mp4", "libx264"), ("webm", "libvpx"), ("mkv", "libx264"), ("avi", "mpeg4")]
)
def test_truncated_video_is_a_note_or_a_one_line_skip(av, tmp_path, suffix, codec):
    path = write_video(av, tmp_path / f"full.{suffix}", scene_frames([2, 2, 3]), codec=codec)
    data = open(path, "rb").read()
    for fraction in (0.5, 0.9):
        cut = tmp_path / f"cut.{suffix}"
        cut.write_bytes(data[: int(len(data) * fraction)])
        try:
            video = no_hang(read_video, str(cut), 32)
        except BadImage as e:  # an MP4 cut before its index (moov, written last)
            assert suffix == "mp4", str(e)
            assert "\n" not in str(e) and str(e).startswith("corrupt or "), str(e)
            assert str(cut) not in str(e)
            continue
        times = [f.seconds for f in video.frames]  # the frames before the cut
        assert times == pytest.approx([0.0, 2.0, 4.0][: len(times)], abs=2 / RATE)
        if fraction == 0.5:
            assert len(times) <= 2 and video.note is not None, video.note
    garbled = bytearray(data)  # damage spread over the last three quarters
    rng = np.random.default_rng(0)
    for at in rng.integers(len(data) // 4, len(data), 200):
        garbled[at] = rng.integers(0, 256)
    (tmp_path / f"garbled.{suffix}").write_bytes(bytes(garbled))
    try:
        video = no_hang(read_video, str(tmp_path / f"garbled.{suffix}"), 32)
    except BadImage as e:
        assert "\n" not in str(e) and str(e).startswith("corrupt or "), str(e)
    else:  # damaged frames are concealed by the decoder, and may read as more scenes
        times = [f.seconds for f in video.frames]
        assert times[0] == 0.0 and times == sorted(times) and len(times) <= 8


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "corrupt or truncated video: the file is empty"),
        (np.random.default_rng(0).bytes(20_000), "corrupt or truncated video: "),
        (b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom" + bytes(500), "corrupt or truncated video: "),
    ],
    ids=["empty", "random bytes", "a header only"],
)
def test_not_a_video_is_a_one_line_skip(av, tmp_path, content, reason):
    path = tmp_path / "clip.mp4"
    path.write_bytes(content)
    for read in (lambda: read_video(str(path), 32), lambda: frame_at(str(path), 1.0, 32)):
        with pytest.raises(BadImage) as e:
            no_hang(read)
        assert str(e.value).startswith(reason) and "\n" not in str(e.value) and str(path) not in str(e.value)


def test_audio_only_is_no_video_stream(av, tmp_path):
    path = tmp_path / "song.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=44100)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(BadImage, match="^no video stream$"):
        read_video(str(path), 32)


def test_frames_over_the_pixel_limit_are_refused(three_scenes):
    with pytest.raises(BadImage, match="^refused: 160x90 video frames are over the 10,000 pixel limit$"):
        read_video(three_scenes, 32, max_pixels=10_000)
    with pytest.raises(BadImage, match="pixel limit"):
        frame_at(three_scenes, 1.0, 32, max_pixels=10_000)


def test_a_long_video_is_read_from_its_keyframes(av, tmp_path):
    path = write_video(av, tmp_path / "scenes.mp4", scene_frames([2, 2, 3]))
    video = read_video(path, 32, decode_budget=W * H * 10)  # 10 frames' worth: keyframes only
    assert video.note == "keyframes only: a long video"
    # x264 puts a keyframe at each cut: the scenes are still found
    assert [f.seconds for f in video.frames] == pytest.approx([0.0, 2.0, 4.0], abs=2 / RATE)


def test_video_installed_says_whether_pyav_is_there(monkeypatch):
    import importlib.util

    assert video_installed() == (importlib.util.find_spec("av") is not None)
