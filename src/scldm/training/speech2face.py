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
reuses; the last exports `RUN/pipeline/`, a `Speech2FacePipeline`. Logging, checkpoints
(safetensors), exact resume and accelerate are the stages' (`scldm.training.loop`,
`scldm.training.checkpoint`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Callable
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
    TITLE,
    VOICE_ENCODER_PRESETS,
    ColeDecoder,
    FaceTeacher,
    Speech2FacePipeline,
    VoiceEncoder,
    deviations,
)
from scldm.config import (
    OptimConfig,
    Speech2FaceConfig,
    component_kwargs,
    load_config,
)
from scldm.data.datasets import SpeakerBatchSampler, SpeechFaceDataset, collate
from scldm.errors import InputError
from scldm.faces import make_grid, save_image, to_pil
from scldm.io import write_json
from scldm.losses import s2f_loss
from scldm.optim import EMA, lr_at
from scldm.training.checkpoint import CHECKPOINTS, maybe_resume, save_checkpoint, write_meta
from scldm.training.loop import (
    LogWindow,
    TrainState,
    background_worker,
    batch_stream,
    check_ranks_agree,
    crop_samples,
    due,
    log_scalars,
    make_accelerator,
    maybe_split,
    optimizer_step,
    plot_scalars,
    progress_bar,
    setup_run,
    step_generator,
)

__all__ = ["PHASES", "build_networks", "train"]
log = logging.getLogger("scldm.train")
PHASES = ("teacher", "decoder", "voice")
EXPORT = "export"
LossFn = Callable[[torch.nn.Module, dict[str, Any], TrainState], tuple[torch.Tensor, dict]]


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


def _check_run(run_dir: Path, resume: str | None) -> None:
    """Refuse to resume a run folder of another method (its config.yaml is not Speech2Face's)."""
    config = run_dir / "config.yaml"
    if resume and config.is_file():
        try:
            load_config(Speech2FaceConfig, config)
        except InputError:
            raise InputError(
                run_dir, "is not a Speech2Face run (its config.yaml is another method's); "
                "use a new --out",
            ) from None  # fmt: skip


def _resume_for(phase: str, resume: str | None) -> str | None:
    """A phase's resume: `latest` for all; a checkpoint folder for its own phase, `latest` for
    the phases before it (their exports are reused) and nothing for those after it."""
    if resume in (None, "latest"):
        return resume
    path = Path(resume)
    if path.parent.name != CHECKPOINTS or path.parent.parent.name not in PHASES:
        raise InputError(path, f"not a checkpoint of a Speech2Face phase ({', '.join(PHASES)})")
    own = path.parent.parent.name
    if phase == own:
        return str(path)
    return "latest" if PHASES.index(phase) < PHASES.index(own) else None


def train(cfg: Speech2FaceConfig, *, resume: str | None = None, cpu: bool = False) -> Path:
    """Train Speech2Face and return RUN/pipeline (a `Speech2FacePipeline`)."""
    frontend = SpectrogramFrontend(**cfg.frontend)
    crop = crop_samples(cfg.train_crop_seconds, frontend)  # checked before anything is written
    if cfg.teacher.mode == "vggface" and not cfg.teacher.weights:
        raise InputError(None, "teacher.mode vggface needs teacher.weights=PATH/vgg_face_dag.pth")
    run_dir = Path(cfg.train.output_dir)
    _check_run(run_dir, resume)
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
    fit = _Fitter(accelerator, cfg, run_dir, train_ds)
    metrics: dict[str, Any] = {}

    # 1. the face teacher
    if cfg.teacher.mode == "vggface":
        log.info("teacher: VGGFace from %s (%s)", cfg.teacher.weights, teacher.load_vggface(
            cfg.teacher.weights))  # fmt: skip
    else:
        teacher = fit.phase(
            "teacher",
            teacher,
            _teacher_loss(cfg, accelerator),
            steps=cfg.teacher.steps,
            batch_size=cfg.teacher.batch_size,
            optim=cfg.teacher.optim,
            resume=_resume_for("teacher", resume),
            validate=lambda m, step: _validate_teacher(m, val_ds, cfg, fit.phase_dir, step),
        )
        metrics["teacher"] = fit.last_validation
    teacher = teacher.to(accelerator.device).eval().requires_grad_(False)

    # 2. the face decoder on the frozen teacher's features
    decoder = fit.phase(
        "decoder",
        decoder,
        _decoder_loss(cfg, teacher),
        steps=cfg.decoder.steps,
        batch_size=cfg.decoder.batch_size,
        optim=cfg.decoder.optim,
        resume=_resume_for("decoder", resume),
        validate=lambda m, step: _validate_decoder(m, teacher, val_ds, cfg, fit.phase_dir, step),
    )
    metrics["decoder"] = fit.last_validation
    decoder = decoder.to(accelerator.device).eval().requires_grad_(False)

    # 3. the voice encoder on Eq. 1, the teacher's side computed once
    targets = _teacher_features(teacher, train_ds, accelerator.device)
    voice = fit.phase(
        "voice",
        voice,
        _voice_loss(cfg, frontend, teacher, decoder, targets, crop, accelerator),
        steps=cfg.train.max_steps,
        batch_size=cfg.train.batch_size,
        optim=cfg.optim,
        resume=_resume_for("voice", resume),
        validate=lambda m, step: _validate_voice(
            m, frontend, teacher, decoder, val_ds, cfg, fit.phase_dir, step
        ),
        export=False,
    )
    metrics["voice"] = fit.last_validation
    return _export(accelerator, cfg, run_dir, frontend, voice, decoder, metrics)


class _Fitter:
    """Runs the supervised phases of one run: the same data, accelerator and cadence."""

    def __init__(
        self,
        accelerator: Accelerator,
        cfg: Speech2FaceConfig,
        run_dir: Path,
        dataset: SpeechFaceDataset,
    ) -> None:
        self.accelerator, self.cfg, self.run_dir, self.dataset = accelerator, cfg, run_dir, dataset
        self.phase_dir = run_dir
        self.last_validation: dict[str, float] = {}

    def phase(
        self,
        name: str,
        model: torch.nn.Module,
        loss_fn: LossFn,
        *,
        steps: int,
        batch_size: int,
        optim: OptimConfig,
        resume: str | None,
        validate: Callable[[torch.nn.Module, int], dict[str, float]] | None,
        export: bool = True,
    ) -> torch.nn.Module:
        """Train `model` for `steps` with `loss_fn` and return its EMA weights (eval mode, on
        the CPU); a phase whose export exists is loaded instead when resuming."""
        accelerator, cfg = self.accelerator, self.cfg
        phase_dir = self.phase_dir = self.run_dir / name
        exported = phase_dir / EXPORT
        self.last_validation = {}
        if resume and export and _exported_steps(exported) == steps:
            log.info("%s: reusing %s", name, exported)
            return type(model).from_pretrained(exported).eval()
        if accelerator.is_main_process:
            phase_dir.mkdir(parents=True, exist_ok=True)
        train_cfg = dataclasses.replace(cfg.train, max_steps=steps, batch_size=batch_size)
        sampler = SpeakerBatchSampler(self.dataset.speaker_index, batch_size, seed=cfg.train.seed)
        loader = DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=cfg.data.num_workers,
            persistent_workers=cfg.data.num_workers > 0,
            worker_init_fn=background_worker,
        )
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=optim.lr,
            betas=optim.betas,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
        )
        for group in optimizer.param_groups:
            group["base_lr"] = optim.lr
        prepared, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        unwrapped = accelerator.unwrap_model(prepared)
        ema, state = EMA(unwrapped, cfg.train.ema_decay), TrainState()
        maybe_resume(
            accelerator, phase_dir, resume, model=unwrapped, optimizer=optimizer, ema=ema,
            state=state,
        )  # fmt: skip
        bar = progress_bar(accelerator, train_cfg, state.step, name)
        window = LogWindow(accelerator, phase_dir, batch_size, bar)
        prepared.train()
        for batch in batch_stream(loader, sampler, state.step, accelerator):
            if state.step >= steps:
                break
            if batch is None:  # every clip of it unreadable (logged by `collate`)
                continue
            with accelerator.accumulate(prepared):
                loss, logs = loss_fn(prepared, batch, state)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"{name}: the loss is {loss.item()} at step {state.step}")
                accelerator.backward(loss)
                factor = lr_at(state.step, optim, steps)
                logs |= optimizer_step(accelerator, prepared, optimizer, factor, optim.grad_clip)
            window.add(logs)
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            state.samples += batch_size * accelerator.num_processes
            ema.update(unwrapped)
            if due(state.step, cfg.train.log_every, steps):
                window.report(state.step, optimizer.param_groups[0]["lr"])
            bar.update()
            if (
                validate
                and accelerator.is_main_process
                and due(state.step, cfg.train.eval_every, steps)
            ):
                self.last_validation = validate(_ema_copy(unwrapped, ema), state.step)
                log_scalars(accelerator, phase_dir, self.last_validation, state.step)
                log.info("%s step %d %s", name, state.step, _fmt(self.last_validation))
            if due(state.step, cfg.train.save_every, steps):
                save_checkpoint(
                    accelerator, phase_dir, model=unwrapped, optimizer=optimizer, ema=ema,
                    state=state, keep_last=cfg.train.keep_last,
                )  # fmt: skip
        bar.close()
        check_ranks_agree(accelerator, unwrapped)
        final = _ema_copy(unwrapped, ema)
        if accelerator.is_main_process:
            if steps > 0:
                keys = ["train/loss", *(f"train/{k}" for k in _LOGGED.get(name, ()))]
                keys += [f"val/{k.removeprefix('val/')}" for k in self.last_validation]
                plot_scalars(phase_dir, keys, phase_dir / "curves.png")
            if export:
                final.save_pretrained(exported)
                write_meta(exported, self.run_dir, state.step, phase=name)
        accelerator.wait_for_everyone()
        return final


def _exported_steps(folder: Path) -> int | None:
    """The steps a phase's export was trained for (None when there is none)."""
    meta = folder / "scldm_meta.json"
    if not (folder / "config.json").is_file() or not meta.is_file():
        return None
    return int(json.loads(meta.read_text())["step"])


_LOGGED = {
    "teacher": ("accuracy",),
    "decoder": ("l1", "feature_cos"),
    "voice": ("decoder_l1", "feature_l2", "distill"),
}


def _ema_copy(model: torch.nn.Module, ema: EMA) -> torch.nn.Module:
    final = copy.deepcopy(model)
    ema.copy_to(final)
    return final.eval()


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


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


def _val_batches(dataset: SpeechFaceDataset | None, cfg: Speech2FaceConfig):
    if dataset is None:
        return
    n = min(len(dataset), cfg.eval.max_clips)
    loader = DataLoader(
        torch.utils.data.Subset(dataset, range(n)), batch_size=64, collate_fn=collate
    )
    yield from (b for b in loader if b is not None)


def _one_per_speaker(speakers: torch.Tensor, n: int) -> list[int]:
    """Rows of the first clip of each of the first `n` speakers: the grids show n people."""
    seen: dict[int, int] = {}
    for row, speaker in enumerate(speakers.tolist()):
        seen.setdefault(speaker, row)
    return list(seen.values())[:n]


@torch.no_grad()
def _validate_teacher(teacher, dataset, cfg, phase_dir, step) -> dict[str, float]:
    """Face → face R@1 among the validation faces: is each face's nearest other image (cosine
    of fc7; the same image of another clip does not count) one of the same speaker? The grid:
    face | its nearest other image."""
    faces, feats, speakers, images = [], [], [], []
    device = next(teacher.parameters()).device
    for batch in _val_batches(dataset, cfg):
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
    rows = _one_per_speaker(s, cfg.eval.grid_size)
    _save_grid([t for i in rows for t in (faces[i], faces[nearest[i]])], 2, phase_dir, step)
    return {"val/face_R@1": hits.mean().item()} if len(hits) else {}


@torch.no_grad()
def _validate_decoder(decoder, teacher, dataset, cfg, phase_dir, step) -> dict[str, float]:
    """PSNR of the decoded validation faces, and the grid true | decoded."""
    faces, decoded, speakers = [], [], []
    device = next(decoder.parameters()).device
    for batch in _val_batches(dataset, cfg):
        face = batch["face"].to(device)
        faces.append(face)
        decoded.append(decoder(teacher.embed(face)))
        speakers.append(batch["speaker"])
    if not faces:
        return {}
    faces, decoded = torch.cat(faces), torch.cat(decoded)
    rows = _one_per_speaker(torch.cat(speakers), cfg.eval.grid_size)
    _save_grid([t for i in rows for t in (faces[i], decoded[i])], 2, phase_dir, step)
    mse = ((decoded - faces) / 2).pow(2).flatten(1).mean(1)
    return {"val/psnr": (10 * torch.log10(1 / mse.clamp_min(1e-10))).mean().item()}


@torch.no_grad()
def _validate_voice(voice, frontend, teacher, decoder, dataset, cfg, phase_dir, step):
    """cos(v_s, v_f) on the validation clips (whole segments, as at inference), and the grid
    true face | decoder(v_f) | decoder(v_s)."""
    faces, v_faces, v_voices, speakers = [], [], [], []
    device = next(voice.parameters()).device
    for batch in _val_batches(dataset, cfg):
        face = batch["face"].to(device)
        faces.append(face)
        v_faces.append(teacher.embed(face))
        v_voices.append(voice(frontend(batch["waveform"].to(device))))
        speakers.append(batch["speaker"])
    if not faces:
        return {}
    faces, v_face, v_voice = torch.cat(faces), torch.cat(v_faces), torch.cat(v_voices)
    rows = _one_per_speaker(torch.cat(speakers), cfg.eval.grid_size)
    pick = torch.tensor(rows, device=device)
    triples = zip(faces[pick], decoder(v_face[pick]), decoder(v_voice[pick]), strict=True)
    _save_grid([t for triple in triples for t in triple], 3, phase_dir, step)
    return {"val/cos": F.cosine_similarity(v_voice, v_face, dim=1).mean().item()}


def _save_grid(faces: list[torch.Tensor], ncols: int, phase_dir: Path, step: int) -> None:
    grid = make_grid([to_pil(f.cpu()) for f in faces], ncols=ncols)
    save_image(grid, phase_dir / "samples" / f"step_{step:07d}.png")


# --- Export ----------------------------------------------------------------------------------


def _export(accelerator, cfg, run_dir, frontend, voice, decoder, metrics) -> Path:
    """RUN/pipeline (the EMA voice encoder, the decoder, the front end) and RUN/metrics.json."""
    out = run_dir / "pipeline"
    if accelerator.is_main_process:
        preset = cfg.voice_encoder.get("preset")
        note = None
        if preset != "base":
            note = f"networks at the {preset!r} preset's widths, not Table 1's (preset base)"
        method = {
            "name": "speech2face",
            "title": TITLE,
            "deterministic": True,
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
        pipe.save_pretrained(out)
        for part in ("voice_encoder", "face_decoder"):
            write_meta(out / part, run_dir, cfg.train.max_steps)
        write_json(run_dir / "metrics.json", metrics, indent=2)
        log.info("exported %s; %s", out, metrics)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out
