"""`scldm prepare voxceleb` and `scldm prepare avspeech` on fixtures in the real layouts."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import face_image, tone, write_wav
from scldm.cli import main
from scldm.data.manifest import read_manifest

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")

VOX1 = [  # id, VGGFace1 name, gender, nationality, set
    ("id10001", "A.J._Buckley", "m", "Ireland", "dev"),
    ("id10002", "Aaron_Tveit", "m", "USA", "dev"),
    ("id10003", "Bella_Thorne", "f", "USA", "dev"),
    ("id10004", "Fiona_Apple", "f", "USA", "dev"),
    ("id10005", "Gary_Oldman", "m", "UK", "dev"),
    ("id10006", "Helen_Mirren", "f", "UK", "dev"),
    ("id10007", "Zoe_Saldana", "f", "USA", "test"),
    ("id10008", "Ziggy_Marley", "m", "Jamaica", "test"),
]


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture
def vox1(tmp_path):
    meta = tmp_path / "vox1_meta.csv"
    meta.write_text(
        "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"
        + "".join("\t".join(r) + "\n" for r in VOX1)
    )
    audio, faces = tmp_path / "vox1_dev_wav" / "wav", tmp_path / "unzippedIntervalFaces" / "data"
    for i, (spk, name, *_rest) in enumerate(VOX1):
        for utt in (1, 2):
            write_wav(audio / spk / "1zcIwhmdeo4" / f"{utt:05d}.wav", tone(120 + 20 * i, 2.0))
            track = faces / name / "1.6" / "1zcIwhmdeo4" / str(utt)
            track.mkdir(parents=True)
            for frame in range(3):
                face_image(64, (30 * i, 40 * frame, 100)).save(track / f"{frame:07d}.jpg")
    (audio / "id10002" / "1zcIwhmdeo4" / "00002.wav").write_bytes(b"RIFF broken")  # corrupt
    write_wav(audio / "id19999" / "abc" / "00001.wav", tone(200, 1.0))  # not in the meta file
    shutil.rmtree(faces / "Gary_Oldman")  # a speaker without faces
    # an utterance without its own face track: a frame of the speaker's other track stands in
    shutil.rmtree(faces / "Fiona_Apple" / "1.6" / "1zcIwhmdeo4" / "2")
    return tmp_path, audio, meta


def test_prepare_voxceleb1_official_split(vox1, capsys):
    root, audio, meta = vox1
    out = root / "out"
    args = [
        "prepare",
        "voxceleb",
        "--audio-root",
        str(root / "vox1_dev_wav"),
        "--faces-root",
        str(root),
        "--meta",
        str(meta),
        "--out",
        str(out),
        "--image-size",
        "32",
        "--workers",
        "2",
    ]
    assert main(args) == 0
    summary = capsys.readouterr().out
    rows = read_manifest(out)
    assert len(rows) == 13  # 8 speakers × 2, minus corrupt, minus Gary's 2 clips
    assert "1  unreadable audio" in summary and "2  no face images" in summary
    assert "1  speaker not in the meta file" in summary
    assert "1  faces from another face track of the speaker (none for the utterance)" in summary
    assert [r["utterance"] for r in rows if r["face_from_other_track"]] == ["00002"]
    by_spk = {r["speaker_id"]: r for r in rows}
    assert by_spk["id10007"]["split"] == by_spk["id10008"]["split"] == "test"
    assert by_spk["id10003"]["gender"] == "f" and by_spk["id10003"]["name"] == "Bella_Thorne"
    assert (
        by_spk["id10001"]["source"] == "voxceleb1" and by_spk["id10001"]["nationality"] == "Ireland"
    )
    assert {r["split"] for r in rows if r["speaker_id"] not in ("id10007", "id10008")} <= {
        "train",
        "val",
    }
    # the face is the middle frame of the utterance's track: frame 1 of 0..2 (green = 40)
    from scldm.faces import load_face

    pixel = load_face(out / by_spk["id10001"]["face"]).getpixel((16, 16))
    assert abs(pixel[1] - 40) < 12
    assert main(args) == 0 and "0 written, 13 already done" in capsys.readouterr().out


def test_prepare_voxceleb1_wen_split(vox1):
    root, audio, meta = vox1
    out = root / "wen"
    assert (
        main(
            [
                "prepare",
                "voxceleb",
                "--audio-root",
                str(audio),
                "--faces-root",
                str(root / "unzippedIntervalFaces" / "data"),
                "--meta",
                str(meta),
                "--out",
                str(out),
                "--split",
                "wen",
                "--image-size",
                "32",
            ]
        )
        == 0
    )
    for r in read_manifest(out):
        held = r["name"][0] in "ABCDE"
        assert (r["split"] in ("val", "test")) if held else (r["split"] == "train"), r


@needs_ffmpeg
def test_prepare_voxceleb2_m4a_with_image_folders(tmp_path, capsys):
    meta = tmp_path / "vox2_meta.csv"
    meta.write_text(
        "Name \tVoxCeleb2 ID \tVGGFace2 ID \tGender \tSet \n"
        "Aaron_Ashmore \tid00012 \tn000012 \tm \tdev \n"
        "Abby_Ryder \tid00015 \tn000015 \tf \tdev \n"
        "Adam_Ant \tid00017 \tn000017 \tm \ttest \n"
    )
    for i, spk in enumerate(("id00012", "id00015", "id00017")):
        src = write_wav(tmp_path / f"src{i}.wav", tone(150 + 30 * i, 2.0))
        clip = tmp_path / "aac" / spk / "21Uxsk56VDQ" / "00001.m4a"
        clip.parent.mkdir(parents=True)
        _ffmpeg("-i", str(src), str(clip))
        folder = tmp_path / "vggface2" / f"n0000{12 + 3 * i if i < 2 else 17}"
        folder.mkdir(parents=True, exist_ok=True)
        face_image(80).save(folder / "0001_01.jpg")
    assert (
        main(
            [
                "prepare",
                "voxceleb",
                "--audio-root",
                str(tmp_path / "aac"),
                "--faces-root",
                str(tmp_path / "vggface2"),
                "--meta",
                str(meta),
                "--out",
                str(tmp_path / "out"),
                "--image-size",
                "32",
            ]
        )
        == 0
    )
    rows = read_manifest(tmp_path / "out")
    assert len(rows) == 3 and {r["source"] for r in rows} == {"voxceleb2"}
    assert next(r for r in rows if r["speaker_id"] == "id00017")["split"] == "test"


def test_bad_meta_header_is_one_line(vox1, capsys):
    root, audio, meta = vox1
    meta.write_text("id,name\nid10001,x\n")
    assert (
        main(
            [
                "prepare",
                "voxceleb",
                "--audio-root",
                str(audio),
                "--faces-root",
                str(root),
                "--meta",
                str(meta),
                "--out",
                str(root / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "not a VoxCeleb meta file" in err and str(meta) in err and err.count("\n") == 1


@needs_ffmpeg
def test_prepare_avspeech(tmp_path, capsys):
    clips = tmp_path / "clips"
    clips.mkdir()
    lines = []
    for i in range(4):
        ytid, start, end = f"vid{i:08d}ab", 10.0 + i, 13.5 + i
        lines.append(f"{ytid},{start:.6f},{end:.6f},0.3,0.6")
        if i == 3:
            continue  # not downloaded
        _ffmpeg(
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=160x120:rate=10:duration=3.5",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency={200 + 50 * i}:sample_rate=44100:duration=3.5",
            "-shortest",
            "-pix_fmt",
            "yuv420p",
            str(clips / f"{ytid}_{start:010.6f}-{end:010.6f}.mp4"),
        )
    (tmp_path / "avspeech_test.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert (
        main(
            [
                "prepare",
                "avspeech",
                "--csv",
                str(tmp_path / "avspeech_test.csv"),
                "--clips",
                str(clips),
                "--out",
                str(out),
                "--image-size",
                "32",
            ]
        )
        == 0
    )
    summary = capsys.readouterr().out
    rows = read_manifest(out)
    assert len(rows) == 3 and "1  clip not downloaded" in summary
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    r = rows[0]
    assert r["source"] == "avspeech" and r["face_x"] == 0.3 and r["gender"] is None
    from scldm.audio import load_audio

    assert (
        abs(load_audio(out / r["audio"]).size - 3.5 * 16_000) < 400
    )  # shorter than 6 s: all of it


def test_avspeech_malformed_csv_names_the_line(tmp_path, capsys):
    (tmp_path / "a.csv").write_text("abc,1.0,2.0,0.5,0.5\nabc,oops\n")
    (tmp_path / "clips").mkdir()
    assert (
        main(
            [
                "prepare",
                "avspeech",
                "--csv",
                str(tmp_path / "a.csv"),
                "--clips",
                str(tmp_path / "clips"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "a.csv:2" in capsys.readouterr().err
