"""One loader for every method: `load_generator` dispatches a pipeline folder on its class
(SCLDM or a baseline), a baseline refuses SCLDM's sampling options in one line, and `scldm
generate` / `scldm evaluate` work on both."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from baseline_fixtures import tiny_speech2face_pipeline
from conftest import random_tiny_pipeline, tone, write_wav
from scldm.cli import main
from scldm.errors import InputError
from scldm.evaluation.generators import (
    BaselineGenerator,
    PipelineGenerator,
    check_options,
    describe,
    load_generator,
    scldm_deviations,
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A tiny random SCLDM pipeline (2 sampler steps), a tiny random Speech2Face pipeline and
    two voices."""
    root = tmp_path_factory.mktemp("generators")
    scldm = random_tiny_pipeline()
    scldm.set_sampling(num_inference_steps=2)
    scldm.save_pretrained(root / "scldm")
    tiny_speech2face_pipeline().save_pretrained(root / "s2f")
    return {
        "scldm": root / "scldm",
        "s2f": root / "s2f",
        "a": write_wav(root / "voices" / "a.wav", tone(220.0, 1.0)),
        "b": write_wav(root / "voices" / "b.wav", tone(660.0, 1.0)),
    }


def _params(pipe) -> int:
    return sum(
        p.numel()
        for m in pipe.components.values()
        if isinstance(m, torch.nn.Module)
        for p in m.parameters()
    )


def test_load_generator_dispatches_on_the_folders_class(folders):
    scldm = load_generator(folders["scldm"], overrides={"guidance_scale": 1.0})
    assert isinstance(scldm, PipelineGenerator) and scldm.name == "scldm"
    assert scldm.settings["guidance_scale"] == 1.0  # the override
    assert scldm.settings["num_inference_steps"] == 2  # the folder's own sampling config
    assert scldm.image_size == 32 and scldm.num_parameters == _params(scldm.pipe) > 0
    assert not scldm.method["deterministic"]
    # an ε-UNet on LDM's schedule without guidance: only the fixture's λ 0.5 departs from the paper
    assert scldm.method["deviations"] == ["prior scale λ_infer 0.5 (paper 0.01)"]
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    faces = scldm([folders["a"], folders["a"]], gens)
    assert faces.shape == (2, 3, 32, 32) and faces.min() >= -1 and faces.max() <= 1
    assert not torch.equal(faces[0], faces[1])  # a sampler: two seeds, two faces

    s2f = load_generator(folders["s2f"])
    assert isinstance(s2f, BaselineGenerator) and s2f.name == "speech2face"
    assert s2f.settings == {"method": "speech2face", "deterministic": True}
    assert s2f.deviations == ["untrained test fixture"]
    assert s2f.image_size == s2f.pipe.image_size == 32
    assert s2f.num_parameters == _params(s2f.pipe) > 0
    own = s2f.pipe([str(folders["b"])], output_type="pt").images * 2 - 1
    assert torch.equal(s2f([folders["b"]], [torch.Generator().manual_seed(5)]), own)
    # what the folder holds is known without loading it
    info = describe(folders["s2f"])
    assert info["method"] == "speech2face" and info["title"] == s2f.method["title"]
    info = describe(folders["scldm"])
    assert info["method"] == "scldm"  # and its deviations at the folder's own sampling config
    assert info["deviations"] == load_generator(folders["scldm"]).method["deviations"]
    assert len(info["deviations"]) == 2  # the fixture's λ 0.5 and guidance 6


def test_a_folder_that_is_no_known_pipeline_is_named_in_one_line(tmp_path):
    with pytest.raises(InputError, match="no model_index.json") as e:
        load_generator(tmp_path)
    assert str(tmp_path) in str(e.value)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "OtherPipeline"}))
    with pytest.raises(InputError, match="OtherPipeline") as e:
        load_generator(tmp_path)
    text = str(e.value)
    assert str(tmp_path) in text and "Speech2FacePipeline" in text and "\n" not in text
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(InputError, match="model_index.json"):
        load_generator(tmp_path)


def test_check_options_names_every_diffusion_only_option_given(folders):
    assert check_options(folders["scldm"], {"guidance_scale": 3.0}, "ddim")["method"] == "scldm"
    with pytest.raises(InputError) as e:
        check_options(folders["s2f"], {"num_inference_steps": 5}, "ddim")
    assert "has no --steps or --scheduler (diffusion-only options)" in str(e.value)
    assert str(folders["s2f"]) in str(e.value)
    assert check_options(folders["s2f"], {}, None)["method"] == "speech2face"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--steps", "5"),
        ("--guidance", "3"),
        ("--scheduler", "ddim"),
        ("--prior-scale", "0.1"),
        ("--lam", "0.1"),
        ("--temperature", "0.5"),
    ],
)
@pytest.mark.parametrize("command", ["generate", "evaluate"])
def test_diffusion_only_options_are_refused_for_a_baseline(
    folders, tmp_path, capsys, command, option, value
):
    out = tmp_path / "out"
    if command == "generate":
        argv = ["generate", str(folders["a"])]
    else:
        data = tmp_path / "data"
        data.mkdir()
        (data / "manifest.jsonl").write_text("")
        argv = ["evaluate", "--data", str(data)]
    code = main([*argv, "--model", str(folders["s2f"]), "-o", str(out), option, value])
    err = capsys.readouterr().err
    flag = "--prior-scale" if option == "--lam" else option
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"is a Speech2Face pipeline, which has no {flag} (diffusion-only option)" in err
    assert not out.exists()  # nothing written


def test_generate_with_a_baseline_writes_pngs_and_a_grid_and_warns_once(folders, tmp_path, caplog):
    out = tmp_path / "faces"
    voices = [str(folders["a"]), str(folders["b"])]
    with caplog.at_level(logging.WARNING):
        assert main(["generate", *voices, "--model", str(folders["s2f"]), "-o", str(out)]) == 0
        assert not [r for r in caplog.records if "identical" in r.message]  # K = 1: nothing
        args = ["--model", str(folders["s2f"]), "-o", str(out), "--num-images", "3"]
        assert main(["generate", *voices, *args]) == 0
    warned = [r for r in caplog.records if "identical" in r.message]
    assert len(warned) == 1 and "3 images per voice" in warned[0].message
    for stem in ("a", "b"):
        images = [np.asarray(Image.open(out / f"{stem}_{k}.png")) for k in range(3)]
        assert images[0].shape == (32, 32, 3)
        assert all(np.array_equal(images[0], im) for im in images[1:])  # deterministic
    assert not np.array_equal(
        np.asarray(Image.open(out / "a_0.png")), np.asarray(Image.open(out / "b_0.png"))
    )
    assert Image.open(out / "grid.png").size[0] > 3 * 32  # three columns


def test_generate_with_scldm_still_samples_distinct_faces(folders, tmp_path, caplog):
    out = tmp_path / "faces"
    with caplog.at_level(logging.WARNING):
        argv = ["generate", str(folders["a"]), "--model", str(folders["scldm"])]
        assert main([*argv, "-o", str(out), "--num-images", "2", "--guidance", "1"]) == 0
    assert not [r for r in caplog.records if "identical" in r.message]
    first, second = (np.asarray(Image.open(out / f"a_{k}.png")) for k in range(2))
    assert not np.array_equal(first, second)


def test_scldm_deviations_name_what_departs_from_the_paper():
    paper = {"prior_scale": 0.01, "guidance_scale": 1.0}
    assert scldm_deviations(paper, {"prediction_type": "epsilon"}) == []
    assert scldm_deviations(paper, {}) == []  # ε is diffusers' default
    demo = scldm_deviations(
        {"prior_scale": 1.0, "guidance_scale": 3.0},
        {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True},
    )
    assert demo == [
        "the UNet predicts v, not ε (paper eq. 6)",
        "the noise schedule is rescaled to zero terminal SNR (paper: LDM's)",
        "prior scale λ_infer 1 (paper 0.01)",
        "classifier-free guidance 3 (the paper samples without)",
    ]
    assert scldm_deviations(paper, {"prediction_type": "sample"}) == [
        "the UNet predicts x_0, not ε (paper eq. 6)"
    ]
