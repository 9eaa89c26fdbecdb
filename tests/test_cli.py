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
