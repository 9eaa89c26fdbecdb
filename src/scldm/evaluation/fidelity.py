"""Realism and reconstruction fidelity in `scldm evaluate`: which faces the realism metrics
(`scldm.evaluation.realism`) compare, and how the face autoencoder's reconstructions are read.

Realism (`score_realism`). The evaluated speakers are split into two disjoint halves S1 and S2
by a seeded shuffle; the reference set is the true faces of S2, each distinct image once.
- `model`: the generated faces of S1's clips against the reference;
- `reconstruction` (with a face encoder): the autoencoder's reconstructions of S1's true faces;
- `floor`: the true faces of S1 against the reference: what faces as real as the data score.
Every set is subsampled (seeded) to the size of the smallest, so model and floor share the
reference set and n, and the statistic's own bias and noise at that n is in the floor. Keeping
S1 and S2 apart keeps identity out of both comparisons: generated faces of a speaker against
true faces of the same speaker would be a test of identity as much as of realism. For the same
reason the classifier's folds are grouped by speaker, and KID leaves pairs of one speaker's
faces out of its within-set means. Measured on the demo's test split (two images a speaker):
ungrouped, a classifier that has seen one of a speaker's images tells true halves apart at
0.6–0.7 instead of 0.5, and the KID of true halves is +0.48 ± 0.24 over 30 splits instead of
−0.07 ± 0.24 (a speaker's two alike faces count as a difference from the other half).

Reconstruction (`score_reconstruction`): the true faces of the evaluated clips (each distinct
image once) are encoded by a stage-1 face encoder and decoded by the pipeline's face decoder
(the one that ships, possibly refined in stage 2). The attribute estimator reads the
reconstructions, scored against the true labels, beside what it reads from the true faces
themselves (that attribute's floor); PSNR is per image, averaged per speaker.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scldm.errors import InputError
from scldm.evaluation.clips import Clip, EvalSettings
from scldm.evaluation.evaluate import Faces, batched_features, score_attributes
from scldm.evaluation.metrics import psnr, summarise
from scldm.evaluation.realism import detail_kernel, kid, speaker_halves, two_sample_test
from scldm.faces import center_crop_resize, to_pil, to_tensor
from scldm.models.face_encoder import FaceEncoder

log = logging.getLogger(__name__)

REALISM_CONDITIONS = ("model", "reconstruction", "floor")
RECONSTRUCTION_CONDITIONS = ("reconstruction", "true_face")
KID_SUBSET_SIZE, KID_SUBSETS = 1000, 100  # torch-fidelity's defaults


def distinct_faces(clips: Sequence[Clip]) -> list[Clip]:
    """The first clip of each distinct true face image, in clip order."""
    first: dict[Path, Clip] = {}
    for c in clips:
        first.setdefault(c.face, c)
    return list(first.values())


# --- Realism ----------------------------------------------------------------------------------


def _subsample(faces: torch.Tensor, speakers: list[str], n: int, seed: int):
    keep = torch.randperm(len(faces), generator=torch.Generator().manual_seed(seed))[:n]
    keep = keep.sort().values
    return faces[keep], [speakers[i] for i in keep.tolist()]


def _found_features(extractor: Any, faces: torch.Tensor, speakers: list[str]):
    """Features of the faces the extractor found (a detector may miss some), and their
    speakers."""
    if len(faces) == 0:
        return torch.zeros(0, 1), []
    f, ok = batched_features(extractor, faces)
    return f[ok], [s for s, o in zip(speakers, ok.tolist(), strict=True) if o]


def score_realism(
    faces: Faces,
    clips: Sequence[Clip],
    features: Mapping[str, Any],
    settings: EvalSettings,
) -> dict[str, Any]:
    """The two-sample tests (on pixels, and on their fine detail) and KID (on each feature
    network) of the generated faces, the reconstructions (when `faces.images` holds
    "reconstruction", one row per `distinct_faces(clips)`) and the floor, each against the true
    faces of the other half of the speakers. A statistic is None where a set has fewer than 2
    faces."""
    s1, s2 = speaker_halves([c.speaker for c in clips], seed=settings.seed)
    originals = distinct_faces(clips)
    true = faces.images["true"][[c.index for c in originals]]  # (U, 3, H, W)
    in_s1 = [i for i, c in enumerate(originals) if c.speaker in s1]
    in_s2 = [i for i, c in enumerate(originals) if c.speaker in s2]
    gen_rows = [r for r, i in enumerate(faces.clip_of["model"]) if clips[i].speaker in s1]
    sets = {
        "model": (
            faces.images["model"][gen_rows],
            [clips[faces.clip_of["model"][r]].speaker for r in gen_rows],
        ),
        "floor": (true[in_s1], [originals[i].speaker for i in in_s1]),
    }
    if "reconstruction" in faces.images:
        sets["reconstruction"] = (faces.images["reconstruction"][in_s1], sets["floor"][1])
    reference = (true[in_s2], [originals[i].speaker for i in in_s2])
    n = min(len(reference[0]), *(len(f) for f, _ in sets.values()))
    # a seed per set, so that a set's sample does not depend on which others are scored; the
    # reconstructions are those of the floor's faces (the same seed on the same rows)
    offset = {"model": 1, "floor": 2, "reconstruction": 2}
    sets = {k: _subsample(*v, n, settings.seed + offset[k]) for k, v in sets.items()}
    reference = _subsample(*reference, n, settings.seed)
    size = true.shape[-1]
    kernel = detail_kernel(size)
    result: dict[str, Any] = {
        "convention": {
            "design": "speakers split into two seeded disjoint halves S1, S2; reference = the "
            "true faces of S2 (distinct images); model = generated faces of S1's clips, "
            "reconstruction = reconstructions of S1's true faces, floor = true faces of S1; "
            "every set subsampled (seeded) to the same n",
            "two_sample": "ridge classifier (alpha 1, closed form) on standardised flattened "
            "pixels in [-1, 1], classes balanced, 5 stratified folds grouped by speaker; "
            "accuracy of the held-out predictions with a 95% Wilson interval; 0.5 = "
            "indistinguishable, 1.0 = always told apart",
            "two_sample_detail": "the same test on each face minus its box blur (fine "
            f"detail: edges, eyes, glasses frames; a {kernel} px box at {size} px), which "
            "colours and layout do not pass",
            "kid": "unbiased MMD^2 with k(x, y) = (x.y/D + 1)^3 (Binkowski et al. 2018) on the "
            "feature network's features, pairs of faces of one speaker left out of the "
            f"within-set means; mean and std over {KID_SUBSETS} random subsets of "
            f"min({KID_SUBSET_SIZE}, n) faces a side (torch-fidelity's convention; one subset and "
            "std 0 when a subset would be the whole of both sets); 0 = the same distribution",
        },
        "speakers": {"s1": len(s1), "s2": len(s2)},
        "n": n,
        "two_sample": {},
        "two_sample_detail": {},
        "kid": {},
    }
    for cond in (c for c in REALISM_CONDITIONS if c in sets):
        for key, detail in (("two_sample", None), ("two_sample_detail", kernel)):
            result[key][cond] = two_sample_test(
                sets[cond][0],
                reference[0],
                x_groups=sets[cond][1],
                y_groups=reference[1],
                detail=detail,
                seed=settings.seed,
            )
    for name, extractor in features.items():
        ref_f, ref_spk = _found_features(extractor, *reference)
        kids: dict[str, Any] = {"network": extractor.convention}
        for cond in REALISM_CONDITIONS:
            if cond in sets:
                f, spk = _found_features(extractor, *sets[cond])
                kids[cond] = kid(
                    f,
                    ref_f,
                    x_groups=spk,
                    y_groups=ref_spk,
                    subset_size=KID_SUBSET_SIZE,
                    num_subsets=KID_SUBSETS,
                    seed=settings.seed,
                )
        result["kid"][name] = kids
    return result


# --- Reconstruction ---------------------------------------------------------------------------


def face_encoder_dir(path: Path) -> Path:
    """A stage-1 run folder or its export/ folder → its face_encoder folder."""
    for candidate in (path / "export" / "face_encoder", path / "face_encoder"):
        if (candidate / "config.json").is_file():
            return candidate
    raise InputError(
        path,
        "holds no face encoder (no export/face_encoder/config.json or face_encoder/config.json); "
        "give a `scldm pretrain` run folder or its export/",
    )


@dataclass
class FaceReconstructor:
    """A stage-1 face encoder and a face decoder: faces → unscaled latents → faces."""

    encoder: FaceEncoder
    decoder: Any  # a FaceDecoder: unscaled latents → faces in [-1, 1]
    path: Path  # the face encoder's folder

    @torch.no_grad()
    def __call__(self, faces: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """faces (B, 3, H, W) in [-1, 1] → reconstructions (B, 3, H, W) in [-1, 1]. Faces at
        another size than the decoder's are resized to it and back (Lanczos, like the scoring
        size's resizing)."""
        device = next(self.decoder.parameters()).device
        size, scored = int(self.decoder.config.image_size), faces.shape[-1]
        parts = []
        for i in range(0, len(faces), batch_size):
            x = _resized(faces[i : i + batch_size], size)
            x = x.to(device=device, dtype=torch.float32)
            parts.append(_resized(self.decoder(self.encoder.encode(x)).float().cpu(), scored))
        return torch.cat(parts)


def _resized(faces: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] at size × size, by PIL's Lanczos (unchanged when already so)."""
    if faces.shape[-1] == size and faces.shape[-2] == size:
        return faces
    return torch.stack([to_tensor(center_crop_resize(to_pil(f), size)) for f in faces])


def load_reconstructor(path: Path, decoder: Any) -> FaceReconstructor:
    """The face encoder of a stage-1 run (or its export/) with `decoder`, checked to fit: a
    face the decoder's size must come back at that size."""
    folder = face_encoder_dir(path)
    encoder = FaceEncoder.from_pretrained(folder).eval().requires_grad_(False)
    device = next(decoder.parameters()).device
    encoder.to(device)
    size = int(decoder.config.image_size)
    problem = None
    try:
        with torch.no_grad():
            out = decoder(encoder.encode(torch.zeros(1, 3, size, size, device=device)))
        if tuple(out.shape) != (1, 3, size, size):
            problem = f"its latents decode to {tuple(out.shape[1:])}"
    except (RuntimeError, ValueError) as e:
        problem = str(e).splitlines()[0]
    if problem is not None:
        raise InputError(
            folder, f"does not fit the pipeline's face decoder ({size} px faces): {problem}"
        )
    return FaceReconstructor(encoder=encoder, decoder=decoder, path=folder)


def score_reconstruction(
    reconstructor: FaceReconstructor,
    faces: Faces,
    clips: Sequence[Clip],
    attributes: Mapping[str, Any],
    settings: EvalSettings,
) -> dict[str, Any]:
    """Reconstruct every distinct true face of `clips` into `faces.images["reconstruction"]`
    (`faces.clip_of["reconstruction"]`: its clip) and score it: PSNR, and per attribute
    estimator what it reads from the reconstructions and from the true faces themselves."""
    originals = distinct_faces(clips)
    rows = [c.index for c in originals]
    true = faces.images["true"][rows]
    recon = reconstructor(true, settings.batch_size)
    faces.images["reconstruction"], faces.clip_of["reconstruction"] = recon, rows
    faces.present["reconstruction"] = torch.ones(len(rows), dtype=torch.bool)
    speakers = [c.speaker for c in originals]
    values = np.array([psnr(r[None], t[None]) for r, t in zip(recon, true, strict=True)])
    everyone = list(range(len(originals)))
    pairs = Faces(
        images={"true": true, "reconstruction": recon, "true_face": true},
        clip_of=dict.fromkeys(RECONSTRUCTION_CONDITIONS, everyone),
        present=dict.fromkeys(RECONSTRUCTION_CONDITIONS, faces.present["reconstruction"]),
    )
    return {
        "encoder": str(reconstructor.path),
        "decoder": "the pipeline's face_decoder (unscaled latents)",
        "images": len(originals),
        "convention": "each distinct true face image of the evaluated clips, encoded by the "
        "stage-1 face encoder and decoded by the pipeline's face decoder; conditions: "
        "reconstruction (the estimator on the reconstructions) and true_face (on the true faces "
        "themselves: the floor), both scored against the clip's labels; PSNR per image "
        "(peak-to-peak 2 in [-1, 1]); mean over speakers, bootstrap over speakers",
        "psnr": summarise(values, speakers, resamples=settings.bootstrap, seed=settings.seed),
        "attributes": {
            name: score_attributes(
                estimator, pairs, originals, settings, conditions=RECONSTRUCTION_CONDITIONS
            )
            for name, estimator in attributes.items()
        },
    }


def score_fidelity(
    faces: Faces,
    clips: Sequence[Clip],
    features: Mapping[str, Any],
    attributes: Mapping[str, Any],
    settings: EvalSettings,
    reconstructor: FaceReconstructor | None = None,
) -> dict[str, Any]:
    """{"realism": `score_realism`, and with a reconstructor first "reconstruction":
    `score_reconstruction`}: this module's part of metrics.json."""
    result = {}
    if reconstructor is not None:
        log.info("scoring reconstructions: %s", reconstructor.path)
        result["reconstruction"] = score_reconstruction(
            reconstructor, faces, clips, attributes, settings
        )
    log.info("scoring realism")
    result["realism"] = score_realism(faces, clips, features, settings)
    return result
