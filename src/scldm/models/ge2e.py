"""A pretrained speaker encoder as SCLDM's speech encoder: the GE2E voice encoder (Resemblyzer's
weights) as a frozen or partly fine-tuned backbone, with a trainable head that gives the tokens
and the embedding the rest of SCLDM expects from `SpeechEncoder`.

References: Wan et al., "Generalized End-to-End Loss for Speaker Verification", ICASSP 2018;
Resemblyzer 0.1.4 (`voice_encoder.py`: 3-layer LSTM 40 → 256, linear 256 → 256, ReLU, L2 norm,
on partial utterances of 160 frames); the SCLDM paper's future work (a large pretrained speech
model in place of the Speech2Face encoder).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from scldm.errors import InputError
from scldm.models.blocks import init_module
from scldm.models.speech_encoder import SpeechEncoderOutput

GE2E_PRESETS: dict[str, dict] = {
    # unit tests: small head; the backbone is GE2E's own size whatever the preset
    "tiny": {"token_dim": 16, "hidden_dim": 32, "embedding_dim": 16},
    # pairs with the `small` face encoder and UNet (token_dim = the UNet's cross_attention_dim)
    "small": {"token_dim": 128, "hidden_dim": 256, "embedding_dim": 128},
    "base": {"token_dim": 512, "hidden_dim": 4096, "embedding_dim": 512},
}
# The mean GE2E partial embedding of real recordings (`benchmarks/real_voices.py calibrate`:
# KTuberling voices in languages the real-voice check leaves out, none of its speakers)
REAL_SPEECH_FILE = Path(__file__).with_name("ge2e_real_speech.json")
WEIGHTS_HELP = (
    "install the GE2E weights with `pip install --no-deps resemblyzer` (the wheel ships "
    "pretrained.pt), or give the file as ge2e_weights=PATH"
)


def default_weights() -> Path | None:
    """The GE2E weights inside an installed `resemblyzer` package (found without importing
    it: its __init__ imports librosa), or None."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"
    return path if path.is_file() else None


class GE2ESpeechEncoder(ModelMixin, ConfigMixin):
    """GE2E backbone + trainable head: mel powers (B, num_mels, T) → `SpeechEncoderOutput`.

    The backbone embeds partial utterances as GE2E does: windows of `partial_frames` frames
    (1.6 s) every `partial_hop` frames, each through the LSTM, its last hidden state through
    the linear layer, ReLU and L2 normalisation → (B, P, 256) unit vectors, P = 1 +
    (T - partial_frames) // partial_hop (6 for 6 s); inputs shorter than one window are looped.
    The head maps each partial embedding to a token (B, P, token_dim), Linear → GELU → Linear,
    and the time average of the tokens to the embedding (B, embedding_dim), FC → ReLU → FC as in
    `SpeechEncoder`, so the UNet and the contrastive loss see what they see from it.

    `trainable_layers`: 0 freezes the backbone (it runs without gradients); k > 0 trains the
    linear layer and the top k - 1 LSTM layers. The backbone weights are saved with the model;
    `load_backbone` fills them from Resemblyzer's `pretrained.pt` when a model is first built.

    `remove_real_direction`: the partial embeddings lose their component along one unit vector
    u, the direction from the training voices' mean embedding to real recordings' mean
    (`set_real_direction`, a buffer saved with the model), before the head sees them. The head
    then cannot read "recorded by real people" as anything SynthVox ties to it, such as old
    age. Stage 1 sets u before its first step, from the backbone as loaded: meant for a frozen
    one (docs/notes/2026-12-02-real-voices-ge2e-direction.md).
    """

    @register_to_config
    def __init__(
        self,
        *,
        num_mels: int = 40,
        lstm_dim: int = 256,
        lstm_layers: int = 3,
        ge2e_dim: int = 256,
        partial_frames: int = 160,
        partial_hop: int = 80,
        trainable_layers: int = 0,
        token_dim: int = 512,
        hidden_dim: int = 4096,
        embedding_dim: int = 512,
        remove_real_direction: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= trainable_layers <= lstm_layers + 1:
            raise ValueError(f"trainable_layers must lie in [0, {lstm_layers + 1}]")
        if not 0 < partial_hop <= partial_frames:
            raise ValueError(f"partial_hop {partial_hop} must lie in (0, {partial_frames}]")
        # Resemblyzer's names, so its state dict loads as it is
        self.lstm = nn.LSTM(num_mels, lstm_dim, lstm_layers, batch_first=True)
        self.linear = nn.Linear(lstm_dim, ge2e_dim)
        self.to_tokens = nn.Sequential(
            nn.Linear(ge2e_dim, token_dim), nn.GELU(), nn.Linear(token_dim, token_dim)
        )
        self.fc1 = nn.Linear(token_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, embedding_dim)
        for module in (self.to_tokens, self.fc1, self.fc2):
            module.apply(init_module)
        if remove_real_direction:  # zero until set: removes nothing
            self.register_buffer("real_direction", torch.zeros(ge2e_dim))
        self.min_frames = partial_frames
        self._freeze()

    def _freeze(self) -> None:
        k, layers = self.config.trainable_layers, self.config.lstm_layers
        top = {f"l{i}" for i in range(layers - max(k - 1, 0), layers)}  # the top k - 1 layers
        for name, param in self.lstm.named_parameters():  # weight_ih_l2 → l2
            param.requires_grad_(name.rsplit("_", 1)[-1] in top)
        self.linear.requires_grad_(k > 0)

    def load_backbone(self, path: str | Path | None = None) -> Path:
        """Load the GE2E weights (`pretrained.pt`, read with weights_only=True) into the LSTM and
        the linear layer; `path` None: the file of the installed resemblyzer package."""
        path = Path(path) if path is not None else default_weights()
        if path is None:
            raise InputError(None, f"no GE2E weights found: {WEIGHTS_HELP}")
        if not path.is_file():
            raise InputError(path, "no such GE2E weights file")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            state = checkpoint.get("model_state", checkpoint)
            backbone = {k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))}
            expected = {k for k in self.state_dict() if k.startswith(("lstm.", "linear."))}
            if set(backbone) != expected:
                raise ValueError(f"its keys {sorted(backbone)} are not GE2E's {sorted(expected)}")
            self.load_state_dict(backbone, strict=False)
        except (RuntimeError, ValueError, AttributeError, OSError) as e:
            raise InputError(path, f"is not a GE2E checkpoint ({e})") from None
        return path

    def set_real_direction(self, training_mean: torch.Tensor, real_mean: torch.Tensor) -> float:
        """u = (real_mean - training_mean) / its norm, the direction `partials` removes; both
        means of partial embeddings (ge2e_dim,). Returns the norm (how far apart they are)."""
        if not self.config.remove_real_direction:
            raise ValueError("this encoder was built with remove_real_direction=False")
        gap = real_mean.double() - training_mean.double()
        norm = float(gap.norm())
        if not norm > 1e-6:
            raise ValueError("the real and the training mean embeddings coincide")
        self.real_direction.copy_((gap / norm).to(self.real_direction))
        return norm

    def num_tokens(self, num_frames: int) -> int:
        """P, the number of tokens for a mel spectrogram of `num_frames` frames."""
        frames = max(num_frames, self.config.partial_frames)
        return 1 + (frames - self.config.partial_frames) // self.config.partial_hop

    def partials(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: (B, num_mels, T) → GE2E partial embeddings (B, P, ge2e_dim), unit length (then
        without their real-direction component, where the model removes it)."""
        cfg = self.config
        if mel.dim() != 3 or mel.shape[1] != cfg.num_mels:
            raise ValueError(f"expected a (B, {cfg.num_mels}, T) mel spectrogram, got {mel.shape}")
        if mel.shape[-1] < cfg.partial_frames:
            reps = -(-cfg.partial_frames // mel.shape[-1])
            mel = mel.repeat(1, 1, reps)[..., : cfg.partial_frames]
        windows = mel.unfold(-1, cfg.partial_frames, cfg.partial_hop)  # (B, M, P, L)
        batch, _, num, length = windows.shape
        frames = windows.permute(0, 2, 3, 1).reshape(batch * num, length, cfg.num_mels)
        with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.trainable_layers > 0):
            _, (hidden, _) = self.lstm(frames)  # hidden: (layers, B·P, lstm_dim)
            embeds = torch.relu(self.linear(hidden[-1]))  # (B·P, ge2e_dim)
        embeds = embeds / embeds.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        if self.config.remove_real_direction:
            u = self.real_direction
            embeds = embeds - (embeds @ u)[:, None] * u
        return embeds.view(batch, num, -1)

    def forward(self, mel: torch.Tensor) -> SpeechEncoderOutput:
        """mel: (B, num_mels, T) → embedding (B, D) and tokens (B, P, D_ctx)."""
        tokens = self.to_tokens(self.partials(mel))  # (B, P, D_ctx)
        hidden = torch.relu(self.fc1(tokens.mean(dim=1)))  # (B, hidden)
        return SpeechEncoderOutput(embedding=self.fc2(hidden), tokens=tokens)


def real_speech_mean(path: str | Path | None = None) -> torch.Tensor:
    """The mean GE2E partial embedding of real recordings (ge2e_dim,), from a JSON file that
    `benchmarks/real_voices.py calibrate` writes; None: the one shipped with scldm."""
    path = Path(path) if path is not None else REAL_SPEECH_FILE
    try:
        mean = torch.tensor(json.loads(path.read_text())["mean"], dtype=torch.float32)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(path, f"is not a real-speech mean file ({e})") from None
    if mean.dim() != 1 or not torch.isfinite(mean).all():
        raise InputError(path, f"its mean is not one finite vector (shape {tuple(mean.shape)})")
    return mean
