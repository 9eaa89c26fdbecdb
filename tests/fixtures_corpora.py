"""Tiny corpora in the real on-disk layouts of VoxCeleb1/2, AVSpeech and a speaker folder.

Each builder writes into a folder and returns the paths a user would pass to `scldm prepare`.
Every corpus holds a few deliberately broken items, listed in the builder's docstring, which
the preparers must skip and count. Also usable by hand (see docs/data.md), e.g.
`PYTHONPATH=tests python -c "import fixtures_corpora as f; f.make_folder(f.Path('demo'))"`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from conftest import face_image, tone, write_wav

VOX1 = [  # VoxCeleb1 ID, VGGFace1 ID, Gender, Nationality, Set
    ("id10001", "A.J._Buckley", "m", "Ireland", "dev"),
    ("id10002", "Aaron_Tveit", "m", "USA", "dev"),
    ("id10003", "Bella_Thorne", "f", "USA", "dev"),
    ("id10004", "Eva_Green", "f", "France", "dev"),
    ("id10005", "Fiona_Apple", "f", "USA", "dev"),
    ("id10006", "Gary_Oldman", "m", "UK", "dev"),
    ("id10007", "Helen_Mirren", "f", "UK", "dev"),
    ("id10008", "Kevin_Bacon", "m", "USA", "dev"),
    ("id10270", "Zoe_Saldana", "f", "USA", "test"),
    ("id10271", "Ziggy_Marley", "m", "Jamaica", "test"),
]
FRAME_GREEN = (0, 90, 180)  # frame k of every VoxCeleb1 face track has green FRAME_GREEN[k]
AVSPEECH_SIZE = (160, 120)  # frame width, height


def ffmpeg(*args: str, stdin: bytes | None = None) -> None:
    """Run ffmpeg quietly, overwriting outputs; raise if it fails."""
    cmd = ["ffmpeg", "-loglevel", "error", "-y", *args]
    feed = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
    subprocess.run(cmd, check=True, **feed)


def make_vox1(root: Path) -> dict[str, Path]:
    """VoxCeleb1 as its zips unpack: `vox1_{dev,test}_wav/wav/idXXXXX/<ytid>/NNNNN.wav`, the face
    crops `vox1_faces/unzippedIntervalFaces/data/<name>/1.6/<ytid>/<utt>/*.jpg`, vox1_meta.csv.

    10 speakers × 2 utterances. Broken: one corrupt wav (id10002), one speaker not in the meta
    file (id19999), one speaker without a face folder (Gary_Oldman, 2 clips), one unreadable
    middle frame (Kevin_Bacon utterance 1).
    """
    meta = root / "vox1_meta.csv"
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(
        "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"
        + "".join("\t".join(r) + "\n" for r in VOX1)
    )
    data = root / "vox1_faces" / "unzippedIntervalFaces" / "data"
    for i, (spk, name, _, _, set_) in enumerate(VOX1):
        wav = root / f"vox1_{set_}_wav" / "wav" / spk
        for utt in (1, 2):
            write_wav(wav / "1zcIwhmdeo4" / f"{utt:05d}.wav", tone(120 + 15 * i, 0.8))
            track = data / name / "1.6" / "1zcIwhmdeo4" / str(utt)
            track.mkdir(parents=True)
            for k, green in enumerate(FRAME_GREEN):
                face_image(48, (20 * i, green, 100)).save(track / f"{k:07d}.jpg")
    dev = root / "vox1_dev_wav" / "wav"
    (dev / "id10002" / "1zcIwhmdeo4" / "00002.wav").write_bytes(b"RIFF broken")
    write_wav(dev / "id19999" / "xyz" / "00001.wav", tone(200, 0.8))
    shutil.rmtree(data / "Gary_Oldman")
    (data / "Kevin_Bacon" / "1.6" / "1zcIwhmdeo4" / "1" / "0000001.jpg").write_bytes(b"\xff\xd8")
    return {"audio_root": root, "faces_root": root / "vox1_faces", "meta": meta, "data": data}


def make_vox2(root: Path) -> dict[str, Path]:
    """VoxCeleb2: `vox2_dev_aac/dev/aac/idXXXXX/<ytid>/NNNNN.m4a` (AAC via ffmpeg), one folder
    of images per VGGFace2 id (`vggface2/train/n000012/0001_01.jpg`), and vox2_meta.csv with its
    trailing spaces. 3 speakers (1 in the test set), 5 clips, nothing broken."""
    meta = root / "vox2_meta.csv"
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(
        "Name \tVoxCeleb2 ID \tVGGFace2 ID \tGender \tSet \n"
        "Aaron_Ashmore \tid00012 \tn000012 \tm \tdev \n"
        "Abby_Ryder \tid00015 \tn000015 \tf \tdev \n"
        "Adam_Ant \tid00017 \tn000017 \tm \ttest \n"
    )
    for i, (spk, clips) in enumerate({"id00012": 3, "id00015": 1, "id00017": 1}.items()):
        src = write_wav(root / "tmp" / f"{spk}.wav", tone(150 + 30 * i, 0.8))
        for utt in range(1, clips + 1):
            m4a = root / "vox2_dev_aac" / "dev" / "aac" / spk / "21Uxsk56VDQ" / f"{utt:05d}.m4a"
            m4a.parent.mkdir(parents=True, exist_ok=True)
            ffmpeg("-i", str(src), "-c:a", "aac", str(m4a))
        folder = root / "vggface2" / "train" / f"n0{spk[2:]}"
        folder.mkdir(parents=True)
        for k in range(2):
            face_image(64, (60 * k, 100, 100)).save(folder / f"000{k + 1}_01.jpg")
    shutil.rmtree(root / "tmp")
    return {
        "audio_root": root / "vox2_dev_aac",
        "faces_root": root / "vggface2" / "train",
        "meta": meta,
    }


def avspeech_frame() -> np.ndarray:
    """(H, W, 3) uint8: blue left half, red right half — a crop around x = 0.8 is all red."""
    w, h = AVSPEECH_SIZE
    frame = np.zeros((h, w, 3), np.uint8)
    frame[:, : w // 2, 2] = 255
    frame[:, w // 2 :, 0] = 255
    return frame


def make_avspeech(root: Path) -> dict[str, Path]:
    """The header-less `avspeech_test.csv` and `clips/{ytid}_{start:010.6f}-{end:010.6f}.mp4`.

    7 rows, face centre (0.8, 0.5), clips of 1.5 s: two segments of one video, two more videos,
    one clip as a wav + jpg pair. Broken: one corrupt mp4 and one row never downloaded.
    """
    clips = root / "clips"
    clips.mkdir(parents=True)
    segments = [  # ytid, start, end
        ("AvWWVOgaMlk", 90.0, 91.5),
        ("AvWWVOgaMlk", 120.5, 122.0),
        ("-4Pn1zqMNfo", 3.2, 4.7),
        ("akwvpAiLFk0", 0.0, 1.5),
        ("q4JAb2Gf6n4", 10.0, 11.5),  # a wav + jpg pair
        ("BrokenClip1", 5.0, 6.5),  # a corrupt mp4
        ("NotFetched1", 1.0, 2.5),  # never downloaded
    ]
    frames = np.repeat(avspeech_frame()[None], 15, axis=0).tobytes()  # 1.5 s at 10 fps
    lines = []
    for i, (ytid, start, end) in enumerate(segments):
        lines.append(f"{ytid},{start:.6f},{end:.6f},0.800000,0.500000")
        name = f"{ytid}_{start:010.6f}-{end:010.6f}"
        if ytid == "q4JAb2Gf6n4":
            write_wav(clips / f"{name}.wav", tone(250, 1.5))
            Image.fromarray(avspeech_frame()).save(clips / f"{name}.jpg")
        elif ytid == "BrokenClip1":
            (clips / f"{name}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
        elif ytid != "NotFetched1":
            w, h = AVSPEECH_SIZE
            ffmpeg(
                *("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", "10", "-i", "-"),
                *("-f", "lavfi", "-i", f"sine=frequency={200 + 40 * i}:sample_rate=44100"),
                *("-t", "1.5", "-pix_fmt", "yuv420p", "-c:v", "libx264", "-c:a", "aac"),
                str(clips / f"{name}.mp4"),
                stdin=frames,
            )
    csv = root / "avspeech_test.csv"
    csv.write_text("\n".join(lines) + "\n")
    return {"csv": csv, "clips": clips}


def make_folder(root: Path) -> Path:
    """`speakers/<speaker>/` with wav/flac clips, jpg/png faces and `speakers.csv`.

    alice, bob, carol, eve usable (10 clips: alice has clip0.wav and clip0.flac, bob a nested
    session2/clip10.wav and two images). Broken: a corrupt wav (carol), an unreadable face.jpg
    (dan, both clips), an empty folder (frank), a folder without images (gina), and a hidden
    macOS `._clip0.wav` that must be ignored.
    """
    speakers = root / "speakers"
    for i, spk in enumerate(["alice", "bob", "carol", "dan", "eve"]):
        for k in range(2):
            write_wav(speakers / spk / f"clip{k}.wav", tone(150 + 40 * i, 0.8))
        face_image(64, (40 * i, 120, 120)).save(speakers / spk / "face.jpg")
    sf.write(str(speakers / "alice" / "clip0.flac"), tone(400, 0.8), 16_000)
    write_wav(speakers / "bob" / "session2" / "clip10.wav", tone(500, 0.8))
    face_image(64, (250, 250, 0)).save(speakers / "bob" / "side.png")
    (speakers / "bob" / "._clip0.wav").write_bytes(b"macOS resource fork")
    (speakers / "carol" / "broken.wav").write_bytes(b"not audio" * 50)
    (speakers / "dan" / "face.jpg").write_bytes(b"\xff\xd8 truncated")
    (speakers / "frank").mkdir()
    write_wav(speakers / "gina" / "a.wav", tone(300, 0.8))
    (speakers / "speakers.csv").write_text("speaker,gender,age\nalice,f,31\nbob,Male,45\neve,F,\n")
    return speakers
