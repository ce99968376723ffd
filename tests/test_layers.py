"""The layering holds (design: imports point down, never up): the import-linter contracts in
pyproject.toml, which .ci/run also checks with lint-imports, and the leaves that moved out of the
layers for them keep their old import paths and behaviour."""

import sys
from pathlib import Path

import pytest

from cbir.config import resolve_settings
from cbir.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept(monkeypatch, capsys):
    from importlinter.cli import lint_imports

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", list(sys.path))  # lint_imports puts the cwd on sys.path
    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    assert code == 0, capsys.readouterr().out


def test_moved_helpers_are_still_importable_from_their_old_modules():
    import cbir.dburl
    import cbir.encode.spec
    import cbir.fingerprint
    import cbir.store.db

    assert cbir.encode.spec.same_model is cbir.fingerprint.same_model
    assert cbir.store.db.parse_database_url is cbir.dburl.parse_database_url


def test_same_model_ignores_the_spec_text_and_json_lists():
    from cbir.fingerprint import same_model

    made = {"model": "RN50", "weights": "sha256:ab", "spec": "RN50:a.pt", "dim": 4, "preprocess": {"mean": (1, 2)}}
    read_back = dict(made, spec="RN50:/abs/a.pt", preprocess={"mean": [1, 2]})
    assert same_model(made, read_back)
    assert not same_model(made, dict(made, weights="sha256:cd"))


def test_database_urls_are_checked_when_settings_are_resolved():
    url = resolve_settings(database_url="postgresql://u:pw@h/cbir", env={}).database_url
    assert url == "postgresql+psycopg://u:pw@h/cbir"
    for text, message in [
        ("mysql://u:s3cret@h/db", "unsupported database 'mysql'"),
        ("postgresql://u:s3cret@h", "name the database"),
        ("not a url", "not a database URL"),
    ]:
        with pytest.raises(UsageError, match=message) as error:
            resolve_settings(database_url=text, env={})
        assert "s3cret" not in str(error.value) and "\n" not in str(error.value)


def test_the_public_api_is_importable_from_cbir_without_torch_or_faiss():
    import subprocess

    code = (
        "import sys, cbir\n"
        "from cbir import CbirError, Filters, Hit, Library, Query, open_library\n"
        "assert Library.__module__ == 'cbir.library' and issubclass(CbirError, Exception)\n"
        "assert Query(text='a red circle').text == 'a red circle' and Filters().where is None\n"
        "assert sorted(cbir.__all__) == sorted(['CbirError', 'Filters', 'Hit', 'Library', 'Query', 'Settings',\n"
        "    'open_library', 'resolve_settings', '__version__'])\n"
        "print(sorted(m for m in ('torch', 'faiss', 'open_clip') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
