"""Stage-2 training speed: on cached latents and tokens (what `scldm train` does) vs re-encoding
the audio and faces at every step.

    python benchmarks/stage2_train.py --encoders runs/demo/encoders --data runs/demo/data
    python benchmarks/stage2_train.py --encoders ... --data ... --config base --device cuda \\
        --bf16 --steps 50

Both modes take the same training step of the `--config` preset: `diffusion_loss` of a fresh
`build_unet(cfg.unet)` (prior shift λ_train, condition dropout), backward, gradient clipping
and AdamW. They differ in where a batch of (z_0, tokens) comes from:

  cached    `build_cache` of the train split (built now if the stage-1 run has none; that
            one-off cost is reported, not timed per step), then the TensorDataset and
            EpochSampler batches of `scldm train`.
  re-encode `SpeechFaceDataset` reads each clip and face from disk, then the frozen front end
            and speech encoder, and the face encoder, run under no_grad, as `build_cache` does.

Each mode runs in a fresh process: 2 warm-up steps, then `--steps` timed steps, split into
waiting for the batch, encoding (re-encode only) and the UNet step. Peak memory is the process's
maximum RSS on CPU and `torch.cuda.max_memory_allocated` on a GPU. The face prior and latent
scale are the run's `prior/` (from `scldm prior`) when it has one, else zeros and 1: their
values do not change the cost. Writes benchmarks/results/stage2_train_<device>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MODES = ("cached", "re-encode")
TARGET = 5.0  # issue 5: caching must make stage 2 at least this much faster on a CPU


def measure(args: argparse.Namespace, mode: str) -> dict:
    import torch
    from diffusers import DDPMScheduler
    from torch.utils.data import BatchSampler, DataLoader, TensorDataset

    from scldm.config import DiffusionStageConfig, load_config
    from scldm.data.datasets import SpeechFaceDataset, collate
    from scldm.diffusion.objective import diffusion_loss
    from scldm.diffusion.prior import PRIOR_FILE, load_prior
    from scldm.diffusion.unet import build_unet
    from scldm.training.diffusion import EpochSampler, unet_config_for
    from scldm.training.latents import build_cache, load_encoders, prior_folder
    from scldm.training.loop import batch_stream

    device, cuda = args.device, args.device.startswith("cuda")

    def autocast() -> torch.autocast:
        return torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=args.bf16)

    cfg = load_config(DiffusionStageConfig, args.config, stage="train")
    torch.manual_seed(cfg.train.seed)
    encoders = load_encoders(args.encoders)
    face = encoders.face_encoder
    side = encoders.image_size // face.downsampling
    latent_shape = (face.config.latent_channels, side, side)
    unet = build_unet(unet_config_for(cfg.unet, latent_shape)).to(device).train()
    if (prior_folder(encoders) / PRIOR_FILE).is_file():
        report = load_prior(prior_folder(encoders))
        prior, scale = report.prior, report.scale
    else:
        prior, scale = torch.zeros(latent_shape), 1.0
    prior = prior.to(device)
    noise_scheduler = DDPMScheduler(**cfg.scheduler)
    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
        weight_decay=cfg.optim.weight_decay,
        fused=True,  # as `scldm train`
    )

    def sync() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    # --- where the batches come from ---
    cache_seconds, cache_built = 0.0, False
    if mode == "cached":
        start = time.perf_counter()
        existing = set((encoders.path.parent / "cache").glob("train-*"))
        cache = build_cache(encoders, args.data, "train", num_workers=args.workers)
        cache_built = cache.path not in existing
        cache_seconds = time.perf_counter() - start
        dataset = TensorDataset(cache.latents.float() * scale, cache.tokens.float())
        sampler = EpochSampler(len(dataset), cfg.train.seed)
        loader = DataLoader(
            dataset, batch_sampler=BatchSampler(sampler, args.batch_size, drop_last=True)
        )
    else:
        encoders.frontend.to(device)
        encoders.speech_encoder.to(device)
        encoders.face_encoder.to(device)
        dataset = SpeechFaceDataset(
            args.data, "train", frontend=encoders.frontend, image_size=encoders.image_size
        )
        sampler = EpochSampler(len(dataset), cfg.train.seed)
        loader = DataLoader(
            dataset,
            batch_size=args.batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=args.workers,
            drop_last=True,
        )
    if len(dataset) < args.batch_size:
        raise SystemExit(f"{len(dataset)} training clips < --batch-size {args.batch_size}")
    stream = batch_stream(loader, sampler, 0, None)  # start_step 0: no accelerator needed

    def encode(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_0 scaled (B, C, h, w), tokens (B, N, D)) of a dataset batch, as build_cache does."""
        with torch.no_grad(), autocast():
            wave, face = batch["waveform"].to(device), batch["face"].to(device)
            tokens = encoders.speech_encoder(encoders.frontend(wave)).tokens  # (B, N, D)
            z0 = encoders.face_encoder.encode(face)  # (B, C, h, w), unscaled
        return z0.float() * scale, tokens.float()

    def step(z0: torch.Tensor, tokens: torch.Tensor) -> None:
        with autocast():
            loss, _ = diffusion_loss(
                unet,
                noise_scheduler,
                z0,
                tokens,
                prior=prior,
                prior_scale=cfg.lambda_train,
                cond_drop=cfg.cond_drop,
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = {"data": 0.0, "encode": 0.0, "step": 0.0}
    for i in range(2 + args.steps):
        if i == 2:  # after the warm-up
            times = dict.fromkeys(times, 0.0)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
        t0 = sync()
        batch = next(stream)
        t1 = sync()
        if mode == "cached":
            z0, tokens = (x.to(device) for x in batch)
        else:
            z0, tokens = encode(batch)
        t2 = sync()
        step(z0, tokens)
        t3 = sync()
        times["data"] += t1 - t0
        times["encode"] += t2 - t1
        times["step"] += t3 - t2
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = sum(times.values())
    return {
        "mode": mode,
        "config": args.config,
        "clips": len(dataset),
        "batch": args.batch_size,
        "steps": args.steps,
        "samples_per_s": args.batch_size * args.steps / seconds,
        "s_per_step": seconds / args.steps,
        **{f"{k}_s": v / args.steps for k, v in times.items()},
        "peak_mib": peak,
        "cache_s": cache_seconds,
        "cache_built": cache_built,
        "unet_params_m": sum(p.numel() for p in unet.parameters()) / 1e6,
        "latent_shape": list(latent_shape),
        "image_size": encoders.image_size,
        "segment_s": encoders.frontend.segment_samples / encoders.frontend.config.sample_rate,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
    }


def table(args: argparse.Namespace, rows: dict[str, dict], load: float) -> str:
    cached, fresh = rows["cached"], rows["re-encode"]
    speedup = cached["samples_per_s"] / fresh["samples_per_s"]
    where = (
        cached["gpu"]
        if cached["gpu"]
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{cached['threads']} torch thread{'s' if cached['threads'] > 1 else ''}"
    )
    shape = "×".join(str(n) for n in cached["latent_shape"])
    lines = [
        f"# Stage-2 training speed: cached latents vs re-encoding "
        f"({args.device}{', bf16' if args.bf16 else ''})",
        "",
        f"{where}; Python {platform.python_version()}; 1-minute load average {load:.2f} at the "
        f"start (the cores may have been shared). Preset `{args.config}`: UNet "
        f"{cached['unet_params_m']:.2f} M parameters on latents {shape} of "
        f"{cached['image_size']} px faces, {cached['segment_s']:g} s of audio; stage 1 "
        f"`{args.encoders}`, {cached['clips']} training clips of `{args.data}`, batch "
        f"{args.batch_size}, {args.steps} timed steps after 2 warm-up steps, "
        f"{args.workers} data-loader workers. Peak memory: max RSS of the process (CPU) or "
        "`max_memory_allocated` (GPU), each mode in a fresh process.",
        "",
        "| batches from | samples/s | s/step | of which: batch | encoders | UNet step "
        "| peak memory |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (cached, fresh):
        lines.append(
            f"| {r['mode']} | {r['samples_per_s']:.1f} | {r['s_per_step']:.3f} | "
            f"{r['data_s']:.3f} | {r['encode_s']:.3f} | {r['step_s']:.3f} | "
            f"{r['peak_mib']:.0f} MiB |"
        )
    verdict = "meets" if speedup >= TARGET else "misses"
    lines += [
        "",
        f"Speed-up of the cache: **{speedup:.1f}×** ({verdict} issue 5's target of ≥ {TARGET:g}× "
        "on a CPU). For the cached mode *encoders* is the copy of the batch to the device.",
        f"A cache can at most remove the batch and encoder columns: with this preset's UNet step "
        f"the bound is (batch + encoders + UNet step) / UNet step = "
        f"{fresh['s_per_step'] / fresh['step_s']:.1f}× for these encoders and this UNet.",
    ]
    build = "built" if cached["cache_built"] else "loaded (it existed)"
    once = (fresh["data_s"] + fresh["encode_s"]) / args.batch_size * cached["clips"]
    saved = fresh["s_per_step"] - cached["s_per_step"]
    lines.append(
        f"The cache was {build} in {cached['cache_s']:.1f} s. Encoding the {cached['clips']} "
        f"clips once costs about {once:.0f} s at the re-encode rate; the cache saves "
        f"{saved:.3f} s a step, so it pays for itself after about {once / saved:.0f} steps."
        if saved > 0
        else f"The cache was {build} in {cached['cache_s']:.1f} s."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoders", type=Path, required=True, help="a `scldm pretrain` run")
    parser.add_argument("--data", type=Path, required=True, help="its prepared dataset")
    parser.add_argument("--config", default="small", help="stage-2 preset (default: small)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    parser.add_argument(
        "--out", type=Path, help="default: benchmarks/results/stage2_train_<device>.md"
    )
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args, args.one)))
        return
    load = os.getloadavg()[0]
    rows = {}
    for mode in MODES:
        print(f"{mode} ...", flush=True)
        cmd = [sys.executable, __file__, "--one", mode, "--encoders", str(args.encoders)]
        cmd += ["--data", str(args.data), "--config", args.config, "--steps", str(args.steps)]
        cmd += ["--batch-size", str(args.batch_size), "--workers", str(args.workers)]
        cmd += ["--device", args.device] + (["--bf16"] if args.bf16 else [])
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
        rows[mode] = json.loads(out.strip().splitlines()[-1])
        print("   ", {k: round(v, 4) if isinstance(v, float) else v for k, v in rows[mode].items()})
    text = table(args, rows, load)
    print(text)
    device = "cpu" if args.device == "cpu" else args.device.replace(":", "")
    out = args.out or RESULTS / f"stage2_train_{device}{'_bf16' if args.bf16 else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
