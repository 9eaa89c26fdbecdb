"""The training steps and face generation of SCLDM and the three baselines at each preset, as
runnable workloads on random weights and inputs of the presets' shapes: what benchmarks/flops.py
counts and benchmarks/gpu.py times. `build(stage, preset, batch=..., device=...)`; `STAGES`
lists them with their titles.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

PRESETS = ("tiny", "small", "base")
COUNT_BATCH = 2
# identity classes of the classifiers the baselines train (the data decides them; their share
# of a step is one linear layer)
NUM_SPEAKERS = 1000


@dataclass
class Workload:
    """One stage at a batch size on a device, ready to run: `step()` is the forward and, for a
    training stage, the backward and (when built with `optimize`) the optimizer updates.
    `parts`, (repeats, fn), sum to a step where the step itself cannot run on the meta device
    (the sampler's scheduler reads tensor values)."""

    step: Callable[[], object]
    networks: dict[str, nn.Module]
    shapes: str
    parts: list[tuple[int, Callable[[], object]]] = field(default_factory=list)

    @property
    def params(self) -> int:
        unique = {id(p): p for m in self.networks.values() for p in m.parameters()}
        return sum(p.numel() for p in unique.values())


@dataclass(frozen=True)
class Stage:
    """A row of the table: its title, whether it trains (forward + backward), its builder."""

    title: str
    trains: bool
    build: Callable[..., Workload]  # (preset, batch, device, bf16, optimize) → Workload


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _adamw(optimize: bool, *modules: nn.Module, fused: bool = False) -> list:
    """The step's optimizers, one AdamW per module (none when only counting)."""
    if not optimize:
        return []
    return [torch.optim.AdamW(m.parameters(), lr=1e-4, fused=fused or None) for m in modules]


def _update(loss: torch.Tensor, optimizers: list, clip: float = 0.0) -> None:
    loss.backward()
    for opt in optimizers:
        if clip:
            params = [p for g in opt.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)


def _shape(x: torch.Tensor | tuple) -> str:
    return "×".join(str(n) for n in (x.shape[1:] if torch.is_tensor(x) else x))


# --- SCLDM ----------------------------------------------------------------------------------------


def _scldm_configs(preset: str):
    from scldm.config import DiffusionStageConfig, EncoderStageConfig, load_config

    enc = load_config(EncoderStageConfig, preset, stage="pretrain")
    return enc, load_config(DiffusionStageConfig, preset, stage="train")


def _scldm_shapes(enc, cfg) -> tuple[tuple[int, ...], tuple[int, int], dict]:
    """Latent (C, h, w) of the face encoder, tokens (N, D) of the speech encoder on the front
    end's whole segment (what stage 2 caches), and the UNet's kwargs on that latent, as stage 2
    builds it; read from networks on the meta device."""
    from scldm.audio import SpectrogramFrontend
    from scldm.config import component_kwargs
    from scldm.models import FaceEncoder, SpeechEncoder
    from scldm.models.face_encoder import FACE_ENCODER_PRESETS
    from scldm.models.speech_encoder import SPEECH_ENCODER_PRESETS
    from scldm.training.diffusion import unet_config_for

    with torch.device("meta"):
        face = FaceEncoder(**component_kwargs(enc.face_encoder, FACE_ENCODER_PRESETS, "face"))
        speech = SpeechEncoder(
            **component_kwargs(enc.speech_encoder, SPEECH_ENCODER_PRESETS, "speech")
        )
    frames = SpectrogramFrontend(**enc.frontend).num_frames
    c, side = face.config.latent_channels, enc.data.image_size // face.downsampling
    unet = unet_config_for(cfg.unet, (c, side, side))
    return (c, side, side), (speech.num_tokens(frames), speech.config.token_dim), unet


def scldm_stage1(preset: str, batch: int, device: torch.device, bf16: bool, optimize: bool):
    """Stage 1 as `scldm pretrain` steps: the cropped audio through the front end and speech
    encoder, the faces through the face encoder, the decoder on ceil(recon_fraction · B) of
    them, the contrastive + reconstruction loss (+ LPIPS, + the PatchGAN's terms and its own
    update where the preset turns them on, the PatchGAN past its start_step)."""
    from scldm.losses import encoder_stage_loss
    from scldm.training.adversarial import Adversary
    from scldm.training.encoders import build_model, make_optimizer

    cfg, _ = _scldm_configs(preset)
    with device:
        frontend, model = build_model(cfg)
        model = model.to(memory_format=torch.channels_last)  # as training does
    seconds = cfg.train_crop_seconds or frontend.config.segment_seconds
    wave = torch.randn(batch, round(seconds * frontend.config.sample_rate), device=device) * 0.1
    size = cfg.data.image_size
    face = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    decoded = max(1, math.ceil(cfg.recon_fraction * batch))
    labels = {"speaker": torch.arange(batch, device=device), "face": face}
    networks = {"model": model}
    perceptual = adversary = None
    if cfg.loss_weights.get("loss/lpips", 0.0):
        from scldm.models.perceptual import LPIPS

        # random backbone: the FLOPs of the published one (its weights are the user's file)
        perceptual = LPIPS(random_backbone=True).to(device).eval().requires_grad_(False)
        networks["lpips"] = perceptual
    if cfg.adversarial.enabled:
        adversary = Adversary(cfg.adversarial, None, model.face_decoder.conv_out.weight)
        networks["discriminator"] = adversary.disc
    optimizers = [make_optimizer(model, cfg)] if optimize else []
    amp = functools.partial(_autocast, device, bf16)

    def step() -> None:
        with amp():
            outputs = model(frontend(wave), face, num_reconstructed=decoded)
            loss, _ = encoder_stage_loss(
                outputs,
                labels,
                cfg.loss_weights,
                perceptual=perceptual,
                adversarial=adversary.generator_terms if adversary else None,
            )
        _update(loss, optimizers, cfg.optim.grad_clip)
        if adversary is not None:
            with amp():
                adversary.discriminator_step(
                    face[:decoded], outputs["reconstruction"], 1.0, cfg.optim.grad_clip
                )

    spec = frontend(wave[:1])
    extras = "".join(
        f" + {name}" for name, on in (("LPIPS", perceptual), ("PatchGAN", adversary)) if on
    )
    shapes = (
        f"spectrogram {_shape(spec)} ({seconds:g} s), face 3×{size}×{size}, decoder on "
        f"{cfg.recon_fraction:.0%} of the faces{extras}"
    )
    return Workload(step, networks, shapes)


def scldm_stage2(preset: str, batch: int, device: torch.device, bf16: bool, optimize: bool):
    """Stage 2 as `scldm train` steps: `diffusion_loss` of the UNet on cached latents and speech
    tokens (prior shift λ_train, condition dropout), backward, clipping, fused AdamW."""
    from diffusers import DDPMScheduler

    from scldm.diffusion.objective import diffusion_loss
    from scldm.diffusion.unet import build_unet

    enc, cfg = _scldm_configs(preset)
    latent_shape, tokens_shape, unet_kwargs = _scldm_shapes(enc, cfg)
    with device:
        unet = build_unet(unet_kwargs).train()
    z0 = torch.randn(batch, *latent_shape, device=device)
    tokens = torch.randn(batch, *tokens_shape, device=device)
    prior = torch.zeros(latent_shape, device=device)
    noise_scheduler = DDPMScheduler(**cfg.scheduler)
    optimizers = _adamw(optimize, unet, fused=True)

    def step() -> None:
        with _autocast(device, bf16):
            loss, _ = diffusion_loss(
                unet,
                noise_scheduler,
                z0,
                tokens,
                prior=prior,
                prior_scale=cfg.lambda_train,
                cond_drop=cfg.cond_drop,
            )
        _update(loss, optimizers, cfg.optim.grad_clip)

    shapes = f"latent {_shape(latent_shape)}, tokens {_shape(tokens_shape)}"
    return Workload(step, {"unet": unet}, shapes)


def scldm_sample(preset: str, batch: int, device: torch.device, bf16: bool, optimize: bool):
    """Sampling as `SpeechToFacePipeline` with the preset's saved defaults: the front end and
    speech encoder once, `num_inference_steps` UNet calls (on 2B rows with classifier-free
    guidance), the face decoder once. No file reading."""
    from diffusers import DDPMScheduler

    from scldm.audio import SpectrogramFrontend
    from scldm.config import component_kwargs
    from scldm.diffusion.sampling import make_scheduler, sample_latents
    from scldm.diffusion.unet import build_unet
    from scldm.models import FaceDecoder, SpeechEncoder
    from scldm.models.face_decoder import FACE_DECODER_PRESETS
    from scldm.models.speech_encoder import SPEECH_ENCODER_PRESETS

    enc, cfg = _scldm_configs(preset)
    latent_shape, tokens_shape, unet_kwargs = _scldm_shapes(enc, cfg)
    with device:
        frontend = SpectrogramFrontend(**enc.frontend)
        speech_encoder = SpeechEncoder(
            **component_kwargs(enc.speech_encoder, SPEECH_ENCODER_PRESETS, "speech")
        ).eval()
        unet = build_unet(unet_kwargs).eval()
        face_decoder = FaceDecoder(
            **component_kwargs(enc.face_decoder, FACE_DECODER_PRESETS, "decoder")
        ).eval()
    nets = {"speech_encoder": speech_encoder, "unet": unet, "face_decoder": face_decoder}
    s = cfg.sampling
    scheduler = make_scheduler(s.scheduler, DDPMScheduler(**cfg.scheduler).config)
    rows = 2 * batch if s.guidance_scale != 1 else batch  # the UNet's batch per step
    wave = torch.randn(batch, frontend.segment_samples, device=device) * 0.1
    prior = torch.zeros(latent_shape, device=device)
    amp = functools.partial(_autocast, device, bf16)

    @torch.no_grad()
    def encode() -> torch.Tensor:
        with amp():
            return speech_encoder(frontend(wave)).tokens  # (B, N, D)

    z = torch.randn(rows, *latent_shape, device=device)
    context = torch.randn(rows, *tokens_shape, device=device)

    @torch.no_grad()
    def denoise() -> None:  # one of the loop's UNet calls
        with amp():
            unet(z, 999, encoder_hidden_states=context, return_dict=False)

    @torch.no_grad()
    def decode() -> None:
        with amp():
            face_decoder(z[:batch])

    @torch.no_grad()
    def step() -> torch.Tensor:
        with amp():
            latents = sample_latents(
                unet,
                scheduler,
                encode(),
                prior=prior,
                prior_scale=s.prior_scale,
                num_inference_steps=s.num_inference_steps,
                guidance_scale=s.guidance_scale,
                temperature=s.temperature,
                latent_shape=latent_shape,
            )
            return face_decoder(latents / face_decoder.config.scaling_factor)

    shapes = (
        f"audio {frontend.config.segment_seconds:g} s, latent {_shape(latent_shape)}; "
        f"{s.scheduler} {s.num_inference_steps} steps × {rows // batch} (guidance "
        f"{s.guidance_scale:g})"
    )
    parts = [(1, encode), (s.num_inference_steps, denoise), (1, decode)]
    return Workload(step, nets, shapes, parts)


# --- Speech2Face ----------------------------------------------------------------------------------


def _s2f(preset: str, device: torch.device):
    from scldm.audio import SpectrogramFrontend
    from scldm.config import Speech2FaceConfig, load_config
    from scldm.training.speech2face import build_networks

    cfg = load_config(Speech2FaceConfig, preset, stage="baselines/speech2face")
    with device:
        teacher, decoder, voice = build_networks(cfg, NUM_SPEAKERS)
        frontend = SpectrogramFrontend(**cfg.frontend)
    return cfg, frontend, teacher, decoder, voice


def s2f_teacher(preset: str, batch: int, device: torch.device, bf16: bool, optimize: bool):
    """Phase 1 in identity mode: the VGG teacher as an identity classifier (cross-entropy); the
    random flips cost no FLOPs and are left out. Raises LookupError where the preset uses
    VGGFace, which is frozen and has no phase."""
    cfg, _, teacher, _, _ = _s2f(preset, device)
    if cfg.teacher.mode != "identity":
        raise LookupError(f"the {preset} preset's teacher is VGGFace, frozen: no phase 1")
    size = cfg.data.image_size
    face = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    speaker = torch.arange(batch, device=device)
    optimizers = _adamw(optimize, teacher)

    def step() -> None:
        with _autocast(device, bf16):
            _, logits = teacher(face)
            loss = F.cross_entropy(logits, speaker)
        _update(loss, optimizers)

    return Workload(step, {"teacher": teacher}, f"face 3×{size}×{size}")


def s2f_decoder(preset: str, batch: int, device: torch.device, bf16: bool, optimize: bool):
    """Phase 2: the Cole decoder on the frozen teacher's fc7, L1 + (1 − cos) of the teacher's
    fc7 of the decoded face (the teacher's backward reaches the decoder)."""
    cfg, _, teacher, decoder, _ = _s2f(preset, device)
    teacher.eval().requires_grad_(False)
    size = cfg.data.image_size
    face = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    optimizers = _adamw(optimize, decoder)

    def step() -> None:
        with _autocast(device, bf16):
            with torch.no_grad():
                target = teacher.embed(face)
            decoded = decoder(target)
            l1 = (decoded - face).abs().mean()
            cos = F.cosine_similarity(teacher.embed(decoded), target, dim=1).mean()
            loss = l1 + cfg.decoder.feature_weight * (1 - cos)
        _update(loss, optimizers)

    networks = {"teacher": teacher, "decoder": decoder}
    return Workload(step, networks, f"face 3×{size}×{size}, fc7 {teacher.config.fc_dims[1]}")


def s2f_voice(preset: str, batch: int, device: torch.device, bf16: bool, optimize: bool):
    """Phase 3, the method: the voice encoder on Eq. 1 through the frozen decoder's f_dec and
    the teacher's fc8 (the faces' fc7 are computed once per run, not per step)."""
    from scldm.losses import s2f_loss

    cfg, frontend, teacher, decoder, voice = _s2f(preset, device)
    teacher.eval().requires_grad_(False)
    decoder.eval().requires_grad_(False)
    seconds = cfg.train_crop_seconds or frontend.config.segment_seconds
    wave = torch.randn(batch, round(seconds * frontend.config.sample_rate), device=device) * 0.1
    v_face = torch.rand(batch, teacher.config.fc_dims[1], device=device)
    optimizers = _adamw(optimize, voice)

    def step() -> None:
        with _autocast(device, bf16):
            v_voice = voice(frontend(wave))
            with torch.no_grad():
                dec_face, logits_face = decoder.hidden(v_face), teacher.classify(v_face)
            loss, _ = s2f_loss(
                dec_face,
                decoder.hidden(v_voice),
                v_face,
                v_voice,
                logits_face,
                teacher.classify(v_voice),
                weights=cfg.loss_weights,
                temperature=cfg.temperature,
            )
        _update(loss, optimizers)

    networks = {"voice_encoder": voice, "f_dec": decoder.f_dec, "fc8": teacher.fc8}
    return Workload(step, networks, f"spectrogram {_shape(frontend(wave[:1]))} ({seconds:g} s)")


def s2f_generate(preset: str, batch: int, device: torch.device, bf16: bool, optimize: bool):
    """`Speech2FacePipeline`: front end → voice encoder → Cole decoder."""
    cfg, frontend, _, decoder, voice = _s2f(preset, device)
    voice.eval()
    decoder.eval()
    wave = torch.randn(batch, frontend.segment_samples, device=device) * 0.1

    @torch.no_grad()
    def step() -> torch.Tensor:
        with _autocast(device, bf16):
            return decoder(voice(frontend(wave)))

    shapes = f"spectrogram {_shape(frontend(wave[:1]))} → face 3×{decoder.image_size}²"
    return Workload(step, {"voice_encoder": voice, "decoder": decoder}, shapes)


# --- Wen et al. -----------------------------------------------------------------------------------


def _wen(preset: str, device: torch.device):
    from scldm.audio import FbankFrontend
    from scldm.config import WenConfig, load_config
    from scldm.training.wen import build_networks

    cfg = load_config(WenConfig, preset, stage="baselines/wen")
    with device:
        frontend = FbankFrontend(**cfg.frontend)
        nets = build_networks(cfg, frontend)
    return cfg, frontend, nets


def _wen_crops(cfg, frontend, batch: int, device: torch.device) -> torch.Tensor:
    """A step's filterbank crops (B, F, L) at the mean crop length (the loop draws one length
    in crop_frames per step, from precomputed filterbanks)."""
    length = sum(cfg.crop_frames) // 2
    return torch.randn(batch, frontend.config.num_filters, length, device=device)


def wen_voice(preset: str, batch: int, device: torch.device, bf16: bool, optimize: bool):
    """Phase 1: e as an additive-margin cosine speaker classifier (cross-entropy)."""
    from scldm.baselines.wen import SpeakerClassifier

    cfg, frontend, nets = _wen(preset, device)
    with device:
        classifier = SpeakerClassifier(
            nets["voice_encoder"], NUM_SPEAKERS, scale=cfg.voice_scale, margin=cfg.voice_margin
        )
    voice = _wen_crops(cfg, frontend, batch, device)
    speaker = torch.arange(batch, device=device)
    optimizers = _adamw(optimize, classifier)

    def step() -> None:
        with _autocast(device, bf16):
            loss = F.cross_entropy(classifier(voice, speaker), speaker)
        _update(loss, optimizers)

    return Workload(step, {"classifier": classifier}, f"filterbank {_shape(voice)}")


def wen_gan(preset: str, batch: int, device: torch.device, bf16: bool, optimize: bool):
    """Phase 2 as `train_gan` steps: the frozen e's noisy unit embedding → G; f, d, c update on
    real and detached fake faces (`WenGan.d_loss`), then G through the frozen f, d, c
    (`WenGan.g_loss`)."""
    from scldm.baselines.wen import heads
    from scldm.training.wen import WenGan

    cfg, frontend, nets = _wen(preset, device)
    with device:
        d, c = heads(nets["face_embedding"].config.embedding_dim, NUM_SPEAKERS)
    e, g = nets["voice_encoder"].eval().requires_grad_(False), nets["generator"]
    d_nets = {"face_embedding": nets["face_embedding"], "discriminator": d, "classifier": c}
    voice = _wen_crops(cfg, frontend, batch, device)
    size = g.image_size
    labels = {"speaker": torch.arange(batch, device=device)}
    real = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    gan = WenGan(cfg, None, None)  # its losses read only the networks and the batch
    d_opt, g_opt = _adamw(optimize, *d_nets.values()), _adamw(optimize, g)
    amp = functools.partial(_autocast, device, bf16)

    def step() -> None:
        with amp():
            with torch.no_grad():
                embedding = e.embed(voice)
            noise = torch.randn_like(embedding)
            embedding = F.normalize(embedding + cfg.embedding_noise * noise, dim=1)
            fake = {"fake": g(embedding), "face": real}
            d_loss, _ = gan.d_loss(d_nets, labels, {k: v.detach() for k, v in fake.items()}, None)
        _update(d_loss, d_opt)
        for m in d_nets.values():
            m.requires_grad_(False)
        with amp():
            g_loss, _ = gan.g_loss(d_nets, labels, fake, None)
        _update(g_loss, g_opt)
        for m in d_nets.values():
            m.requires_grad_(True)

    networks = {"voice_encoder": e, "generator": g, **d_nets}
    return Workload(step, networks, f"filterbank {_shape(voice)}, face 3×{size}×{size}")


def wen_generate(preset: str, batch: int, device: torch.device, bf16: bool, optimize: bool):
    """`WenPipeline`: the filterbank of the whole (looped) segment → e → G (no VAD, no files)."""
    cfg, frontend, nets = _wen(preset, device)
    e, g = nets["voice_encoder"].eval(), nets["generator"].eval()
    wave = torch.randn(batch, frontend.segment_samples, device=device) * 0.1

    @torch.no_grad()
    def step() -> torch.Tensor:
        with _autocast(device, bf16):
            return g(e.embed(frontend(wave))).clamp(-1, 1)

    shapes = f"filterbank {_shape(frontend(wave[:1]))} → face 3×{g.image_size}²"
    return Workload(step, {"voice_encoder": e, "generator": g}, shapes)


# --- Wav2Pix --------------------------------------------------------------------------------------


def _wav2pix(preset: str, device: torch.device):
    from scldm.config import Wav2PixConfig, load_config
    from scldm.training.wav2pix import build_networks, make_frontend

    cfg = load_config(Wav2PixConfig, preset, stage="baselines/wav2pix")
    with device:
        frontend = make_frontend(cfg)
        nets = build_networks(cfg, frontend)
    return cfg, frontend, nets


def wav2pix_gan(preset: str, batch: int, device: torch.device, bf16: bool, optimize: bool):
    """The GAN phase as `train_gan` steps: the generating side (speech encoder, auxiliary
    classifier, G) once; D on (real, fake, mismatched) pairs (`Wav2PixGan.d_loss`); then the
    generating side through the frozen D (`Wav2PixGan.g_loss`)."""
    from scldm.baselines.wav2pix import AuxiliaryClassifier
    from scldm.training.wav2pix import GeneratingSide, Wav2PixGan

    cfg, frontend, nets = _wav2pix(preset, device)
    encoder, disc = nets["speech_encoder"], nets["discriminator"]
    with device:
        aux = AuxiliaryClassifier(encoder.config.embedding_dim, NUM_SPEAKERS, cfg.classifier_hidden)
        side = GeneratingSide(encoder, aux, nets["generator"])
    wave = torch.randn(batch, frontend.num_samples, device=device) * 0.1
    size = nets["generator"].image_size
    real = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    labels = {"speaker": torch.arange(batch, device=device)}
    gan = Wav2PixGan(cfg, frontend, None)  # its losses read only the networks and the batch
    d_opt, g_opt = _adamw(optimize, disc), _adamw(optimize, side)
    amp = functools.partial(_autocast, device, bf16)

    def step() -> None:
        with amp():
            fake_face, z, logits = side(frontend(wave))  # dropout from the global RNG
            fake = {"fake": fake_face, "z": z, "logits": logits, "face": real}
            detached = {k: v.detach() for k, v in fake.items()}
            d_loss, _ = gan.d_loss({"discriminator": disc}, labels, detached, None)
        _update(d_loss, d_opt)
        disc.requires_grad_(False)
        with amp():
            g_loss, _ = gan.g_loss({"discriminator": disc, "generating": side}, labels, fake, None)
        _update(g_loss, g_opt)
        disc.requires_grad_(True)

    shapes = f"waveform {wave.shape[1]} samples, face 3×{size}×{size}"
    return Workload(step, {"generating": side, "discriminator": disc}, shapes)


def wav2pix_generate(preset: str, batch: int, device: torch.device, bf16: bool, optimize: bool):
    """`Wav2PixPipeline`: the centre second → speech encoder → G, with per-image dropout masks
    drawn on the CPU as the pipeline draws them (when the preset keeps dropout on)."""
    from scldm.baselines.pipeline import image_generators

    cfg, frontend, nets = _wav2pix(preset, device)
    encoder, g = nets["speech_encoder"].eval(), nets["generator"].eval()
    wave = torch.randn(batch, frontend.num_samples, device=device) * 0.1

    @torch.no_grad()
    def step() -> torch.Tensor:
        masks = image_generators(None, batch) if cfg.dropout_at_inference else None
        with _autocast(device, bf16):
            return g(encoder(frontend(wave)), masks)

    shapes = f"waveform {wave.shape[1]} samples → face 3×{g.image_size}²"
    return Workload(step, {"speech_encoder": encoder, "generator": g}, shapes)


STAGES: dict[str, Stage] = {
    "scldm/stage1": Stage("SCLDM stage 1 step", True, scldm_stage1),
    "scldm/stage2": Stage("SCLDM stage 2 UNet step", True, scldm_stage2),
    "scldm/sample": Stage("SCLDM sample a face", False, scldm_sample),
    "speech2face/teacher": Stage("Speech2Face teacher step", True, s2f_teacher),
    "speech2face/decoder": Stage("Speech2Face decoder step", True, s2f_decoder),
    "speech2face/voice": Stage("Speech2Face voice-encoder step", True, s2f_voice),
    "speech2face/generate": Stage("Speech2Face generate a face", False, s2f_generate),
    "wen/voice": Stage("Wen et al. voice-encoder step", True, wen_voice),
    "wen/gan": Stage("Wen et al. GAN step", True, wen_gan),
    "wen/generate": Stage("Wen et al. generate a face", False, wen_generate),
    "wav2pix/gan": Stage("Wav2Pix GAN step", True, wav2pix_gan),
    "wav2pix/generate": Stage("Wav2Pix generate a face", False, wav2pix_generate),
}


def build(
    stage: str,
    preset: str,
    *,
    batch: int,
    device: str | torch.device = "meta",
    bf16: bool = False,
    optimize: bool = False,
) -> Workload:
    """`stage` (a STAGES key) of `preset` at `batch` on `device`, random weights and inputs.
    `optimize` adds the optimizer updates of training (AdamW as each stage uses it; no EMA)."""
    return STAGES[stage].build(preset, batch, torch.device(device), bf16, optimize)
