"""`scldm app` (issue 23): the handler in-process (faces for a voice from each model, the audio
the models heard, every limit and bad input refused in one line), and the running server
through Gradio's own client (faces, an error for a bad file while the server carries on, four
clients at once). The page in a real browser: tests/test_app_browser.py (`make test-browser`)."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from baseline_fixtures import tiny_speech2face_pipeline
from conftest import random_tiny_pipeline
from scldm.app.studio import (
    Limits,
    Sampling,
    Studio,
    model_names,
    spectrogram,
    spectrogram_db,
)
from scldm.audio import SAMPLE_RATE
from scldm.data.synthvox.attributes import sample_speaker
from scldm.data.synthvox.voice import synthesize_clip
from scldm.errors import InputError

pytest.importorskip("gradio", reason="the app needs gradio: pip install 'scldm[app]'")


def speech(seconds: float, speaker: int = 0) -> np.ndarray:
    return synthesize_clip(sample_speaker(0, speaker), 0, seconds=seconds)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny random SCLDM pipeline (0.5 s of audio; its metadata says SynthVox) and a tiny
    random Speech2Face pipeline (6 s, deterministic)."""
    root = tmp_path_factory.mktemp("app-models")
    pipe = random_tiny_pipeline()
    pipe.set_sampling(num_inference_steps=2)
    pipe.save_pretrained(root / "scldm")
    meta = {"training_data": {"path": "/data/sv", "name": "SynthVox", "synthetic": True}}
    (root / "scldm" / "face_decoder" / "scldm_meta.json").write_text(json.dumps(meta))
    tiny_speech2face_pipeline().save_pretrained(root / "s2f")
    return {"scldm": root / "scldm", "s2f": root / "s2f"}


@pytest.fixture(scope="module")
def voices(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("app-voices")
    paths = {name: root / name for name in ("voice.wav", "short.wav", "silent.wav", "text.wav")}
    sf.write(paths["voice.wav"], speech(3.0), SAMPLE_RATE, subtype="PCM_16")
    middle = speech(1.0, speaker=1)[SAMPLE_RATE // 2 : SAMPLE_RATE // 2 + 4800]  # 0.3 s voiced
    sf.write(paths["short.wav"], middle, SAMPLE_RATE, subtype="PCM_16")
    sf.write(paths["silent.wav"], np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    paths["text.wav"].write_text("this is a text file, not a recording\n" * 20)
    # read by content, whatever the name: FLAC named .wav, Ogg named .m4a (ffmpeg decodes it)
    paths["flac.wav"] = root / "flac.wav"
    sf.write(paths["flac.wav"], speech(2.0), SAMPLE_RATE, format="FLAC")
    paths["ogg.m4a"] = root / "ogg.m4a"
    sf.write(paths["ogg.m4a"], speech(2.0), SAMPLE_RATE, format="OGG", subtype="VORBIS")
    return paths


@pytest.fixture(scope="module")
def studio(models) -> Studio:
    return Studio(models, Limits(max_faces=4))


# --- the handler ---------------------------------------------------------------------------


def test_faces_from_each_model_with_the_audio_they_heard(studio, voices):
    result = studio.run(voices["voice.wav"], num_images=3, seed=7)
    scldm, s2f = result.faces["scldm"], result.faces["s2f"]
    assert len(scldm) == 3 and {im.size for im in scldm} == {(32, 32)}
    assert len(s2f) == 1  # deterministic: one face, not three copies
    faces = [np.asarray(im) for im in scldm]
    assert not np.array_equal(faces[0], faces[1])
    # the models heard the first 0.5 s (both tiny front ends' segment), as the page shows
    assert studio.seconds == 0.5
    wave = sf.read(voices["voice.wav"], dtype="float32")[0]
    assert np.array_equal(result.heard, wave[: SAMPLE_RATE // 2])
    assert result.spectrogram.mode == "RGB" and result.spectrogram.width > 300
    assert result.notices == ["your recording is 3.0 s long; the model hears its first 0.5 s"]


def test_the_same_voice_and_seed_give_the_same_faces(studio, voices):
    a = studio.run(voices["voice.wav"], num_images=2, seed=3).faces["scldm"]
    b = studio.run(voices["voice.wav"], num_images=2, seed=3).faces["scldm"]
    c = studio.run(voices["voice.wav"], num_images=2, seed=4).faces["scldm"]
    assert [np.asarray(x).tobytes() for x in a] == [np.asarray(x).tobytes() for x in b]
    assert np.asarray(a[0]).tobytes() != np.asarray(c[0]).tobytes()


def test_sampling_settings_reach_scldm(studio, voices):
    plain = studio.run(voices["voice.wav"], num_images=1, seed=0).faces["scldm"][0]
    saved = studio.sampling_defaults()
    assert saved == Sampling(6.0, 0.8, 2)  # the pipeline's own defaults (steps set to 2)
    same = studio.run(voices["voice.wav"], 1, 0, saved).faces["scldm"][0]
    other = studio.run(voices["voice.wav"], 1, 0, Sampling(1.0, 0.3, 3)).faces["scldm"][0]
    assert np.array_equal(np.asarray(plain), np.asarray(same))
    assert not np.array_equal(np.asarray(plain), np.asarray(other))


def test_files_are_read_by_content_not_by_name(studio, voices):
    for name in ("flac.wav", "ogg.m4a"):
        result = studio.run(voices[name], num_images=1, seed=0)
        assert result.heard.size == SAMPLE_RATE // 2, name
        assert result.notices == ["your recording is 2.0 s long; the model hears its first 0.5 s"]


@pytest.mark.parametrize(
    ("voice", "limits", "problem"),
    [
        ("text.wav", None, "text.wav: not a readable audio file"),
        ("silent.wav", None, "silent.wav: is silent: every sample is zero"),
        ("short.wav", None, None),  # 0.3 s is enough: looped, with a notice
        ("voice.wav", Limits(max_seconds=2.0), "is 3 s long; recordings are limited to 2 s"),
        ("voice.wav", Limits(max_upload_mb=0.05), "is 0.1 MB; uploads are limited to 0.05 MB"),
        ("ogg.m4a", Limits(max_seconds=1.5), "is 2 s long; recordings are limited to 1.5 s"),
    ],
)
def test_bad_uploads_are_refused_in_one_line(studio, voices, voice, limits, problem):
    handler = _with_limits(studio, limits)
    if problem is None:
        notice = "your recording is 0.30 s long; looped 2 times to fill the model's 0.5 s input"
        result = handler.run(voices[voice], 1)
        assert result.notices == [notice]
        heard = result.heard  # looped, as the front ends loop it: 0.3 s, then its first 0.2 s
        assert heard.size == 8000 and np.array_equal(heard[4800:], heard[:3200])
        return
    with pytest.raises(InputError) as e:
        handler.run(voices[voice], 1)
    assert problem in str(e.value) and "\n" not in str(e.value)


def _with_limits(studio: Studio, limits: Limits | None) -> Studio:
    """The same loaded models under other limits."""
    if limits is None:
        return studio
    other = copy.copy(studio)
    other.limits = limits
    return other


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"num_images": 0}, "faces must be 1 to 4, got 0"),
        ({"num_images": 5}, "faces must be 1 to 4, got 5"),
        ({"seed": -1}, "seed must be 0 to 2^63 - 1, got -1"),
        ({"sampling": Sampling(guidance_scale=float("nan"))}, "guidance must be 0 to 20, got nan"),
        ({"sampling": Sampling(temperature=9.0)}, "temperature must be 0 to 2, got 9.0"),
        ({"sampling": Sampling(num_inference_steps=0)}, "steps must be 1 to 100, got 0"),
    ],
)
def test_settings_out_of_range_are_refused_before_any_work(studio, voices, kwargs, problem):
    with pytest.raises(InputError, match=problem.replace("^", "\\^")):
        studio.run(voices["voice.wav"], **kwargs)


def test_no_upload_and_no_model(studio):
    with pytest.raises(InputError, match="record or upload some speech first"):
        studio.run(None)
    with pytest.raises(InputError, match="at least one --model"):
        Studio({})


def test_models_are_named_by_method_or_by_name(models, tmp_path):
    assert model_names([str(models["scldm"]), str(models["s2f"])]) == {
        "scldm": models["scldm"],
        "speech2face": models["s2f"],
    }
    twice = model_names([str(models["scldm"]), str(models["scldm"]), f"mine={models['s2f']}"])
    assert list(twice) == ["scldm", "scldm-2", "mine"]
    with pytest.raises(InputError, match="must be unique"):
        model_names([f"a={models['scldm']}", f"a={models['s2f']}"])
    with pytest.raises(InputError, match="no model_index.json"):
        model_names([str(tmp_path)])


def test_the_page_says_what_each_model_was_trained_on(studio):
    scldm, s2f = studio.models
    assert scldm.trained_on.startswith("trained on SynthVox, synthetic voices: real voices are")
    assert s2f.trained_on == "its training data is not recorded in the pipeline folder"


def test_spectrogram_puts_a_tone_at_its_frequency():
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    for hz in (300.0, 6000.0):
        db = spectrogram_db(0.5 * np.sin(2 * np.pi * hz * t))
        assert db.shape == (98, 257)  # 10 ms hops of 25 ms windows, 512-point FFT
        assert abs(np.argmax(db.mean(0)) * SAMPLE_RATE / 512 - hz) <= SAMPLE_RATE / 512
    assert spectrogram(np.zeros(100, np.float32)).size[0] > 300  # shorter than a window: drawn


# --- the running server, through Gradio's client -------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(specs: list[str], root: Path, *extra: str):
    """`scldm app --model SPEC...` on a free port of 127.0.0.1 with its temporary files under
    ROOT/tmp: yields (url, log); then stops it with SIGTERM and checks it cleaned up."""
    port = _free_port()
    log, temp = root / "server.log", root / "tmp"
    temp.mkdir()
    args = [sys.executable, "-m", "scldm", "app", "--port", str(port), "--max-faces", "4"]
    args += [a for spec in specs for a in ("--model", spec)] + list(extra)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(temp)}
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, log.read_text()[-3000:]
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    try:
        yield url, log
        ours = [p for p in temp.iterdir() if p.name.startswith(("scldm-app-", "gradio"))]
        assert len(ours) == 1 and ours[0].name.startswith("scldm-app-")  # uploads and faces
        assert any(p.is_file() for p in ours[0].rglob("*.wav"))
    finally:
        proc.terminate()  # SIGTERM: stops as Ctrl-C does, and removes its temporary files
        status = proc.wait(timeout=30)
    assert status == 0, log.read_text()[-3000:]
    assert not ours[0].exists() and log.read_text().rstrip().endswith("scldm app: stopped")


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    """The app with both tiny models, uploads up to 150 kB (voice.wav is 96 kB); (url, log)."""
    specs = [f"scldm={models['scldm']}", f"s2f={models['s2f']}"]
    yield from serve(specs, tmp_path_factory.mktemp("app-server"), "--max-upload-mb", "0.15")


def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


def _generate(url: str, voice: Path, faces: int = 2, seed: int = 0):
    from gradio_client import handle_file

    return _client(url).predict(
        handle_file(str(voice)), faces, seed, 6.0, 0.8, 2, api_name="/generate"
    )


def test_the_server_answers_with_faces_and_survives_a_bad_file(server, voices):
    from gradio_client.exceptions import AppError

    url, log = server
    scldm, s2f, notes, heard, picture = _generate(url, voices["voice.wav"], faces=3)
    assert len(scldm) == 3 and len(s2f) == 1 and "Made in" in notes
    assert [f["caption"] for f in scldm] == ["scldm #1", "scldm #2", "scldm #3"]
    assert Path(scldm[0]["image"]).read_bytes()[:4] == b"\x89PNG"
    assert sf.info(heard).duration == pytest.approx(0.5, abs=0.01)
    with pytest.raises(AppError, match="text.wav: not a readable audio file"):
        _generate(url, voices["text.wav"])
    assert len(_generate(url, voices["voice.wav"])[0]) == 2  # and it carries on
    assert "Traceback" not in log.read_text()


def test_each_answer_gets_a_fresh_folder_and_old_ones_go(tmp_path):
    from scldm.app.page import Outbox

    outbox = Outbox(tmp_path / "answers", keep_s=60)
    first, second = outbox.folder(), outbox.folder()
    assert first != second and first.parent == second.parent == tmp_path / "answers"
    (first / "heard.wav").write_bytes(b"x")
    os.utime(first, (time.time() - 120,) * 2)  # older than keep_s: the next answer removes it
    third = outbox.folder()
    assert not first.exists() and second.exists() and third.exists()


def test_four_clients_at_once_all_get_their_faces(server, voices):
    """The same voice from four clients: its spectrogram and heard audio are the same content in
    every answer, which Gradio's content-addressed cache once rewrote in place while another
    client was downloading it (a truncated download)."""
    url, _ = server
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda s: _generate(url, voices["voice.wav"], 2, s), range(4)))
    assert [len(a[0]) for a in answers] == [2, 2, 2, 2]
    firsts = {Path(a[0][0]["image"]).read_bytes() for a in answers}
    assert len(firsts) == 4  # each client got its own seed's faces


def test_the_server_refuses_an_upload_over_its_size_limit(server, tmp_path):
    url, _ = server
    big = tmp_path / "big.wav"  # 5 s of 16-bit speech: 160 kB
    sf.write(big, speech(5.0), SAMPLE_RATE, subtype="PCM_16")
    with pytest.raises(ValueError, match="exceeds the maximum file size of 150000 bytes"):
        _generate(url, big)


def test_a_port_in_use_is_refused_in_one_line_before_the_models_load(models, capsys):
    from scldm.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["app", "--model", str(models["scldm"]), "--port", str(port)]
        assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err
