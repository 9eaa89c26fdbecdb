"""`scldm train-baseline wav2pix`: Wav2Pix (Duarte et al., ICASSP 2019) as its official trainer
(imatge-upc/wav2pix `scripts/trainer.py`), one phase `gan/` of the shared two-player loop
(`scldm.training.gan`):

- the generating side (speech encoder, generator and auxiliary classifier, one Adam at 1e-4 as
  the official's single "generator" module) reads a random 1 s window of each clip's raw
  waveform and makes a face;
- D (Adam at 4e-4) learns LSGAN targets: 0.9 for (true face, voice), 0 for (generated face,
  voice) and for (another speaker's face, voice);
- G learns (D(G(z), z) − 1)², feature matching on D's 4×4 features, 50·L1 to the true face
  and 20·CE of the auxiliary classifier on z.

Validation: true face | generated face for fixed validation voices, the mean L1 between them and
face R@1 (is a generated face L1-nearest to its own speaker's true face, among one face per
validation speaker?). RUN/pipeline/ is a `Wav2PixPipeline`.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from scldm.audio import WaveformFrontend
from scldm.baselines.wav2pix import (
    DISCRIMINATOR_PRESETS,
    ENCODER_PRESETS,
    GENERATOR_PRESETS,
    AuxiliaryClassifier,
    Wav2PixGenerator,
    Wav2PixPipeline,
    Wav2PixSpeechEncoder,
    build,
    deviations,
)
from scldm.config import Wav2PixConfig, component_kwargs
from scldm.data.datasets import SpeechFaceDataset
from scldm.errors import InputError
from scldm.losses import batch_feature_matching_loss, lsgan_loss
from scldm.training.gan import Players, train_gan
from scldm.training.guard import guarded
from scldm.training.loop import TrainState, make_accelerator, maybe_split, setup_run, step_generator
from scldm.training.phases import (
    Phases,
    check_run,
    export_pipeline,
    one_per_speaker,
    resume_for,
    save_grid,
    val_batches,
)

__all__ = ["PHASES", "GeneratingSide", "Wav2PixGan", "build_networks", "train"]
log = logging.getLogger("scldm.train")
PHASES = ("gan",)
METHOD = "Wav2Pix"
LOGGED = ("d_real", "d_fake", "d_wrong", "g_adv", "g_feature", "g_l1", "g_class", "g_accuracy")
# the official: 201 epochs of its data at batch 64, 128 px
OFFICIAL = {"preset": "base", "batch_size": 64}


def make_frontend(cfg: Wav2PixConfig) -> WaveformFrontend:
    try:
        return WaveformFrontend(**cfg.frontend)
    except (TypeError, ValueError) as e:
        raise InputError(None, f"frontend: {e}") from None


def build_networks(cfg: Wav2PixConfig, frontend: WaveformFrontend) -> dict[str, Any]:
    """The speech encoder, G and D from the config's presets, checked against the front end
    and the face size."""
    nets = build(
        {
            "speech_encoder": component_kwargs(
                cfg.speech_encoder, ENCODER_PRESETS, "speech_encoder"
            ),
            "generator": component_kwargs(cfg.generator, GENERATOR_PRESETS, "generator"),
            "discriminator": component_kwargs(
                cfg.discriminator, DISCRIMINATOR_PRESETS, "discriminator"
            ),
        }
    )
    window, reads = frontend.num_samples, nets["speech_encoder"].config.samples
    if window != reads:
        raise InputError(
            None, f"the front end cuts {window}-sample windows and the speech encoder reads {reads}"
        )
    if nets["generator"].image_size != cfg.data.image_size:
        raise InputError(
            None, f"data.image_size {cfg.data.image_size}: the generator makes "
            f"{nets['generator'].image_size} px faces",
        )  # fmt: skip
    return nets


class GeneratingSide(nn.Module):
    """The official "generator" module: speech encoder, auxiliary classifier and generator,
    trained by one optimizer. waveform windows (B, S) → (faces, z, speaker logits)."""

    def __init__(
        self, encoder: Wav2PixSpeechEncoder, classifier: nn.Module, generator: Wav2PixGenerator
    ) -> None:
        super().__init__()
        self.encoder, self.classifier, self.generator = encoder, classifier, generator

    def forward(
        self, waveform: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`generator` draws the generator's dropout masks (None: the global RNG)."""
        z = self.encoder(waveform)
        return self.generator(z, generator), z, self.classifier(z)


@guarded
def train(cfg: Wav2PixConfig, *, resume: str | None = None, cpu: bool = False) -> Path:
    """Train Wav2Pix and return RUN/pipeline (a `Wav2PixPipeline`)."""
    frontend = make_frontend(cfg)
    set_seed(cfg.train.seed)  # identical initialisation on every rank
    nets = build_networks(cfg, frontend)  # checked before anything is written
    run_dir = Path(cfg.train.output_dir)
    check_run(run_dir, resume, Wav2PixConfig, METHOD)
    accelerator = make_accelerator(cfg.train, run_dir, cpu=cpu)
    setup_run(accelerator, cfg, run_dir, "scldm-wav2pix")
    log.info("wav2pix: reading %s", cfg.data.root)
    train_ds = SpeechFaceDataset(
        cfg.data.root, "train", frontend=frontend, image_size=cfg.data.image_size
    )
    if cfg.data.in_memory:
        train_ds.load_into_memory(progress=accelerator.is_local_main_process)
    num_speakers = len(train_ds.speakers)
    embedding_dim = nets["speech_encoder"].config.embedding_dim
    classifier = AuxiliaryClassifier(embedding_dim, num_speakers, cfg.classifier_hidden)
    side = GeneratingSide(nets["speech_encoder"], classifier, nets["generator"])
    frontend.to(accelerator.device)
    val = _Validation(cfg, frontend, accelerator.device)
    log.info(
        "wav2pix: %d train clips of %d speakers; %d GAN steps",
        len(train_ds), num_speakers, cfg.train.max_steps,
    )  # fmt: skip
    phases = Phases(accelerator, cfg, run_dir, train_ds)
    trained = train_gan(
        phases,
        "gan",
        Wav2PixGan(cfg, frontend, accelerator),
        nets={"generating": side, "discriminator": nets["discriminator"]},
        players=Players(d=("discriminator",), g=("generating",), exported="generating"),
        optims={"generating": cfg.optim, "discriminator": cfg.optim_d},
        steps=cfg.train.max_steps,
        batch_size=cfg.train.batch_size,
        resume=resume_for("gan", resume, PHASES, METHOD),
        validate=lambda m, step: val.faces(m, phases.phase_dir, step),
        logged=LOGGED,
    )
    metrics = {"gan": phases.last_validation}
    return _export(phases, cfg, frontend, trained["generating"], metrics)


# --- Losses ----------------------------------------------------------------------------------


class Wav2PixGan:
    """Wav2Pix's two players (official trainer.py), for `train_gan`."""

    def __init__(
        self, cfg: Wav2PixConfig, frontend: WaveformFrontend, accelerator: Accelerator
    ) -> None:
        self.cfg, self.frontend, self.accelerator = cfg, frontend, accelerator

    def generate(self, nets, batch, state: TrainState) -> dict[str, Any]:
        """A random window of each clip, normalised and pre-emphasised, through the generating
        side. The windows and the dropout masks come from the step's seeded generators, so a
        resumed run draws what an uninterrupted one does."""
        device = self.accelerator.device
        gen = step_generator(self.cfg.train.seed, state, self.accelerator)
        windows = self.frontend(self.frontend.crops(batch["waveform"], gen).to(device))
        masks = torch.Generator(device).manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
        fake, z, logits = nets["generating"](windows, masks)
        return {"fake": fake, "z": z, "logits": logits, "face": batch["face"].to(device)}

    def d_loss(self, nets, batch, fake, state):
        """D: (D(x, z) − 0.9)² + D(G(z), z)² + D(x′, z)², x′ the batch's faces rolled by one (a
        batch holds distinct speakers, so x′ is another speaker's); one call on all three."""
        real, z = fake["face"], fake["z"]
        pairs = [real, fake["fake"]] + ([real.roll(1, 0)] if len(real) > 1 else [])
        scores, _ = nets["discriminator"](torch.cat(pairs), z.repeat(len(pairs), 1))
        scores = scores.chunk(len(pairs))
        d_real = lsgan_loss(scores[0], self.cfg.real_label)
        d_fake = lsgan_loss(scores[1], 0.0)
        d_wrong = lsgan_loss(scores[2], 0.0) if len(pairs) == 3 else torch.zeros_like(d_real)
        logs = {
            "loss/d_real": d_real.detach(),
            "loss/d_fake": d_fake.detach(),
            "loss/d_wrong": d_wrong.detach(),
        }
        return d_real + d_fake + d_wrong, logs

    def g_loss(self, nets, batch, fake, state):
        """G: (D(G(z), z) − 1)² + 100·MSE(mean φ(G(z)), mean φ(x)) + 50·|G(z) − x| +
        20·CE(aux(z), speaker). The encoder learns through all of it, D's conditioning input
        included."""
        cfg, d = self.cfg, nets["discriminator"]
        scores, phi_fake = d(fake["fake"], fake["z"])
        with torch.no_grad():
            _, phi_real = d(fake["face"], fake["z"])
        speaker = batch["speaker"].to(fake["logits"].device)
        g_adv = lsgan_loss(scores, 1.0)
        g_feature = batch_feature_matching_loss(phi_fake, phi_real)
        g_l1 = F.l1_loss(fake["fake"].float(), fake["face"].float())
        g_class = F.cross_entropy(fake["logits"].float(), speaker)
        loss = (
            g_adv + cfg.feature_weight * g_feature + cfg.l1_weight * g_l1
            + cfg.class_weight * g_class
        )  # fmt: skip
        accuracy = (fake["logits"].argmax(1) == speaker).float().mean()
        logs = {
            "loss/g_adv": g_adv.detach(),
            "loss/g_feature": g_feature.detach(),
            "loss/g_l1": g_l1.detach(),
            "loss/g_class": g_class.detach(),
            "g_accuracy": accuracy,
        }
        return loss, logs


# --- Validation --------------------------------------------------------------------------------


class _Validation:
    """The validation clips' centre windows, read once (none without a validation split)."""

    def __init__(self, cfg: Wav2PixConfig, frontend: WaveformFrontend, device: torch.device):
        self.cfg, self.windows, self.true_faces, self.speakers = cfg, [], [], []
        dataset = maybe_split(cfg.data, frontend, cfg.eval.split)
        for batch in val_batches(dataset, cfg.eval):  # the centre window, as the pipeline reads
            self.windows.append(frontend(frontend.centre(batch["waveform"]).to(device)))
            self.true_faces.append(batch["face"].to(device))
            self.speakers.append(batch["speaker"].to(device))

    @torch.no_grad()
    def faces(self, nets: dict[str, nn.Module], phase_dir: Path, step: int) -> dict[str, float]:
        """The mean L1 to the true face, face R@1 by L1 among one true face per validation
        speaker, and the grid true | generated of the first `grid_size` speakers. Faces are made
        as the pipeline makes them (dropout with a fixed seed per clip when it stays on)."""
        if not self.windows:
            return {}
        side, fakes, seed = nets["generating"], [], 0
        for windows in self.windows:
            masks = None
            if self.cfg.dropout_at_inference:
                masks = [torch.Generator().manual_seed(seed + i) for i in range(len(windows))]
            fakes.append(side.generator(side.encoder(windows), masks))
            seed += len(windows)
        fake, faces = torch.cat(fakes), torch.cat(self.true_faces)
        speakers = torch.cat(self.speakers)
        rows = one_per_speaker(speakers, len(speakers))
        gallery = faces[rows].flatten(1)  # one true face per speaker
        distance = torch.cdist(fake.flatten(1), gallery, p=1)
        hits = speakers[torch.tensor(rows, device=speakers.device)][distance.argmin(1)] == speakers
        shown = rows[: self.cfg.eval.grid_size]
        save_grid([t for i in shown for t in (faces[i], fake[i])], 2, phase_dir, step)
        return {
            "val/l1": (fake - faces).abs().mean().item(),
            "val/face_R@1": hits.float().mean().item(),
            "val/chance_R@1": 1 / len(rows),
        }


# --- Export ----------------------------------------------------------------------------------


def _export(
    phases: Phases,
    cfg: Wav2PixConfig,
    frontend: WaveformFrontend,
    side: GeneratingSide,
    metrics: dict[str, Any],
) -> Path:
    """RUN/pipeline (the front end, the speech encoder and G: the generating side's EMA when
    ema_decay > 0) and RUN/metrics.json."""
    preset, size = cfg.generator.get("preset"), side.generator.image_size
    note = None
    if preset != OFFICIAL["preset"] or cfg.train.batch_size != OFFICIAL["batch_size"]:
        note = (
            f"networks at the {preset!r} preset's widths, {size} px; {cfg.train.max_steps} steps "
            f"at batch {cfg.train.batch_size} (the official: preset base, 128 px, 201 epochs at "
            "batch 64)"
        )
    encoder = copy.deepcopy(side.encoder).cpu().eval()
    method = {
        "preset": preset,
        "data": str(cfg.data.root),
        "deviations": deviations(
            preset_note=note,
            ema_decay=cfg.train.ema_decay,
            dropout_at_inference=cfg.dropout_at_inference,
            seconds=frontend.config.seconds,
            segment_seconds=frontend.config.segment_seconds,
            encoder=encoder,
        ),
    }
    pipe = Wav2PixPipeline(
        frontend=copy.deepcopy(frontend).cpu(),
        speech_encoder=encoder,
        generator=copy.deepcopy(side.generator).cpu().eval(),
        dropout_at_inference=cfg.dropout_at_inference,
        method=method,
    )
    parts = ("speech_encoder", "generator")
    return export_pipeline(phases, pipe, parts, cfg.train.max_steps, metrics)
