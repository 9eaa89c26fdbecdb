"""Stage-1 training throughput and peak memory per preset (model and loss only, no data I/O).

    python benchmarks/pretrain.py                          # tiny, small, base on this machine
    python benchmarks/pretrain.py --presets base --batch-size 32 --steps 20   # e.g. on a GPU

Each preset runs in a fresh process: forward + backward + AdamW step of the three networks on
random waveforms and faces of the preset's shapes, after two warm-up steps. Peak memory is the
process's maximum RSS on CPU and `torch.cuda.max_memory_allocated` on a GPU. Writes
benchmarks/results/pretrain_<device>.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
DEFAULT_BATCH = {"tiny": 8, "small": 64, "base": 8}


NOTES_MARKER = "<!-- notes: kept when the table above is regenerated -->"


def measure(preset: str, batch_size: int, steps: int, device: str, bf16: bool) -> dict:
    import torch

    from scldm.config import EncoderStageConfig, load_config
    from scldm.losses import encoder_stage_loss
    from scldm.training.encoders import build_model

    torch.manual_seed(0)
    cfg = load_config(EncoderStageConfig, preset, stage="pretrain")
    frontend, model = build_model(cfg)
    model = model.to(device, memory_format=torch.channels_last)  # as training does
    frontend = frontend.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as training
    size = cfg.data.image_size
    audio_s = cfg.train_crop_seconds or frontend.config.segment_seconds  # what a step sees
    wave = torch.randn(batch_size, round(audio_s * frontend.config.sample_rate), device=device)
    wave = wave * 0.1
    face = torch.rand(batch_size, 3, size, size, device=device) * 2 - 1
    reconstructed = max(1, math.ceil(cfg.recon_fraction * batch_size))  # as training
    batch = {"speaker": torch.arange(batch_size, device=device), "face": face}
    weights = {**cfg.loss_weights, "loss/lpips": 0.0}  # LPIPS needs the user's backbone file
    dtype = torch.bfloat16 if bf16 else torch.float32

    def step() -> None:
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=bf16):
            outputs = model(frontend(wave), face, num_reconstructed=reconstructed)
            loss, _ = encoder_stage_loss(outputs, batch, weights)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    return {
        "preset": preset,
        "params_m": params / 1e6,
        "batch": batch_size,
        "decoded": reconstructed,
        "audio_s": audio_s,
        "image": size,
        "samples_per_s": batch_size * steps / seconds,
        "s_per_step": seconds / steps,
        "peak_mib": peak,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "base"])
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one preset
    args = parser.parse_args()
    if args.one:
        batch = args.batch_size or DEFAULT_BATCH[args.one]
        print(json.dumps(measure(args.one, batch, args.steps, args.device, args.bf16)))
        return
    rows = []
    for preset in args.presets:
        cmd = [sys.executable, __file__, "--one", preset, "--steps", str(args.steps)]
        cmd += ["--device", args.device] + (["--bf16"] if args.bf16 else [])
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    name = "cpu" if args.device == "cpu" else args.device.replace(":", "")
    lines = [
        f"# Stage-1 training speed ({args.device}{', bf16' if args.bf16 else ''})",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"{args.steps} timed steps after 2 warm-up steps; model + loss + AdamW only (no data "
        "loading, no LPIPS). Peak memory: max RSS of the process (CPU) or "
        "`max_memory_allocated` (GPU).",
        "",
        "| preset | parameters | audio | faces | batch (faces decoded) | samples/s | s/step "
        "| peak memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['params_m']:.2f} M | {r['audio_s']:g} s | {r['image']} px | "
            f"{r['batch']} ({r['decoded']}) | {r['samples_per_s']:.1f} | {r['s_per_step']:.2f} | "
            f"{r['peak_mib']:.0f} MiB |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.mkdir(exist_ok=True)
    suffix = "_bf16" if args.bf16 else ""
    path = RESULTS / f"pretrain_{name}{suffix}.md"
    # hand-written notes below the marker survive a rerun; the table above it is replaced
    old = path.read_text() if path.is_file() else ""
    notes = old[old.index(NOTES_MARKER) :] if NOTES_MARKER in old else f"\n{NOTES_MARKER}\n"
    path.write_text(table + "\n" + notes.lstrip("\n"))


if __name__ == "__main__":
    main()
