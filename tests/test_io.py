"""scldm.io: a write either completes or leaves the previous file (or nothing) in place."""

from __future__ import annotations

import csv
import json

import pytest

from scldm.io import atomic_dir, atomic_path, write_csv, write_json, write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_text(tmp_path / "report.md", "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed while writing")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_the_temporary_keeps_the_suffix_and_the_write_replaces(tmp_path):
    path = tmp_path / "sub" / "metrics.json"  # the folder is made
    with atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".json" and tmp != path
        tmp.write_text("{}")
        assert not path.exists()  # nothing at the target until the block ends
    assert path.read_text() == "{}"
    write_json(path, {"a": tmp_path}, indent=None)  # paths are written as strings
    assert json.loads(path.read_text()) == {"a": str(tmp_path)}


def test_atomic_dir_replaces_the_whole_folder_or_nothing(tmp_path):
    folder = tmp_path / "cache"
    with atomic_dir(folder) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(KeyboardInterrupt), atomic_dir(folder) as tmp:
        (tmp / "b").write_text("2")
        raise KeyboardInterrupt
    assert sorted(p.name for p in folder.iterdir()) == ["a"]
    with atomic_dir(folder) as tmp:
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in folder.iterdir()) == ["c"]  # a new folder, not a merge
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_write_csv_header_and_rows(tmp_path):
    rows = [{"n": 10, "rms": 0.5}, {"n": 30, "rms": 0.25}]
    path = write_csv(tmp_path / "t.csv", rows)
    with open(path, newline="") as f:
        assert list(csv.DictReader(f)) == [{"n": "10", "rms": "0.5"}, {"n": "30", "rms": "0.25"}]
    assert write_csv(tmp_path / "e.csv", [], ["n"]).read_text().strip() == "n"
