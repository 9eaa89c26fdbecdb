"""The three corpus preparers (voxceleb, avspeech, folder) on small fixtures in the real layouts.

Each fixture holds a few deliberately broken items (a corrupt wav or mp4, a speaker without a
face folder, a clip that was never downloaded, an unreadable image) which must be skipped and
counted, never crash the run. Re-runs must reuse every finished item byte for byte.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import soundfile as sf

from fixtures_corpora import FRAME_GREEN, make_avspeech, make_folder, make_vox1, make_vox2
from scldm import InputError
from scldm.cli import main
from scldm.data.manifest import read_manifest
from scldm.data.prepare.avspeech import prepare_avspeech
from scldm.data.prepare.folder import prepare_folder
from scldm.data.prepare.options import PrepareOptions
from scldm.data.prepare.voxceleb import prepare_voxceleb
from scldm.faces import load_face

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
SIZE = 32  # --image-size of every test run: small keeps the suite fast
OPTIONS = PrepareOptions(image_size=SIZE)


def _snapshot(out: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `out` with its bytes and, for audio and faces, modification time.

    The manifest is rewritten by every run (atomically, with the same bytes); a reused clip's
    files must not even be touched.
    """
    return {
        p.relative_to(out).as_posix(): (
            0 if p.name == "manifest.jsonl" else p.stat().st_mtime_ns,
            p.read_bytes(),
        )
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def _assert_speaker_disjoint(rows: list[dict]) -> None:
    splits: dict[str, set[str]] = {}
    for r in rows:
        splits.setdefault(r["speaker_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits.values()), splits


def _assert_outputs(out: Path, rows: list[dict]) -> None:
    for r in rows:
        wave, sr = sf.read(out / r["audio"])
        assert sr == 16_000 and wave.ndim == 1
        assert load_face(out / r["face"]).size == (SIZE, SIZE)
        assert r["audio"] == f"audio/{r['speaker_id']}/{Path(r['audio']).name}"


# --- VoxCeleb1: wav + the unzippedIntervalFaces crops, dev and test trees ----------------------


@pytest.fixture
def vox1(tmp_path: Path) -> dict[str, Path]:
    return make_vox1(tmp_path / "vox1")


def test_prepare_voxceleb1_official_split_skips_and_reruns(vox1, tmp_path):
    out = tmp_path / "out"
    report = prepare_voxceleb(
        vox1["audio_root"], vox1["faces_root"], vox1["meta"], out, options=OPTIONS
    )
    rows = read_manifest(out)
    # 10 speakers × 2 utterances, less: 1 corrupt wav, Gary's 2 clips, Kevin's unreadable frame
    assert report.written == len(rows) == 16 and report.reused == 0
    assert report.skipped == {
        "unreadable audio (not a readable audio file)": 1,
        "no face images for the speaker": 2,
        "speaker not in the meta file": 1,
        "unreadable face image (not a readable image)": 1,
    }
    _assert_speaker_disjoint(rows)
    _assert_outputs(out, rows)
    split = {r["speaker_id"]: r["split"] for r in rows}
    assert split["id10270"] == split["id10271"] == "test"
    assert {s for spk, s in split.items() if not spk.startswith("id1027")} == {"train", "val"}
    by_clip = {(r["speaker_id"], r["utterance"]): r for r in rows}
    r = by_clip["id10003", "00002"]
    assert r["source"] == "voxceleb1" and r["gender"] == "f" and r["age"] is None
    assert r["name"] == "Bella_Thorne" and r["nationality"] == "USA" and r["ytid"] == "1zcIwhmdeo4"
    assert r["orig_audio"] == "vox1_dev_wav/wav/id10003/1zcIwhmdeo4/00002.wav"
    # utterance 00002 ↔ track folder "2", and its middle frame (k = 1 of 0..2)
    assert r["orig_face"] == "Bella_Thorne/1.6/1zcIwhmdeo4/2/0000001.jpg"
    assert abs(load_face(out / r["face"]).getpixel((SIZE // 2, SIZE // 2))[1] - FRAME_GREEN[1]) < 15

    before = _snapshot(out)
    again = prepare_voxceleb(
        vox1["audio_root"], vox1["faces_root"], vox1["meta"], out, options=OPTIONS
    )
    assert (again.written, again.reused) == (0, 16) and again.skipped == report.skipped
    assert _snapshot(out) == before  # nothing re-decoded or rewritten


def test_prepare_voxceleb1_wen_split_from_the_data_folder(vox1, tmp_path):
    out = tmp_path / "wen"
    audio = vox1["audio_root"] / "vox1_dev_wav" / "wav"  # pointing at wav/ itself, dev only
    prepare_voxceleb(audio, vox1["data"], vox1["meta"], out, split="wen", options=OPTIONS)
    rows = read_manifest(out)
    _assert_speaker_disjoint(rows)
    held = {r["split"] for r in rows if r["name"][0] in "ABCDE"}
    assert held == {"val", "test"}
    assert {r["split"] for r in rows if r["name"][0] not in "ABCDE"} == {"train"}
    assert not any(r["orig_audio"].startswith("vox1_") for r in rows)  # relative to wav/


def test_voxceleb_max_clips_and_missing_track_falls_back_to_the_speakers_other_tracks(
    vox1, tmp_path
):
    shutil.rmtree(vox1["data"] / "Eva_Green" / "1.6" / "1zcIwhmdeo4" / "2")
    out = tmp_path / "out"
    prepare_voxceleb(vox1["audio_root"], vox1["faces_root"], vox1["meta"], out, options=OPTIONS)
    eva = [r for r in read_manifest(out) if r["name"] == "Eva_Green"]
    assert [r["orig_face"].split("/")[3] for r in eva] == ["1", "1"]
    prepare_voxceleb(
        vox1["audio_root"],
        vox1["faces_root"],
        vox1["meta"],
        tmp_path / "one",
        max_clips_per_speaker=1,
    )
    assert {r["utterance"] for r in read_manifest(tmp_path / "one")} == {"00001"}


# --- VoxCeleb2: m4a + one folder of images per VGGFace2 id --------------------------------------


@needs_ffmpeg
def test_prepare_voxceleb2_m4a_with_vggface2_folders(tmp_path):
    vox2 = make_vox2(tmp_path / "vox2")
    out = tmp_path / "out"
    report = prepare_voxceleb(
        vox2["audio_root"], vox2["faces_root"], vox2["meta"], out, options=OPTIONS
    )
    rows = read_manifest(out)
    assert report.written == len(rows) == 5 and not report.skipped
    assert {r["source"] for r in rows} == {"voxceleb2"}
    _assert_outputs(out, rows)
    aaron = [r for r in rows if r["speaker_id"] == "id00012"]
    assert aaron[0]["name"] == "Aaron_Ashmore" and aaron[0]["nationality"] is None
    # the speaker's images cycle over its clips, in order
    assert [r["orig_face"] for r in aaron] == [
        "n000012/0001_01.jpg",
        "n000012/0002_01.jpg",
        "n000012/0001_01.jpg",
    ]
    assert next(r for r in rows if r["speaker_id"] == "id00017")["split"] == "test"
    assert abs(sf.info(str(out / aaron[0]["audio"])).duration - 0.8) < 0.05


# --- AVSpeech: header-less CSV + downloaded mp4 clips --------------------------------------------


@pytest.fixture
def avspeech(tmp_path: Path) -> dict[str, Path]:
    return make_avspeech(tmp_path / "avspeech")


@needs_ffmpeg
def test_prepare_avspeech_crops_around_the_centre_and_reruns(avspeech, tmp_path):
    out = tmp_path / "out"
    report = prepare_avspeech(avspeech["csv"], avspeech["clips"], out, options=OPTIONS)
    rows = read_manifest(out)
    assert report.written == len(rows) == 5
    assert report.skipped["clip not downloaded"] == 1
    assert sum(n for reason, n in report.skipped.items() if "unreadable" in reason) == 1
    _assert_speaker_disjoint(rows)
    _assert_outputs(out, rows)
    # one YouTube video = one speaker; 4 speakers cover every split
    assert [r["speaker_id"] for r in rows].count("AvWWVOgaMlk") == 2
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    r = rows[0]
    assert r["source"] == "avspeech" and r["gender"] is None and r["age"] is None
    assert (r["ytid"], r["start"], r["face_x"]) == ("AvWWVOgaMlk", 90.0, 0.8)
    assert r["audio"] == "audio/AvWWVOgaMlk/AvWWVOgaMlk_090.000000-091.500000.wav"
    assert abs(sf.info(str(out / r["audio"])).duration - 1.5) < 0.05  # shorter than 6 s: all
    for r in rows:  # x = 0.8 lies in the red half: the crop around it is red, not blue
        red, _, blue = load_face(out / r["face"]).getpixel((SIZE // 2, SIZE // 2))
        assert red > 200 and blue < 60, r["face"]

    before = _snapshot(out)
    again = prepare_avspeech(avspeech["csv"], avspeech["clips"], out, options=OPTIONS)
    assert (again.written, again.reused) == (0, 5) and _snapshot(out) == before
    redo = prepare_avspeech(
        avspeech["csv"],
        avspeech["clips"],
        out,
        options=PrepareOptions(image_size=SIZE, seconds=1.0, overwrite=True),
    )
    assert (redo.written, redo.reused) == (5, 0)
    assert sf.info(str(out / rows[0]["audio"])).frames == 16_000  # --seconds 1 kept only 1 s


def test_avspeech_malformed_csv_names_the_line(tmp_path):
    (tmp_path / "clips").mkdir()
    bad = tmp_path / "a.csv"
    bad.write_text("abc,1.0,2.0,0.5,0.5\nabc,oops\n")
    with pytest.raises(InputError, match=r"a\.csv:2"):
        prepare_avspeech(bad, tmp_path / "clips", tmp_path / "o")


# --- Any folder --------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path)


def test_prepare_folder_pairs_labels_skips_and_reruns(folder, tmp_path):
    out = tmp_path / "prepared"
    report = prepare_folder(folder, out, options=OPTIONS)
    rows = read_manifest(out)
    assert report.written == len(rows) == 10
    assert report.skipped == {
        "unreadable audio (not a readable audio file)": 1,
        "unreadable face image (not a readable image)": 2,
        "speaker folder without audio": 1,
        "speaker folder without face images": 1,
    }
    _assert_speaker_disjoint(rows)
    _assert_outputs(out, rows)
    assert {r["speaker_id"] for r in rows} == {"alice", "bob", "carol", "eve"}
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    alice = [r for r in rows if r["speaker_id"] == "alice"]
    assert (alice[0]["gender"], alice[0]["age"]) == ("f", 31.0)
    assert [r["audio"] for r in alice] == [  # a.wav and a.flac do not overwrite each other
        "audio/alice/clip0.flac.wav",
        "audio/alice/clip0.wav.wav",
        "audio/alice/clip1.wav",
    ]
    bob = {r["orig_audio"]: r for r in rows if r["speaker_id"] == "bob"}
    assert set(bob) == {"bob/clip0.wav", "bob/clip1.wav", "bob/session2/clip10.wav"}
    assert bob["bob/clip0.wav"]["gender"] == "m" and bob["bob/clip0.wav"]["age"] == 45.0
    # images cycle over the clips in natural order: face.jpg, side.png, face.jpg
    assert [r["orig_face"] for r in bob.values()] == [
        "bob/face.jpg",
        "bob/side.png",
        "bob/face.jpg",
    ]
    assert next(r for r in rows if r["speaker_id"] == "carol")["gender"] is None

    before = _snapshot(out)
    again = prepare_folder(folder, out, options=OPTIONS)
    assert (again.written, again.reused) == (0, 10) and _snapshot(out) == before
    redo = prepare_folder(folder, out, options=PrepareOptions(image_size=SIZE, overwrite=True))
    assert (redo.written, redo.reused) == (10, 0)
    assert (out / "manifest.jsonl").read_bytes() == before["manifest.jsonl"][1]


def test_prepare_folder_in_parallel_writes_the_same_dataset(folder, tmp_path):
    one = prepare_folder(
        folder, tmp_path / "w1", options=PrepareOptions(image_size=SIZE, workers=1)
    )
    two = prepare_folder(
        folder, tmp_path / "w2", options=PrepareOptions(image_size=SIZE, workers=2)
    )
    assert (one.written, one.skipped) == (two.written, two.skipped)
    snap1, snap2 = _snapshot(tmp_path / "w1"), _snapshot(tmp_path / "w2")
    assert {k: v[1] for k, v in snap1.items()} == {k: v[1] for k, v in snap2.items()}


def test_prepare_folder_ignores_its_own_output_inside_the_root(folder):
    out = folder / "prepared"
    first = prepare_folder(folder, out, options=OPTIONS)
    second = prepare_folder(folder, out, options=OPTIONS)
    assert second.reused == first.written and second.skipped == first.skipped


@pytest.mark.parametrize(
    ("labels", "where"),
    [("speaker,gender\nalice,x\n", "speakers.csv:2"), ("who,gender\n", "speakers.csv")],
)
def test_bad_labels_file_names_the_file(folder, tmp_path, labels, where):
    (folder / "speakers.csv").write_text(labels)
    with pytest.raises(InputError, match=where):
        prepare_folder(folder, tmp_path / "o")


# --- The CLI path, as a newcomer runs it -------------------------------------------------------


def test_cli_prepare_folder_prints_the_report(folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["prepare", "folder", "--root", str(folder), "--out", str(out), "--image-size", "32"]
    assert main(argv) == 0
    summary = capsys.readouterr().out
    assert f"prepared {out / 'manifest.jsonl'}: 10 clips of 4 speakers (10 written" in summary
    assert "skipped 5:" in summary and "speaker folder without audio" in summary
    assert main(argv) == 0 and "(0 written, 10 already done)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["folder", "--root", "{tmp}/nowhere"],
        ["avspeech", "--csv", "{tmp}/nowhere.csv", "--clips", "{tmp}"],
        ["voxceleb", "--audio-root", "{tmp}/nowhere", "--faces-root", "{tmp}", "--meta", "{tmp}/m"],
        ["voxceleb", "--audio-root", "{tmp}", "--faces-root", "{tmp}", "--meta", "{tmp}/nowhere"],
        ["voxceleb", "--audio-root", "{tmp}", "--faces-root", "{tmp}", "--meta", "{tmp}/bad.csv"],
        ["folder", "--root", "{tmp}/empty"],
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv):
    (tmp_path / "bad.csv").write_text("id,name\nid10001,x\n")
    (tmp_path / "empty" / "someone").mkdir(parents=True)
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(["prepare", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scldm: error: ") and err.count("\n") == 1 and "Traceback" not in err
    named = {"nowhere", "bad.csv", "empty"}
    assert any(name in err for name in named), err
    assert not (tmp_path / "o" / "manifest.jsonl").exists()
