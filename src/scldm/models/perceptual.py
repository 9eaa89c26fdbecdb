"""LPIPS perceptual distance (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric", CVPR 2018) from the `lpips` package, with its backbone read from a user file.

The package's calibrated linear heads ship inside it; its ImageNet backbone would be downloaded
by torchvision, so we build the backbone at random and load it from the user's path instead:
nothing here touches the network.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from scldm.errors import InputError
from scldm.models.blocks import read_state_dict

BACKBONES = ("vgg", "alex")


class LPIPS(nn.Module):
    """Frozen LPIPS v0.1: (x, y) faces (B, 3, H, W) in [-1, 1] → distances (B,), 0 when equal.

    `backbone_weights`: a torchvision `vgg16` or `alexnet` state dict (`features.*` keys; the
    `classifier.*` keys of a full model are ignored), `torch.save` or safetensors — e.g.
    torchvision's `vgg16-397923af.pth`. `random_backbone=True` keeps the random backbone
    instead (tests only: the distance is then not the published LPIPS). The module is in eval
    mode with no trainable parameters; gradients still flow to its inputs.
    """

    def __init__(
        self,
        *,
        net: str = "vgg",
        backbone_weights: str | Path | None = None,
        random_backbone: bool = False,
    ) -> None:
        super().__init__()
        if net not in BACKBONES:
            raise ValueError(f"LPIPS net must be one of {BACKBONES}, got {net!r}")
        if backbone_weights is None and not random_backbone:
            raise InputError(
                None,
                f"LPIPS needs its {net} backbone weights: give the path of a torchvision "
                f"{'vgg16' if net == 'vgg' else 'alexnet'} state dict (lpips_weights), "
                "or set the loss/lpips weight to 0",
            )
        import lpips  # imported here: it takes seconds, and only stage 1 with LPIPS needs it

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's `pretrained=` deprecation notices
            # pnet_rand: random backbone, so torchvision downloads nothing; pretrained: the
            # calibrated linear heads, read from the package's own files. Keep its dropout
            # layers: the shipped head keys (lin*.model.1.*) assume them, and lpips loads
            # with strict=False, so dropping them would silently leave the heads random
            self.model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
        if backbone_weights is not None:
            self._load_backbone(backbone_weights)
        self.eval().requires_grad_(False)

    def _load_backbone(self, path: str | Path) -> None:
        state = read_state_dict(path)
        # lpips keeps torchvision's `features` indices inside its slices: slice2.5 = features.5
        targets = {
            f"features.{name.split('.', 1)[1]}": param
            for name, param in self.model.net.named_parameters()
        }
        unknown = sorted(k for k in state if k not in targets and not k.startswith("classifier."))
        if unknown:
            raise InputError(path, f"unknown keys for a torchvision backbone: {unknown[:4]}")
        missing = sorted(set(targets) - set(state))
        if missing:
            raise InputError(path, f"missing backbone weights {missing[:4]}")
        with torch.no_grad():
            for key, param in targets.items():
                if state[key].shape != param.shape:
                    raise InputError(
                        path,
                        f"{key}: shape {tuple(state[key].shape)}, expected {tuple(param.shape)}",
                    )
                param.copy_(state[key])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y: (B, 3, H, W) in [-1, 1] → (B,) LPIPS distances."""
        return self.model(x, y).flatten()
