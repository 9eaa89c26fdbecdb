"""Fault injection for `scldm generate` (issue 24): every bad input or output is refused in one
line with exit status 2 before any face is made, and nothing is half-written.

Elsewhere: bad audio in the loaders (tests/test_audio.py), the voice-choice options
(tests/test_cli.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from scldm.cli import main
from test_generators import folders  # noqa: F401


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (["--num-images", "0"], "--num-images must be at least 1, got 0"),
        (["--steps", "-1"], "--steps must be at least 1, got -1"),
        (["--guidance", "nan"], "--guidance must be a finite number, got nan"),
        (["--temperature", "inf"], "--temperature must be a finite number, got inf"),
        (["--prior-scale=-inf"], "--prior-scale must be a finite number, got -inf"),
    ],
)
def test_sampling_options_are_checked_one_by_one_before_anything_runs(
    tmp_path, capsys, extra, problem
):
    """Each bad option is named in its own line (NaN guidance sampled an all-black face and
    exited 0), before the model loads or anything is written."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    out = tmp_path / "out"
    code = main(
        ["generate", str(tmp_path / "v.wav"), "--model", str(model), *extra, "-o", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and problem in err and "Traceback" not in err
    assert not out.exists()


def test_generate_names_a_folder_given_as_audio_and_a_file_given_as_output(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    voice = tmp_path / "v.wav"
    voice.write_bytes(b"RIFF")
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"png")
    for audio, out, problem in (
        (tmp_path, tmp_path / "out", "is a folder, not an audio file"),
        (voice, taken, "taken.png: exists and is not a folder"),
    ):
        code = main(["generate", str(audio), "--model", str(model), "-o", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and problem in err, err
    assert taken.read_bytes() == b"png"


def test_generate_checks_every_file_before_making_any_face(tmp_path, capsys):
    """good.wav then an empty and a 10 ms file: refused before the model loads, nothing
    written (the first face was written, then exit 2)."""

    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    good, empty, tiny = tmp_path / "good.wav", tmp_path / "empty.wav", tmp_path / "tiny.wav"
    sf.write(good, 0.3 * np.sin(np.arange(16_000) * 2 * np.pi * 150 / 16_000), 16_000)
    empty.write_bytes(b"")
    sf.write(tiny, np.full(160, 0.1, np.float32), 16_000)
    out = tmp_path / "out"
    for bad, problem in ((empty, "empty.wav: empty file"), (tiny, "tiny.wav: too short (0.010 s")):
        code = main(["generate", str(good), str(bad), "--model", str(model), "-o", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and problem in err, err
    assert not out.exists()


def _fake_model(tmp_path: Path, segment_seconds: float = 6.0) -> Path:
    """A folder that passes for a pipeline until it loads, with its front end's input length."""
    model = tmp_path / "model"
    (model / "frontend").mkdir(parents=True)
    (model / "model_index.json").write_text("{}")
    (model / "frontend" / "config.json").write_text(
        json.dumps({"segment_seconds": segment_seconds})
    )
    return model


def test_generate_refuses_truncated_silent_and_noise_files_and_an_unwritable_output(
    tmp_path, capsys
):

    model, rate = _fake_model(tmp_path), 16_000
    t = np.arange(3 * rate) / rate
    good = tmp_path / "good.wav"
    sf.write(good, 0.3 * np.sin(2 * np.pi * 150 * t), rate, subtype="PCM_16")
    truncated = tmp_path / "cut.wav"  # a download cut short: the header says 3 s
    truncated.write_bytes(good.read_bytes()[: 44 + 2 * 1600])
    silent, noise = tmp_path / "silent.wav", tmp_path / "noise.wav"
    sf.write(silent, np.zeros(3 * rate, np.float32), rate)
    rng = np.random.default_rng(0)
    sf.write(noise, 0.1 * rng.standard_normal(3 * rate), rate, subtype="PCM_16")
    brown = tmp_path / "brown.wav"  # low-frequency noise: smooth, but not voiced
    walk = np.cumsum(rng.standard_normal(3 * rate))
    sf.write(brown, 0.5 * walk / np.abs(walk).max(), rate, subtype="PCM_16")
    out = tmp_path / "out"
    for bad, problem in (
        (truncated, "cut.wav: is truncated: its header declares 3.00 s of audio but the file "
         "ends after 0.100 s"),
        (silent, "silent.wav: is silent"),
        (noise, "noise.wav: holds no speech: 0% of its frames are voiced"),
        (brown, "brown.wav: holds no speech"),
    ):  # fmt: skip
        code = main(["generate", str(good), str(bad), "--model", str(model), "-o", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and problem in err, err
    assert not out.exists()
    # an output folder that cannot be made: refused before any generation
    code = main(["generate", str(good), "--model", str(model), "-o", "/proc/scldm/out"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "/proc/scldm/out: cannot write faces there" in err


def test_generate_says_when_a_long_file_is_cut_or_a_short_one_looped(tmp_path, caplog):

    model, rate = _fake_model(tmp_path), 16_000
    long, short = tmp_path / "long.wav", tmp_path / "short.wav"
    sf.write(long, 0.3 * np.sin(2 * np.pi * 150 * np.arange(60 * rate) / rate), rate)
    sf.write(short, 0.3 * np.sin(2 * np.pi * 150 * np.arange(rate // 2) / rate), rate)
    with caplog.at_level("INFO"):
        # the fake model then fails to load; the notices come first
        main(["generate", str(long), str(short), "--model", str(model), "-o", str(tmp_path / "o")])
    text = caplog.text
    assert "long.wav: 60.0 s long; the model hears its first 6 s" in text
    assert "short.wav: 0.50 s long; looped 12 times to fill the model's 6 s input" in text


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_pipeline_with_damaged_weights_is_named_in_one_line(
    folders,  # noqa: F811
    tmp_path,
    capsys,
    damage,
):
    model = tmp_path / "model"
    shutil.copytree(folders["scldm"], model)
    weights = next((model / "unet").glob("*.safetensors"))
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:2000])
    else:
        weights.unlink()
    out = tmp_path / "out"
    assert main(["generate", str(folders["a"]), "--model", str(model), "-o", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("scldm")]
    assert len(err) == 1 and f"{model}: cannot load its weights: " in err[0], err
    assert not out.exists()
