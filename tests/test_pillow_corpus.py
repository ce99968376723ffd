"""Pillow's own test images (Tests/images of its sdist: fuzzer finds, decompression bombs,
truncated and exotic variants of every format) as a torture set for a real `cbir ingest`: every
candidate file becomes a stored image or a recorded skip with a clear one-line reason, and
nothing crashes, hangs or takes absurd memory. Runs when CBIR_PILLOW_CORPUS names the folder:

    export CBIR_PILLOW_CORPUS="$(bash .ci/pillow_corpus.sh | tail -n 1)"
    python -m pytest -s tests/test_pillow_corpus.py
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cbir.ingest.decode import SUPPORTED_EXTENSIONS
from cbir.ingest.media import CONTAINER_EXTENSIONS
from tests.conftest import cbir_env, run_cbir

# Read at import: the autouse isolated_env fixture removes every CBIR_* variable before a test runs.
CORPUS = os.environ.get("CBIR_PILLOW_CORPUS")

pytestmark = [
    pytest.mark.slow,  # a corpus: the long suite (.ci/run), not the README's fast tier
    pytest.mark.skipif(
        not CORPUS,
        reason="set CBIR_PILLOW_CORPUS to Pillow's Tests/images folder: "
        'export CBIR_PILLOW_CORPUS="$(bash .ci/pillow_corpus.sh | tail -n 1)"',
    ),
]

INGEST_TIMEOUT = 600  # seconds; the corpus takes ~10 s on 2 cores: beyond this it hangs
# The ingest process imports torch (~1 GiB resident on its own); the corpus's largest legitimate
# image is a few MB decoded, its bombs are refused unread. Beyond this something decoded a bomb.
MAX_RSS = 3 * 1024**3


def candidates(root: Path) -> set[str]:
    """The files a folder scan must consider, found without cbir's scanner: not hidden, not
    under a hidden folder, with an image's, a PDF's or a video's extension (any case)."""
    found = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = Path(folder, name)
            read = path.suffix.lower() in SUPPORTED_EXTENSIONS | CONTAINER_EXTENSIONS
            if not name.startswith(".") and read and path.is_file():
                found.add(path.relative_to(root).as_posix())
    return found


def ingest_measured(folder: Path, library: Path, logs: Path) -> tuple[int, str, str, float, int]:
    """`cbir ingest` in a subprocess, as run_cbir runs it, but waited for with wait4 so its peak
    resident memory (its own or a decode worker's, whichever is larger) comes back with it:
    (exit code, stdout, stderr, seconds, peak RSS in bytes). Killed with its workers, and the
    test failed, when it outlives INGEST_TIMEOUT."""
    env = cbir_env()
    args = [
        sys.executable,
        "-m",
        "cbir",
        "ingest",
        str(folder),
        "--library",
        str(library),
        "--model",
        "cbir-tiny",
        "--device",
        "cpu",
        "--json",
        "-q",
    ]
    out, err = logs.with_suffix(".out"), logs.with_suffix(".err")
    start = time.monotonic()
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(args, stdout=stdout, stderr=stderr, env=env, start_new_session=True)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > INGEST_TIMEOUT:
                os.killpg(proc.pid, signal.SIGKILL)
                os.wait4(proc.pid, 0)
                proc.returncode = -signal.SIGKILL
                pytest.fail(f"cbir ingest still running after {INGEST_TIMEOUT} s (a hang?): {err.read_text()[-2000:]}")
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - start
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux
    return proc.returncode, out.read_text(), err.read_text(), seconds, peak


def reason_class(reason: str) -> str:
    """'corrupt or truncated image: image file is truncated' -> 'corrupt or truncated image'."""
    return reason.split(":", 1)[0].split(" (", 1)[0]


def unclear(reason: str) -> str | None:
    """What is wrong with a skip reason as a message for a person, or None."""
    if not reason.strip():
        return "empty"
    if "\n" in reason or "\r" in reason:
        return "more than one line"
    if "Traceback" in reason or re.search(r'File ".*", line \d+', reason):
        return "a traceback"
    if re.search(r"object at 0x[0-9a-f]+", reason):
        return "an object's repr"
    if re.search(r":\s*$", reason):
        return "an empty detail after its colon"
    if len(reason) > 300:
        return "too long"
    return None


def test_every_pillow_test_image_is_stored_or_skipped_with_a_clear_reason(tmp_path):
    source = Path(CORPUS)
    assert source.is_dir(), f"CBIR_PILLOW_CORPUS={CORPUS} is not a folder (bash .ci/pillow_corpus.sh prints it)"
    corpus = (tmp_path / "corpus").resolve()
    shutil.copytree(source, corpus, symlinks=True)  # the test never writes into the cache
    library = tmp_path / "lib"
    expected = candidates(corpus)
    assert len(expected) > 100, f"{source} holds only {len(expected)} image files: not Pillow's Tests/images?"

    started = time.monotonic()
    code, stdout, stderr, seconds, peak = ingest_measured(corpus, library, tmp_path / "ingest")
    assert code == 0 and "Traceback" not in stderr, stderr[-4000:]
    report = json.loads(stdout)

    status = run_cbir("status", "--library", str(library), "--skipped", "--json")
    assert status.returncode == 0, status.stderr
    status = json.loads(status.stdout)
    skipped = {Path(s["path"]).relative_to(corpus).as_posix(): s["reason"] for s in status["skipped_files"]}
    with sqlite3.connect(library / "library.db") as db:
        rows = db.execute(
            "select r.path, i.path, i.container_hash from images i join roots r on r.id = i.root_id"
        ).fetchall()
    assert {root for root, _, _ in rows} == {str(corpus)}
    # the files stored: an image, or a PDF (the pages of one: "doc.pdf#page=2")
    stored = {path.rsplit("#", 1)[0] if container else path for _, path, container in rows}
    # a PDF read in part is stored and skipped (its reason says what was left out)
    partly = {path for path, reason in skipped.items() if reason.startswith("partly read:")}

    classes = collections.Counter(reason_class(r) for r in skipped.values())
    print(
        f"\npillow corpus: {len(expected)} files tried, {len(stored)} stored, {len(skipped)} skipped; "
        f"ingest {seconds:.1f} s, peak RSS {peak / 2**20:.0f} MiB"
    )
    for name, count in classes.most_common():
        print(f"  {count:4d}  {name}")

    # every candidate is exactly one of: stored, skipped
    assert report["scanned"] == len(expected)
    assert not (stored & skipped.keys()) - partly, sorted(stored & skipped.keys())
    assert stored | skipped.keys() == expected, {
        "neither stored nor skipped": sorted(expected - stored - skipped.keys()),
        "not a candidate": sorted((stored | skipped.keys()) - expected),
    }
    assert (report["added"], report["skipped"]) == (len(rows), len(skipped))
    assert status["images"] == len(rows) and status["skipped"] == len(skipped)
    bad = {path: (why, reason) for path, reason in skipped.items() if (why := unclear(reason))}
    assert not bad, bad
    assert peak < MAX_RSS, f"cbir ingest peaked at {peak / 2**20:.0f} MiB resident"

    # unchanged files: nothing is encoded again, and no failed file is retried
    again = run_cbir(
        "ingest", str(corpus), "--library", str(library), "--device", "cpu", "--json", "-q", timeout=INGEST_TIMEOUT
    )
    assert again.returncode == 0, again.stderr[-4000:]
    again = json.loads(again.stdout)
    assert (again["added"], again["updated"], again["encoded"], again["skipped"], again["removed"]) == (0, 0, 0, 0, 0)
    assert again["unchanged"] == len(expected) and again["skipped_total"] == len(skipped)

    verify = run_cbir("index", "verify", "--library", str(library))
    assert verify.returncode == 0 and all(line.endswith(": ok") for line in verify.stdout.splitlines()), (
        verify.stdout + verify.stderr
    )
    search = run_cbir("search", "a red circle", "--library", str(library), "--device", "cpu", "--json", "-k", "5")
    assert search.returncode == 0, search.stderr
    hits = [json.loads(line) for line in search.stdout.splitlines()]
    assert len(hits) == 5 and all(Path(h.get("file", h["path"])).relative_to(corpus).as_posix() in stored for h in hits)
    print(f"  test body {time.monotonic() - started:.1f} s")
