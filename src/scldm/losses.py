"""Pure loss functions: the CLIP contrastive loss, reconstruction terms and the stage-1 loss.

References: Radford et al., "Learning Transferable Visual Models From Natural Language
Supervision" (CLIP), ICML 2021, Fig. 3; open_clip's `ClipLoss` (`local_loss` with gathered
features); the SCLDM paper, eq. 1 (L = L_con + L_rec, L_rec = MAE + LPIPS); Esser et al.,
"Taming Transformers" (VQGAN), CVPR 2021, eq. 7 (the adaptive weight of the adversarial term)
and Lim & Ye, "Geometric GAN", 2017 (the hinge loss); Wang et al., pix2pixHD, CVPR 2018,
eq. 4 (feature matching).
Only torch and torch.distributed: no accelerate, no model classes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

LOSS_KEYS = ("loss/contrastive", "loss/mae", "loss/lpips")
# (reconstruction, target, weighted reconstruction loss) → (term to add, logs)
AdversarialTerms = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]
]


def _all_gather(*xs: torch.Tensor) -> tuple[list[torch.Tensor], int]:
    """Concatenate each x (B, ...) from every rank in rank order, keeping the gradient path,
    and return them with this rank's offset in the concatenation. Ranks may hold batches of
    different sizes (a clip left out as unreadable): rows are padded to the largest for the
    collective and the padding dropped after."""
    from torch.distributed.nn.functional import all_gather

    size = torch.tensor([len(xs[0])], device=xs[0].device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    counts = [int(n) for n in sizes]
    most = max(counts)
    out = []
    for x in xs:
        padded = F.pad(x, (0, 0) * (x.dim() - 1) + (0, most - len(x))) if len(x) < most else x
        parts = all_gather(padded)
        out.append(torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)], dim=0))
    return out, sum(counts[: dist.get_rank()])


def clip_loss(
    speech_emb: torch.Tensor,
    face_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    speaker_ids: torch.Tensor | None = None,
    gather: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Symmetric InfoNCE as in CLIP (Radford et al. 2021, Fig. 3).

    speech_emb, face_emb: (B, D) paired embeddings (normalised here); logit_scale: () log
    inverse temperature, logits = exp(logit_scale) · cos. With `speaker_ids` (B,), pairs of the
    same speaker other than the true pair are masked out of the softmax: they are not
    negatives. With `gather=True` and torch.distributed initialised, features of all ranks are
    gathered with gradient and the local rows are scored against all columns, labels
    arange(B) + the rows of the ranks before (open_clip's local loss); with equal batches the
    mean over ranks equals the loss of the whole global batch. Ranks may pass batches of
    different sizes (a clip left out as unreadable).

    Returns (loss, logs) with logs["accuracy"], the in-batch speech→face top-1 accuracy of the
    local rows, and logs["logit_scale"], exp(logit_scale); both detached.
    """
    speech = F.normalize(speech_emb, dim=-1)  # (B, D)
    face = F.normalize(face_emb, dim=-1)
    batch = speech.shape[0]
    labels = torch.arange(batch, device=speech.device)
    all_speech, all_face, all_ids = speech, face, speaker_ids
    if gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if speaker_ids is None:
            (all_speech, all_face), offset = _all_gather(speech, face)  # (ΣB, D)
        else:
            ids = speaker_ids.to(speech.device)
            (all_speech, all_face, all_ids), offset = _all_gather(speech, face, ids)
        labels = labels + offset
    scale = logit_scale.exp()
    logits_s2f = scale * speech @ all_face.T  # (B, W·B)
    logits_f2s = scale * face @ all_speech.T
    if speaker_ids is not None:
        speaker_ids = speaker_ids.to(speech.device)
        all_ids = all_ids.to(speech.device)
        same = speaker_ids[:, None] == all_ids[None, :]  # (B, W·B)
        same[torch.arange(batch, device=labels.device), labels] = False
        logits_s2f = logits_s2f.masked_fill(same, float("-inf"))
        logits_f2s = logits_f2s.masked_fill(same, float("-inf"))
    loss = (F.cross_entropy(logits_s2f, labels) + F.cross_entropy(logits_f2s, labels)) / 2
    accuracy = (logits_s2f.argmax(dim=-1) == labels).float().mean()
    return loss, {"accuracy": accuracy.detach(), "logit_scale": scale.detach()}


def box_mask(size: int, box: tuple[float, float, float, float]) -> torch.Tensor:
    """(size, size) float: 1 inside `box` (top, left, bottom, right, fractions of the face,
    rounded to whole pixels, as `Adversary.shown` crops it), 0 outside."""
    top, left, bottom, right = (round(f * size) for f in box)
    mask = torch.zeros(size, size)
    mask[top:bottom, left:right] = 1
    return mask


def region_weights(
    size: int, box: tuple[float, float, float, float], weight: float
) -> torch.Tensor:
    """Pixel weights (size, size) that weigh `box` (`box_mask`) `weight` times the rest,
    scaled to mean 1."""
    weights = torch.where(box_mask(size, box).bool(), weight, 1.0)
    return weights / weights.mean()


def reconstruction_loss(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    *,
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    pixel_weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """L_rec terms: faces (B, 3, H, W) in [-1, 1] → {"loss/mae": mean |x̂ − x|} and, when a
    perceptual metric (x̂, x) → (B,) such as `scldm.models.perceptual.LPIPS` is given,
    {"loss/lpips": its batch mean}. `pixel_weights` (H, W) of mean 1 (`region_weights`) weigh
    each pixel's absolute error in the MAE."""
    error = (reconstruction - target).abs()
    if pixel_weights is not None:
        error = error * pixel_weights.to(error)
    terms = {"loss/mae": error.mean()}
    if perceptual is not None:
        terms["loss/lpips"] = perceptual(reconstruction, target).mean()
    return terms


def encoder_stage_loss(
    outputs: Mapping[str, torch.Tensor],
    batch: Mapping[str, Any],
    weights: Mapping[str, float],
    *,
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    adversarial: AdversarialTerms | None = None,
    gather: bool = False,
    pixel_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stage-1 loss, SCLDM eq. 1: total = Σ_k weights[k] · logs[k] over LOSS_KEYS, plus the
    adversarial terms when `adversarial` is given.

    outputs: `SpeechFaceModel.forward`'s dict (its reconstruction may cover only the first R
    faces, then L_rec is their mean); batch: needs "face" (B, 3, H, W) and uses
    "speaker" (B,) to mask same-speaker negatives when present. weights: keyed like the logs
    ("loss/contrastive", "loss/mae", "loss/lpips"); a missing key weighs 0, and LPIPS is
    computed only when its weight is nonzero (then `perceptual` is required). `adversarial`:
    (reconstruction, target faces, weighted reconstruction loss with its graph) → (term added to
    the total, its logs), e.g. `scldm.training.adversarial.Adversary.generator_terms`.
    `pixel_weights`: (H, W) weights of the MAE's pixels (`region_weights`), None: uniform.

    Returns (loss, logs): logs holds "loss" and each term computed, plus "accuracy" and
    "logit_scale" from `clip_loss`, all 0-dim detached tensors (float() them to log; keeping
    them tensors avoids a device sync per step).
    """
    unknown = set(weights) - set(LOSS_KEYS)
    if unknown:
        raise ValueError(f"unknown loss weights {sorted(unknown)}; known: {LOSS_KEYS}")
    use_lpips = weights.get("loss/lpips", 0.0) != 0.0
    if use_lpips and perceptual is None:
        raise ValueError("loss/lpips has a nonzero weight but no perceptual module was given")
    contrastive, clip_logs = clip_loss(
        outputs["speech_embedding"],
        outputs["face_embedding"],
        outputs["logit_scale"],
        speaker_ids=batch.get("speaker"),
        gather=gather,
    )
    terms = {"loss/contrastive": contrastive}
    reconstruction = outputs["reconstruction"]  # of the first R ≤ B faces
    target = batch["face"][: len(reconstruction)]
    terms |= reconstruction_loss(
        reconstruction,
        target,
        perceptual=perceptual if use_lpips else None,
        pixel_weights=pixel_weights,
    )
    total = sum(weights.get(key, 0.0) * value for key, value in terms.items())
    extra_logs: dict[str, torch.Tensor] = {}
    if adversarial is not None:
        rec = sum(weights.get(k, 0.0) * v for k, v in terms.items() if k != "loss/contrastive")
        extra, extra_logs = adversarial(reconstruction, target, rec)
        total = total + extra
    logs = {"loss": total.detach()} | {k: v.detach() for k, v in terms.items()} | clip_logs
    logs |= extra_logs
    return total, logs


# --- The face autoencoder's adversarial terms (VQGAN's recipe) ---------------------------------


def hinge_discriminator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss on logit maps: mean relu(1 − D(x)) + mean relu(1 + D(x̂)),
    halved as in VQGAN so it reads 1 when the discriminator outputs 0 everywhere."""
    return (F.relu(1 - real).mean() + F.relu(1 + fake).mean()) / 2


def generator_adversarial_loss(fake: torch.Tensor) -> torch.Tensor:
    """The autoencoder's side of the hinge GAN: −mean D(x̂)."""
    return -fake.mean()


def bce_gan_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """The non-saturating GAN loss of one side: BCE(sigmoid(logits), 1 if real else 0), computed
    from the logits (Wen et al.: both players, real = True for the generator's fakes)."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


def lsgan_loss(scores: torch.Tensor, target: float) -> torch.Tensor:
    """The least-squares GAN loss of one side: mean (score − target)² (Wav2Pix: D's targets
    0.9 for real pairs and 0 for fakes and mismatched pairs, G's target 1)."""
    return (scores.float() - target).square().mean()


def batch_feature_matching_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Salimans et al.'s feature matching, as Wav2Pix uses it: the mean squared difference
    between the batch means of D's features for fakes and for real faces (pass `real`
    detached)."""
    return F.mse_loss(fake.float().mean(0), real.float().mean(0))


def feature_matching_loss(
    fake: list[torch.Tensor] | tuple[torch.Tensor, ...],
    real: list[torch.Tensor] | tuple[torch.Tensor, ...],
) -> torch.Tensor:
    """pix2pixHD's feature matching: Σ over the discriminator's hidden layers of the mean
    |D_l(x̂) − D_l(x)| (pass the real features detached), a perceptual distance learned on the
    training faces."""
    return sum((f - r).abs().mean() for f, r in zip(fake, real, strict=True))


def adaptive_weight(
    reconstruction: torch.Tensor,
    adversarial: torch.Tensor,
    last_layer: torch.Tensor,
    *,
    max_weight: float = 1e4,
) -> torch.Tensor:
    """VQGAN eq. 7: ‖∇_w L_rec‖ / (‖∇_w L_adv‖ + 1e-4) at the decoder's last layer w, clamped to
    [0, max_weight] and detached, so the adversarial gradient reaching the decoder is as large as
    the reconstruction one whatever the scale of either loss. Both losses must still hold their
    graphs (it differentiates them with `retain_graph`)."""
    g_rec = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adversarial, last_layer, retain_graph=True)[0]
    weight = g_rec.norm() / (g_adv.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


# --- Speech2Face (Oh et al. 2019, Eq. 1) -----------------------------------------------------


def s2f_loss(
    dec_face: torch.Tensor,
    dec_voice: torch.Tensor,
    v_face: torch.Tensor,
    v_voice: torch.Tensor,
    logits_face: torch.Tensor,
    logits_voice: torch.Tensor,
    *,
    weights: Mapping[str, float],
    temperature: float = 2.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Speech2Face's loss (Eq. 1), every norm per sample, then the batch mean:
    ‖f_dec(v_f) − f_dec(v_s)‖₁ + w_2·‖v_f/‖v_f‖ − v_s/‖v_s‖‖²₂ + w_3·H(p_f, p_s),
    p = softmax(f_VGG(v) / T), H the cross-entropy (the teacher's distribution the target).

    dec_*: (B, H) the face decoder's first layer f_dec on v; v_*: (B, D) the face teacher's
    fc7 and the voice encoder's output; logits_*: (B, K) the teacher's classifier f_VGG on v.
    `weights`: decoder_l1, feature_l2, distill. Returns (loss, logs of the unweighted terms).
    """
    l1 = (dec_face - dec_voice).abs().sum(dim=1).mean()
    l2 = (F.normalize(v_face, dim=1) - F.normalize(v_voice, dim=1)).pow(2).sum(dim=1).mean()
    target = F.softmax(logits_face / temperature, dim=1)
    distill = -(target * F.log_softmax(logits_voice / temperature, dim=1)).sum(dim=1).mean()
    terms = {"decoder_l1": l1, "feature_l2": l2, "distill": distill}
    loss = sum(weights[k] * v for k, v in terms.items())
    return loss, {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}
