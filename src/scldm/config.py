"""Run configuration: frozen dataclasses, strict YAML presets and typed `--set a.b=c` overrides.

Only what exists for a run lives here (paths, optimiser, steps, logging). What ships inside a
saved model (front end, encoders, UNet, scheduler) is configured by that component's own
keyword-only `__init__`, carried here as a plain mapping and checked when it is constructed.
"""

from __future__ import annotations

import ast
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from scldm.errors import InputError
from scldm.io import write_text

PRESET_DIR = Path(__file__).parent / "configs"
C = TypeVar("C")


# --- Run dataclasses -------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """Which prepared dataset to read and how faces are sized."""

    root: str = "data/synthvox"
    image_size: int = 64
    num_workers: int = 0
    # stage 1: decode every clip once and train from RAM (SpeechFaceDataset.load_into_memory),
    # for small sets on few cores, where decoding files every step takes CPU time from the step
    # itself (stage 2 always trains from its latent cache)
    in_memory: bool = False


@dataclass(frozen=True)
class AugmentConfig:
    """Sim-to-real augmentation of the training audio (`scldm.audio.augmentation`): SynthVox
    renders clean voices at -23 dBFS, users record with real rooms, microphones, phones and codecs.
    Each `*_p` is the probability that a clip gets that effect, drawn per clip and per effect
    independently; each range is (low, high), drawn uniformly per clip. All p 0: no
    augmentation. The effects run in the order of a real recording: room (reverb, noise), then
    capture (gain, clipping), then channel (8 kHz recording, telephone band, codec).

    noise: background noise at an SNR in dB relative to the clip's power, of a kind drawn
    among `noise_kinds` (white, pink, brown: coloured noise; babble: 3-5 other clips of the
    batch at random offsets). reverb: a synthetic room impulse response with an RT60 in
    seconds and a direct-to-reverberant ratio in dB, the output at the input's level.
    narrowband: resampled to 8 kHz and back, as a recording made at 8 kHz (IVR prompts, many
    older recordings): nothing above 4 kHz, the fundamental kept. telephone: 8 kHz, 300-3400 Hz,
    8-bit μ-law (G.711). codec: a round trip through one of `codecs` at a libsndfile
    `compression_level` (0 best, 1 smallest; at 16 kHz 0.5-0.99 is about 15-30 kb/s). gain: a
    level change in dB, clipped to [-1, 1] (loud recordings clip).
    """

    # the effects' probabilities, in the chain's order
    PROBABILITIES: typing.ClassVar[tuple[str, ...]] = (
        "reverb_p",
        "noise_p",
        "gain_p",
        "narrowband_p",
        "telephone_p",
        "codec_p",
    )

    noise_p: float = 0.0
    snr_db: tuple[float, float] = (0.0, 30.0)
    noise_kinds: tuple[Literal["white", "pink", "brown", "babble"], ...] = (
        "white",
        "pink",
        "brown",
        "babble",
    )
    reverb_p: float = 0.0
    rt60: tuple[float, float] = (0.2, 1.0)
    drr_db: tuple[float, float] = (0.0, 15.0)
    narrowband_p: float = 0.0
    telephone_p: float = 0.0
    codec_p: float = 0.0
    codecs: tuple[Literal["mp3", "vorbis"], ...] = ("mp3", "vorbis")
    compression_level: tuple[float, float] = (0.5, 0.99)
    gain_p: float = 0.0
    gain_db: tuple[float, float] = (-25.0, 10.0)

    def __post_init__(self) -> None:
        for name in self.PROBABILITIES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(None, f"augment.{name}: expected a probability in [0, 1]")
        for name in ("snr_db", "rt60", "drr_db", "compression_level", "gain_db"):
            low, high = getattr(self, name)
            if low > high:
                raise InputError(None, f"augment.{name}: expected (low, high), low <= high")
        # libsndfile's MP3 encoder refuses compression_level 1
        if self.rt60[0] <= 0 or self.compression_level[0] < 0 or self.compression_level[1] >= 1:
            raise InputError(None, "augment: rt60 > 0 s and compression_level in [0, 1)")
        if not self.noise_kinds or not self.codecs:
            raise InputError(None, "augment: noise_kinds and codecs need at least one entry")

    @property
    def enabled(self) -> bool:
        return any(getattr(self, name) > 0 for name in self.PROBABILITIES)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup then cosine decay to `min_lr_ratio`·lr (see `lr_at`); with
    weight_decay 0 it is Adam. grad_clip 0: no clipping (the baselines' originals clip none)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """Loop length, batch, precision and the cadence of logging, validation and checkpoints."""

    output_dir: str = "runs/run"
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 32
    grad_accum_steps: int = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    log_every: int = 10
    eval_every: int = 200
    save_every: int = 500
    keep_last: int = 2
    ema_decay: float = 0.999
    # steps whose loss is NaN or infinite to skip (no update) before the run stops; 0: stop at
    # the first (scldm.training.guard)
    skip_nonfinite: int = 0
    # an accelerate tracker ("tensorboard", "wandb", ...; installed separately); scalars always
    # go to RUN/scalars.jsonl
    log_with: str | None = None


@dataclass(frozen=True)
class EvalConfig:
    """Validation during training: speech→face retrieval in pools of speakers, reconstructions."""

    split: str = "val"
    pool_size: int = 100
    max_clips: int = 1000
    grid_size: int = 8


# the samplers `scldm.diffusion.sampling.make_scheduler` knows, by name (here so the CLI can
# list them without importing diffusers, and a config naming another is refused when loaded)
Sampler = Literal["ddpm", "ddim", "dpm++", "unipc"]
SAMPLER_NAMES: tuple[str, ...] = typing.get_args(Sampler)


# the noise schedule of LDM / Stable Diffusion (diffusers `DDPMScheduler` kwargs), ε-prediction:
# stage 2's `scheduler` section updates it, key by key, and samplers start from it
NOISE_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "prediction_type": "epsilon",
}
# what stage 2's UNet may be trained to predict (`scheduler.prediction_type`): diffusers' names,
# which its samplers read back
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class SamplingConfig:
    """How a pipeline samples faces by default: saved inside the pipeline folder (stage 2 writes
    its `sampling` section there) and read by `SpeechToFacePipeline.__call__`, `scldm generate`,
    `scldm evaluate` and the ablation, each of which can override any field. The defaults were
    chosen on SynthVox's validation voices (docs/results.md)."""

    scheduler: Sampler = "dpm++"
    num_inference_steps: int = 25
    guidance_scale: float = 6.0  # classifier-free guidance g; 1 = one conditional pass
    temperature: float = 0.8  # τ: the starting noise's scale around the prior mean
    prior_scale: float = 0.01  # λ_infer: μ = λ·P at inference (paper eq. 4-6)


WHOLE_FACE = (0.0, 0.0, 1.0, 1.0)


def check_face_box(box: tuple[float, float, float, float], where: str) -> None:
    """Refuse, in one line, a box that is not (top, left, bottom, right) fractions of a face."""
    top, left, bottom, right = box
    if not (0.0 <= top < bottom <= 1.0 and 0.0 <= left < right <= 1.0):
        raise InputError(
            None,
            f"{where}: expected (top, left, bottom, right) "
            "fractions of the face, 0 <= top < bottom <= 1, 0 <= left < right <= 1",
        )


@dataclass(frozen=True)
class AdversarialConfig:
    """Stage 1's PatchGAN on the face autoencoder's reconstructions (VQGAN's recipe, as latent
    diffusion trains its autoencoder): the autoencoder adds `weight` · w · L_adv, w the adaptive
    weight that matches the adversarial gradient at the decoder's last layer to the
    reconstruction one, plus `feature_matching` · the discriminator-feature distance (a
    perceptual term learned on the training faces). Both start at `start_step`, when the
    discriminator starts training too; before it the reconstructions learn their coarse layout
    from the pixel losses alone. weight 0 and feature_matching 0: no discriminator.
    `sees`: "rgb", or "luma" for a discriminator shown only the faces' luminance, so that
    colour noise earns the decoder nothing and colour is left to the pixel loss. `box`: the part
    of the aligned face it is shown, (top, left, bottom, right) fractions (e.g. the eye band),
    enlarged by whole pixels to at least 32 px high; the default is the whole face."""

    weight: float = 0.0
    feature_matching: float = 0.0
    start_step: int = 0
    sees: Literal["rgb", "luma"] = "rgb"
    discriminator: Mapping[str, Any] = field(default_factory=lambda: {"preset": "small"})
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.9)  # VQGAN's, for both players
    box: tuple[float, float, float, float] = WHOLE_FACE

    def __post_init__(self) -> None:
        check_face_box(self.box, "adversarial.box")

    @property
    def enabled(self) -> bool:
        return self.weight > 0 or self.feature_matching > 0


@dataclass(frozen=True)
class ReconRegionConfig:
    """A box of the aligned face that a reconstruction loss weighs `weight` times the rest
    (stage 1's L_rec, or stage 2's decoder refinement's; the pixel weights are scaled to mean 1,
    so the loss keeps its size).
    `box`: (top, left, bottom, right) as fractions of the face's height and width. Weight 1:
    every pixel alike, as the paper."""

    box: tuple[float, float, float, float] = WHOLE_FACE
    weight: float = 1.0

    def __post_init__(self) -> None:
        check_face_box(self.box, "recon_region.box")
        if not self.weight > 0:
            raise InputError(None, f"recon_region.weight: expected > 0, got {self.weight:g}")


@dataclass(frozen=True)
class DecoderRefineConfig:
    """Stage 2's refinement of the stage-1 face decoder on the frozen encoder's latents of the
    training faces (AdamW, warmup then cosine to 0), before the UNet trains. 0 steps: the
    stage-1 decoder as it is. The encoders, the latents and so the cache and prior are untouched.
    `loss`: "l1" (the paper's MAE) or "mse", which draws more of the fine detail (glasses, skin
    tone, beard) from the same latents (docs/notes/2026-12-01-mse-refinement.md). `adversarial`:
    a PatchGAN against the refined reconstructions, as in stage 1 (its `start_step` counts
    refinement steps). `precision`: "bf16" autocasts the decoder's forward and backward to
    bfloat16 (weights and optimiser stay float32), "no" keeps float32, "auto" takes bf16 where
    the device runs it natively (a GPU, or a CPU with AVX-512 BF16 or AMX) and float32
    elsewhere (the speed of each: benchmarks/results/decoder_refine_cpu.md). `model`: None
    (`null` in YAML, which also clears one a preset extends) refines stage 1's decoder;
    otherwise a new decoder is trained from scratch on the latents instead, of stage 1's
    architecture with these constructor keys replaced (`preset: NAME` names a
    FACE_DECODER_PRESETS entry, e.g. `small_h4_wide`; the latent channels, face size and number
    of upsamplings stay stage 1's). `recon_region`: a box of the face whose pixel errors weigh
    more, as stage 1's option of that name (weight 1, the default: every pixel alike).
    `anchor`: with a discriminator shown only a box of the face (`adversarial.box`), the weight
    of an L1 term that holds the decoder's output outside that box to the output of the decoder
    as it was when the discriminator started (a frozen copy), so that what the discriminator asks
    of the box is not drawn elsewhere by the decoder's shared filters (0: no anchor)."""

    steps: int = 0
    lr: float = 1e-3
    batch_size: int = 64
    loss: Literal["l1", "mse"] = "l1"
    precision: Literal["auto", "no", "bf16"] = "auto"
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    model: Mapping[str, Any] | None = None
    recon_region: ReconRegionConfig = field(default_factory=ReconRegionConfig)
    anchor: float = 0.0

    def __post_init__(self) -> None:
        if self.anchor < 0:
            raise InputError(None, f"decoder.anchor: expected ≥ 0, got {self.anchor:g}")
        start = self.adversarial.start_step
        if self.steps > 0 and self.adversarial.enabled and start >= self.steps:
            raise InputError(
                None,
                f"decoder.adversarial.start_step: {start} ≥ decoder.steps {self.steps}, so the "
                f"discriminator would never play; start it earlier (e.g. "
                f"decoder.adversarial.start_step={self.steps // 2}) or switch it off "
                "(decoder.adversarial.weight=0 decoder.adversarial.feature_matching=0)",
            )
        if self.anchor and (not self.adversarial.enabled or self.adversarial.box == WHOLE_FACE):
            raise InputError(
                None,
                "decoder.anchor: holds the face outside decoder.adversarial.box, so it needs a "
                "discriminator (adversarial.weight or feature_matching > 0) shown a box",
            )


@dataclass(frozen=True)
class EncoderStageConfig:
    """Stage 1: contrastive pre-training of the speech and face encoders and the face decoder.

    The component mappings are the constructors' keyword arguments (the single definition of
    each architecture); loss weights use the same keys as the logged losses.
    """

    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    frontend: Mapping[str, Any] = field(default_factory=dict)
    speech_encoder: Mapping[str, Any] = field(default_factory=dict)
    face_encoder: Mapping[str, Any] = field(default_factory=dict)
    face_decoder: Mapping[str, Any] = field(default_factory=dict)
    speech_lr: float = 1e-3  # paper: 1e-3 for the speech encoder
    face_lr: float = 1e-4  # paper: 1e-4 for the face encoder and decoder
    # the face autoencoder's own learning rate: the face encoder's layers up to the latent and
    # the decoder; face_lr then drives only the layers from the latent to the embedding.
    # None: face_lr for the whole face side, as the paper
    autoencoder_lr: float | None = None
    # train on a random window of this many seconds of each clip's segment (None: the whole
    # segment). Validation, the probes, stage 2 and inference still see the front end's full
    # segment: the speech encoder averages over time, so it takes any length.
    train_crop_seconds: float | None = None
    # sim-to-real augmentation of the training windows (after the crop); validation, the probes,
    # stage 2's cache and inference hear the clips as they are
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # the face decoder reconstructs only the first ceil(fraction · B) faces of each training
    # batch, a random subset (batches are shuffled); the contrastive loss still sees all B. On
    # a CPU the decoder is most of a step, so a fraction buys steps. 1.0: every face (the paper)
    recon_fraction: float = 1.0
    # a box of the face the reconstruction loss weighs more (e.g. the eyes of aligned faces)
    recon_region: ReconRegionConfig = field(default_factory=ReconRegionConfig)
    loss_weights: Mapping[str, float] = field(
        default_factory=lambda: {"loss/contrastive": 1.0, "loss/mae": 1.0, "loss/lpips": 0.0}
    )
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    gather_negatives: bool = False
    vggface_weights: str | None = None
    lpips_weights: str | None = None
    # speech_encoder.type ge2e: the pretrained GE2E weights (Resemblyzer's pretrained.pt);
    # None: the file of the installed resemblyzer package
    ge2e_weights: str | None = None
    # speech_encoder.remove_real_direction: real speech's mean GE2E embedding (a JSON file from
    # `benchmarks/real_voices.py calibrate`); None: the one shipped with scldm
    ge2e_real_speech: str | None = None


@dataclass(frozen=True)
class DiffusionStageConfig:
    """Stage 2: the speech-conditioned latent diffusion model with the face prior (DESIGN §2).

    `unet` holds `UNet2DConditionModel` kwargs (`preset: NAME` picks an architecture preset);
    `scheduler` the training noise schedule: diffusers `DDPMScheduler` kwargs that update
    LDM's (`NOISE_SCHEDULE`), so `{prediction_type: v_prediction}` keeps its betas. μ = λ·P
    shifts the diffusion: `lambda_train` in training, `sampling.prior_scale` (λ_infer) saved
    with the pipeline as its default; λ = 0 is the plain LDM. `sampling` is the pipeline's
    sampling config, also used for the validation grids.
    """

    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    unet: Mapping[str, Any] = field(default_factory=lambda: {"preset": "small"})
    scheduler: Mapping[str, Any] = field(default_factory=lambda: dict(NOISE_SCHEDULE))
    lambda_train: float = 0.01  # paper: 0.01
    cond_drop: float = 0.1  # condition dropout for classifier-free guidance
    prior_faces: int = 10_000  # paper: 10,000 gender-balanced training faces
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    images_per_voice: int = 4  # generated faces per validation voice in the grids
    decoder: DecoderRefineConfig = field(default_factory=DecoderRefineConfig)

    def __post_init__(self) -> None:
        # a YAML `scheduler:` section replaces the default mapping; it is meant as an update
        object.__setattr__(self, "scheduler", {**NOISE_SCHEDULE, **self.scheduler})
        if self.scheduler["prediction_type"] not in PREDICTION_TYPES:
            known = ", ".join(PREDICTION_TYPES)
            kind = self.scheduler["prediction_type"]
            raise InputError(None, f"scheduler.prediction_type: {kind!r} is not one of {known}")


@dataclass(frozen=True)
class PhaseConfig:
    """One supervised phase of a baseline's training that precedes the method's own (its
    steps, batch and optimizer; logging and checkpoints follow the run's `train` section)."""

    steps: int = 600
    batch_size: int = 64
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-3, schedule="constant", grad_clip=0.0)
    )


@dataclass(frozen=True)
class Speech2FaceTeacherConfig(PhaseConfig):
    """Speech2Face's face teacher. `identity`: a VGG-16 (`model`, a preset of
    `scldm.baselines.speech2face.TEACHER_PRESETS`) trained as an identity classifier of the
    training faces, with random flips; `vggface`: VGGFace from `weights` (vgg_face_dag.pth),
    frozen, no training."""

    mode: Literal["identity", "vggface"] = "identity"
    model: Mapping[str, Any] = field(default_factory=lambda: {"preset": "small"})
    weights: str | None = None
    flip: bool = True


@dataclass(frozen=True)
class Speech2FaceDecoderConfig(PhaseConfig):
    """The Cole et al. face decoder, trained on (teacher fc7, face) with the teacher frozen:
    L1(x̂, x) + `feature_weight` · (1 − cos(fc7(x̂), fc7(x)))."""

    model: Mapping[str, Any] = field(default_factory=lambda: {"preset": "small"})
    feature_weight: float = 1.0


@dataclass(frozen=True)
class Speech2FaceConfig:
    """`scldm train-baseline speech2face`: the teacher, then the decoder, then the voice encoder
    (the method itself, `train` and `optim`: Eq. 1 against the frozen teacher and decoder)."""

    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=1e-3, betas=(0.5, 0.999), eps=1e-4, schedule="constant", grad_clip=0.0
        )
    )
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    frontend: Mapping[str, Any] = field(default_factory=dict)
    voice_encoder: Mapping[str, Any] = field(default_factory=lambda: {"preset": "small"})
    teacher: Speech2FaceTeacherConfig = field(default_factory=Speech2FaceTeacherConfig)
    decoder: Speech2FaceDecoderConfig = field(default_factory=Speech2FaceDecoderConfig)
    # Eq. 1: decoder-feature L1, normalised-feature L2, distillation at `temperature`
    loss_weights: Mapping[str, float] = field(
        default_factory=lambda: {"decoder_l1": 1.0, "feature_l2": 0.025, "distill": 200.0}
    )
    temperature: float = 2.0
    train_crop_seconds: float | None = None  # as EncoderStageConfig's


@dataclass(frozen=True)
class WenConfig:
    """`scldm train-baseline wen`: the voice encoder e pre-trained as a speaker classifier
    (`voice`), then frozen, then the GAN (`train` and `optim`: one Adam per network, the
    official 2e-4, β (0.5, 0.999), constant; all loss weights 1). `voice_encoder`, `generator`
    and `face_embedding` are the networks' constructor keywords (`preset: NAME` picks one of
    `scldm.baselines.wen`'s presets)."""

    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=2e-4, betas=(0.5, 0.999), schedule="constant", grad_clip=0.0
        )
    )
    train: TrainConfig = field(default_factory=lambda: TrainConfig(ema_decay=0.0))
    eval: EvalConfig = field(default_factory=EvalConfig)
    frontend: Mapping[str, Any] = field(default_factory=dict)
    voice_encoder: Mapping[str, Any] = field(default_factory=lambda: {"preset": "small"})
    generator: Mapping[str, Any] = field(default_factory=lambda: {"preset": "small"})
    face_embedding: Mapping[str, Any] = field(default_factory=lambda: {"preset": "small"})
    voice: PhaseConfig = field(
        default_factory=lambda: PhaseConfig(
            steps=500,
            batch_size=64,
            optim=OptimConfig(lr=1e-3, schedule="constant", grad_clip=0.0),
        )
    )
    # e's pre-training: an additive-margin cosine classifier (logits = scale · (cos − margin
    # for the true speaker)); see scldm.baselines.wen.SpeakerClassifier
    voice_scale: float = 30.0
    voice_margin: float = 0.2
    # training voices: a random crop of crop_frames[1] filterbank frames of each clip, then one
    # length in [crop_frames[0], crop_frames[1]] and one offset for the whole batch (official)
    crop_frames: tuple[int, int] = (300, 800)
    embedding_noise: float = 0.05  # σ of the noise added to the unit voice embedding in training
    flip: bool = True  # random horizontal flips of the real faces


@dataclass(frozen=True)
class Wav2PixConfig:
    """`scldm train-baseline wav2pix`: one two-player phase as the official trainer. `optim` is
    the generating side's Adam (speech encoder, generator and auxiliary classifier: the official
    1e-4, β (0.5, 0.999), constant), `optim_d` the discriminator's (4e-4). `speech_encoder`,
    `generator` and `discriminator` are the networks' constructor keywords (`preset: NAME` picks
    one of `scldm.baselines.wav2pix`'s presets)."""

    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=1e-4, betas=(0.5, 0.999), schedule="constant", grad_clip=0.0
        )
    )
    optim_d: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=4e-4, betas=(0.5, 0.999), schedule="constant", grad_clip=0.0
        )
    )
    train: TrainConfig = field(default_factory=lambda: TrainConfig(ema_decay=0.0))
    eval: EvalConfig = field(default_factory=EvalConfig)
    frontend: Mapping[str, Any] = field(default_factory=dict)
    speech_encoder: Mapping[str, Any] = field(default_factory=lambda: {"preset": "small"})
    generator: Mapping[str, Any] = field(default_factory=lambda: {"preset": "small"})
    discriminator: Mapping[str, Any] = field(default_factory=lambda: {"preset": "small"})
    classifier_hidden: int = 200  # the auxiliary classifier's hidden width
    # the official loss: D: (D(x, z) − real_label)² + D(G(z), z)² + D(x′, z)²; G: (D(G(z), z) −
    # 1)² + feature_weight · MSE of D's batch-mean features + l1_weight · |G(z) − x| +
    # class_weight · CE(aux(z), speaker)
    real_label: float = 0.9
    feature_weight: float = 100.0
    l1_weight: float = 50.0
    class_weight: float = 20.0
    # the official keeps the generator's dropout on at inference (faces vary with the seed)
    dropout_at_inference: bool = True


def component_kwargs(mapping: Mapping[str, Any], presets: Mapping[str, dict], what: str) -> dict:
    """Constructor kwargs from a config mapping: `preset: NAME` names an architecture preset of
    the model module; the other keys override its values."""
    kwargs = dict(mapping)
    name = kwargs.pop("preset", None)
    if name is None:
        return kwargs
    if name not in presets:
        raise InputError(None, f"{what}.preset: unknown {name!r}; known: {', '.join(presets)}")
    return {**presets[name], **kwargs}


# --- Loading ---------------------------------------------------------------------------------


def resolve_preset(stage: str, name_or_path: str | Path) -> Path:
    """A preset name (`tiny`, `small`, `base`) of `stage`, or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise InputError(path, "no such config file")
        return path
    preset = PRESET_DIR / stage / f"{name_or_path}.yaml"
    if not preset.is_file():
        known = sorted(p.stem for p in (PRESET_DIR / stage).glob("*.yaml"))
        raise InputError(
            None, f"unknown {stage} preset {str(name_or_path)!r}; known: {', '.join(known)}"
        )
    return preset


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting lists to tuples and ints to floats."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _coerce(value, option, where)
            except InputError:
                continue
        raise InputError(None, f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise InputError(None, f"{where}: expected null, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise InputError(
            None, f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}"
        )
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise InputError(
                None, f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}"
            )
        return _build(tp, value, where)
    if origin in (tuple, Sequence) or tp is tuple:
        if not isinstance(value, list | tuple):
            raise InputError(None, f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise InputError(None, f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(
                _coerce(v, a, f"{where}[{i}]")
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise InputError(None, f"{where}: expected a mapping, got {value!r}")
        return {str(k): _freeze(v) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and type(value) is tp:
        return value
    raise InputError(None, f"{where}: expected {_type_name(tp)}, got {value!r}")


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        return {str(k): _freeze(v) for k, v in value.items()}
    return value


def _build(cls: type[C], values: Mapping[str, Any], where: str) -> C:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        keys = ", ".join(f"{where}.{k}" if where else k for k in unknown)
        raise InputError(
            None, f"unknown key(s) {keys}; {cls.__name__} has: {', '.join(sorted(names))}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in values.items():
        factory = fields[k].default_factory
        if v is None and dataclasses.is_dataclass(hints[k]) and callable(factory):
            continue  # `null` on a section: its defaults, clearing what a preset it extends set
        if isinstance(v, Mapping) and dataclasses.is_dataclass(hints[k]) and callable(factory):
            # a partial section starts from the field's own default (e.g. Wen's Adam at 2e-4,
            # constant), not from the section class's defaults
            v = _merge(dataclasses.asdict(factory()), v)
        kwargs[k] = _coerce(v, hints[k], f"{where}.{k}" if where else k)
    return cls(**kwargs)


def _merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        nested = isinstance(v, Mapping) and isinstance(out.get(k), Mapping)
        out[k] = _merge(out[k], v) if nested else v
    return out


def _parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise InputError(None, f"--set expects key=value, got {text!r}")
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        value = raw.strip()  # a bare word such as a path or a name
    if raw.strip() in ("null", "None", "~"):
        value = None
    elif raw.strip() in ("true", "false"):
        value = raw.strip() == "true"
    return key.strip().split("."), value


def _set_path(tree: dict[str, Any], keys: list[str], value: Any, cls: type, text: str) -> None:
    node, node_cls = tree, cls
    for i, key in enumerate(keys):
        default: Any = None
        if node_cls is not None:  # inside dataclasses the key must be a field
            fields = {f.name: f for f in dataclasses.fields(node_cls)}
            if key not in fields:
                raise InputError(None, f"--set {text}: unknown key {'.'.join(keys[: i + 1])!r}")
            tp = typing.get_type_hints(node_cls)[key]
            if fields[key].default_factory is not dataclasses.MISSING:
                default = fields[key].default_factory()  # a mapping override merges into it
            node_cls = tp if dataclasses.is_dataclass(tp) else None
        if i == len(keys) - 1:
            node[key] = value
        else:
            child = node.get(key, default)
            node[key] = _to_plain(child) if isinstance(child, Mapping) else {}
            node = node[key]


MAX_EXTENDS = 8  # presets extending presets, at most this deep (a cycle is an error)


def _read_yaml(path: Path, stage: str | None, depth: int = 0) -> dict[str, Any]:
    """A config file's mapping; `extends: NAME` (a preset of the same stage, or a YAML path
    relative to this file) first loads that config, which this file's keys then update."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise InputError(path, "no such config file") from None
    except yaml.YAMLError as e:
        raise InputError(path, f"invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(path, "a config file must hold a mapping of keys")
    base = data.pop("extends", None)
    if base is None:
        return data
    if depth >= MAX_EXTENDS:
        raise InputError(path, f"extends more than {MAX_EXTENDS} configs deep (a cycle?)")
    if not isinstance(base, str):
        raise InputError(path, f"extends: expected a preset name or a YAML path, got {base!r}")
    if base.endswith((".yaml", ".yml")):
        base_path = path.parent / base
    elif stage:
        base_path = resolve_preset(stage, base)
    else:
        raise InputError(path, f"extends: {base!r} names a preset, but no stage was given")
    return _merge(_read_yaml(base_path, stage, depth + 1), data)


def load_config(
    cls: type[C],
    source: str | Path | Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    *,
    stage: str | None = None,
) -> C:
    """Build the run dataclass `cls` from a preset name, a YAML file or a mapping, then overrides.

    A file may start from another with `extends: NAME` (see `_read_yaml`). Unknown keys are
    errors that name the key; `--set a.b=c` values are parsed as Python literals (bare words
    are strings) and checked against the field's annotation.
    """
    where = None
    if source is None:
        data: dict[str, Any] = {}
    elif isinstance(source, Mapping):
        data = dict(source)
    else:
        path = resolve_preset(stage or "", source) if stage else Path(source)
        where = str(path)
        data = _read_yaml(path, stage)
    data = _to_plain(data)
    for text in overrides:
        keys, value = _parse_override(text)
        _set_path(data, keys, value, cls, text)
    try:
        return _build(cls, data, "")
    except InputError as e:
        raise InputError(where or None, e.problem) from None


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain YAML-able data (tuples become lists)."""
    return _to_plain(cfg)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically; `load_config` reads it back unchanged."""
    return write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def replace(cfg: C, **changes: Any) -> C:
    """`dataclasses.replace` re-exported for frozen configs."""
    return dataclasses.replace(cfg, **changes)


__all__ = [
    "DataConfig",
    "AugmentConfig",
    "OptimConfig",
    "TrainConfig",
    "EvalConfig",
    "AdversarialConfig",
    "EncoderStageConfig",
    "DiffusionStageConfig",
    "PhaseConfig",
    "Speech2FaceConfig",
    "WenConfig",
    "Wav2PixConfig",
    "load_config",
    "save_config",
    "config_to_dict",
    "resolve_preset",
]
