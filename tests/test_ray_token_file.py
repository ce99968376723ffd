"""Ray's token file: `ray get-auth-token --generate` and `ray start` write ~/.ray/auth_token
readable by every user of the machine, and so does a private cluster cbir starts when the user
has no token file; the token lets whoever holds it run code on the cluster. cbir warns, once, in
one line, about a token file others can read, and makes the one its own cluster makes private.
(No Ray needed: the checks around ray.init are tested on their own.)"""

from __future__ import annotations

import stat
import sys
import warnings

import pytest

from cbir.distributed import cluster
from cbir.errors import CbirWarning
from tests.conftest import need_ray


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setattr(cluster, "_warned_token_files", set())
    return tmp_path


def _token(path, mode: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("0" * 64)
    path.chmod(mode)
    return path


def test_a_token_file_others_can_read_is_warned_about_once(home):
    token = _token(home / ".ray" / "auth_token", 0o644)
    assert cluster.token_file(loopback=True) == token
    assert cluster.token_file(loopback=False) is None  # not sent to other machines' clusters
    with pytest.warns(CbirWarning) as caught:
        with cluster._token_file_checked(token):
            pass
    (message,) = [str(w.message) for w in caught]
    assert message == (
        f"the Ray token file {token} can be read by other users of this machine (mode 644), "
        f"and the token lets whoever holds it run code on the cluster: chmod 600 {token}"
    )
    assert stat.S_IMODE(token.stat().st_mode) == 0o644  # the user's file: said, not changed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with cluster._token_file_checked(token):  # once a process
            pass


@pytest.mark.parametrize("mode, warned", [(0o600, False), (0o400, False), (0o640, True), (0o604, True)], ids=oct)
def test_which_modes_are_warned_about(home, mode, warned):
    token = _token(home / "elsewhere" / "token", mode)
    assert (cluster.token_file_problem(token) is not None) == warned


def test_the_token_path_of_the_environment_is_the_one_checked(home, monkeypatch):
    token = _token(home / "secret" / "ray-token", 0o644)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    assert cluster.token_file(loopback=False) == token
    monkeypatch.setenv("RAY_AUTH_TOKEN", "in-the-environment")
    assert cluster.token_file(loopback=True) is None


def test_a_token_file_written_by_ray_init_is_made_private(home):
    token = home / ".ray" / "auth_token"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: there was no file
        with cluster._token_file_checked(token):
            _token(token, 0o644)  # what a private cluster's ray.init does
    assert stat.S_IMODE(token.stat().st_mode) == 0o600


@pytest.mark.slow
def test_a_private_cluster_leaves_no_token_file_others_can_read(tmp_path):
    """The real thing: a private cluster started in a fresh HOME (Ray 2.59+ turns token
    authentication on and writes the token file)."""
    import subprocess

    need_ray()
    from tests.conftest import cbir_env

    code = "from cbir.distributed.cluster import connected\nwith connected(None, num_cpus=1) as ray: pass\n"
    env = {**cbir_env(), "HOME": str(tmp_path)}
    env.pop("RAY_AUTH_TOKEN", None), env.pop("RAY_AUTH_TOKEN_PATH", None), env.pop("RAY_AUTH_MODE", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    try:
        from ray._raylet import AuthenticationTokenLoader  # noqa: F401
    except ImportError:
        pytest.skip("this Ray has no token authentication, and writes no token file")
    token = tmp_path / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
