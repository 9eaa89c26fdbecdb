"""`scldm prepare folder` on a fixture in its real layout, as a newcomer runs it."""

from __future__ import annotations

import pytest

from conftest import face_image, tone, write_wav
from scldm.cli import main
from scldm.data.manifest import read_manifest


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "speakers"
    for i, spk in enumerate(["alice", "bob", "carol", "dan", "eve"]):
        for k in range(2):
            write_wav(root / spk / f"clip{k}.wav", tone(150 + 40 * i, 1.5))
        face_image(90, (40 * i, 120, 120)).save(root / spk / "face.jpg")
    (root / "carol" / "broken.wav").write_bytes(b"not audio" * 50)  # corrupt: skipped
    (root / "dan" / "face.jpg").write_bytes(b"\xff\xd8 truncated")  # unreadable image: skipped
    (root / "frank").mkdir()  # no audio: skipped
    write_wav(root / "gina" / "a.wav", tone(300, 1.0))  # no face image: skipped
    (root / "speakers.csv").write_text("speaker,gender,age\nalice,f,31\nbob,m,45\neve,F,\n")
    return root


def test_prepare_folder_counts_skips_and_reruns(corpus, tmp_path, capsys):
    out = tmp_path / "prepared"
    assert (
        main(["prepare", "folder", "--root", str(corpus), "--out", str(out), "--image-size", "32"])
        == 0
    )
    summary = capsys.readouterr().out
    rows = read_manifest(out)
    assert len(rows) == 8 and {r["speaker_id"] for r in rows} == {"alice", "bob", "carol", "eve"}
    assert "8 written" in summary and "skipped 5" in summary
    for reason in (
        "unreadable audio",
        "unreadable face image",
        "without audio",
        "without face images",
    ):
        assert reason in summary
    alice = next(r for r in rows if r["speaker_id"] == "alice")
    assert alice["gender"] == "f" and alice["age"] == 31.0
    assert next(r for r in rows if r["speaker_id"] == "eve")["gender"] == "f"
    assert (out / alice["audio"]).is_file() and (out / alice["face"]).is_file()
    assert {r["split"] for r in rows} == {"train", "val", "test"}  # 4 speakers: every split

    before = (out / "manifest.jsonl").read_bytes()
    assert (
        main(["prepare", "folder", "--root", str(corpus), "--out", str(out), "--image-size", "32"])
        == 0
    )
    assert "0 written, 8 already done" in capsys.readouterr().out
    assert (out / "manifest.jsonl").read_bytes() == before

    assert (
        main(
            [
                "prepare",
                "folder",
                "--root",
                str(corpus),
                "--out",
                str(out),
                "--image-size",
                "32",
                "--overwrite",
                "--workers",
                "2",
            ]
        )
        == 0
    )
    assert "8 written" in capsys.readouterr().out
    assert (out / "manifest.jsonl").read_bytes() == before


def test_bad_labels_file_names_the_line(corpus, tmp_path, capsys):
    (corpus / "speakers.csv").write_text("speaker,gender\nalice,x\n")
    assert main(["prepare", "folder", "--root", str(corpus), "--out", str(tmp_path / "o")]) == 2
    assert "speakers.csv:2" in capsys.readouterr().err


def test_folder_without_usable_clips_is_an_error(tmp_path, capsys):
    (tmp_path / "root" / "x").mkdir(parents=True)
    assert (
        main(["prepare", "folder", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "o")])
        == 2
    )
    assert (
        "no usable clips" in capsys.readouterr().err
        and not (tmp_path / "o" / "manifest.jsonl").exists()
    )
