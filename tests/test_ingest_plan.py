"""The plan of an ingest (cbir.ingest.plan), from values alone: no model, no database, no files."""

from pathlib import Path

from cbir.ingest.decode import UNREADABLE, VANISHED, FileTask
from cbir.ingest.plan import plan_ingest
from cbir.ingest.scan import ScannedFile, ScanResult
from cbir.store.catalog import StoredFile

ROOT = Path("/photos")


def stored(image_id: int, size: int = 10, mtime_ns: int = 1, content_hash: str = "h", dataset=None) -> StoredFile:
    return StoredFile(image_id, size, mtime_ns, content_hash, dataset)


def test_new_and_changed_files_are_read_same_size_and_mtime_are_not():
    scanned = ScanResult(
        files=[
            ScannedFile("new.jpg", 10, 1),
            ScannedFile("same.jpg", 10, 1),
            ScannedFile("resized.jpg", 11, 1),
            ScannedFile("touched.jpg", 10, 2),
        ]
    )
    have = {"same.jpg": stored(1), "resized.jpg": stored(2), "touched.jpg": stored(3)}
    plan = plan_ingest(scanned, have, {}, ROOT)
    assert plan.to_read == [
        FileTask("new.jpg", "/photos/new.jpg", 10, 1),
        FileTask("resized.jpg", "/photos/resized.jpg", 11, 1),
        FileTask("touched.jpg", "/photos/touched.jpg", 10, 2),
    ]
    assert plan.unchanged == 1
    assert plan.captions_to_check == ["same.jpg"]  # its caption file may have changed
    assert plan.gone == {} and plan.new_skips == [] and plan.stale_skips == []


def test_stored_files_the_scan_no_longer_finds_are_gone():
    scanned = ScanResult(files=[ScannedFile("kept.jpg", 10, 1)])
    have = {"kept.jpg": stored(1), "deleted.jpg": stored(2, content_hash="d")}
    plan = plan_ingest(scanned, have, {}, ROOT)
    assert plan.gone == {"deleted.jpg": have["deleted.jpg"]}
    assert plan.to_read == [] and plan.unchanged == 1


def test_a_known_bad_file_is_retried_only_when_changed_after_a_read_failure_or_when_asked():
    scanned = ScanResult(
        files=[
            ScannedFile("broken.jpg", 10, 1),
            ScannedFile("edited.jpg", 12, 5),
            ScannedFile("unreadable.jpg", 10, 1),
            ScannedFile("vanished.jpg", 10, 1),
        ]
    )
    skips = {
        "broken.jpg": (10, 1, "not an image"),
        "edited.jpg": (10, 1, "not an image"),
        "unreadable.jpg": (10, 1, f"{UNREADABLE}: permission denied"),
        "vanished.jpg": (10, 1, VANISHED),
    }
    plan = plan_ingest(scanned, {}, skips, ROOT)
    assert [t.path for t in plan.to_read] == ["edited.jpg", "unreadable.jpg", "vanished.jpg"]
    assert plan.unchanged == 1
    assert plan.stale_skips == []  # every skipped file is still there
    retried = plan_ingest(scanned, {}, skips, ROOT, retry_failed=True)
    assert len(retried.to_read) == 4 and retried.unchanged == 0


def test_scan_problems_are_new_skips_once_and_skips_of_files_gone_are_stale():
    scanned = ScanResult(
        files=[ScannedFile("a.jpg", 10, 1)],
        problems=[("fifo.jpg", "not a regular file: FIFO"), ("link.jpg", "dangling symlink")],
        sidecars={"b.txt": (3, 1)},
    )
    skips = {
        "link.jpg": (0, 0, "dangling symlink"),  # recorded already: not again
        "deleted.jpg": (10, 1, "not an image"),  # no longer there: its record goes
        "b.txt": (3, 1, "not UTF-8"),  # a caption file still there: kept
    }
    plan = plan_ingest(scanned, {}, skips, ROOT)
    assert plan.new_skips == [("fifo.jpg", 0, 0, "not a regular file: FIFO")]
    assert plan.stale_skips == ["deleted.jpg"]
    assert [t.path for t in plan.to_read] == ["a.jpg"]


def test_a_folder_scan_leaves_the_files_a_dataset_added_to_it():
    scanned = ScanResult(files=[ScannedFile("listed.jpg", 10, 1)])
    plan = plan_ingest(scanned, {}, {}, ROOT, others={"listed.jpg"})
    assert plan.to_read == [] and plan.unchanged == 1 and plan.captions_to_check == []


def test_a_dataset_reads_rows_where_they_are_and_removes_only_its_own_missing_rows():
    scanned = ScanResult(
        files=[ScannedFile("shard-0.tar/0001.jpg", 10, 1, abspath="/data/shard-0.tar", offset=512, dataset="set")],
        datasets=frozenset({"set"}),
    )
    have = {
        "dropped.jpg": stored(1, dataset="set"),  # a row no longer in the manifest
        "folder.jpg": stored(2, dataset=None),  # a folder scan's image under the same root
    }
    plan = plan_ingest(scanned, have, {}, ROOT)
    assert plan.to_read == [FileTask("shard-0.tar/0001.jpg", "/data/shard-0.tar", 10, 1, 512)]
    assert set(plan.gone) == {"dropped.jpg"}


def test_the_plan_is_the_same_however_often_it_is_made():
    scanned = ScanResult(files=[ScannedFile("a.jpg", 10, 1), ScannedFile("b.jpg", 10, 1)])
    have = {"a.jpg": stored(1), "c.jpg": stored(3)}
    skips = {"b.jpg": (10, 1, "not an image")}
    first = plan_ingest(scanned, have, skips, ROOT)
    assert first == plan_ingest(scanned, have, skips, ROOT)
    assert have == {"a.jpg": stored(1), "c.jpg": stored(3)} and skips == {"b.jpg": (10, 1, "not an image")}


def test_with_ocr_unchanged_images_not_yet_read_are_read_for_their_text_alone():
    scanned = ScanResult(
        files=[
            ScannedFile("new.jpg", 10, 1),
            ScannedFile("read.jpg", 10, 1),
            ScannedFile("unread.jpg", 10, 1),
            ScannedFile("changed-unread.jpg", 11, 1),
            ScannedFile("changed-read.jpg", 11, 1),
        ]
    )
    engine = "some engine"
    have = {
        "read.jpg": StoredFile(1, 10, 1, "a", ocr_engine=engine),
        "unread.jpg": stored(2, content_hash="b"),
        "changed-unread.jpg": stored(3, content_hash="c"),
        "changed-read.jpg": StoredFile(4, 10, 1, "d", ocr_engine=engine),
    }
    plan = plan_ingest(scanned, have, {}, ROOT, ocr=True)
    assert plan.to_read == [
        FileTask("new.jpg", "/photos/new.jpg", 10, 1, ocr=True),
        # its content may turn out unchanged (touched): read for its text even then
        FileTask("changed-unread.jpg", "/photos/changed-unread.jpg", 11, 1, ocr=True, ocr_stored=True),
        FileTask("changed-read.jpg", "/photos/changed-read.jpg", 11, 1, ocr=True),
    ]
    assert plan.to_ocr == [FileTask("unread.jpg", "/photos/unread.jpg", 10, 1, ocr=True, ocr_stored=True)]
    assert plan.unchanged == 2  # to_ocr's images are unchanged: no new vector
    assert plan.captions_to_check == ["read.jpg"]  # unread.jpg's is checked once it is read

    off = plan_ingest(scanned, have, {}, ROOT)  # OCR off: nothing is read for its text
    assert off.to_ocr == [] and not any(t.ocr or t.ocr_stored for t in off.to_read)
    assert off.captions_to_check == ["read.jpg", "unread.jpg"]
