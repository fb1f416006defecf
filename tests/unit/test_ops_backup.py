"""Backup folders: what counts as one, where objects go in it, and the CLI's one-line errors (no stores needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nimbus.config import Settings
from nimbus.errors import InvalidInput
from nimbus.ops.backup import FORMAT, VERSION, _object_file, backup, read_manifest
from tests.conftest import ROOT


def manifest(**changes: object) -> dict:
    parts = {p: {"part": p, "items": 0, "unit": "", "bytes": 0, "detail": ""} for p in ("redis", "mongodb", "s3", "mlflow")}
    return {"format": FORMAT, "version": VERSION, "created_at": "2026-01-01T00:00:00+00:00", "parts": parts, **changes}


def test_a_folder_with_a_good_manifest_is_a_backup(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(manifest()))
    assert read_manifest(tmp_path)["format"] == FORMAT


@pytest.mark.parametrize(("content", "fragment"), [
    (None, "has no manifest.json"),
    ("{not json", "unreadable"),
    (json.dumps({"format": "something-else"}), "is not a Nimbus backup"),
    (json.dumps(manifest(version=99)), "format version 99"),
    (json.dumps({**manifest(), "parts": {"redis": {}}}), "lacks the part(s) mongodb, s3, mlflow"),
])
def test_a_folder_that_is_not_a_backup_is_refused_naming_why(tmp_path: Path, content: str | None, fragment: str) -> None:
    if content is not None:
        (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(InvalidInput) as caught:
        read_manifest(tmp_path)
    assert fragment in str(caught.value)


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no such folder"):
        read_manifest(tmp_path / "nope")


def test_a_backup_never_writes_into_a_folder_with_something_in_it(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("keep me")
    with pytest.raises(InvalidInput, match="not an empty folder"):
        backup(Settings(home=tmp_path / "home"), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["old.txt"]


@pytest.mark.parametrize(("key", "file"), [
    ("logs/catalogue.parquet", "s3/data/logs/catalogue.parquet"),
    ("reports/run 1/summary.json", "s3/data/reports/run 1/summary.json"),
    ("folder/", "s3/data/_odd/7"),  # a folder marker cannot be a file
    ("a//b", "s3/data/_odd/7"),
    ("../escape", "s3/data/_odd/7"),
    ("/absolute", "s3/data/_odd/7"),
    ("_odd/7", "s3/data/_odd/7"),  # would collide with the numbered names
])
def test_objects_are_stored_under_their_key_unless_it_is_not_a_plain_path(key: str, file: str) -> None:
    assert _object_file("data", key, 7) == file


@pytest.mark.parametrize("args", [["restore", "{tmp}/missing"], ["restore", "{tmp}"]])
def test_the_cli_names_a_bad_backup_folder_in_one_line(tmp_path: Path, args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "nimbus.cli", "ops", *[a.format(tmp=tmp_path) for a in args]],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("error: ") and ("no such folder" in done.stderr or "no manifest.json" in done.stderr)


def test_a_backup_cut_short_by_a_store_leaves_no_folder_that_looks_whole(tmp_path: Path) -> None:
    from nimbus.errors import StoreUnavailable
    from nimbus.local.stack import free_port

    settings = Settings(home=tmp_path / "home", redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nobody listens
    with pytest.raises(StoreUnavailable, match="redis"):
        backup(settings, tmp_path / "backup")
    assert not (tmp_path / "backup").exists()
