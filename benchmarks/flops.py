"""FLOPs per sample of every training step and of generating one face, for SCLDM and the three
baselines at the tiny, small and base presets.

    python benchmarks/flops.py                          # all → benchmarks/results/flops.md
    python benchmarks/flops.py --presets tiny --device cpu --out /tmp/flops.md   # cross-check

Each stage's networks are built from its presets at random initialisation on PyTorch's meta
device: nothing is computed and no weights or data are needed, and
`torch.utils.flop_counter.FlopCounterMode` reads the FLOPs of every matrix multiplication,
convolution and attention call from the shapes (a multiply-add counts 2). Steps run at batch 2,
so no batch-1 path is taken, and are divided by 2. Training steps count forward and backward
(through a frozen network only the input gradients its backward computes); optimizer updates,
norms and activations are elementwise and not counted. `--device cpu` runs the same steps on
real tensors (attention on its math kernel, which the counter sees), and the sampler's own
loop instead of the sum of its parts.

The steps are benchmarks/workloads.py's, which benchmarks/gpu.py times on a GPU, dividing
`flops_per_sample` by their time for its MFU.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode
from workloads import COUNT_BATCH, NUM_SPEAKERS, PRESETS, STAGES, Workload, build

RESULTS = Path(__file__).parent / "results"

# --- Counting -------------------------------------------------------------------------------------

# ops that do arithmetic the flop counter has no formula for, with an estimate of it
_UNCOUNTED = {
    "_fft_r2c": lambda x, dims, *rest: (
        2.5 * x.numel() * math.log2(math.prod(x.shape[d] for d in dims))
    ),
    "mv": lambda m, v: 2 * m.numel(),  # spectral norm's power iteration
    "addmv": lambda bias, m, v, *rest: 2 * m.numel(),
    "_scaled_dot_product_flash_attention_for_cpu": lambda q, k, v, *rest: (
        4 * q.numel() * k.shape[-2]
    ),
}


_UNCOUNTED_WHAT = {
    "_fft_r2c": "the front ends' FFT, 2.5·n·log₂n per transform",
    "mv": "the spectral norm's power iteration",
    "addmv": "matrix-vector products",
    "_scaled_dot_product_flash_attention_for_cpu": "fused attention on a CPU",
}


class _Uncounted(TorchDispatchMode):
    """Records the ops in _UNCOUNTED a step calls and an estimate of their FLOPs."""

    def __init__(self) -> None:
        super().__init__()
        self.flops: dict[str, float] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in _UNCOUNTED:
            self.flops[name] = self.flops.get(name, 0.0) + _UNCOUNTED[name](*args)
        return func(*args, **(kwargs or {}))


def count(workload: Workload, *, whole: bool = False) -> tuple[int, dict[str, float]]:
    """FLOPs of one step of `workload` (its whole batch) and the estimated FLOPs of the ops the
    counter cannot see. The sum of `parts` unless `whole` (or the workload has none)."""
    pieces = [(1, workload.step)] if whole or not workload.parts else workload.parts
    total, missed = 0, {}
    # the CPU's fused attention kernel is invisible to the counter; its math kernel is not
    with sdpa_kernel(SDPBackend.MATH):
        for repeats, fn in pieces:
            with FlopCounterMode(display=False) as counter, _Uncounted() as uncounted:
                fn()
            total += repeats * counter.get_total_flops()
            for name, flops in uncounted.flops.items():
                missed[name] = missed.get(name, 0.0) + repeats * flops
    return total, missed


@functools.cache
def flops_per_sample(preset: str, stage: str) -> float:
    """FLOPs per sample (per face for a generation stage) of `stage` at `preset`, counted on the
    meta device at batch 2."""
    flops, _ = count(build(stage, preset, batch=COUNT_BATCH))
    return flops / COUNT_BATCH


def measure(preset: str, stage: str, device: str) -> dict:
    """One table row: FLOPs per sample, parameters, shapes and what the counter missed."""
    workload = build(stage, preset, batch=COUNT_BATCH, device=device)
    flops, missed = count(workload, whole=device != "meta")
    return {
        "preset": preset,
        "stage": stage,
        "gflops": flops / COUNT_BATCH / 1e9,
        "missed_gflops": {k: v / COUNT_BATCH / 1e9 for k, v in missed.items()},
        "params_m": workload.params / 1e6,
        "shapes": workload.shapes,
    }


# --- Driver ---------------------------------------------------------------------------------------


def table(rows: list[dict], skipped: list[str], device: str, seconds: float) -> str:
    lines = [
        "# FLOPs per sample of every stage",
        "",
        f"Counted with `torch.utils.flop_counter.FlopCounterMode` (torch {torch.__version__}) "
        f"on the {device} device by `python benchmarks/flops.py` in {seconds:.0f} s "
        f"({platform.machine()}, {os.cpu_count()} cores). Networks at random initialisation "
        f"from the presets; each step at batch {COUNT_BATCH}, divided by {COUNT_BATCH}. A "
        "multiply-add counts 2 FLOPs. Only matrix multiplications, convolutions and attention "
        "are counted (norms, activations, losses and optimizer updates are not).",
        "",
        "*fwd+bwd*: a training step, forward and backward of every network it runs (through a "
        "frozen network only the input gradients its backward computes); *fwd*: generating one "
        "face. Parameters: every network the row runs, frozen ones included.",
        "",
        "| preset | stage | counts | GFLOPs per sample | parameters (M) | input shapes |",
        "|---|---|---|---:|---:|---|",
    ]
    for r in rows:
        stage = STAGES[r["stage"]]
        lines.append(
            f"| {r['preset']} | {stage.title} | {'fwd+bwd' if stage.trains else 'fwd'} | "
            f"{r['gflops']:.4g} | {r['params_m']:.3g} | {r['shapes']} |"
        )
    lines += ["", "Notes:", ""]
    for name, what in _UNCOUNTED_WHAT.items():
        shares = {  # the estimate against what was counted, per row
            f"{r['preset']} {STAGES[r['stage']].title}": r["missed_gflops"][name] / r["gflops"]
            for r in rows
            if r["missed_gflops"].get(name)
        }
        if not shares:
            continue
        top = max(shares.values())
        big = ", ".join(f"{row} {share:.1%}" for row, share in shares.items() if share >= 0.01)
        lines.append(
            f"- not counted: `aten.{name}` ({what}); estimated at most {top:.2%} of a row's "
            f"counted FLOPs" + (f"; 1% or more in: {big}" if big else "")
        )
    lines += [f"- {s}" for s in skipped]
    lines += [
        "- SCLDM sampling = front end + speech encoder once + steps × one UNet call (on 2B rows "
        "with guidance ≠ 1) + face decoder once, each counted on its own; the scheduler's "
        "arithmetic is elementwise. `--device cpu` counts the whole sampling loop instead.",
        f"- identity classifiers (Speech2Face's identity teacher, Wen et al.'s c and e's "
        f"pre-training head, Wav2Pix's auxiliary classifier) over {NUM_SPEAKERS} training "
        "speakers (the data decides the number); Speech2Face base uses VGGFace's 2,622.",
        "- Wen et al.'s training crops are the mean of `crop_frames`; its filterbanks are "
        "computed once per run, so the training rows exclude the front end (the generation row "
        "includes it, without voice activity detection). Speech2Face's voice step reads the "
        "faces' fc7, computed once per run.",
        "- SCLDM stage 2 excludes the one-off decoder refinement (`decoder.steps`, small preset) "
        "and the latent cache; stage 1 of the tiny preset includes its PatchGAN (from "
        "`start_step` on), the base preset LPIPS.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    parser.add_argument(
        "--device",
        default="meta",
        choices=["meta", "cpu"],
        help="meta: shapes only (seconds); cpu: real tensors, a cross-check for tiny",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "flops.md")
    args = parser.parse_args()
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    torch.manual_seed(0)
    start = time.perf_counter()
    rows, skipped = [], []
    for preset in args.presets:
        for stage in args.stages:
            try:
                rows.append(measure(preset, stage, args.device))
            except LookupError as e:  # a stage the preset does not have
                skipped.append(f"{preset}, {STAGES[stage].title}: {e}")
                continue
            r = rows[-1]
            print(f"{preset:5} {stage:22} {r['gflops']:12.4f} GFLOPs  {r['params_m']:9.3f} M")
    text = table(rows, skipped, args.device, time.perf_counter() - start)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
