"""manifest.jsonl validation and speaker-disjoint, stratified, seeded splits."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from scldm import InputError
from scldm.data.manifest import (
    read_manifest,
    split_official,
    split_speakers,
    split_wen,
    validate_row,
    write_manifest,
)


def row(spk="s1", split="train", **kw):
    base = {
        "speaker_id": spk,
        "audio": f"audio/{spk}/0.wav",
        "face": f"faces/{spk}/0.jpg",
        "split": split,
        "gender": "f",
        "age": 30,
        "source": "test",
    }
    return {**base, **kw}


def test_round_trip_keeps_extras(tmp_path):
    rows = [row("a", hair="red"), row("b", split="test", gender=None, age=None)]
    path = write_manifest(rows, tmp_path)
    assert path.name == "manifest.jsonl"
    assert read_manifest(tmp_path) == rows
    assert read_manifest(path, split="test") == rows[1:]


@pytest.mark.parametrize(
    "bad, problem",
    [
        ({"speaker_id": "x"}, "missing field"),
        (row(split="dev"), "split must be one of"),
        (row(gender="female"), "gender must be"),
        (row(age=-3), "age must be"),
        (row(age="old"), "age must be"),
        (row(audio="/abs/a.wav"), "relative"),
        (row(face="../up.jpg"), "relative"),
        (row(speaker_id=""), "non-empty string"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_schema_errors_name_the_line(tmp_path, bad, problem):
    path = tmp_path / "manifest.jsonl"
    path.write_text(json.dumps(row("ok")) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(InputError) as e:
        read_manifest(path)
    assert f"{path}:2" in str(e.value) and problem in str(e.value)


def test_invalid_json_and_leaky_splits_are_errors(tmp_path):
    path = tmp_path / "manifest.jsonl"
    path.write_text("{not json\n")
    with pytest.raises(InputError, match=":1: invalid JSON"):
        read_manifest(path)
    path.write_text(json.dumps(row("a")) + "\n" + json.dumps(row("a", split="test")) + "\n")
    with pytest.raises(InputError, match="both 'train' and 'test'"):
        read_manifest(path)
    with pytest.raises(InputError, match="no such manifest"):
        read_manifest(tmp_path / "nowhere")


def test_validate_row_accepts_a_good_row():
    assert validate_row(row()) == row()


def _population(n_f=40, n_m=60, n_unknown=10):
    g = {f"f{i}": "f" for i in range(n_f)} | {f"m{i}": "m" for i in range(n_m)}
    return g | {f"u{i}": None for i in range(n_unknown)}


def test_split_is_disjoint_complete_seeded_and_stratified():
    genders = _population()
    a = split_speakers(genders, seed=1)
    assert set(a) == set(genders) and set(a.values()) == {"train", "val", "test"}
    assert a == split_speakers(genders, seed=1) != split_speakers(genders, seed=2)
    counts = Counter((genders[s], split) for s, split in a.items())
    assert (
        counts[("f", "test")] == 4 and counts[("m", "test")] == 6 and counts[("f", "train")] == 32
    )
    assert counts[(None, "val")] == 1


def test_split_gives_small_groups_a_member_in_every_split():
    a = split_speakers({"a": "f", "b": "f", "c": "f"}, seed=0)
    assert sorted(a.values()) == ["test", "train", "val"]


def test_official_split_keeps_voxceleb_test_set():
    genders = {f"id{i}": "m" if i % 2 else "f" for i in range(100)}
    sets = {s: "test" if i < 4 else "dev" for i, s in enumerate(genders)}
    a = split_official(sets, genders, val_fraction=0.1, seed=0)
    assert {s for s, v in a.items() if v == "test"} == {"id0", "id1", "id2", "id3"}
    assert Counter(a.values())["val"] == 10


def test_wen_split_by_first_letter():
    names = {
        "id1": "Adele",
        "id2": "Bono",
        "id3": "Cher",
        "id4": "Eve",
        "id5": "Fred",
        "id6": "Zed",
    }
    genders = dict.fromkeys(names, "f")
    a = split_wen(names, genders)
    assert a["id5"] == a["id6"] == "train"
    assert {a[s] for s in ("id1", "id2", "id3", "id4")} <= {"val", "test"}
    assert Counter(a.values()) == {"train": 2, "val": 2, "test": 2}
