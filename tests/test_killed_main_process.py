"""Killing the main process alone (the OOM killer, `kill PID`, `timeout`, systemd, a closed
terminal) must never leave the library locked or processes of the killed run behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cbir.errors import LibraryLocked
from cbir.fsutil import writer_lock
from tests.conftest import cbir_env, count_images, ctrl_c_as_in_a_terminal


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_group_gone(pgid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return True
        time.sleep(0.05)
    os.killpg(pgid, signal.SIGKILL)  # leave nothing behind for the next test
    return False


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    found = []
    for task in tasks.iterdir() if tasks.exists() else ():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _wait_children(proc: subprocess.Popen, n: int, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while len(_children(proc.pid)) < n:
        assert proc.poll() is None, "the run ended before its workers started"
        assert time.monotonic() < deadline, "no decode workers started"
        time.sleep(0.02)


def _wait_first_batch(proc: subprocess.Popen, db: Path, seconds: float = 60.0) -> None:
    """Until the run has committed a batch: it is then mid-run (240 images in batches of 8). A
    fixed sleep was not: on ONNX Runtime the whole run can end within half a second."""
    deadline = time.monotonic() + seconds
    while count_images(db) == 0:
        assert proc.poll() is None, "the run ended before it committed anything"
        assert time.monotonic() < deadline, "no batch was committed"
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be stopped"


# A process that takes the write lock and starts decode workers exactly as ingest does, then
# waits to be killed: no model, so the fast tier can afford it.
HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from cbir.fsutil import writer_lock
    from cbir.ingest.workers import worker_pool

    def work(_):
        time.sleep(60)

    with writer_lock(Path(sys.argv[1])):
        pool = worker_pool(2, print, ())
        futures = [pool.submit(work, i) for i in range(2)]
        print("ready", flush=True)
        time.sleep(60)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_of_a_killed_lock_holder_neither_keep_the_lock_nor_outlive_it(tmp_path):
    library = tmp_path / "lib"
    library.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(library)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout.readline() == "ready\n"
    _wait_children(proc, 2)
    with pytest.raises(LibraryLocked, match=rf"pid {proc.pid}, `python -c"):  # a live holder is named
        with writer_lock(library):
            pass
    proc.kill()  # the main process alone
    out, err = proc.communicate(timeout=10)  # no worker keeps the pipes open
    with writer_lock(library):  # free at once
        pass
    assert _wait_group_gone(proc.pid), "a worker outlived its killed parent"


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory) -> Path:
    from cbir.synthetic import make_gallery

    folder = tmp_path_factory.mktemp("big") / "photos"
    make_gallery(folder, 240, seed=3, size=(1600, 1200))
    return folder


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(
    "sig, group, code",
    [
        (signal.SIGKILL, False, -signal.SIGKILL),
        (signal.SIGTERM, False, 143),
        (signal.SIGHUP, False, 129),
        (signal.SIGINT, True, 130),  # Ctrl-C in a terminal reaches the whole process group
    ],
)
def test_an_ingest_ended_by_a_signal_leaves_nothing_locked_or_running(big_folder, tmp_path, sig, group, code):
    library = tmp_path / "lib"
    cmd = [
        sys.executable,
        "-m",
        "cbir",
        "ingest",
        str(big_folder),
        "--library",
        str(library),
        "--model",
        "cbir-tiny",
        "--workers",
        "2",
        "--batch-size",
        "8",
    ]
    env = cbir_env()
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=ctrl_c_as_in_a_terminal,
    )
    _wait_children(proc, 2)
    _wait_first_batch(proc, library / "library.db")  # mid-run: decoding and encoding under way
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)  # pipes closed: no worker holds them
    assert proc.returncode == code
    if sig != signal.SIGKILL:  # ended like Ctrl-C: one line, no worker's traceback
        assert err.strip().splitlines() == [
            "Interrupted: what was committed is kept; run the command again to continue."
        ], err
    assert _wait_group_gone(proc.pid), "a process of the killed run is still alive"
    again = subprocess.run([*cmd, "-q"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr  # not "another cbir process is writing"
    assert (
        "240 vectors"
        in subprocess.run(
            [sys.executable, "-m", "cbir", "status", "--library", str(library)], env=env, capture_output=True, text=True
        ).stdout
    )
