"""benchmarks/real_voices.py: `check` end to end on two tiny speakers (a tiny random SCLDM and
an untrained oracle), its numbers against the JSON and the oracle's own reading, the balanced
accuracy on hand-made votes, bad inputs, and `build` from the Debian packages when installed."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import SR, random_tiny_pipeline, write_wav
from scldm.evaluation.synthvox_oracle import SynthVoxOracle

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "real_voices.py"
sys.path.append(str(SCRIPT.parent))  # its own imports: the speech set
import speech_set  # noqa: E402

spec = importlib.util.spec_from_file_location("real_voices", SCRIPT)
real_voices = importlib.util.module_from_spec(spec)
sys.modules["real_voices"] = real_voices  # its dataclasses look their module up
spec.loader.exec_module(real_voices)

FIELDS = ["speaker", "gender", "age", "group", "language", "source", "label_basis"]


def harmonic_voice(f0: float, seconds: float, seed: int) -> np.ndarray:
    """A buzz of 8 harmonics of `f0` with a slow vibrato and a little noise: voiced speech's
    spectrum, no words."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.03 * np.sin(2 * np.pi * 3 * t))) / SR
    wave = sum(np.sin(h * phase) / h for h in range(1, 9)) + 0.01 * rng.standard_normal(t.size)
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def write_labels(folder: Path, rows: list[dict[str, str]]) -> None:
    with (folder / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows([{k: r.get(k, "") for k in FIELDS} for r in rows])


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """Two speakers (a 220 Hz "f", a 110 Hz "m"; 2 utterances of 1 s), a tiny random SCLDM
    (2 steps) and an untrained oracle."""
    root = tmp_path_factory.mktemp("real_voices")
    voices = root / "voices"
    for i, (name, f0) in enumerate((("woman", 220.0), ("man", 110.0))):
        for k in range(2):
            write_wav(voices / name / f"{k}.wav", harmonic_voice(f0, 1.0, seed=2 * i + k))
    write_labels(voices, [{"speaker": "woman", "gender": "f"}, {"speaker": "man", "gender": "m"}])
    pipe = random_tiny_pipeline()
    pipe.set_sampling(num_inference_steps=2)
    pipe.save_pretrained(root / "model")
    torch.manual_seed(0)
    SynthVoxOracle(image_size=32, channels=(8, 16), embedding_dim=16).save_pretrained(
        root / "oracle"
    )
    return {"root": root, "voices": voices, "model": root / "model", "oracle": root / "oracle"}


def run_check(setup, capsys, name: str, *extra: str) -> tuple[int, str, str]:
    args = ["--model", str(setup["model"]), "--oracle", str(setup["oracle"]), "--voices"]
    args += [str(setup["voices"]), "--faces", "2", "--seed", "3", "--name", name]
    status = real_voices.main(["check", *args, "--results", str(setup["root"] / "res"), *extra])
    out, err = capsys.readouterr()
    return status, out, err


def test_check_end_to_end_matches_the_json_and_the_oracle(setup, capsys):
    status, out, _ = run_check(setup, capsys, "tiny")
    assert status == 0
    res = setup["root"] / "res"
    result = json.loads((res / "real_voices_tiny.json").read_text())
    for suffix in (".md", ".png"):
        assert (res / f"real_voices_tiny{suffix}").stat().st_size > 0
    lines = out.splitlines()
    votes = {}
    for i, r in enumerate(result["speakers"]):
        assert len(r["faces"]) == 2 * 2  # 2 utterances × 2 faces
        p = np.array([f["p_female"] for f in r["faces"]])
        age = np.array([f["age"] for f in r["faces"]])
        vote = "f" if p.mean() > 0.5 else "m"
        votes[r["gender"]] = vote
        mark = "✓" if vote == r["gender"] else "✗"
        expected = (
            f"read female {(p > 0.5).mean():.2f}  vote {vote} {mark}  age {np.median(age):.0f} "
            f"[{np.percentile(age, 25):.0f}-{np.percentile(age, 75):.0f}]"
        )
        assert lines[i].startswith(r["speaker"]) and lines[i].endswith(expected)
        assert f"true {r['gender']}  utts 2" in lines[i]
    accuracy = np.mean([votes["f"] == "f", votes["m"] == "m"])  # one speaker per gender
    assert result["summary"]["balanced_accuracy"] == pytest.approx(accuracy)
    assert lines[2].startswith(f"balanced accuracy {accuracy:.3f} over 2 adults")
    assert "0 children reported apart" in lines[2]
    md = (res / "real_voices_tiny.md").read_text()
    assert "| woman | adult |" in md and f"balanced accuracy {accuracy:.3f}" in md

    # the JSON's readings are the oracle's, on the faces the seed makes (known answer)
    from scldm.evaluation.generators import load_generator

    generator = load_generator(setup["model"])
    oracle = SynthVoxOracle.from_pretrained(setup["oracle"]).eval()
    for r in result["speakers"]:
        face = r["faces"][1]  # first utterance, k = 1
        seed = real_voices.face_seed(3, r["speaker"], face["utterance"], face["k"])
        audio = setup["voices"] / r["speaker"] / face["utterance"]
        with torch.no_grad():
            image = generator([audio], [torch.Generator().manual_seed(seed)])
            pred = oracle.predict_attributes(image)
        assert pred["gender"][0, 0].item() == pytest.approx(face["p_female"], abs=1e-5)
        assert pred["age"][0].item() == pytest.approx(face["age"], abs=1e-3)

    # deterministic for a seed, and the issue's form without the subcommand
    args = ["--model", str(setup["model"]), "--oracle", str(setup["oracle"]), "--voices"]
    args += [str(setup["voices"]), "--faces", "2", "--seed", "3", "--name", "again"]
    assert real_voices.main([*args, "--results", str(res)]) == 0
    capsys.readouterr()
    again = json.loads((res / "real_voices_again.json").read_text())
    assert again["speakers"] == result["speakers"]


def test_check_skips_and_counts_a_damaged_utterance(setup, capsys, tmp_path):
    import shutil

    voices = tmp_path / "voices"
    shutil.copytree(setup["voices"], voices)
    damaged = voices / "woman" / "2.wav"
    damaged.write_bytes(b"RIFF, but not audio")
    clean = dict(setup, root=tmp_path / "clean")
    assert run_check(clean, capsys, "clean")[0] == 0
    status, out, err = run_check(dict(setup, voices=voices, root=tmp_path), capsys, "damaged")
    assert status == 0 and "Traceback" not in err
    assert f"skipped 1 unreadable files (the first: {damaged}" in out
    result = json.loads((tmp_path / "res" / "real_voices_damaged.json").read_text())
    before = json.loads((tmp_path / "clean" / "res" / "real_voices_clean.json").read_text())
    assert len(result["unreadable"]) == 1 and str(damaged) in result["unreadable"][0]
    assert result["speakers"] == before["speakers"]  # the others' faces and votes unchanged


def test_balanced_accuracy_on_hand_made_votes():
    def row(gender, vote, group="adult", age=40.0):
        return {"gender": gender, "vote": vote, "group": group, "age_median": age}

    rows = [row("f", "f", age=30), row("f", "f", age=50), row("f", "m", age=70)]
    rows += [row("m", "m", age=60), row("", "f", group="child", age=20)]
    s = real_voices.balanced_accuracy(rows)
    assert s["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert s["recall"] == {"f": pytest.approx(2 / 3), "m": 1.0}
    assert s["adults"] == {"f": 3, "m": 1} and s["children"] == 1
    assert s["median_age_adults"] == 55.0  # the child's 20 is not counted


@pytest.mark.parametrize("problem", ["no labels", "no wavs", "bad gender"])
def test_check_bad_input_exits_2_naming_the_file(setup, capsys, tmp_path, problem):
    voices = tmp_path / "voices"
    write_wav(voices / "a" / "0.wav", harmonic_voice(200.0, 1.0, seed=0))
    (voices / "b").mkdir()
    rows = [{"speaker": "a", "gender": "f"}]
    if problem == "no wavs":
        rows.append({"speaker": "b", "gender": "m"})
        culprit = voices / "b"
    if problem == "bad gender":
        rows = [{"speaker": "a", "gender": "female"}]
        culprit = voices / "labels.csv"
    if problem != "no labels":
        write_labels(voices, rows)
    else:
        culprit = voices / "labels.csv"
    status = real_voices.main(
        ["--model", str(setup["model"]), "--oracle", str(setup["oracle"]), "--voices", str(voices)]
    )
    _, err = capsys.readouterr()
    assert status == 2
    assert err.count("\n") == 1 and str(culprit) in err and "Traceback" not in err


def test_build_names_the_missing_package(monkeypatch, tmp_path, capsys):
    gone = speech_set.Speaker("x", "f", "adult", "xx", "some-voices-pkg", "/nonexistent", "")
    monkeypatch.setattr(real_voices, "SPEAKERS", (gone,))
    assert real_voices.main(["build", "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install some-voices-pkg" in err


def test_build_from_the_debian_packages(tmp_path):
    if missing := speech_set.missing_packages(speech_set.SPEAKERS):
        pytest.skip(f"Debian packages not installed: {' '.join(missing)}")
    labels, unreadable = speech_set.build(tmp_path / "voices")
    assert unreadable == []
    with labels.open(newline="") as f:
        rows = list(csv.DictReader(f))
    adults = [r for r in rows if r["group"] == "adult"]
    genders = [r["gender"] for r in adults]
    assert len(adults) >= 12 and genders.count("f") >= 5 and genders.count("m") >= 5
    assert all(r["label_basis"] and r["source"] for r in rows)
    for r in rows:
        wavs = sorted((labels.parent / r["speaker"]).glob("*.wav"))
        assert len(wavs) >= 2
        for wav in wavs:
            info = sf.info(str(wav))
            assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
            assert info.duration >= 4.0
    # the same set on every build, the GSM voices too (sox's dither would make them differ)
    gsm = [s for s in speech_set.SPEAKERS if s.folder.endswith(("/es", "/fr"))]
    again, _ = speech_set.build(tmp_path / "again", gsm)
    assert gsm and all(
        wav.read_bytes() == (labels.parent / wav.relative_to(again.parent)).read_bytes()
        for wav in again.parent.rglob("*.wav")
    )


def test_calibrate_writes_the_mean_real_embedding_that_stage_1_reads(monkeypatch, tmp_path, capsys):
    from scldm.models.ge2e import default_weights, real_speech_mean

    if default_weights() is None:
        pytest.skip("GE2E weights absent: pip install --no-deps resemblyzer")
    folders = []
    for i, f0 in enumerate((120.0, 210.0)):  # two folders of 3 s "words": one utterance each
        for k in range(3):
            write_wav(tmp_path / f"v{i}" / f"w{k}.wav", harmonic_voice(f0, 2.0, seed=3 * i + k))
        folders.append(
            speech_set.Speaker(f"v{i}", "", "child", "xx", "pkg", str(tmp_path / f"v{i}"), "")
        )
    (tmp_path / "v0" / "w3.wav").write_bytes(b"RIFF, but not audio")  # skipped and counted
    out = tmp_path / "real.json"
    result = speech_set.calibrate(out, folders)
    assert result["unreadable"] == [tmp_path / "v0" / "w3.wav"]
    assert [s["utterances"] for s in result["sources"]] == [1, 1]
    assert result["partial_embeddings"] > 2  # several 1.6 s windows of each 6 s utterance
    mean = real_speech_mean(out)  # what stage 1 reads
    assert mean.shape == (256,) and 0.3 < float(mean.norm()) <= 1.0
    assert json.loads(out.read_text())["ge2e_weights_sha256"] and not list(tmp_path.glob("*.tmp"))
    # a folder that is not installed: one line naming the package, exit 2, nothing written
    gone = speech_set.Speaker("x", "", "child", "xx", "some-voices-pkg", "/nonexistent", "")
    monkeypatch.setattr(real_voices, "CALIBRATION", (gone,))
    capsys.readouterr()  # calibrate's progress bar
    assert real_voices.main(["calibrate", "--out", str(tmp_path / "never.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install some-voices-pkg" in err
    assert not (tmp_path / "never.json").exists()
