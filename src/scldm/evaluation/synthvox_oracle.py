"""The SynthVox oracle: a small CNN that reads every SynthVox attribute from a face image and
gives a face embedding — the benchmark's counterpart of VGGFace features and Face++ attributes
in the paper's protocol (DESIGN.md §5, §6).

Here: the model, its training on a split's faces, and its metrics with the voice-only ceilings
and chance levels. `scldm.evaluation.synthvox_oracle_run.run_oracle` (`scldm synthvox-oracle`)
trains it, scores it on the test split's true faces (the floor of any evaluation that uses it)
and writes those numbers next to the saved model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from scldm.config import OptimConfig
from scldm.data.synthvox.attributes import CATEGORIES, FACE_ONLY, GENDER_LINKED_FACE, LINKED
from scldm.faces import load_face
from scldm.optim import lr_at, set_lr

log = logging.getLogger(__name__)
CLASSES = tuple((name, CATEGORIES[name]) for name in ("gender", *FACE_ONLY, *GENDER_LINKED_FACE))
REGRESSION = ("age", "size")
AGE_MEAN, AGE_STD = 49.0, 18.0  # SynthVox ages are uniform on 18..80


# --- Model ------------------------------------------------------------------------------------


class SynthVoxOracle(ModelMixin, ConfigMixin):
    """Face → SynthVox attributes and a (B, D) embedding.

    faces: (B, 3, H, W) in [-1, 1], resized to `image_size` when they differ. A conv stem at
    stride 2 and stages of two 3×3 conv-BN-ReLU (the first at stride 2), global average pooling
    and a linear embedding, then one linear head per attribute.
    """

    @register_to_config
    def __init__(
        self,
        *,
        image_size: int = 64,
        channels: tuple[int, ...] = (16, 32, 64, 128),
        embedding_dim: int = 128,
        classes: tuple[tuple[str, tuple[Any, ...]], ...] = CLASSES,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.class_names = {name: tuple(values) for name, values in classes}
        layers, width = (
            [
                nn.Conv2d(3, channels[0], 3, 2, 1, bias=False),
                nn.BatchNorm2d(channels[0]),
                nn.ReLU(),
            ],
            channels[0],
        )
        for i, c in enumerate(channels):
            for j in range(2):
                stride = 2 if j == 0 and i > 0 else 1
                layers += [
                    nn.Conv2d(width, c, 3, stride, 1, bias=False),
                    nn.BatchNorm2d(c),
                    nn.ReLU(),
                ]
                width = c
        self.trunk = nn.Sequential(*layers)
        self.embed = nn.Linear(width, embedding_dim)
        self.drop = nn.Dropout(dropout)
        self.heads = nn.ModuleDict(
            {name: nn.Linear(embedding_dim, len(v)) for name, v in self.class_names.items()}
        )
        self.regress = nn.Linear(embedding_dim, len(REGRESSION))  # standardised age, size

    def _prepare(self, faces: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if faces.shape[-1] != size or faces.shape[-2] != size:
            faces = F.interpolate(
                faces, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return faces

    def extract_features(self, faces: torch.Tensor) -> torch.Tensor:
        """The face embedding (B, D): the pre-activation input of every attribute head."""
        pooled = self.trunk(self._prepare(faces)).mean(dim=(2, 3))  # (B, C)
        return self.embed(pooled)

    def forward(self, faces: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(B, 3, H, W) → (embedding (B, D), raw outputs: logits per class attribute and
        "regression" (B, 2) = standardised (age, size))."""
        embedding = self.extract_features(faces)
        h = self.drop(F.relu(embedding))
        out = {name: head(h) for name, head in self.heads.items()}
        out["regression"] = self.regress(h)
        return embedding, out

    @torch.no_grad()
    def predict_attributes(self, faces: torch.Tensor) -> dict[str, torch.Tensor]:
        """Attributes of (B, 3, H, W) faces in [-1, 1]: "age" (B,) years, "size" (B,) SDs, and
        for each class attribute (B, K) probabilities over `class_names[name]` — "gender" over
        ("f", "m"). Averaged over the face and its mirror image (test-time augmentation)."""
        _, out = self(torch.cat([faces, faces.flip(-1)]))
        b = len(faces)
        pred = {n: out[n].softmax(-1).view(2, b, -1).mean(0) for n in self.class_names}
        regression = out["regression"].view(2, b, -1).mean(0)
        pred["age"] = regression[:, 0] * AGE_STD + AGE_MEAN
        pred["size"] = regression[:, 1]
        return pred

    def labels(self, pred: Mapping[str, torch.Tensor]) -> dict[str, list[Any]]:
        """Most likely value of each attribute from `predict_attributes`: lists of length B."""
        out = {
            name: [self.class_names[name][i] for i in pred[name].argmax(-1).tolist()]
            for name in self.class_names
        }
        out.update({name: pred[name].tolist() for name in REGRESSION})
        return out


# --- Metrics, ceilings, chance ----------------------------------------------------------------


def attribute_metrics(
    pred: Mapping[str, Sequence[Any]],
    true: Mapping[str, Sequence[Any]],
    *,
    age_tolerance: float = 10.0,
) -> dict[str, float]:
    """Scores of predicted against true attributes (lists of equal length per attribute).

    gender_acc, age_mae (years), age_within_10 (fraction within ±`age_tolerance` years),
    size_r2 (coefficient of determination), and <name>_acc for every other class attribute.
    """
    out: dict[str, float] = {}
    for name in pred:
        if name in REGRESSION or name not in true:
            continue
        out[f"{name}_acc"] = float(
            np.mean([p == t for p, t in zip(pred[name], true[name], strict=True)])
        )
    if "age" in pred:
        err = np.abs(np.asarray(pred["age"], float) - np.asarray(true["age"], float))
        out["age_mae"] = float(err.mean())
        out["age_within_10"] = float((err <= age_tolerance).mean())
    if "size" in pred:
        y, p = np.asarray(true["size"], float), np.asarray(pred["size"], float)
        out["size_r2"] = float(1 - ((y - p) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12))
    return out


def attribute_table(
    rows: Sequence[Mapping[str, Any]], names: Sequence[str]
) -> dict[str, list[Any]]:
    return {n: [r[n] for r in rows] for n in names}


def voice_only_ceiling(
    train: Sequence[Mapping[str, Any]],
    test: Sequence[Mapping[str, Any]],
    *,
    age_tolerance: float = 10.0,
) -> dict[str, float]:
    """The best a voice-only model can score on `test` (one entry per face): the linked
    attributes (gender, age, size) exactly, every other attribute at its most frequent value
    among training speakers of the same gender and age decade (of the same gender when the
    decade is unseen) — in effect the population mode for the face-only attributes, which
    depend on neither."""
    names = [n for n, _ in CLASSES]
    groups: dict[tuple[str, int], dict[str, dict[Any, int]]] = {}
    for r in train:
        counts = groups.setdefault((r["gender"], int(r["age"]) // 10), {n: {} for n in names})
        for n in names:
            counts[n][r[n]] = counts[n].get(r[n], 0) + 1
    by_gender: dict[str, dict[str, dict[Any, int]]] = {}  # fallback for an unseen decade
    for (gender, _), counts in groups.items():
        pooled = by_gender.setdefault(gender, {n: {} for n in names})
        for n in names:
            for v, c in counts[n].items():
                pooled[n][v] = pooled[n].get(v, 0) + c
    pred = {n: [] for n in names}
    for r in test:
        counts = groups.get((r["gender"], int(r["age"]) // 10)) or by_gender.get(r["gender"])
        for n in names:
            if counts is None:  # a gender absent from training: nothing to go by
                pred[n].append(None)
                continue
            pred[n].append(max(sorted(counts[n].items(), key=str), key=lambda kv: kv[1])[0])
    pred.update({n: [r[n] for r in test] for n in (*LINKED, *REGRESSION)})
    return attribute_metrics(
        pred, attribute_table(test, [*names, *REGRESSION]), age_tolerance=age_tolerance
    )


def chance_level(
    train: Sequence[Mapping[str, Any]],
    test: Sequence[Mapping[str, Any]],
    *,
    age_tolerance: float = 10.0,
) -> dict[str, float]:
    """Expected scores of guessing: attributes of a random training speaker, independent of the
    face. Computed exactly by averaging over every (test face, training speaker) pair."""
    out = {}
    for name, _ in CLASSES:
        values = [r[name] for r in train]
        freq = {v: values.count(v) / len(values) for v in set(values)}
        out[f"{name}_acc"] = float(np.mean([freq.get(r[name], 0.0) for r in test]))
    age_tr, age_te = (np.asarray([r["age"] for r in rs], float) for rs in (train, test))
    err = np.abs(age_te[:, None] - age_tr[None, :])
    out["age_mae"], out["age_within_10"] = float(err.mean()), float((err <= age_tolerance).mean())
    size_tr, size_te = (np.asarray([r["size"] for r in rs], float) for rs in (train, test))
    mse = ((size_te[:, None] - size_tr[None, :]) ** 2).mean()
    out["size_r2"] = float(1 - mse / max(size_te.var(), 1e-12))
    return out


# --- Data and training ------------------------------------------------------------------------


def speaker_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per speaker, with its list of face images."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = out.setdefault(r["speaker_id"], {**r, "faces": list(r.get("faces") or [])})
        if r["face"] not in entry["faces"]:
            entry["faces"].append(r["face"])
    return list(out.values())


def load_oracle_faces(
    root: Path, speakers: Sequence[Mapping[str, Any]], size: int
) -> tuple[torch.Tensor, list[dict]]:
    """Every face of every speaker as uint8 (N, 3, size, size), and the speaker row of each."""
    images, owners = [], []
    for spk in speakers:
        for rel in spk["faces"]:
            img = load_face(root / rel)
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.LANCZOS)
            images.append(torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1))
            owners.append(spk)
    return torch.stack(images), owners


def oracle_targets(
    model: SynthVoxOracle, owners: Sequence[Mapping[str, Any]]
) -> dict[str, torch.Tensor]:
    t = {n: torch.tensor([v.index(o[n]) for o in owners]) for n, v in model.class_names.items()}
    t["regression"] = torch.tensor(
        [[(o["age"] - AGE_MEAN) / AGE_STD, o["size"]] for o in owners], dtype=torch.float32
    )
    return t


def oracle_loss(
    out: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of cross-entropies (class attributes) and Huber losses on standardised age and size;
    age weighs double: it is the hardest attribute to read and the one most metrics use."""
    logs = {
        n: F.cross_entropy(out[n], target[n], label_smoothing=0.05)
        for n in out
        if n != "regression"
    }
    reg = F.smooth_l1_loss(
        out["regression"], target["regression"], reduction="none", beta=0.5
    ).mean(0)
    logs["age"], logs["size"] = 2 * reg[0], reg[1]
    total = sum(logs.values())
    return total, {k: v.item() for k, v in logs.items()}


def _augment(batch: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """uint8 (B, 3, H, W) → float [-1, 1] with random flips, shifts of ±3 px and light jitter."""
    x = batch.float() / 127.5 - 1
    flip = torch.rand(len(x), generator=g) < 0.5
    x[flip] = x[flip].flip(-1)
    pad = 3
    padded = F.pad(x, (pad,) * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=g).tolist()
    x = padded[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]
    gain = 1 + 0.1 * (torch.rand(len(x), 1, 1, 1, generator=g) - 0.5)
    return (x * gain).clamp(-1, 1)


def train_oracle(
    faces: torch.Tensor,
    target: Mapping[str, torch.Tensor],
    *,
    steps: int,
    seed: int,
    batch_size: int = 64,
) -> SynthVoxOracle:
    """Train a fresh oracle on uint8 faces (N, 3, H, W): AdamW, 50 warm-up steps then cosine
    decay to 0 (`scldm.optim.lr_at`, the training stages' schedule)."""
    torch.manual_seed(seed)
    model = SynthVoxOracle(image_size=faces.shape[-1])
    optim = OptimConfig(lr=3e-3, weight_decay=5e-4, warmup_steps=50, min_lr_ratio=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    for group in opt.param_groups:
        group["base_lr"] = optim.lr
    g = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(range(steps), desc="oracle", unit="step", dynamic_ncols=True, disable=False)
    for step in bar:
        set_lr(opt, lr_at(step, optim, steps))
        idx = torch.randint(0, len(faces), (batch_size,), generator=g)
        _, out = model(_augment(faces[idx], g))
        loss, logs = oracle_loss(out, {k: v[idx] for k, v in target.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", age=f"{logs['age']:.3f}")
    return model.eval()


@torch.no_grad()
def predict_faces(
    model: SynthVoxOracle, faces: torch.Tensor, batch_size: int = 256
) -> dict[str, list[Any]]:
    """Labels for uint8 faces (N, 3, H, W), by batches."""
    model.eval()
    preds = [
        model.predict_attributes(faces[i : i + batch_size].float() / 127.5 - 1)
        for i in range(0, len(faces), batch_size)
    ]
    return model.labels({k: torch.cat([p[k] for p in preds]) for k in preds[0]})
