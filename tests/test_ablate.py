"""`scldm ablate` end to end at the tiny presets: Table 4's runs, the λ sweep, the outputs, and a
rerun that trains and evaluates nothing."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from accelerate.utils import set_seed
from PIL import Image

from scldm.cli import main
from scldm.config import EncoderStageConfig, load_config
from scldm.data.manifest import read_manifest
from scldm.errors import InputError
from scldm.evaluation.synthvox_oracle import SynthVoxOracle
from scldm.experiments import ablate as ablate_mod
from scldm.experiments.ablate import ablate, lam_name, split_overrides, stage_configs
from scldm.models import SpeechEncoder
from scldm.training.encoders import build_model

STEPS = ["--set", "pretrain.train.max_steps=2", "--set", "train.train.max_steps=2"]
LAMBDAS = (0.0, 0.01)
MAX_CLIPS = 6


def evaluated_clips(data):
    """The test clips the ablation evaluates (the first MAX_CLIPS of the split) and their
    speakers, read from the manifest the fixture prepared."""
    rows = read_manifest(data, split="test")[:MAX_CLIPS]
    return rows, list(dict.fromkeys(r["speaker_id"] for r in rows))


def planned_steps(data):
    """How many steps the plan has: two stage-1 runs and the prior, one stage-2 run per distinct
    λ_train (base, 0, the preset's λ_train and the sweep's), one evaluation per distinct
    (run, λ_infer) of the rows and the sweep."""
    _, ldm = stage_configs("tiny", data, [])
    lam_t, lam_i = lam_name(ldm.lambda_train), lam_name(ldm.sampling.prior_scale)
    trains = {lam_name(t) for t in (0.0, ldm.lambda_train, *LAMBDAS)}
    evals = {("base", "0"), ("0", "0"), (lam_t, lam_i)}
    evals |= {(lam_name(t), lam_name(i)) for t in LAMBDAS for i in LAMBDAS}
    return 3 + 1 + len(trains) + len(evals)


@pytest.fixture(scope="module")
def ablation(tiny_stage1, tmp_path_factory):
    data, _ = tiny_stage1
    root = tmp_path_factory.mktemp("ablate")
    torch.manual_seed(0)  # an untrained oracle: enough to check the plumbing
    SynthVoxOracle(image_size=32, channels=(8, 16), embedding_dim=16).save_pretrained(
        root / "oracle"
    )
    out = root / "out"
    argv = ["ablate", "--data", str(data), "--out", str(out), "--oracle", str(root / "oracle")]
    lambdas = ",".join(lam_name(v) for v in LAMBDAS)
    argv += ["--config", "tiny", *STEPS, "--lambdas", lambdas, "--max-clips", str(MAX_CLIPS)]
    assert main(argv) == 0
    return data, out, argv


@pytest.mark.slow  # trains and evaluates five tiny runs end to end
def test_ablate_writes_table4_sweep_grids_and_report(ablation):
    data, out, _ = ablation
    for name in ("table4.md", "table4.csv", "lambda_sweep.csv", "lambda_sweep.png", "grids.png"):
        assert (out / name).is_file(), name
    lines = (out / "table4.md").read_text().splitlines()
    assert [ln.split("|")[1].strip() for ln in lines[2:]] == [
        "base",
        "+CP",
        "+CP+PN",
        "*true-face floor*",
        "*chance*",
    ]
    assert "oracle cos ×100" in lines[0] and "R@1" in lines[0] and "age MAE" in lines[0]
    # "value [CI]" in every column but the two-sample tests (n/a where the tiny split is short)
    heads, cells = lines[0].split("|")[2:-1], lines[2].split("|")[2:-1]
    assert all(" [" in c for h, c in zip(heads, cells, strict=True) if "two-sample" not in h)
    with open(out / "table4.csv") as f:
        t4 = list(csv.DictReader(f))
    assert [r["row"] for r in t4] == ["base", "+CP", "+CP+PN", "true-face floor", "chance"]
    assert t4[2]["lambda_infer"] == "0.01"
    rows, voices = evaluated_clips(data)
    # every evaluation ranks all its speakers in one pool (fewer than the pool size of 100)
    pool = len(voices)
    assert float(t4[3]["R@1_pct"]) >= float(t4[4]["R@1_pct"])  # true-face floor ≥ chance
    # realism: the two-sample accuracy of every row and the floor, in its interval, where the
    # evaluations had the faces for it (2 a side; the tiny split may not); chance has none
    assert "two-sample acc" in lines[0] and "two-sample acc, detail" in lines[0]
    m = json.loads((out / "ldm-train0" / "eval" / "infer0.01" / "metrics.json").read_text())
    scored = m["realism"]["two_sample"].get("model") is not None
    for r in t4[:4]:
        for test in ("two_sample_acc", "two_sample_detail_acc"):
            if not scored:
                assert r[test] == ""
                continue
            low, acc, high = (float(r[k]) for k in (f"{test}_ci_low", test, f"{test}_ci_high"))
            assert 0 <= low <= acc <= high <= 1
    assert t4[4]["two_sample_acc"] == t4[4]["two_sample_detail_acc"] == ""
    with open(out / "lambda_sweep.csv") as f:
        sweep = list(csv.DictReader(f))
    names = [lam_name(v) for v in LAMBDAS]
    assert [(r["lambda_train"], r["lambda_infer"]) for r in sweep] == [
        (t, i) for t in names for i in names
    ]
    assert all(r["cos_x100"] != "" for r in sweep)
    # the sweep's evaluations are the λ_infer settings they claim, on the planned clips
    m = json.loads((out / "ldm-train0" / "eval" / "infer0.01" / "metrics.json").read_text())
    assert m["model"]["prior_scale"] == 0.01 and m["settings"]["seed"] == 0
    assert m["counts"]["clips"] == len(rows) and m["counts"]["speakers"] == len(voices)
    assert m["features"]["synthvox"]["chance"]["pool_size"] == pool
    # true | base | +CP | +CP+PN (96 px and a caption each) for each test voice, read from the
    # evaluations' images
    grid = Image.open(out / "grids.png")
    assert grid.size[0] > 4 * 96 > grid.size[0] - 4 * 10
    assert len(voices) * 96 < grid.size[1] < len(voices) * (96 + 40)
    report = (out / "report.md").read_text()
    assert "loss/contrastive" in report and "![grids](grids.png)" in report


@pytest.mark.slow  # trains and evaluates five tiny runs end to end
def test_ablate_chance_retrieval_is_one_in_the_pool(ablation):
    data, out, _ = ablation
    _, voices = evaluated_clips(data)
    with open(out / "table4.csv") as f:
        chance = {r["row"]: r for r in csv.DictReader(f)}["chance"]
    # R@1 of a face unrelated to the speaker: 1 in the pool of every evaluated speaker, within
    # its 95 % CI
    for col in ("R@1_pct", "R@1_pct_ci_low", "R@1_pct_ci_high"):
        assert float(chance[col]) == pytest.approx(100 / len(voices), rel=1e-5)


@pytest.mark.slow  # trains and evaluates five tiny runs end to end
def test_ablate_runs_are_what_the_rows_say(ablation):
    _, out, _ = ablation
    base = load_config(EncoderStageConfig, out / "stage1-noclip" / "config.yaml")
    normal = load_config(EncoderStageConfig, out / "stage1" / "config.yaml")
    assert base.loss_weights["loss/contrastive"] == 0 and base.speech_lr == 0
    assert normal.loss_weights["loss/contrastive"] == 1.0
    assert base.loss_weights["loss/mae"] == normal.loss_weights["loss/mae"] == 1.0

    def encoders_of(run: str) -> str:
        meta = out / run / "pipeline" / "unet" / "scldm_meta.json"
        return json.loads(meta.read_text())["encoders"]

    # +CP and +CP+PN share one stage-1 run; base has its own
    assert encoders_of("ldm-train0") == encoders_of("ldm-train0.01") == str(out / "stage1/export")
    assert encoders_of("ldm-base") == str(out / "stage1-noclip" / "export")
    assert (out / "stage1" / "prior" / "prior.safetensors").is_file()
    for run, lam in (("ldm-base", 0.0), ("ldm-train0", 0.0), ("ldm-train0.01", 0.01)):
        cfg = (out / run / "config.yaml").read_text()
        assert f"lambda_train: {lam}" in cfg and "max_steps: 2" in cfg

    # the speech encoder without contrastive pre-training is its seeded initialisation
    set_seed(base.train.seed)
    fresh = build_model(base)[1].speech_encoder.state_dict()
    for run, same in (("stage1-noclip", True), ("stage1", False)):
        trained = SpeechEncoder.from_pretrained(out / run / "export" / "speech_encoder")
        names = [n for n, _ in trained.named_parameters()]
        state = trained.state_dict()
        assert all(torch.equal(state[n], fresh[n]) for n in names) is same, run


@pytest.mark.slow  # trains and evaluates five tiny runs end to end
def test_ablate_rerun_is_a_no_op(ablation, monkeypatch, caplog):
    _, out, argv = ablation
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    stamps |= {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was redone")

    monkeypatch.setattr(ablate_mod.stage1, "train", refuse)
    monkeypatch.setattr(ablate_mod.stage2, "train", refuse)
    monkeypatch.setattr(ablate_mod, "evaluate", refuse)
    with caplog.at_level("INFO", logger="scldm.ablate"):
        assert main(argv) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "scldm.ablate"]
    steps = planned_steps(argv[2])
    assert len(lines) == steps and all(ln.endswith("done earlier, reused") for ln in lines)
    assert lines[0].startswith(f"[1/{steps}] stage 1 without contrastive pre-training")
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # other settings in the same folder are refused, naming what changed
    with pytest.raises(InputError, match="train.max_steps: 2 → 3"):
        ablate(
            argv[2],
            out,
            oracle=argv[6],
            preset="tiny",
            overrides=["pretrain.train.max_steps=2", "train.train.max_steps=3"],
            lambdas=LAMBDAS,
            max_clips=MAX_CLIPS,
        )


def test_overrides_are_routed_by_stage(tiny_stage1):
    data, _ = tiny_stage1
    assert split_overrides(["pretrain.train.max_steps=4", "train.lambda_train=0.1"]) == (
        ["train.max_steps=4"],
        ["lambda_train=0.1"],
    )
    with pytest.raises(InputError, match="pretrain.train.max_steps"):
        split_overrides(["train_max_steps=4"])
    enc, ldm = stage_configs("tiny", data, ["pretrain.speech_lr=0.5", "train.train.max_steps=7"])
    assert enc.speech_lr == 0.5 and ldm.train.max_steps == 7 and enc.train.max_steps == 4
    assert enc.data.root == ldm.data.root == str(data)
    with pytest.raises(InputError, match="train. overrides"):
        stage_configs("tiny", data, ["train.max_steps=7"])  # stage 2's is train.train.max_steps
    with pytest.raises(InputError, match="unknown pretrain preset"):
        stage_configs("huge", data, [])
