"""`scldm train-baseline speech2face`: Speech2Face (Oh et al., CVPR 2019) in three phases, each
a folder of the run with its own checkpoints, scalars, curves and grids:

1. `teacher/`: the face teacher. VGGFace from the user's weights (frozen, no training), or an
   identity classifier of the training faces (cross-entropy over the training speakers, random
   flips); validation logs face → face R@1 between the validation speakers' images.
2. `decoder/`: the Cole et al. face decoder on the frozen teacher's fc7 of the training faces,
   L1 + (1 − cos) of the teacher's fc7 of the decoded face.
3. `voice/`: the voice encoder, the method itself, on Eq. 1 (`scldm.losses.s2f_loss`) against the
   frozen teacher and decoder; the teacher's side of the loss is computed once per run.

A finished phase exports its network (`teacher/export`, `decoder/export`), which `--resume`
reuses (`scldm.training.phases`); the last exports `RUN/pipeline/`, a `Speech2FacePipeline`.
Logging, checkpoints (safetensors), exact resume and accelerate are the stages'
(`scldm.training.loop`, `scldm.training.checkpoint`).
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
from torch.utils.data import DataLoader

from scldm.audio import SpectrogramFrontend, random_crop
from scldm.baselines.speech2face import (
    FACE_DECODER_PRESETS,
    TEACHER_PRESETS,
    VOICE_ENCODER_PRESETS,
    ColeDecoder,
    FaceTeacher,
    Speech2FacePipeline,
    VoiceEncoder,
    deviations,
)
from scldm.config import Speech2FaceConfig, component_kwargs
from scldm.data.datasets import SpeechFaceDataset, collate
from scldm.errors import InputError
from scldm.losses import s2f_loss
from scldm.training.guard import guarded
from scldm.training.loop import (
    crop_samples,
    make_accelerator,
    maybe_split,
    setup_run,
    step_generator,
)
from scldm.training.phases import (
    LossFn,
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
PHASES = ("teacher", "decoder", "voice")


def build_networks(
    cfg: Speech2FaceConfig, num_speakers: int
) -> tuple[FaceTeacher, ColeDecoder, VoiceEncoder]:
    """The three networks from the config's presets; the teacher classifies `num_speakers`
    identities (VGGFace's own 2,622 in `vggface` mode)."""
    try:
        teacher_kwargs = component_kwargs(cfg.teacher.model, TEACHER_PRESETS, "teacher.model")
        if cfg.teacher.mode == "identity":
            teacher_kwargs["num_classes"] = num_speakers
        teacher = FaceTeacher(**teacher_kwargs)
        decoder = ColeDecoder(
            **component_kwargs(cfg.decoder.model, FACE_DECODER_PRESETS, "decoder.model")
        )
        voice = VoiceEncoder(
            **component_kwargs(cfg.voice_encoder, VOICE_ENCODER_PRESETS, "voice_encoder")
        )
    except TypeError as e:  # an unknown constructor keyword in the config
        raise InputError(None, f"model config: {e}") from None
    widths = {
        "teacher fc7": teacher.config.fc_dims[1],
        "decoder input": decoder.config.in_dim,
        "voice encoder output": voice.config.embedding_dim,
    }
    if len(set(widths.values())) != 1:
        raise InputError(None, f"the feature widths must agree: {widths}")
    if (
        decoder.image_size != cfg.data.image_size
        or teacher.config.image_size != cfg.data.image_size
    ):
        raise InputError(
            None,
            f"data.image_size {cfg.data.image_size}: the decoder makes {decoder.image_size} px "
            f"faces and the teacher reads {teacher.config.image_size} px",
        )
    return teacher, decoder, voice


@guarded
def train(cfg: Speech2FaceConfig, *, resume: str | None = None, cpu: bool = False) -> Path:
    """Train Speech2Face and return RUN/pipeline (a `Speech2FacePipeline`)."""
    frontend = SpectrogramFrontend(**cfg.frontend)
    crop = crop_samples(cfg.train_crop_seconds, frontend)  # checked before anything is written
    if cfg.teacher.mode == "vggface" and not cfg.teacher.weights:
        raise InputError(None, "teacher.mode vggface needs teacher.weights=PATH/vgg_face_dag.pth")
    run_dir = Path(cfg.train.output_dir)
    check_run(run_dir, resume, Speech2FaceConfig, "Speech2Face")
    accelerator = make_accelerator(cfg.train, run_dir, cpu=cpu)
    set_seed(cfg.train.seed)  # identical initialisation on every rank
    setup_run(accelerator, cfg, run_dir, "scldm-speech2face")
    train_ds = SpeechFaceDataset(
        cfg.data.root, "train", frontend=frontend, image_size=cfg.data.image_size
    )
    if cfg.data.in_memory:
        train_ds.load_into_memory(progress=accelerator.is_local_main_process)
    val_ds = maybe_split(cfg.data, frontend, cfg.eval.split)
    teacher, decoder, voice = build_networks(cfg, len(train_ds.speakers))
    log.info(
        "speech2face: %d train clips of %d speakers; teacher %s, %d + %d + %d steps",
        len(train_ds), len(train_ds.speakers), cfg.teacher.mode,
        cfg.teacher.steps, cfg.decoder.steps, cfg.train.max_steps,
    )  # fmt: skip
    frontend.to(accelerator.device)
    fit = Phases(accelerator, cfg, run_dir, train_ds)
    metrics: dict[str, Any] = {}

    # 1. the face teacher
    if cfg.teacher.mode == "vggface":
        log.info("teacher: VGGFace from %s (%s)", cfg.teacher.weights, teacher.load_vggface(
            cfg.teacher.weights))  # fmt: skip
    else:
        teacher = fit.supervised(
            "teacher",
            teacher,
            _teacher_loss(cfg, accelerator),
            steps=cfg.teacher.steps,
            batch_size=cfg.teacher.batch_size,
            optim=cfg.teacher.optim,
            resume=resume_for("teacher", resume, PHASES, "Speech2Face"),
            validate=lambda m, step: _validate_teacher(m, val_ds, cfg, fit.phase_dir, step),
            logged=("accuracy",),
        )
        metrics["teacher"] = fit.last_validation
    teacher = teacher.to(accelerator.device).eval().requires_grad_(False)

    # 2. the face decoder on the frozen teacher's features
    decoder = fit.supervised(
        "decoder",
        decoder,
        _decoder_loss(cfg, teacher),
        steps=cfg.decoder.steps,
        batch_size=cfg.decoder.batch_size,
        optim=cfg.decoder.optim,
        resume=resume_for("decoder", resume, PHASES, "Speech2Face"),
        validate=lambda m, step: _validate_decoder(m, teacher, val_ds, cfg, fit.phase_dir, step),
        logged=("l1", "feature_cos"),
    )
    metrics["decoder"] = fit.last_validation
    decoder = decoder.to(accelerator.device).eval().requires_grad_(False)

    # 3. the voice encoder on Eq. 1, the teacher's side computed once
    targets = _teacher_features(teacher, train_ds, accelerator.device)
    voice = fit.supervised(
        "voice",
        voice,
        _voice_loss(cfg, frontend, teacher, decoder, targets, crop, accelerator),
        steps=cfg.train.max_steps,
        batch_size=cfg.train.batch_size,
        optim=cfg.optim,
        resume=resume_for("voice", resume, PHASES, "Speech2Face"),
        validate=lambda m, step: _validate_voice(
            m, frontend, teacher, decoder, val_ds, cfg, fit.phase_dir, step
        ),
        logged=("decoder_l1", "feature_l2", "distill"),
        exported=None,
    )
    metrics["voice"] = fit.last_validation
    return _export(fit, cfg, frontend, voice, decoder, metrics)


# --- The phases' losses ----------------------------------------------------------------------


def _teacher_loss(cfg: Speech2FaceConfig, accelerator: Accelerator) -> LossFn:
    def loss_fn(model, batch, state):
        face = batch["face"]
        if cfg.teacher.flip:  # a random half of the faces mirrored, seeded by the step
            gen = step_generator(cfg.train.seed, state, accelerator)
            flip = (torch.rand(len(face), generator=gen) < 0.5).to(face.device)
            face = torch.where(flip[:, None, None, None], face.flip(-1), face)
        _, logits = model(face)
        loss = F.cross_entropy(logits, batch["speaker"])
        accuracy = (logits.argmax(1) == batch["speaker"]).float().mean()
        return loss, {"loss": loss.detach(), "accuracy": accuracy}

    return loss_fn


def _decoder_loss(cfg: Speech2FaceConfig, teacher: FaceTeacher) -> LossFn:
    def loss_fn(model, batch, state):
        face = batch["face"]
        with torch.no_grad():
            target = teacher.embed(face)
        decoded = model(target)
        l1 = (decoded - face).abs().mean()
        feature_cos = 1 - F.cosine_similarity(teacher.embed(decoded), target, dim=1).mean()
        loss = l1 + cfg.decoder.feature_weight * feature_cos
        return loss, {"loss": loss.detach(), "l1": l1.detach(), "feature_cos": feature_cos.detach()}

    return loss_fn


@torch.no_grad()
def _teacher_features(
    teacher: FaceTeacher, dataset: SpeechFaceDataset, device: torch.device
) -> torch.Tensor:
    """v_f = the teacher's fc7 of every training clip's face, (N, D) by dataset index (zeros
    for unreadable clips, which `collate` never lets through)."""
    out = torch.zeros(len(dataset), teacher.config.fc_dims[1], device=device)
    loader = DataLoader(dataset, batch_size=128, collate_fn=collate)
    for batch in loader:
        if batch is not None:
            out[batch["index"].to(device)] = teacher.embed(batch["face"].to(device))
    return out


def _voice_loss(cfg, frontend, teacher, decoder, targets, crop, accelerator) -> LossFn:
    def loss_fn(model, batch, state):
        wave = batch["waveform"]
        if crop is not None:
            wave = random_crop(wave, crop, step_generator(cfg.train.seed, state, accelerator))
        v_voice = model(frontend(wave))
        v_face = targets[batch["index"].to(targets.device)]
        with torch.no_grad():
            dec_face, logits_face = decoder.hidden(v_face), teacher.classify(v_face)
        return s2f_loss(
            dec_face,
            decoder.hidden(v_voice),
            v_face,
            v_voice,
            logits_face,
            teacher.classify(v_voice),
            weights=cfg.loss_weights,
            temperature=cfg.temperature,
        )

    return loss_fn


# --- Validation --------------------------------------------------------------------------------


@torch.no_grad()
def _validate_teacher(teacher, dataset, cfg, phase_dir, step) -> dict[str, float]:
    """Face → face R@1 among the validation faces: is each face's nearest other image (cosine
    of fc7; the same image of another clip does not count) one of the same speaker? The grid:
    face | its nearest other image."""
    faces, feats, speakers, images = [], [], [], []
    device = next(teacher.parameters()).device
    for batch in val_batches(dataset, cfg.eval):
        faces.append(batch["face"])
        feats.append(F.normalize(teacher.embed(batch["face"].to(device)), dim=1))
        speakers.append(batch["speaker"])
        images += [dataset.rows[i]["face"] for i in batch["index"].tolist()]
    if not feats:
        return {}
    f, s = torch.cat(feats), torch.cat(speakers).to(device)
    ids = {path: k for k, path in enumerate(dict.fromkeys(images))}
    image = torch.tensor([ids[p] for p in images], device=device)
    same_image = image[:, None] == image[None]
    sim = (f @ f.T).masked_fill(same_image, -2)
    nearest = sim.argmax(1)
    has_pair = ((s[:, None] == s[None]) & ~same_image).any(1)
    hits = (s[nearest] == s).float()[has_pair]
    faces = torch.cat(faces)
    rows = one_per_speaker(s, cfg.eval.grid_size)
    save_grid([t for i in rows for t in (faces[i], faces[nearest[i]])], 2, phase_dir, step)
    return {"val/face_R@1": hits.mean().item()} if len(hits) else {}


@torch.no_grad()
def _validate_decoder(decoder, teacher, dataset, cfg, phase_dir, step) -> dict[str, float]:
    """PSNR of the decoded validation faces, and the grid true | decoded."""
    faces, decoded, speakers = [], [], []
    device = next(decoder.parameters()).device
    for batch in val_batches(dataset, cfg.eval):
        face = batch["face"].to(device)
        faces.append(face)
        decoded.append(decoder(teacher.embed(face)))
        speakers.append(batch["speaker"])
    if not faces:
        return {}
    faces, decoded = torch.cat(faces), torch.cat(decoded)
    rows = one_per_speaker(torch.cat(speakers), cfg.eval.grid_size)
    save_grid([t for i in rows for t in (faces[i], decoded[i])], 2, phase_dir, step)
    mse = ((decoded - faces) / 2).pow(2).flatten(1).mean(1)
    return {"val/psnr": (10 * torch.log10(1 / mse.clamp_min(1e-10))).mean().item()}


@torch.no_grad()
def _validate_voice(voice, frontend, teacher, decoder, dataset, cfg, phase_dir, step):
    """cos(v_s, v_f) on the validation clips (whole segments, as at inference), and the grid
    true face | decoder(v_f) | decoder(v_s)."""
    faces, v_faces, v_voices, speakers = [], [], [], []
    device = next(voice.parameters()).device
    for batch in val_batches(dataset, cfg.eval):
        face = batch["face"].to(device)
        faces.append(face)
        v_faces.append(teacher.embed(face))
        v_voices.append(voice(frontend(batch["waveform"].to(device))))
        speakers.append(batch["speaker"])
    if not faces:
        return {}
    faces, v_face, v_voice = torch.cat(faces), torch.cat(v_faces), torch.cat(v_voices)
    rows = one_per_speaker(torch.cat(speakers), cfg.eval.grid_size)
    pick = torch.tensor(rows, device=device)
    triples = zip(faces[pick], decoder(v_face[pick]), decoder(v_voice[pick]), strict=True)
    save_grid([t for triple in triples for t in triple], 3, phase_dir, step)
    return {"val/cos": F.cosine_similarity(v_voice, v_face, dim=1).mean().item()}


# --- Export ----------------------------------------------------------------------------------


def _export(phases: Phases, cfg: Speech2FaceConfig, frontend, voice, decoder, metrics) -> Path:
    """RUN/pipeline (the EMA voice encoder, the decoder, the front end) and RUN/metrics.json."""
    preset = cfg.voice_encoder.get("preset")
    note = None
    if preset != "base":
        note = f"networks at the {preset!r} preset's widths, not Table 1's (preset base)"
    method = {
        "teacher": cfg.teacher.mode,
        "preset": preset,
        "data": str(cfg.data.root),
        "deviations": deviations(
            teacher_mode=cfg.teacher.mode,
            crop_seconds=cfg.train_crop_seconds,
            preset_note=note,
            ema_decay=cfg.train.ema_decay,
        ),
    }
    pipe = Speech2FacePipeline(
        frontend=copy.deepcopy(frontend).cpu(),
        voice_encoder=voice.cpu(),
        face_decoder=copy.deepcopy(decoder).cpu(),
        method=method,
    )
    parts = ("voice_encoder", "face_decoder")
    return export_pipeline(phases, pipe, parts, cfg.train.max_steps, metrics)
