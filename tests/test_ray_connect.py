"""Joining a Ray cluster at an address where nothing answers is one line at once: ray.init
itself retries for minutes without a word."""

from __future__ import annotations

import socket
import time

import pytest

from cbir.distributed.cluster import _check_answers
from cbir.errors import CbirError


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nothing_listening_is_one_line_at_once():
    port = _closed_port()
    started = time.monotonic()
    with pytest.raises(CbirError) as refused:
        _check_answers(f"127.0.0.1:{port}")
    assert time.monotonic() - started < 5
    assert str(refused.value) == (
        f"cannot connect to the Ray cluster at 127.0.0.1:{port}: nothing answers at 127.0.0.1:{port} "
        "(Connection refused); is its head running (`ray start --head`), and the port open to this machine?"
    )
    with pytest.raises(CbirError, match="nothing answers at 127.0.0.1"):
        _check_answers(f"ray://127.0.0.1:{port}")


def test_a_listening_head_and_other_forms_pass():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        _check_answers(f"127.0.0.1:{server.getsockname()[1]}")
    _check_answers("auto")  # found by ray.init, which says when there is none
    _check_answers("not-an-address")  # ray.init's own error
