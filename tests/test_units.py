"""Byte sizes (cbir.units): the one formatter (decimal SI units) and the one parser (SI and IEC)."""

import pytest

from cbir.errors import UsageError
from cbir.units import format_bytes, parse_bytes


@pytest.mark.parametrize(
    "size, shown",
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1 kB"),
        (1499, "1.5 kB"),
        (64 * 1024, "65.5 kB"),
        (300_000_000, "300 MB"),
        (528_400_000, "528 MB"),
        (4 * 10**9, "4 GB"),
        (1_500_000_000, "1.5 GB"),
        (999_999_999, "1 GB"),  # not "1000 MB"
        (12_340_000_000_000, "12.3 TB"),
        (5 * 10**15, "5000 TB"),
    ],
)
def test_format_bytes(size, shown):
    assert format_bytes(size) == shown


def test_format_bytes_up_never_shows_less_than_the_size():
    assert [format_bytes(n, up=True) for n in (493_560_000, 528_400_000, 1_234_000, 1001)] == [
        "494 MB",
        "529 MB",
        "1.3 MB",
        "1.1 kB",
    ]
    for n in (1, 999, 1001, 99_949, 123_456_789, 987_654_321_000):
        assert parse_bytes(format_bytes(n, up=True).replace(" ", "")) >= n


@pytest.mark.parametrize(
    "text, size",
    [
        ("4GB", 4 * 10**9),
        ("512MB", 512 * 10**6),
        ("2GiB", 2 * 2**30),
        ("1.5G", 1_500_000_000),
        ("100kb", 100_000),
        ("64 kB", 64_000),
        ("3 MiB", 3 * 2**20),
        ("1T", 10**12),
        ("2TiB", 2 * 2**40),
        ("800000", 800_000),
        (" 0.5GB ", 500_000_000),
        (".5k", 500),
        ("7b", 7),
        ("0", 0),
        ("1.9", 1),
    ],
)
def test_parse_bytes(text, size):
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["", "GB", "4XB", "-1GB", "4 G B", "2Gi", "1e9", "four", "4GBs", "9" * 5000])
def test_parse_bytes_rejects(text):
    with pytest.raises(UsageError):
        parse_bytes(text)


def test_parse_bytes_names_the_size_and_can_refuse_zero():
    with pytest.raises(UsageError, match=r"^invalid memory size 'lots': "):
        parse_bytes("lots", "memory size")
    for zero in ("0", "0MB", "0.1"):
        assert parse_bytes(zero) == 0
        with pytest.raises(UsageError, match=r"^upload limit must be positive"):
            parse_bytes(zero, "upload limit", positive=True)
