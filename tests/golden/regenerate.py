"""Write tests/golden/values.json: recorded outputs of the numerical core on fixed inputs.

Why goldens exist: the unit tests check properties (shapes, invariants, known answers of
simple cases), which a refactor can keep while still changing the numbers a trained model
sees, e.g. a reordered random draw, a different STFT padding, a changed default λ. These
values pin the exact numbers of three paths end to end, so `tests/test_golden.py` fails on
any such change:

* "frontend": `SpectrogramFrontend()` (defaults) on 6 s of a fixed sum of sines + seeded noise;
* "diffusion_loss": the stage-2 objective on fixed latents, tokens and prior, tiny seeded UNet;
* "pipeline": a tiny seeded `SpeechToFacePipeline` on a fixed waveform (DPM-Solver++ 3 steps,
  guidance 1, temperature 1, the prior's own λ).

When regenerating is legitimate: ONLY when a change is meant to alter these numbers (a new
front end, a different sampler default, a fixed bug), and the commit that writes the new
values.json says which intended numerical change moved them. Never regenerate to make a
failing golden test pass after a refactor that was meant to keep behaviour: that failure
is the test doing its job; find the change instead.

Run from the repository root (the first line printed names the scldm that was used):

    OMP_NUM_THREADS=1 .venv/bin/python tests/golden/regenerate.py

`compute()` is also what the test calls, so the inputs are defined once.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

VALUES = Path(__file__).with_name("values.json")
SAMPLE_RATE = 16_000


def signal(seconds: float, seed: int = 0) -> np.ndarray:
    """A fixed test waveform: three sines (150, 440, 1234.5 Hz) + seeded Gaussian noise."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = (
        0.4 * np.sin(2 * np.pi * 150.0 * t)
        + 0.2 * np.sin(2 * np.pi * 440.0 * t + 0.3)
        + 0.1 * np.sin(2 * np.pi * 1234.5 * t + 1.1)
    )
    wave += 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    return wave.astype(np.float32)


def prior_scale_kwarg(fn: Any, value: float) -> dict[str, float]:
    """{name: value} for the prior-scale argument of `fn` (`prior_scale`, formerly `lam`)."""
    params = inspect.signature(fn).parameters
    for name in ("prior_scale", "lam"):
        if name in params:
            return {name: value}
    raise TypeError(f"{fn.__qualname__} takes neither prior_scale nor lam")


def _floats(x: torch.Tensor | np.ndarray) -> list:
    return np.asarray(x, dtype=np.float64).tolist()


def frontend_values() -> dict[str, Any]:
    from scldm.audio import SpectrogramFrontend

    spec = SpectrogramFrontend()(torch.from_numpy(signal(6.0)))  # (1, 2, 257, 598)
    s = spec.double()
    magnitude = s.pow(2).sum(1).sqrt().mean(-1)[0]  # (F,), mean over time
    return {
        "shape": list(spec.shape),
        "mean": s.mean().item(),
        "std": s.std().item(),
        "abs_mean": s.abs().mean().item(),
        "min": s.min().item(),
        "max": s.max().item(),
        "peak_bins": torch.topk(magnitude, 3).indices.sort().values.tolist(),
        "slice": _floats(spec[0, :, 3:7, 100:104]),  # around the 150 Hz bin (4.8)
    }


def diffusion_loss_values() -> dict[str, Any]:
    from diffusers import DDPMScheduler

    from scldm.diffusion import build_unet
    from scldm.diffusion.objective import diffusion_loss

    torch.manual_seed(0)
    unet = build_unet({"preset": "tiny"}).eval()
    scheduler = DDPMScheduler()
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(4, 4, 4, 4, generator=g)
    tokens = torch.randn(4, 3, 16, generator=g)
    prior = 2 * torch.randn(4, 4, 4, generator=g)
    out = {}
    for name, prior_arg, scale in (("plain", None, 0.0), ("shifted", prior, 0.5)):
        with torch.no_grad():
            loss, logs = diffusion_loss(
                unet,
                scheduler,
                z0,
                tokens,
                prior=prior_arg,
                **prior_scale_kwarg(diffusion_loss, scale),
                cond_drop=0.5,
                generator=torch.Generator().manual_seed(0),
            )
        out[name] = {"loss": loss.item(), "cond_drop_frac": logs["cond_drop_frac"].item()}
    return out


def pipeline_values() -> dict[str, Any]:
    from scldm.audio import SpectrogramFrontend
    from scldm.diffusion import FacePrior, SpeechToFacePipeline, build_unet, make_scheduler
    from scldm.models import (
        FACE_DECODER_PRESETS,
        SPEECH_ENCODER_PRESETS,
        FaceDecoder,
        SpeechEncoder,
    )

    torch.manual_seed(0)
    frontend = SpectrogramFrontend(n_fft=128, win_length=128, hop_length=64, segment_seconds=0.5)
    prior = FacePrior(prior=torch.randn(4, 4, 4), lambda_infer=0.5)
    # the tiny presets as they were when these values were recorded (latents 4 × 4 × 4, the plain
    # VGG-mirror decoder), spelt out so that a later preset change does not move the goldens
    decoder = {**FACE_DECODER_PRESETS["tiny"], "widths": (4, 4, "M", 8, 8, "M", 8, 8, 8, "M")}
    decoder["res_blocks"] = 0
    pipe = SpeechToFacePipeline(
        frontend=frontend,
        speech_encoder=SpeechEncoder(**SPEECH_ENCODER_PRESETS["tiny"]).eval(),
        unet=build_unet({"preset": "tiny", "sample_size": 4}).eval(),
        scheduler=make_scheduler("dpm++"),
        face_decoder=FaceDecoder(**decoder, scaling_factor=0.7).eval(),
        prior=prior,
    )
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        signal(0.7, seed=1),
        num_inference_steps=3,
        guidance_scale=1.0,
        temperature=1.0,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images  # (1, 32, 32, 3)
    x = np.asarray(images, dtype=np.float64)
    return {
        "shape": list(images.shape),
        "mean": x.mean(),
        "std": x.std(),
        "slice": _floats(images[0, :3, :3, :]),  # unclamped pixels (in (0, 1))
    }


def compute() -> dict[str, Any]:
    with torch.random.fork_rng():  # leave the caller's global RNG as it was
        return {
            "frontend": frontend_values(),
            "diffusion_loss": diffusion_loss_values(),
            "pipeline": pipeline_values(),
        }


def main() -> None:
    import scldm

    print(f"scldm from {scldm.__file__}")
    values = {"_about": "written by tests/golden/regenerate.py; read its docstring", **compute()}
    VALUES.write_text(json.dumps(values, indent=1) + "\n")
    print(f"wrote {VALUES}")


if __name__ == "__main__":
    main()
