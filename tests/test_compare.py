"""`scldm compare`: the paired bootstrap against a hand computation, training minutes from run
logs, the training plan's layout and reuse (with stand-in trainers), and the comparison of a tiny
SCLDM and a tiny Speech2Face end to end: tables with intervals, floor, chance and ceiling rows,
the paired differences, the grid, and a rerun that evaluates nothing."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from baseline_fixtures import tiny_speech2face_pipeline
from conftest import random_tiny_pipeline
from scldm.cli import main
from scldm.config import save_config
from scldm.data.manifest import read_manifest
from scldm.errors import InputError
from scldm.evaluation.clips import EvalSettings
from scldm.evaluation.metrics import paired_bootstrap
from scldm.evaluation.synthvox_oracle import SynthVoxOracle
from scldm.experiments import compare as compare_mod
from scldm.experiments import compare_runs
from scldm.experiments.compare import Model, compare, log_seconds, parse_model
from scldm.experiments.compare_runs import route_overrides, train_models
from test_evaluate import LookupAttributes, PixelFeatures

MAX_CLIPS = 8


def markdown_table(text: str, after: str = "") -> list[str]:
    """The lines of the first table in `text` after the line `after` (from the start if "")."""
    lines = text.split(after, 1)[1].splitlines() if after else text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def row_labels(table: list[str]) -> list[str]:
    return [line.split("|")[1].strip() for line in table[2:]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """SynthVox (12 speakers, 32 px), a tiny random SCLDM (2 steps), a tiny random
    Speech2Face and an untrained SynthVox oracle with a hand-made ceilings.json."""
    from scldm.data.synthvox import prepare_synthvox

    root = tmp_path_factory.mktemp("compare")
    prepare_synthvox(
        root / "data", speakers=12, clips_per_speaker=2, faces_per_speaker=2, image_size=32
    )
    scldm = random_tiny_pipeline()
    scldm.set_sampling(num_inference_steps=2)
    scldm.save_pretrained(root / "scldm")
    tiny_speech2face_pipeline().save_pretrained(root / "s2f")
    torch.manual_seed(0)
    oracle = root / "oracle"
    SynthVoxOracle(image_size=32, channels=(8, 16), embedding_dim=16).save_pretrained(oracle)
    ceiling = {"gender_acc": 1.0, "age_within_10": 0.75, "age_mae": 0.0, "skin_tone_acc": 0.2}
    (oracle / "ceilings.json").write_text(json.dumps({"voice_only_ceiling": ceiling}))
    return {"root": root, "data": root / "data", "scldm": root / "scldm", "s2f": root / "s2f"}


# --- pure parts ---------------------------------------------------------------------------


def test_paired_bootstrap_against_a_hand_computation():
    a = {"s1": 3.0, "s2": 5.0, "s3": 4.0, "only_a": 9.0, "nan": float("nan")}
    b = {"s1": 1.0, "s2": 4.0, "s3": 1.0, "only_b": 0.0, "nan": 1.0}
    d = paired_bootstrap(a, b, resamples=500, seed=3)
    # shared finite speakers s1, s2, s3 (sorted): differences 2, 1, 3
    assert d["speakers"] == 3 and d["value"] == pytest.approx(2.0)
    draws = np.random.default_rng(3).integers(0, 3, size=(500, 3))
    means = np.array([2.0, 1.0, 3.0])[draws].mean(axis=1)
    assert d["ci"] == pytest.approx(list(np.percentile(means, [2.5, 97.5])))
    # a constant shift over speakers: the paired interval collapses onto it, though the
    # speakers themselves vary a lot (an unpaired interval would be wide)
    rng = np.random.default_rng(0)
    base = {f"s{i}": float(v) for i, v in enumerate(rng.normal(0, 10, 50))}
    shifted = {s: v + 1.5 for s, v in base.items()}
    d = paired_bootstrap(shifted, base)
    assert d["value"] == pytest.approx(1.5) and d["ci"] == pytest.approx([1.5, 1.5])
    assert np.isnan(paired_bootstrap({"x": 1.0}, {"y": 1.0})["value"])


def _log(path: Path, sessions: list[tuple[datetime, list[tuple[float, str]]]]) -> Path:
    lines = []
    for start, entries in sessions:
        for offset, text in entries:
            when = start + timedelta(seconds=offset)
            lines.append(f"{when:%Y-%m-%d %H:%M:%S},{when.microsecond // 1000:03d} {text}")
    path.mkdir(parents=True, exist_ok=True)
    (path / "log.txt").write_text("\n".join(lines) + "\n")
    return path


def test_training_minutes_leave_out_the_downtime_of_a_resumed_run(tmp_path):
    t0 = datetime(2026, 1, 1, 10, 0, 0)
    killed = [(0, "stage 1: 100 clips"), (1, "no checkpoint in RUN yet: starting from step 0")]
    killed += [(61, "step 25 loss=1"), (121, "step 50 loss=1"), (150, "saved checkpoint")]
    resumed = [(0, "stage 1: 100 clips"), (2, "resumed from RUN/checkpoints/x at step 50")]
    resumed += [(62, "step 75 loss=1"), (242, "step 100 loss=1"), (300, "exported")]
    run = _log(tmp_path / "a", [(t0, killed), (t0 + timedelta(hours=5), resumed)])
    assert log_seconds(run / "log.txt") == pytest.approx(150 + 300)
    other = _log(tmp_path / "b", [(t0, [(0, "starting from step 0"), (90, "step 25 x")])])
    assert compare_mod.train_minutes([run, other, tmp_path / "none"]) == pytest.approx(9.0)
    assert compare_mod.train_minutes([tmp_path / "none"]) is None


def test_names_and_overrides_are_checked_in_one_line():
    assert parse_model("s2f=runs/x/pipeline") == Model("s2f", Path("runs/x/pipeline"))
    for bad in ("runs/x", "=x", "a b=x", "runs=x"):
        with pytest.raises(InputError, match="--model"):
            parse_model(bad)
    routed = route_overrides(
        ["scldm.pretrain.train.max_steps=3", "speech2face.train.max_steps=4"],
        ["scldm", "speech2face"],
    )
    assert routed == {"scldm": ["pretrain.train.max_steps=3"], "speech2face": ["train.max_steps=4"]}
    with pytest.raises(InputError, match="start with the method"):
        route_overrides(["wen.train.max_steps=3"], ["scldm"])
    with pytest.raises(InputError, match="which SCLDM stage"):
        route_overrides(["scldm.optim.lr=3"], ["scldm"])


# --- training plan ------------------------------------------------------------------------


class FakeTrainers:
    """Stand-ins for the trainers: each writes what the real one leaves (config.yaml, log.txt,
    exports, a pipeline folder) and records its call."""

    def __init__(self):
        self.calls: list[str] = []

    def _run(self, cfg, what: str, minutes: float) -> Path:
        run = Path(cfg.train.output_dir)
        save_config(cfg, run / "config.yaml")
        t0 = datetime(2026, 1, 1, 10, 0, 0)
        _log(run, [(t0, [(0, "starting from step 0"), (60 * minutes, "step 2 x")])])
        self.calls.append(f"{what} {run.parent.name}/{run.name}")
        return run

    def stage1(self, cfg, cpu):
        run = self._run(cfg, "stage1", 2)
        (run / "export" / "speech_encoder").mkdir(parents=True)
        (run / "export" / "speech_encoder" / "config.json").write_text("{}")
        (run / "metrics.json").write_text("{}")

    def prior(self, run, data, num_faces):
        (run / "prior").mkdir()
        (run / "prior" / "prior.safetensors").write_bytes(b"")
        self.calls.append(f"prior {run.parent.name}")

    def stage2(self, cfg, encoders, cpu):
        run = self._run(cfg, "stage2", 3)
        pipe = random_tiny_pipeline()
        pipe.set_sampling(num_inference_steps=2)
        pipe.save_pretrained(run / "pipeline")

    def speech2face(self, cfg, *, resume, cpu):
        run = self._run(cfg, "s2f", 4)
        tiny_speech2face_pipeline(seed=cfg.train.seed).save_pretrained(run / "pipeline")


@pytest.fixture
def fake(monkeypatch) -> FakeTrainers:
    f = FakeTrainers()
    monkeypatch.setattr(compare_runs, "_train_stage1", f.stage1)
    monkeypatch.setattr(compare_runs, "_face_prior", f.prior)
    monkeypatch.setattr(compare_runs, "_train_stage2", f.stage2)
    real = compare_runs.baseline_trainer
    monkeypatch.setattr(
        compare_runs, "baseline_trainer", lambda method: (real(method)[0], f.speech2face)
    )
    return f


def test_train_models_keeps_the_layout_and_reuses_finished_runs(setup, tmp_path, fake):
    out = tmp_path / "out"
    kw = {"data": setup["data"], "out": out, "preset": "tiny"}
    steps = ["speech2face.train.max_steps=3", "scldm.train.train.max_steps=2"]
    models = train_models(["scldm", "speech2face"], [0, 1], overrides=steps, **kw)
    runs = out.resolve() / "runs"
    assert [(m.name, m.method, m.seed) for m in models] == [
        ("scldm-seed0", "scldm", 0),
        ("scldm-seed1", "scldm", 1),
        ("speech2face-seed0", "speech2face", 0),
        ("speech2face-seed1", "speech2face", 1),
    ]
    assert models[1].path == runs / "scldm" / "seed1" / "ldm" / "pipeline"
    assert models[1].runs == (
        runs / "scldm" / "seed1" / "encoders",
        runs / "scldm" / "seed1" / "ldm",
    )
    assert models[2].path == runs / "speech2face" / "seed0" / "pipeline"
    assert fake.calls == [
        "stage1 seed0/encoders",
        "prior seed0",
        "stage2 seed0/ldm",
        "stage1 seed1/encoders",
        "prior seed1",
        "stage2 seed1/ldm",
        "s2f speech2face/seed0",
        "s2f speech2face/seed1",
    ]
    cfg = (runs / "speech2face" / "seed1" / "config.yaml").read_text()
    assert "seed: 1" in cfg and "max_steps: 3" in cfg  # the seed and the --set reached it
    fake.calls.clear()
    again = train_models(["scldm", "speech2face"], [0, 1], overrides=steps, **kw)
    assert fake.calls == [] and again == models  # everything reused
    with pytest.raises(InputError, match="other settings"):
        train_models(["speech2face"], [0], overrides=["speech2face.train.max_steps=9"], **kw)
    # how a run read its data changes none of its numbers: reused (stage 1 needed
    # `--set scldm.pretrain.data.num_workers=0` to reuse a run trained without a worker)
    workers = ["speech2face.train.max_steps=3", "speech2face.data.num_workers=3"]
    assert train_models(["speech2face"], [0], overrides=workers, **kw) == models[2:3]
    assert fake.calls == []
    with pytest.raises(InputError, match="methods to train"):
        train_models(["wav2vec"], [0], **kw)


def test_compare_groups_seeds_into_a_mean_row(setup, tmp_path, fake):
    out = tmp_path / "out"
    data = setup["data"]
    models = train_models(["speech2face", "scldm"], [0, 1], data=data, out=out, preset="tiny")
    settings = EvalSettings(split="train", num_images=2, max_clips=MAX_CLIPS, bootstrap=100)
    table = compare(
        models,
        data,
        out,
        features={"pixels": PixelFeatures()},
        attributes={"lookup": LookupAttributes(data, 32)},
        settings=settings,
        progress=False,
    )
    text = table.read_text()
    labels = row_labels(markdown_table(text))
    assert labels[:3] == [
        "speech2face-seed0",
        "speech2face-seed1",
        "**speech2face (mean of seeds 0, 1)**",
    ]
    assert labels[3:] == [
        "scldm-seed0",
        "scldm-seed1",
        "**scldm (mean of seeds 0, 1)**",
        "floor",
        "chance",
    ]
    with open(out / "table.csv") as f:
        rows = {r["row"]: r for r in csv.DictReader(f)}
    # training minutes from the stand-ins' logs: 2 + 3 for SCLDM, 4 for Speech2Face
    assert float(rows["scldm-seed0"]["train_minutes"]) == pytest.approx(5.0)
    assert float(rows["speech2face (mean of seeds 0, 1)"]["train_minutes"]) == pytest.approx(4.0)
    # the mean row is the mean over speakers of each speaker's mean over the seeds
    per = [
        json.loads((out / f"speech2face-seed{k}" / "per_speaker.json").read_text())["values"]
        for k in (0, 1)
    ]
    key = "features/pixels/cos/l2norm/clip"
    expected = np.mean([(per[0][key][s] + per[1][key][s]) / 2 for s in per[0][key]])
    assert float(rows["speech2face (mean of seeds 0, 1)"]["cos"]) == pytest.approx(expected)
    assert float(rows["speech2face-seed0"]["diversity"]) == 0.0  # deterministic
    assert float(rows["scldm-seed0"]["diversity"]) > 0.0
    assert "scldm − speech2face" in text and "background" in text  # a face-only attribute
    diffs = json.loads((out / "compare.json").read_text())["differences"]["scldm − speech2face"]
    mine = {s: (per[0][key][s] + per[1][key][s]) / 2 for s in per[0][key]}
    scl = [
        json.loads((out / f"scldm-seed{k}" / "per_speaker.json").read_text())["values"][key]
        for k in (0, 1)
    ]
    ref = {s: (scl[0][s] + scl[1][s]) / 2 for s in scl[0]}
    assert diffs[key]["value"] == pytest.approx(np.mean([ref[s] - mine[s] for s in mine]))


# --- the command end to end ---------------------------------------------------------------


def test_compare_two_models_writes_the_tables_and_grid_and_a_rerun_reuses_them(
    setup, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "cmp"
    argv = ["compare", "--model", f"scldm={setup['scldm']}", "--model", f"s2f={setup['s2f']}"]
    argv += ["--data", str(setup["data"]), "--oracle", str(setup["root"] / "oracle")]
    argv += ["--split", "train", "--max-clips", str(MAX_CLIPS), "--num-images", "2"]
    argv += ["--grid-speakers", "3", "-o", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for name in ("table.md", "table.csv", "differences.csv", "grid.png", "compare.json"):
        assert (out / name).is_file(), name
    text = (out / "table.md").read_text()
    assert text in printed
    main_table = markdown_table(text)
    labels = row_labels(main_table)
    assert labels == ["scldm", "s2f", "floor", "chance", "voice-only ceiling"]
    header = main_table[0]
    for col in ("params", "train min", "L1 ↓", "L2 ↓", "cos ×100 ↓", "R@1", "R@10", "gender"):
        assert col in header
    assert "age ±10 y" in header and "age MAE" in header and "diversity" in header
    scldm_row = main_table[2].split("|")[2:-1]
    assert all("[" in cell for cell in scldm_row[2:]), scldm_row  # every number has its CI
    ceiling = [cell.strip() for cell in main_table[6].split("|")[2:-1]]
    assert "1.000" in ceiling and "0.750" in ceiling  # read from ceilings.json, no interval
    with open(out / "table.csv") as f:
        rows = {r["row"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"scldm", "s2f", "floor", "chance", "voice-only ceiling"}
    assert float(rows["s2f"]["diversity"]) == 0.0 and rows["floor"]["diversity"] == ""
    assert rows["scldm"]["train_minutes"] == "" and rows["s2f"]["kind"] == "model"
    s2f_params = sum(
        p.numel() for p in tiny_speech2face_pipeline().components["voice_encoder"].parameters()
    )
    assert int(rows["s2f"]["parameters"]) > s2f_params  # encoder + decoder
    assert "scldm − s2f" in text and "skin tone" in text  # differences, face-only attributes
    assert "untrained test fixture" in text  # the baseline's deviations
    speakers = len(
        {r["speaker_id"] for r in read_manifest(setup["data"], split="train")[:MAX_CLIPS]}
    )
    grid = Image.open(out / "grid.png")
    assert 3 * 96 < grid.size[0] < 3 * (96 + 10)  # true | scldm | s2f, shown at 96 px
    rows_shown = min(3, speakers)
    assert rows_shown * 96 < grid.size[1] < rows_shown * (96 + 30)
    metrics = json.loads((out / "s2f" / "metrics.json").read_text())
    assert metrics["method"]["deviations"] == ["untrained test fixture"]

    # a rerun evaluates nothing: the evaluations are reused
    def fail(*a, **k):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(compare_mod, "evaluate", fail)
    before = (out / "table.md").read_text()
    assert main(argv) == 0
    assert (out / "table.md").read_text() == before


def test_compare_refuses_bad_input_in_one_line(setup, tmp_path, capsys):
    out = tmp_path / "cmp"
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "OtherPipeline"}))
    base = ["compare", "--data", str(setup["data"]), "-o", str(out)]
    cases = [
        ([], "nothing to compare"),
        (["--model", "a=" + str(tmp_path)], "no model_index.json"),
        (["--model", "a=" + str(other)], "holds a OtherPipeline pipeline"),
        (["--model", f"a={setup['s2f']}", "--model", f"a={setup['scldm']}"], "named 'a'"),
        (["--model", f"a={setup['s2f']}", "--set", "speech2face.x=1"], "--set"),
        (["--train", "scldm", "--config", "nosuch"], "unknown pretrain preset"),
    ]
    for extra, problem in cases:
        code = main([*base, *extra, "--features", "dlib"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and problem in err, (extra, err)
    assert not (out / "runs").exists() and not (out / "table.md").exists()


@pytest.mark.slow  # trains tiny SCLDM (both stages) and the three tiny baselines, then evaluates
def test_compare_train_trains_what_is_missing_then_reuses_it(setup, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    argv = ["compare", "--train", "scldm,speech2face,wen,wav2pix", "--config", "tiny"]
    argv += ["--seeds", "0"]
    argv += ["--set", "scldm.pretrain.train.max_steps=2", "--set", "scldm.train.train.max_steps=2"]
    argv += ["--data", str(setup["data"]), "--oracle", str(setup["root"] / "oracle")]
    argv += ["--split", "train", "--max-clips", str(MAX_CLIPS), "--num-images", "2"]
    assert main([*argv, "-o", str(out)]) == 0
    runs = out / "runs"
    assert (runs / "scldm" / "seed0" / "ldm" / "pipeline" / "model_index.json").is_file()
    assert (runs / "scldm" / "seed0" / "encoders" / "prior" / "prior.safetensors").is_file()
    assert (runs / "speech2face" / "seed0" / "pipeline" / "model_index.json").is_file()
    with open(out / "table.csv") as f:
        rows = {r["row"]: r for r in csv.DictReader(f)}
    assert float(rows["scldm-seed0"]["train_minutes"]) > 0
    assert rows["speech2face-seed0"]["train_minutes"] != ""
    text = (out / "table.md").read_text()
    assert "deviation: face teacher" in text and "scldm − speech2face" in text
    assert (runs / "wen" / "seed0" / "gan" / "samples").is_dir() and "scldm − wen" in text
    assert "deviation: voice encoder: the authors' training code" in text
    assert (runs / "wav2pix" / "seed0" / "gan" / "samples").is_dir() and "scldm − wav2pix" in text
    assert "deviation: batch norm at inference uses the running statistics" in text

    def fail(*a, **k):
        raise AssertionError("ran again")

    for name in ("_train_stage1", "_face_prior", "_train_stage2"):
        monkeypatch.setattr(compare_runs, name, fail)
    monkeypatch.setattr(compare_mod, "evaluate", fail)
    real = compare_runs.baseline_trainer
    monkeypatch.setattr(compare_runs, "baseline_trainer", lambda method: (real(method)[0], fail))
    assert main([*argv, "-o", str(out)]) == 0


def test_evaluate_a_baseline_prints_and_records_its_deviations(setup, tmp_path, capsys):
    out = tmp_path / "ev"
    argv = ["evaluate", "--model", str(setup["s2f"]), "--data", str(setup["data"])]
    argv += ["--oracle", str(setup["root"] / "oracle"), "--split", "train", "--max-clips", "6"]
    assert main([*argv, "--image-size", "24", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Speech2Face (Oh et al., CVPR 2019): deviations from the published method:" in printed
    assert "  - untrained test fixture" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"]["title"] == "Speech2Face (Oh et al., CVPR 2019)"
    assert metrics["scoring"]["image_size"] == 24 and metrics["scoring"]["generated_size"] == 32
    report = (out / "report.md").read_text()
    assert "- untrained test fixture" in report and "Scored at 24 px" in report
    # a baseline has no face decoder to reconstruct with; a face needs 16 px
    for extra, problem in (
        (["--encoders", str(tmp_path)], "--encoders needs an SCLDM pipeline"),
        (["--image-size", "8"], "--image-size must be at least 16"),
    ):
        assert main([*argv, *extra, "-o", str(tmp_path / "no")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and problem in err
    assert not (tmp_path / "no").exists()
