"""The `scldm` command in-process: help, version and one-line errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scldm import __version__
from scldm.cli import main


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "prepare" in out and "synthvox-oracle" in out


def test_prepare_help_names_every_source(capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    out = capsys.readouterr().out
    for source in ("voxceleb", "avspeech", "folder", "synthvox"):
        assert source in out


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
