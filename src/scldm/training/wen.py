"""`scldm train-baseline wen`: Wen et al. (NeurIPS 2019) in two phases, each a folder of the run
with its own checkpoints, scalars, curves and (for the GAN) grids:

1. `voice/`: the voice encoder e + a linear layer, trained as a speaker classifier of the
   training speakers (cross-entropy); e is then frozen. Validation: voice → voice R@1 between
   the validation speakers' clips (is a clip's nearest other clip, by e's cosine, the same
   speaker's?).
2. `gan/`: the official two-player loop (`scldm.training.gan`): f, d and c learn real/fake and
   the real faces' identities; G learns to make faces that d calls real and c assigns to the
   voice's speaker. Validation: true face | generated face for fixed validation voices, and
   face R@1 (is the true face nearest, by f's cosine, to a voice's generated face its own?).

The filterbank of every training clip (silence removed, 10 s) is computed once and kept in
memory; each step crops it as the official loader does. RUN/pipeline/ is a `WenPipeline`.
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
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from scldm.audio import FbankFrontend
from scldm.baselines.wen import (
    FACE_EMBEDDING_PRESETS,
    GENERATOR_PRESETS,
    VOICE_ENCODER_PRESETS,
    SpeakerClassifier,
    WenPipeline,
    WenVoiceEncoder,
    build,
    deviations,
    heads,
)
from scldm.config import WenConfig, component_kwargs
from scldm.data.datasets import SpeechFaceDataset, collate
from scldm.errors import InputError
from scldm.losses import bce_gan_loss
from scldm.training.gan import Players, train_gan
from scldm.training.guard import guarded
from scldm.training.loop import (
    TrainState,
    make_accelerator,
    maybe_split,
    setup_run,
    step_generator,
)
from scldm.training.phases import (
    Phases,
    check_run,
    export_pipeline,
    one_per_speaker,
    resume_for,
    save_grid,
    val_batches,
)

__all__ = ["PHASES", "build_networks", "train"]
log = logging.getLogger("scldm.train")
PHASES = ("voice", "gan")
METHOD = "Wen et al."
D_NETS = ("face_embedding", "discriminator", "classifier")


def build_networks(cfg: WenConfig, frontend: FbankFrontend) -> dict[str, Any]:
    """e, G and f from the config's presets, checked against the front end and face size."""
    nets = build(
        {
            "voice_encoder": component_kwargs(
                cfg.voice_encoder, VOICE_ENCODER_PRESETS, "voice_encoder"
            ),
            "generator": component_kwargs(cfg.generator, GENERATOR_PRESETS, "generator"),
            "face_embedding": component_kwargs(
                cfg.face_embedding, FACE_EMBEDDING_PRESETS, "face_embedding"
            ),
        }
    )
    bands, e_in = frontend.config.num_filters, nets["voice_encoder"].config.in_channels
    if bands != e_in:
        raise InputError(None, f"the front end makes {bands} filters and e reads {e_in}")
    if nets["generator"].image_size != cfg.data.image_size:
        raise InputError(
            None, f"data.image_size {cfg.data.image_size}: the generator makes "
            f"{nets['generator'].image_size} px faces",
        )  # fmt: skip
    return nets


def _check_crops(cfg: WenConfig, frontend: FbankFrontend) -> None:
    lo, hi = cfg.crop_frames
    frames = frontend.num_frames
    if not 1 <= lo <= hi <= frames:
        raise InputError(
            None, f"crop_frames {list(cfg.crop_frames)} must satisfy 1 ≤ min ≤ max ≤ {frames} "
            f"(the frames of frontend.segment_seconds {frontend.config.segment_seconds:g})",
        )  # fmt: skip


@guarded
def train(cfg: WenConfig, *, resume: str | None = None, cpu: bool = False) -> Path:
    """Train Wen et al. and return RUN/pipeline (a `WenPipeline`)."""
    frontend = FbankFrontend(**cfg.frontend)
    _check_crops(cfg, frontend)  # checked before anything is written
    set_seed(cfg.train.seed)  # identical initialisation on every rank
    nets = build_networks(cfg, frontend)  # d and c follow once the speakers are known
    run_dir = Path(cfg.train.output_dir)
    check_run(run_dir, resume, WenConfig, METHOD)
    accelerator = make_accelerator(cfg.train, run_dir, cpu=cpu)
    setup_run(accelerator, cfg, run_dir, "scldm-wen")
    log.info("wen: reading %s", cfg.data.root)  # the log's wall time then includes the reading
    train_ds = SpeechFaceDataset(
        cfg.data.root, "train", frontend=frontend, image_size=cfg.data.image_size
    )
    if any(r.get("source") == "avspeech" for r in train_ds.rows[:100]):
        log.warning(
            "on AVSpeech a 'speaker' is one video: c learns videos, not people (the SCLDM paper "
            "left Wen et al. out of its AVSpeech table)"
        )
    if cfg.data.in_memory:
        train_ds.load_into_memory(progress=accelerator.is_local_main_process)
    num_speakers = len(train_ds.speakers)
    # every initialisation before anything draws from the global RNG (the loaders do), so a run
    # that resumes in its GAN phase starts d and c where an uninterrupted one does
    d, c = heads(nets["face_embedding"].config.embedding_dim, num_speakers)
    classifier = SpeakerClassifier(
        nets["voice_encoder"], num_speakers, scale=cfg.voice_scale, margin=cfg.voice_margin
    )
    frontend.to(accelerator.device)
    banks = Filterbanks(train_ds, frontend, accelerator, num_workers=cfg.data.num_workers)
    # the steps read the filterbanks; the loader serves faces, and skips clips without audio
    train_ds.drop_audio(unusable=banks.missing)
    val = _Validation(cfg, frontend, accelerator.device)
    log.info(
        "wen: %d train clips of %d speakers; %d voice + %d GAN steps",
        len(train_ds), num_speakers, cfg.voice.steps, cfg.train.max_steps,
    )  # fmt: skip
    phases = Phases(accelerator, cfg, run_dir, train_ds)
    metrics: dict[str, Any] = {}

    # 1. e as a speaker classifier, then frozen
    classifier = phases.supervised(
        "voice",
        classifier,
        _speaker_loss(cfg, banks, accelerator),
        steps=cfg.voice.steps,
        batch_size=cfg.voice.batch_size,
        optim=cfg.voice.optim,
        resume=resume_for("voice", resume, PHASES, METHOD),
        validate=lambda m, step: val.voices(m.encoder),
        logged=("accuracy",),
        exported=lambda m: m.encoder,
    )
    metrics["voice"] = phases.last_validation
    encoder = classifier.encoder.to(accelerator.device).eval().requires_grad_(False)

    # 2. the GAN
    trained = train_gan(
        phases,
        "gan",
        WenGan(cfg, banks, accelerator),
        nets={
            "generator": nets["generator"],
            "face_embedding": nets["face_embedding"],
            "discriminator": d,
            "classifier": c,
        },
        players=Players(d=D_NETS, g=("generator",), exported="generator"),
        optims=dict.fromkeys(["generator", *D_NETS], cfg.optim),
        frozen={"voice_encoder": encoder},
        steps=cfg.train.max_steps,
        batch_size=cfg.train.batch_size,
        resume=resume_for("gan", resume, PHASES, METHOD),
        validate=lambda m, step: val.faces(encoder, m, phases.phase_dir, step),
        logged=("d_real", "d_fake", "c_real", "g_fake", "g_class", "g_accuracy"),
    )
    metrics["gan"] = phases.last_validation
    return _export(phases, cfg, frontend, encoder, trained["generator"], metrics)


# --- The filterbanks, once -------------------------------------------------------------------


class Filterbanks:
    """The normalised filterbank (F, T) of every training clip, computed once (the official code
    also precomputes them), on the accelerator's device; `crops` cuts a step's voices."""

    def __init__(
        self,
        dataset: SpeechFaceDataset,
        frontend: FbankFrontend,
        accelerator: Accelerator,
        *,
        num_workers: int = 0,
    ) -> None:
        self.device = accelerator.device
        self.banks = torch.zeros(len(dataset), frontend.config.num_filters, frontend.num_frames)
        self.banks = self.banks.to(self.device)
        loader = DataLoader(dataset, batch_size=32, collate_fn=collate, num_workers=num_workers)
        bar = tqdm(
            total=len(dataset),
            desc="filterbanks",
            unit="clip",
            disable=not accelerator.is_local_main_process,
        )
        filled = torch.zeros(len(dataset), dtype=torch.bool)
        with torch.no_grad():
            for start, batch in zip(range(0, len(dataset), 32), loader, strict=True):
                if batch is not None:
                    self.banks[batch["index"].to(self.device)] = frontend(
                        batch["waveform"].to(self.device)
                    )
                    filled[batch["index"]] = True
                bar.update(min(32, len(dataset) - start))
        bar.close()
        # clips whose audio could not be used (unreadable, no speech): skipped and counted
        self.missing = (~filled).nonzero().flatten().tolist()

    def crops(self, index: torch.Tensor, lo: int, hi: int, gen: torch.Generator) -> torch.Tensor:
        """(B, F, L): of each clip a random window of `hi` frames, then one length L in
        [lo, hi] and one offset within the window for the whole batch (the official loader and
        collate function). Random numbers come from `gen`, on the CPU."""
        frames = self.banks.shape[-1]
        starts = torch.randint(0, frames - hi + 1, (len(index),), generator=gen)
        length = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        offset = int(torch.randint(0, hi - length + 1, (1,), generator=gen))
        cols = (starts[:, None] + offset + torch.arange(length)).to(self.device)  # (B, L)
        rows = self.banks[index.to(self.device)]  # (B, F, T)
        return rows.gather(2, cols[:, None, :].expand(-1, rows.shape[1], -1))


# --- Losses ----------------------------------------------------------------------------------


def _speaker_loss(cfg: WenConfig, banks: Filterbanks, accelerator: Accelerator):
    def loss_fn(model, batch, state):
        gen = step_generator(cfg.train.seed, state, accelerator)
        speaker = batch["speaker"].to(banks.device)
        voice = banks.crops(batch["index"], *cfg.crop_frames, gen)
        logits = model(voice, speaker)  # the true speaker's cosine lowered by the margin
        loss = F.cross_entropy(logits, speaker)
        accuracy = (logits.argmax(1) == speaker).float().mean()  # with the margin: a lower bound
        return loss, {"loss": loss.detach(), "accuracy": accuracy}

    return loss_fn


class WenGan:
    """Wen et al.'s two players (official gan_train.py), for `train_gan`. All weights 1."""

    def __init__(self, cfg: WenConfig, banks: Filterbanks, accelerator: Accelerator) -> None:
        self.cfg, self.banks, self.accelerator = cfg, banks, accelerator

    def generate(self, nets, batch, state: TrainState) -> dict[str, Any]:
        """Fakes from the frozen e's unit embeddings + 0.05·N(0, I), renormalised; the real
        faces, half of them flipped. One seeded generator per step draws crops, flips, noise."""
        cfg, device = self.cfg, self.accelerator.device
        gen = step_generator(cfg.train.seed, state, self.accelerator)
        voice = self.banks.crops(batch["index"], *cfg.crop_frames, gen)
        face = batch["face"].to(device)
        if cfg.flip:
            flip = (torch.rand(len(face), generator=gen) < 0.5).to(device)
            face = torch.where(flip[:, None, None, None], face.flip(-1), face)
        with torch.no_grad():
            embedding = nets["voice_encoder"].embed(voice)
        noise = torch.randn(embedding.shape, generator=gen).to(device)
        embedding = F.normalize(embedding + cfg.embedding_noise * noise, dim=1)
        return {"fake": nets["generator"](embedding), "face": face}

    def d_loss(self, nets, batch, fake, state):
        """f, d, c: BCE(d(f(x)), 1) + BCE(d(f(G̃)), 0) + CE(c(f(x)), the face's speaker)."""
        real = len(fake["face"])
        features = nets["face_embedding"](torch.cat([fake["face"], fake["fake"]]))
        scores = nets["discriminator"](features)
        logits = nets["classifier"](features[:real])
        speaker = batch["speaker"].to(logits.device)
        d_real, d_fake = bce_gan_loss(scores[:real], True), bce_gan_loss(scores[real:], False)
        c_real = F.cross_entropy(logits, speaker)
        logs = {"loss/d_real": d_real.detach(), "loss/d_fake": d_fake.detach()}
        return d_real + d_fake + c_real, logs | {"loss/c_real": c_real.detach()}

    def g_loss(self, nets, batch, fake, state):
        """G: BCE(d(f(G)), 1) + CE(c(f(G)), the voice's speaker)."""
        features = nets["face_embedding"](fake["fake"])
        logits = nets["classifier"](features)
        speaker = batch["speaker"].to(logits.device)
        g_fake = bce_gan_loss(nets["discriminator"](features), True)
        g_class = F.cross_entropy(logits, speaker)
        accuracy = (logits.argmax(1) == speaker).float().mean()
        logs = {"loss/g_fake": g_fake.detach(), "loss/g_class": g_class.detach()}
        return g_fake + g_class, logs | {"g_accuracy": accuracy}


# --- Validation --------------------------------------------------------------------------------


class _Validation:
    """The validation clips' filterbanks, read once (none without a validation split)."""

    def __init__(self, cfg: WenConfig, frontend: FbankFrontend, device: torch.device) -> None:
        self.cfg, self.banks, self.true_faces, self.speakers = cfg, [], [], []
        dataset = maybe_split(cfg.data, frontend, cfg.eval.split)
        with torch.no_grad():
            for batch in val_batches(dataset, cfg.eval):
                self.banks.append(frontend(batch["waveform"].to(device)))
                self.true_faces.append(batch["face"].to(device))
                self.speakers.append(batch["speaker"].to(device))

    @torch.no_grad()
    def embeddings(self, encoder: WenVoiceEncoder) -> torch.Tensor:
        return torch.cat([encoder.embed(b) for b in self.banks])

    def voices(self, encoder: WenVoiceEncoder) -> dict[str, float]:
        """Voice → voice R@1: is each clip's nearest other clip (cosine of e) its speaker's?"""
        if not self.banks:
            return {}
        e, s = self.embeddings(encoder), torch.cat(self.speakers)
        sim = (e @ e.T).fill_diagonal_(-2)
        has_pair = ((s[:, None] == s[None]).sum(1) > 1).nonzero().flatten()
        if not len(has_pair):
            return {}
        hits = s[sim.argmax(1)] == s
        return {"val/voice_R@1": hits[has_pair].float().mean().item()}

    @torch.no_grad()
    def faces(
        self, encoder: WenVoiceEncoder, nets: dict[str, nn.Module], phase_dir: Path, step: int
    ) -> dict[str, float]:
        """Face R@1 among the validation speakers (by f's cosine, one true face per speaker)
        and the grid true face | generated face of the first `grid_size` speakers' voices."""
        if not self.banks:
            return {}
        fake = torch.cat([nets["generator"](encoder.embed(b)).clamp(-1, 1) for b in self.banks])
        faces, speakers = torch.cat(self.true_faces), torch.cat(self.speakers)
        rows = one_per_speaker(speakers, len(speakers))
        f = nets["face_embedding"]
        gallery = F.normalize(f(faces[rows]), dim=1)  # one true face per speaker
        probe = F.normalize(f(fake), dim=1)
        nearest = (probe @ gallery.T).argmax(1)
        hits = speakers[torch.tensor(rows, device=speakers.device)][nearest] == speakers
        shown = rows[: self.cfg.eval.grid_size]
        save_grid([t for i in shown for t in (faces[i], fake[i])], 2, phase_dir, step)
        return {"val/face_R@1": hits.float().mean().item(), "val/chance_R@1": 1 / len(rows)}


# --- Export ----------------------------------------------------------------------------------


def _export(phases: Phases, cfg: WenConfig, frontend, encoder, generator, metrics) -> Path:
    """RUN/pipeline (the front end, the frozen e, G — its EMA when ema_decay > 0) and
    RUN/metrics.json."""
    preset = cfg.generator.get("preset")
    note = None
    if preset != "base" or cfg.train.max_steps != 50_000 or cfg.train.batch_size != 128:
        note = (
            f"networks at the {preset!r} preset's widths, {generator.image_size} px; "
            f"{cfg.train.max_steps} GAN steps at batch {cfg.train.batch_size} (the official: "
            "preset base, 50,000 steps at batch 128)"
        )
    method = {
        "preset": preset,
        "data": str(cfg.data.root),
        "deviations": deviations(
            preset_note=note,
            ema_decay=cfg.train.ema_decay,
            pretrain_steps=cfg.voice.steps,
            segment_seconds=frontend.config.segment_seconds,
            scale=cfg.voice_scale,
            margin=cfg.voice_margin,
        ),
    }
    pipe = WenPipeline(
        frontend=copy.deepcopy(frontend).cpu(),
        voice_encoder=copy.deepcopy(encoder).cpu(),
        generator=generator.cpu(),
        method=method,
    )
    parts = ("voice_encoder", "generator")
    return export_pipeline(phases, pipe, parts, cfg.train.max_steps, metrics)
