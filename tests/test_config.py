"""Strict config loading, typed overrides and the resolved-config round trip."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scldm import InputError
from scldm.config import DataConfig, OptimConfig, TrainConfig, load_config, save_config


@dataclass(frozen=True)
class Stage:
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: Mapping[str, Any] = field(default_factory=dict)


def test_yaml_and_overrides_with_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  image_size: 32\noptim:\n  lr: 1\nmodel:\n  widths: [8, 16]\n")
    cfg = load_config(
        Stage,
        path,
        [
            "optim.betas=(0.5, 0.9)",
            "train.log_with=null",
            "model.depth=3",
            "data.root=some/dir",
            "train.mixed_precision=bf16",
            "optim.weight_decay=0",
        ],
    )
    assert cfg.data.image_size == 32 and cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.5, 0.9) and cfg.train.log_with is None
    assert cfg.model == {"widths": (8, 16), "depth": 3} and cfg.data.root == "some/dir"
    assert cfg.train.mixed_precision == "bf16" and cfg.optim.weight_decay == 0.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.lr=fast"], "optim.lr: expected float"),
        (["optim.lrr=1"], "unknown key 'optim.lrr'"),
        (["data.image_size=1.5"], "data.image_size: expected int"),
        (["train.mixed_precision=fp8"], "expected one of"),
        (["optim.betas=(1, 2, 3)"], "expected 2 values"),
        (["train.max_steps"], "expects key=value"),
        (["train.seed=True"], "train.seed: expected int"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        load_config(Stage, {}, overrides)


def test_unknown_yaml_key_is_an_error_naming_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  imagesize: 32\n")
    with pytest.raises(InputError) as e:
        load_config(Stage, path)
    assert str(path) in str(e.value) and "data.imagesize" in str(e.value)
    path.write_text("- a list\n")
    with pytest.raises(InputError, match="mapping"):
        load_config(Stage, path)
    with pytest.raises(InputError, match="no such config file"):
        load_config(Stage, tmp_path / "none.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(Stage, {"model": {"a": [1, 2]}}, ["optim.lr=3e-4", "train.seed=7"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(Stage, tmp_path / "config.yaml") == cfg


def test_configs_are_frozen():
    cfg = load_config(Stage)
    with pytest.raises(AttributeError):
        cfg.optim.lr = 1.0  # type: ignore[misc]


def test_override_of_one_mapping_key_keeps_the_others():
    from scldm.config import EncoderStageConfig

    cfg = load_config(EncoderStageConfig, {}, ["loss_weights.loss/lpips=0.5"])
    assert cfg.loss_weights == {"loss/contrastive": 1.0, "loss/mae": 1.0, "loss/lpips": 0.5}


def test_the_sampling_section_is_checked_when_the_config_loads():
    from scldm.config import SAMPLER_NAMES, DiffusionStageConfig

    cfg = load_config(DiffusionStageConfig, "tiny", ["sampling.scheduler=ddim"], stage="train")
    assert cfg.sampling.scheduler == "ddim" and "ddim" in SAMPLER_NAMES
    with pytest.raises(InputError, match="sampling.scheduler: expected one of"):
        load_config(DiffusionStageConfig, "tiny", ["sampling.scheduler=euler"], stage="train")
    with pytest.raises(InputError, match="sampling.guidance"):  # an unknown key is named
        load_config(DiffusionStageConfig, "tiny", ["sampling.guidance=3"], stage="train")


def test_a_partial_section_starts_from_the_fields_own_default():
    """`--set optim.lr=…` on a preset without an `optim` section keeps the method's optimizer
    (Wen: Adam β (0.5, 0.999), constant, no clipping), not OptimConfig's class defaults."""
    from scldm.config import WenConfig, resolve_preset

    cfg = load_config(WenConfig, resolve_preset("baselines/wen", "tiny"), ["optim.lr=0.001"])
    assert cfg.optim.lr == 0.001 and cfg.optim.betas == (0.5, 0.999)
    assert cfg.optim.schedule == "constant" and cfg.optim.grad_clip == 0.0
    assert load_config(WenConfig, {"train": {"max_steps": 3}}).train.ema_decay == 0.0


@pytest.mark.parametrize(
    ("name", "processes", "machines"), [("1gpu", 1, 1), ("8gpu", 8, 1), ("2nodes", 16, 2)]
)
def test_the_accelerate_configs_of_docs_scaling_load(name, processes, machines):
    """configs/accelerate/*.yaml, the launch files docs/scaling.md's commands use, parse with
    accelerate's own loader into the process layout they promise."""
    from accelerate.commands.config.config_args import load_config_from_file

    path = Path(__file__).parents[1] / "configs" / "accelerate" / f"{name}.yaml"
    config = load_config_from_file(str(path))
    assert (config.num_processes, config.num_machines) == (processes, machines)
    assert config.mixed_precision == "bf16" and not config.use_cpu


def test_a_config_extends_another_and_updates_its_keys(tmp_path):
    (tmp_path / "base.yaml").write_text("optim: {lr: 0.5, eps: 1.0e-6}\nmodel: {depth: 2}\n")
    (tmp_path / "mid.yaml").write_text("extends: base.yaml\noptim: {lr: 0.1}\nmodel: {width: 8}\n")
    (tmp_path / "top.yaml").write_text("extends: mid.yaml\ntrain: {seed: 3}\n")
    cfg = load_config(Stage, tmp_path / "top.yaml", ["optim.eps=1e-8"])
    assert (cfg.optim.lr, cfg.optim.eps, cfg.train.seed) == (0.1, 1e-8, 3)
    assert cfg.model == {"depth": 2, "width": 8}  # mappings merge key by key
    # `null` on a section clears what the config it extends set: the section's own defaults,
    # which a later --set updates
    (tmp_path / "reset.yaml").write_text("extends: mid.yaml\noptim: null\n")
    reset = load_config(Stage, tmp_path / "reset.yaml")
    assert reset.optim == Stage().optim != load_config(Stage, tmp_path / "mid.yaml").optim
    assert load_config(Stage, tmp_path / "reset.yaml", ["optim.eps=1e-8"]).optim == (
        dataclasses.replace(Stage().optim, eps=1e-8)
    )
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(InputError, match="deep"):
        load_config(Stage, tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(InputError, match="missing.yaml: no such config file"):
        load_config(Stage, tmp_path / "c.yaml")


def test_the_real_voices_preset_is_small_with_augmentation_and_v_prediction():
    from scldm.config import (
        NOISE_SCHEDULE,
        DiffusionStageConfig,
        EncoderStageConfig,
        ReconRegionConfig,
    )

    EYE_BAND = (0.34375, 0.25, 0.53125, 0.75)

    small = load_config(EncoderStageConfig, "small", stage="pretrain")
    real = load_config(EncoderStageConfig, "small-real", stage="pretrain")
    assert not small.augment.enabled and real.augment.enabled
    # both on the latent of the wide encoder, its eye band weighed 8 times in L_rec: small's
    # 8 × 16 × 16, the demo's 4 × 16 × 16 without the position bias in stage 1's decoder
    assert small.face_encoder == {"preset": "small_h4_wide", "latent_channels": 8}
    assert small.face_decoder == {"preset": "small_h4", "latent_channels": 8}
    assert small.recon_region == real.recon_region == ReconRegionConfig(box=EYE_BAND, weight=8.0)
    assert real.face_encoder == {"preset": "small_h4_wide", "latent_channels": 4}
    assert real.face_decoder == {"preset": "small_h4", "latent_channels": 4, "position_bias": False}
    # the demo hears with GE2E, its real-recording direction removed
    assert small.speech_encoder == {"preset": "small"}
    assert real.speech_encoder == {"type": "ge2e", "preset": "small", "remove_real_direction": True}
    same = dataclasses.replace(
        real,
        speech_encoder=small.speech_encoder,
        augment=small.augment,
        face_encoder=small.face_encoder,
        face_decoder=small.face_decoder,
        recon_region=small.recon_region,
    )
    assert same == small
    # stage 2: both UNets predict v at zero terminal SNR; the demo's with fewer steps, more guidance
    small2 = load_config(DiffusionStageConfig, "small", stage="train")
    real2 = load_config(DiffusionStageConfig, "small-real", stage="train")
    assert small2.unet == real2.unet == {"preset": "small_h4"}
    assert (small2.train.max_steps, real2.train.max_steps) == (4500, 1700)
    assert small2.lambda_train == real2.lambda_train == 1.0
    assert small2.sampling.prior_scale == real2.sampling.prior_scale == 1.0
    assert small2.sampling.temperature == real2.sampling.temperature == 1.0
    assert (small2.sampling.guidance_scale, real2.sampling.guidance_scale) == (2.0, 3.0)
    # a scheduler section updates LDM's noise schedule: both keep its betas
    assert small2.scheduler == real2.scheduler == {
        **NOISE_SCHEDULE, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
    }  # fmt: skip
    # both refine the decoder with the squared error (docs/notes/2026-12-01-mse-refinement.md),
    # in bfloat16 where the machine runs it natively; the demo for fewer steps
    assert small2.decoder.loss == real2.decoder.loss == "mse"
    assert small2.decoder.precision == real2.decoder.precision == "auto"
    assert (small2.decoder.steps, real2.decoder.steps) == (3000, 1600)
    # both decoders play against a discriminator shown the same eye band, small's from step
    # 1,500, the demo's from 1,200 and held outside the band by the anchor
    # (docs/notes/2026-12-03-small-eyes.md, docs/notes/2026-12-03-demo-eyes.md)
    assert small2.decoder.adversarial.box == EYE_BAND == small.recon_region.box
    assert dataclasses.replace(real2.decoder.adversarial, start_step=1500) == (
        small2.decoder.adversarial
    )
    assert (small2.decoder.adversarial.start_step, real2.decoder.adversarial.start_step) == (
        1500,
        1200,
    )
    assert (small2.decoder.anchor, real2.decoder.anchor) == (0.0, 0.25)
    # each ships a new decoder trained on its frozen latents: small's twice as wide as stage 1's
    # (docs/notes/2026-12-02-wide-decoder.md), the demo's narrower one, at half the batch
    assert (small2.decoder.model, real2.decoder.model) == (
        {"preset": "small_h4_wide"},
        {"preset": "small_h4_mid"},
    )
    assert (small2.decoder.batch_size, real2.decoder.batch_size) == (64, 32)
    same2 = dataclasses.replace(
        real2,
        train=dataclasses.replace(real2.train, max_steps=small2.train.max_steps),
        sampling=small2.sampling,
        decoder=small2.decoder,
    )
    assert same2 == small2
    # an unknown prediction type is refused when the config loads, not at the first step
    with pytest.raises(InputError, match=r"scheduler.prediction_type: 'eps' is not one of"):
        load_config(DiffusionStageConfig, "small", ["scheduler.prediction_type=eps"], stage="train")
