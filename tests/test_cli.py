"""The `scldm` command in-process: help for every command (fast: no torch), exit codes, one-line
errors with exit status 2, and the clip picker of `scldm generate --data`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scldm import __version__
from scldm.cli import COMMANDS, main
from scldm.cli.generate import pick_clips
from scldm.cli.prepare import SOURCES

HEAVY = ("torch", "diffusers", "accelerate", "transformers")
EVERY_HELP = [
    [],
    *([c.name] for c in COMMANDS),
    *(["prepare", s.name] for s in SOURCES),
]
HELP_SCRIPT = """
import json, sys
from scldm.cli import main
try:
    main([*sys.argv[2:], "--help"])
    status = None
except SystemExit as e:
    status = e.code
heavy = [m for m in sys.argv[1].split(",") if m in sys.modules]
print(json.dumps({"status": status, "heavy": heavy}))
"""


@pytest.mark.parametrize("command", EVERY_HELP, ids=lambda c: " ".join(c) or "scldm")
def test_help_of_every_command_exits_0_without_importing_torch(command):
    proc = subprocess.run(
        [sys.executable, "-c", HELP_SCRIPT, ",".join(HEAVY), *command],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    usage, result = proc.stdout.rsplit("\n", 2)[0], json.loads(proc.stdout.splitlines()[-1])
    assert result == {"status": 0, "heavy": []}
    assert usage.startswith(f"usage: scldm {' '.join(command)}".rstrip())


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(c.name in out for c in COMMANDS) and "scldm config" not in out


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no command
        ["nonsense"],
        ["prepare"],  # no source
        ["prepare", "folder"],  # no --root, no --out
        ["generate", "a.wav"],  # no --model, no -o
        ["train", "--data", "d", "--out", "o"],  # no --encoders
        ["evaluate", "--model", "m", "--data", "d", "-o", "o", "--num-images", "x"],
    ],
    ids=lambda a: " ".join(a) or "nothing",
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "usage: scldm" in capsys.readouterr().err


def test_version_exits_0(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and __version__ in capsys.readouterr().out


def test_missing_root_is_one_line_and_exit_2(tmp_path, capsys):
    code = main(
        ["prepare", "folder", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "nowhere" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_python_dash_m_runs_the_same_cli():
    out = subprocess.run(
        [sys.executable, "-m", "scldm", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and __version__ in out.stdout


# --- scldm generate --data: one clip per speaker of a split --------------------------------------


def _dataset(root: Path) -> Path:
    """A manifest only (the picker reads no audio): speakers s2, s10, s1 in that order in the
    test split, each with clips in a non-sorted order, and one training speaker a0."""
    rows = []
    for spk, clips, split in [
        ("s2", ["3", "1"], "test"),
        ("a0", ["0"], "train"),
        ("s10", ["0", "2"], "test"),
        ("s1", ["5", "0"], "test"),
    ]:
        for c in clips:
            audio, face = f"audio/{spk}/{c}.wav", f"faces/{spk}/{c}.jpg"
            rows.append({"speaker_id": spk, "audio": audio, "face": face, "split": split})
    root.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({**r, "gender": None, "age": None, "source": "folder"}) for r in rows]
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_pick_clips_takes_the_first_clip_of_each_speaker_in_id_order(tmp_path):
    data = _dataset(tmp_path / "data")
    every = pick_clips(data, "test")
    assert every == [data / "audio/s1/5.wav", data / "audio/s10/0.wav", data / "audio/s2/3.wav"]
    assert pick_clips(data, "test", 2) == every[:2]
    assert pick_clips(data, "train", 4) == [data / "audio/a0/0.wav"]


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (["a.wav", "--data", "DATA"], "not both"),
        ([], "not both and not neither"),
        (["--data", "DATA", "--speakers", "0"], "--speakers must be at least 1"),
        (["--data", "DATA", "--split", "dev"], "split must be one of"),
        (["--data", "DATA"], "a0"),  # the picked clip's audio is not there: named, exit 2
        (["--data", "NOWHERE"], "is not a prepared dataset"),
    ],
)
def test_generate_voice_choice_errors_are_one_line_and_exit_2(tmp_path, capsys, extra, problem):
    data = _dataset(tmp_path / "data")
    argv = [str(data) if a == "DATA" else str(tmp_path / a) if a == "NOWHERE" else a for a in extra]
    split = ["--split", "train"] if problem == "a0" else []
    out = tmp_path / "out"
    code = main(["generate", *argv, *split, "--model", str(tmp_path), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and problem in err and "Traceback" not in err
    assert not out.exists()


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
    import numpy as np
    import soundfile as sf

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
    import numpy as np
    import soundfile as sf

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
    import numpy as np
    import soundfile as sf

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
