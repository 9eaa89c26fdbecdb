"""The speech encoder E_s of SCLDM: the Speech2Face voice encoder with CBAM after every block.

References: Oh et al., "Speech2Face: Learning the Face Behind a Voice", CVPR 2019, Table 1;
Woo et al., "CBAM", ECCV 2018; the SCLDM paper, §"Collaborative Pre-training" (E_s = the
Speech2Face CNN combined with CBAM).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from scldm.models.blocks import CBAM, ConvNormAct, init_module, stack_out_length

SPEECH_ENCODER_PRESETS: dict[str, dict] = {
    # unit tests: 0.5 s spectrograms with n_fft 128 (F = 65); about 10k parameters
    "tiny": {
        "num_freq_bins": 65,
        "channels": (4, 8, 8, 16),
        "strides": (2, 1, 2, 1),
        "time_pools": (1, 2, 1, 1),
        "token_dim": 16,
        "hidden_dim": 32,
        "embedding_dim": 16,
    },
    # SynthVox on 2 CPU cores, 6 s at n_fft 512 (257 × 598): strided early so the full-size
    # input costs one cheap conv; the Speech2Face order (widen, pool time, stride 2) is kept
    "small": {
        "num_freq_bins": 257,
        "channels": (16, 32, 64, 64),
        "strides": (4, 2, 2, 1),
        "time_pools": (2, 1, 1, 1),
        "token_dim": 128,
        "hidden_dim": 256,
        "embedding_dim": 128,
    },
    # Speech2Face Table 1 widths (the constructor defaults)
    "base": {},
}


@dataclass
class SpeechEncoderOutput(BaseOutput):
    """embedding: (B, D) pooled speech embedding (not normalised);
    tokens: (B, N, D_ctx) per-time-step features, the cross-attention condition."""

    embedding: torch.Tensor
    tokens: torch.Tensor


class SpeechEncoder(ModelMixin, ConfigMixin):
    """Speech2Face's voice encoder with a CBAM module after each conv block.

    Input: (B, 2, F, T) power-law compressed real/imaginary STFT with F = `num_freq_bins`
    (257 for the paper's n_fft 512) and any T (6 s → 598 frames; inputs too short for the
    pools and strided convs, below `min_frames`, are looped in time as the front end loops
    short audio). Outputs `SpeechEncoderOutput`:
      - tokens (B, N, token_dim): one token per remaining time step (N = 9 for base at 6 s,
        1 at 1 s), the block features with frequency flattened into channels, projected;
      - embedding (B, embedding_dim): FC → ReLU → FC on the time average of the tokens.

    Conv blocks are conv 4×4 → ReLU → BN (Speech2Face order); `time_pools[i] = 2` adds a 2×1
    max-pool along time only (axis order here is (F, T)); `strides[i] = 2` strides both axes.
    Base = Table 1: 64, 64, 128, ↓, 128, ↓, 128, ↓, 256, ↓, 512, 512/2, 512/2 → 512 × 64 × 9 at 6 s.

    Deviations from Speech2Face, both so that the tokens and the embedding share one trained
    path: the last conv also gets ReLU → BN, applied per time step before the time average
    (Speech2Face: conv, then AVGPOOL → ReLU → BN); and its FC 32768 → 4096 is factorised
    through the token width (average pooling commutes with the linear token projection, so
    the embedding sees exactly the time-averaged tokens). Speech2Face's 4096-d output is
    `embedding_dim` here (512 by default: the contrastive space shared with the face encoder).
    """

    @register_to_config
    def __init__(
        self,
        *,
        in_channels: int = 2,
        num_freq_bins: int = 257,
        channels: tuple[int, ...] = (64, 64, 128, 128, 128, 256, 512, 512, 512),
        strides: tuple[int, ...] = (1, 1, 1, 1, 1, 1, 1, 2, 2),
        time_pools: tuple[int, ...] = (1, 1, 2, 2, 2, 2, 1, 1, 1),
        kernel_size: int = 4,
        use_cbam: bool = True,
        cbam_reduction: int = 16,
        token_dim: int = 512,
        hidden_dim: int = 4096,
        embedding_dim: int = 512,
    ) -> None:
        super().__init__()
        if not len(channels) == len(strides) == len(time_pools):
            raise ValueError(
                f"channels, strides and time_pools need one entry per block, got "
                f"{len(channels)}, {len(strides)}, {len(time_pools)}"
            )
        blocks = []
        ins = (in_channels, *channels[:-1])
        for c_in, c_out, stride, pool in zip(ins, channels, strides, time_pools, strict=True):
            layers = [ConvNormAct(c_in, c_out, kernel_size, stride=stride, norm_after_act=True)]
            if pool > 1:
                layers.append(nn.MaxPool2d((1, pool)))  # (F, T): pool time only
            if use_cbam:  # after the pool: half the cost, the same attention
                layers.append(CBAM(c_out, reduction=cbam_reduction))
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*blocks)
        self.out_freq_bins = self._out_length(num_freq_bins, pool_time=False)
        if self.out_freq_bins < 1:
            raise ValueError(f"num_freq_bins {num_freq_bins} is too few for {len(strides)} blocks")
        self.min_frames = next(t for t in range(1, 1 << 16) if self._out_length(t) >= 1)
        self.to_tokens = nn.Linear(channels[-1] * self.out_freq_bins, token_dim)
        self.fc1 = nn.Linear(token_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, embedding_dim)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        init_module(module)

    def _out_length(self, length: int, *, pool_time: bool = True) -> int:
        cfg = self.config
        pools = cfg.time_pools if pool_time else None
        return stack_out_length(length, cfg.kernel_size, cfg.strides, pools)

    def num_tokens(self, num_frames: int) -> int:
        """N, the number of tokens for a spectrogram of `num_frames` frames."""
        return self._out_length(max(num_frames, self.min_frames))

    def forward(self, spectrogram: torch.Tensor) -> SpeechEncoderOutput:
        """spectrogram: (B, 2, F, T) → embedding (B, D) and tokens (B, N, D_ctx)."""
        if spectrogram.dim() != 4 or spectrogram.shape[2] != self.config.num_freq_bins:
            raise ValueError(
                f"expected a (B, {self.config.in_channels}, {self.config.num_freq_bins}, T) "
                f"spectrogram, got {tuple(spectrogram.shape)}"
            )
        num_frames = spectrogram.shape[-1]
        if num_frames < self.min_frames:
            reps = -(-self.min_frames // num_frames)
            spectrogram = spectrogram.repeat(1, 1, 1, reps)[..., : self.min_frames]
        features = self.blocks(spectrogram)  # (B, C, F', N)
        per_step = features.permute(0, 3, 1, 2).flatten(2)  # (B, N, C·F')
        tokens = self.to_tokens(per_step)  # (B, N, D_ctx)
        # the time average of the tokens = the projection of the time-averaged features
        hidden = torch.relu(self.fc1(tokens.mean(dim=1)))  # (B, hidden)
        return SpeechEncoderOutput(embedding=self.fc2(hidden), tokens=tokens)
