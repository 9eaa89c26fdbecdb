"""Building blocks shared by every network in scldm: conv/norm/act, CBAM, VGG layouts,
initialisation and reading user-given weight files.

References: CBAM — Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018 (official
code Jongchan/attention-module); VGG — Simonyan & Zisserman 2015, VGGFace — Parkhi et al. 2015.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from scldm.errors import InputError

POOL = "M"  # a 2×2 max-pool in a VGG widths tuple (torchvision's `cfgs` notation)
VGG16_WIDTHS: tuple[int | str, ...] = (
    *(64, 64, POOL),
    *(128, 128, POOL),
    *(256, 256, 256, POOL),
    *(512, 512, 512, POOL),
    *(512, 512, 512, POOL),
)


# --- Convolutions -----------------------------------------------------------------------------


class ConvNormAct(nn.Module):
    """Conv2d → BatchNorm → ReLU, or conv → ReLU → BatchNorm with `norm_after_act` (Speech2Face).

    (B, C_in, H, W) → (B, C_out, H', W'). Stride 1 keeps the size for any kernel: even kernels
    are padded asymmetrically (one more at the end, as PyTorch's `padding="same"`). Stride s > 1
    uses the symmetric padding (k - 1) // 2, so a 4×4/2 conv maps L to ⌊(L - 2) / 2⌋ + 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        norm: bool = True,
        act: bool = True,
        norm_after_act: bool = False,
    ) -> None:
        super().__init__()
        total = kernel_size - 1
        # explicit padding instead of padding="same", which warns for even kernels
        self.pad = (total // 2, total - total // 2) * 2 if stride == 1 else None
        padding = 0 if stride == 1 else total // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)
        self.norm = nn.BatchNorm2d(out_channels) if norm else nn.Identity()
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()
        self.norm_after_act = norm_after_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None and any(self.pad):
            x = F.pad(x, self.pad)
        x = self.conv(x)
        if self.norm_after_act:
            return self.norm(self.act(x))
        return self.act(self.norm(x))


def conv_out_length(length: int, kernel_size: int, stride: int) -> int:
    """Output length of a `ConvNormAct` along one axis (0 or less: the input was too short)."""
    if stride == 1:
        return length
    return (length + 2 * ((kernel_size - 1) // 2) - kernel_size) // stride + 1


def stack_out_length(
    length: int,
    kernel_size: int,
    strides: Sequence[int],
    pools: Sequence[int] | None = None,
) -> int:
    """Length along one axis after a stack of `ConvNormAct`s with `strides`, each followed by a
    max-pool of `pools[i]` (None: no pools); 0 or less: the input was too short."""
    for i, stride in enumerate(strides):
        length = conv_out_length(length, kernel_size, stride)
        length = length // pools[i] if pools is not None else length
    return length


# --- CBAM (Woo et al. 2018) -------------------------------------------------------------------


class ChannelGate(nn.Module):
    """CBAM channel attention: x · σ(MLP(avgpool(x)) + MLP(maxpool(x))), one shared MLP.

    The hidden width is C // r (r = 16 in the paper) but at least min(C, 4): with C < 64 a
    single hidden ReLU unit would be left, and once dead it switches the gate off for good.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, min(channels, 4))
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.stack([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))])  # (2, B, C)
        gate = self.mlp(pooled).sum(0)  # (B, C)
        return x * torch.sigmoid(gate)[:, :, None, None]


class SpatialGate(nn.Module):
    """CBAM spatial attention: x · σ(BN(conv7×7([max_c(x); mean_c(x)]))).

    Max first, then mean, and BN without ReLU, as in the official code — but with PyTorch's
    default BN momentum 0.1 rather than its 0.01, whose running statistics lag far behind the
    batch statistics over the few hundred steps of a CPU run (eval ≠ train for a long time).
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.norm(self.conv(pooled)))  # (B, C, H, W)


class CBAM(nn.Module):
    """Convolutional Block Attention Module: channel gate, then spatial gate (sequential order,
    the best of the paper's §4.1 ablation). (B, C, H, W) → (B, C, H, W)."""

    def __init__(self, channels: int, *, reduction: int = 16, spatial_kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelGate(channels, reduction)
        self.spatial = SpatialGate(spatial_kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


# --- VGG layouts ------------------------------------------------------------------------------


def split_vgg_blocks(widths: Sequence[int | str]) -> list[tuple[int, ...]]:
    """Conv widths per pooled block: (64, 64, "M", 128, "M") → [(64, 64), (128,)].

    Every block must end with a pool ("M") and hold at least one conv.
    """
    blocks: list[tuple[int, ...]] = []
    current: list[int] = []
    for w in widths:
        if w == POOL:
            if not current:
                raise ValueError(f"VGG widths {tuple(widths)}: a pool must follow convs")
            blocks.append(tuple(current))
            current = []
        elif isinstance(w, int) and not isinstance(w, bool) and w > 0:
            current.append(w)
        else:
            raise ValueError(f"VGG widths {tuple(widths)}: {w!r} is neither a width nor {POOL!r}")
    if current:
        raise ValueError(f"VGG widths {tuple(widths)} must end with a pool {POOL!r}")
    return blocks


def vgg_layers(
    blocks: Sequence[Sequence[int]], in_channels: int, *, batch_norm: bool
) -> Iterator[nn.Module]:
    """The conv (3×3, ReLU, optional BN) and 2×2 max-pool layers of VGG blocks, in order."""
    for block in blocks:
        for width in block:
            yield ConvNormAct(in_channels, width, 3, norm=batch_norm)
            in_channels = width
        yield nn.MaxPool2d(2)


# --- Initialisation and weight files ----------------------------------------------------------


def init_module(module: nn.Module) -> None:
    """The initialisation of every scldm network: He-normal convs (fan-out, ReLU gain, as
    torchvision's VGG), uniform ±1/√fan_in linear layers, zero biases, norms at identity."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        # not torchvision-VGG's N(0, 0.01): with narrow presets it would shrink the embedding
        nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d | nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a `.safetensors` file or a `torch.save` file (weights only: no
    pickled code runs). A `{"state_dict": ...}` wrapper is unwrapped. Raises `InputError`
    naming the file when it is missing, unreadable or not a mapping of names to tensors."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such weight file" if not path.exists() else "not a file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any parse failure is a bad user file, reported as one line
        raise InputError(path, f"not a readable weight file ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise InputError(path, f"not a state dict (found {type(state).__name__})")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise InputError(path, f"not a state dict: {bad[0]!r} is not a named tensor")
    return state
