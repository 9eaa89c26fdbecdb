"""Samplers compared: seconds per face, peak memory and oracle scores per scheduler × steps.

    python benchmarks/sampling.py --model runs/demo/ldm/pipeline --data runs/demo/data \\
        --oracle runs/demo/oracle
    python benchmarks/sampling.py --model ... --data ... --oracle ... --device cuda --bf16 \\
        --voices 200

The voices are the first `--voices` test speakers of DATA (one clip each, read from disk
before the clock starts). Every setting runs in a fresh process: the pipeline with
`make_scheduler(NAME, ...)` generates one face per voice, all voices in one batch and then one
voice alone (repeated for a few seconds, median), after 2-step warm-ups. Voice i is always
drawn with `torch.Generator().manual_seed(seed + i)`, so every setting starts from the same
noise and a voice's face at batch 1 is its face in the batch. Peak memory is the process's
maximum RSS on CPU (imports and the model included) and `torch.cuda.max_memory_allocated` on a
GPU. The reference is DDPM with `--reference-steps` steps on the same voices and seeds.

With `--oracle`, every setting's faces are scored against the manifest's labels (gender
agreement, age within ±10 years) and by their distance to the reference: the mean over voices
of 100·(1 − cos) between the oracle features of the face and of the reference face of the same
voice and seed. DDPM is a stochastic sampler, so the reference is one draw among many; the
`--floor` row repeats it with other seeds (seed + voices + i), and its distance is how far two
draws of the reference lie apart for the same voice. Writes
benchmarks/results/sampling_<device>.md (or `--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
BATCH1_SECONDS = 3.0  # repeat the batch-1 call until this much time has passed (at most 5 times)


def pick_voices(data: str | Path, n: int) -> list[dict[str, Any]]:
    """The first clip of each of the first `n` test speakers, in manifest order."""
    from scldm.data.manifest import read_manifest

    rows, seen = [], set()
    for row in read_manifest(data, split="test"):
        if row["speaker_id"] not in seen:
            seen.add(row["speaker_id"])
            rows.append(row)
        if len(rows) == n:
            break
    return rows


# --- One setting, in its own process -----------------------------------------------------------


def measure(args: argparse.Namespace, scheduler: str, steps: int, faces_path: Path) -> dict:
    """Time one scheduler × steps and save its faces (N, 3, H, W) in [0, 1] to `faces_path`."""
    import torch
    from diffusers.utils import logging as diffusers_logging

    from scldm.diffusion.pipeline import SpeechToFacePipeline
    from scldm.diffusion.sampling import make_scheduler

    diffusers_logging.set_verbosity_error()  # the training scheduler's extra keys
    diffusers_logging.disable_progress_bar()
    device, cuda = args.device, args.device.startswith("cuda")
    rows = pick_voices(args.data, args.voices)
    pipe = SpeechToFacePipeline.from_pretrained(args.model).to(device)
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    waves = [pipe.frontend.load(Path(args.data) / r["audio"]) for r in rows]  # (S,) each

    def generate(voices: list[torch.Tensor], num_steps: int) -> tuple[torch.Tensor, float]:
        generators = [torch.Generator().manual_seed(args.seed + i) for i in range(len(voices))]
        start = time.perf_counter()
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=args.bf16):
            images = pipe(
                voices,
                num_inference_steps=num_steps,
                guidance_scale=args.guidance,
                temperature=args.temperature,
                generator=generators,
                output_type="pt",
            ).images
        images = images.float().cpu()  # (B, 3, H, W) in [0, 1]; waits for the GPU
        return images, time.perf_counter() - start

    generate(waves, 2)  # warm-up, at both batch sizes
    generate(waves[:1], 2)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    faces, seconds = generate(waves, steps)
    single, started = [], time.perf_counter()
    while not single or (time.perf_counter() - started < BATCH1_SECONDS and len(single) < 5):
        single.append(generate(waves[:1], steps)[1])
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.save(faces, faces_path)
    return {
        "scheduler": scheduler,
        "steps": steps,
        "seed": args.seed,
        "voices": len(waves),
        "s_per_face": seconds / len(waves),
        "s_per_face_b1": statistics.median(single),
        "batch1_repeats": len(single),
        "peak_mib": peak,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
    }


# --- Oracle scores ------------------------------------------------------------------------------


def score(oracle, faces, reference, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Gender and age of faces (N, 3, H, W) in [0, 1] against `rows`, and the oracle-feature
    distance 100·(1 − cos) to the reference faces of the same voices."""
    import torch
    import torch.nn.functional as F

    from scldm.evaluation.synthvox_oracle import attribute_metrics

    with torch.no_grad():
        x, ref = faces * 2 - 1, reference * 2 - 1
        labels = oracle.labels(oracle.predict_attributes(x))
        cos = F.cosine_similarity(oracle.extract_features(x), oracle.extract_features(ref), dim=1)
    names = ("gender", "age")
    metrics = attribute_metrics(
        {n: labels[n] for n in names}, {n: [r[n] for r in rows] for n in names}
    )
    return {
        "gender_acc": metrics["gender_acc"],
        "age_within_10": metrics["age_within_10"],
        "age_mae": metrics["age_mae"],
        "distance": max(0.0, float(100 * (1 - cos).mean())),  # no "-0.00" from rounding
    }


def between_voices(oracle, reference) -> float:
    """Mean 100·(1 − cos) between the reference faces of different voices: the scale against
    which a setting's distance to the reference reads."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        f = F.normalize(oracle.extract_features(reference * 2 - 1), dim=1)
    n = len(f)
    if n < 2:
        return float("nan")
    cos = f @ f.T
    return float(100 * (1 - (cos.sum() - cos.diagonal().sum()) / (n * (n - 1))))


# --- Driver -------------------------------------------------------------------------------------


def _cell(row: dict, key: str, fmt: str) -> str:
    return format(row[key], fmt) if key in row else "–"


def table(args: argparse.Namespace, rows: list[dict], scale: float | None, load: float) -> str:
    first = rows[0]
    where = (
        first["gpu"]
        if first["gpu"]
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{first['threads']} torch thread{'s' if first['threads'] > 1 else ''}"
    )
    lines = [
        f"# Samplers: speed and distance to DDPM-{args.reference_steps} "
        f"({args.device}{', bf16' if args.bf16 else ''})",
        "",
        f"{where}; Python {platform.python_version()}; 1-minute load average {load:.2f} at the "
        f"start (the cores may have been shared). Pipeline `{args.model}`, {first['voices']} "
        f"test voices of `{args.data}` (one clip each), one face per voice, guidance "
        f"{args.guidance:g}, temperature {args.temperature:g}, voice i drawn with seed "
        f"{args.seed} + i in every setting.",
        "",
        "s/face (batched): one call for all voices, divided by their number; s/face (batch 1): "
        "one voice alone, median of up to 5 calls. Both include the front end, speech encoder "
        "and face decoder, not the reading of the audio. Peak memory: max RSS of the process "
        "(CPU, imports and model included) or `max_memory_allocated` (GPU), each setting in a "
        "fresh process.",
        "",
    ]
    if args.oracle:
        lines += [
            f"Oracle `{args.oracle}`: gender agreement and age within ±10 y against the "
            f"manifest's labels; distance = mean 100·(1 − cos) of the oracle features of a face "
            f"and the DDPM-{args.reference_steps} face of the same voice and seed (0 for the "
            f"reference itself). For scale: two different voices' reference faces are "
            f"{scale:.1f} apart on average."
            + (
                f" The 'other seeds' row draws the reference again with seeds "
                f"{args.seed + args.voices} + i: its distance is the reference's own spread."
                if args.floor
                else ""
            ),
            "",
        ]
    lines += [
        "| scheduler | steps | s/face (batched) | s/face (batch 1) | peak memory | gender acc "
        f"| age ±10 | distance to DDPM-{args.reference_steps} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = r["scheduler"] + (", other seeds" if r["seed"] != args.seed else "")
        lines.append(
            f"| {name} | {r['steps']} | {r['s_per_face']:.4f} | "
            f"{r['s_per_face_b1']:.3f} | {r['peak_mib']:.0f} MiB | "
            f"{_cell(r, 'gender_acc', '.3f')} | {_cell(r, 'age_within_10', '.3f')} | "
            f"{_cell(r, 'distance', '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="a pipeline folder")
    parser.add_argument("--data", type=Path, required=True, help="a prepared dataset")
    parser.add_argument("--oracle", type=Path, help="a SynthVoxOracle folder; scores the faces")
    parser.add_argument(
        "--voices",
        type=int,
        default=32,
        help="test speakers, one clip each (default 32: the DDPM-1000 reference of the small "
        "preset then takes about 5 min on one busy core)",
    )
    parser.add_argument("--schedulers", default="ddpm,ddim,dpm++,unipc")
    parser.add_argument("--steps", default="10,25,50")
    parser.add_argument("--reference-steps", type=int, default=1000)
    parser.add_argument("--guidance", type=float, help="default: the pipeline's sampling config")
    parser.add_argument(
        "--temperature",
        type=float,
        help="τ of the starting noise, as `scldm generate` (DDPM's per-step noise is not scaled); "
        "default: the pipeline's sampling config",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also run the reference with other seeds: the distance between two of its draws",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/sampling_<device>.md")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: NAME:STEPS
    parser.add_argument("--faces", type=Path, help=argparse.SUPPRESS)  # internal: where to save
    args = parser.parse_args()
    if args.one:
        name, steps = args.one.rsplit(":", 1)
        print(json.dumps(measure(args, name, int(steps), args.faces)))
        return

    from scldm.diffusion.sampling import SCHEDULERS

    schedulers = args.schedulers.split(",")
    unknown = [s for s in schedulers if s not in SCHEDULERS]
    if unknown:
        parser.error(f"unknown scheduler {unknown[0]!r}; known: {', '.join(SCHEDULERS)}")
    if not (args.model / "model_index.json").is_file():
        parser.error(f"{args.model} is not a pipeline folder (no model_index.json)")
    from scldm.diffusion.pipeline import SpeechToFacePipeline

    saved = SpeechToFacePipeline.from_pretrained(args.model).sampling  # its saved defaults
    if args.guidance is None:
        args.guidance = saved.guidance_scale
    if args.temperature is None:
        args.temperature = saved.temperature
    voices = pick_voices(args.data, args.voices)
    if len(voices) < args.voices:
        print(f"only {len(voices)} test speakers in {args.data}", flush=True)
    reference = ("ddpm", args.reference_steps, args.seed)
    settings = [reference] + [
        (s, int(n), args.seed)
        for s in schedulers
        for n in args.steps.split(",")
        if (s, int(n)) != reference[:2]
    ]
    if args.floor:
        settings.append(("ddpm", args.reference_steps, args.seed + args.voices))
    oracle = None
    if args.oracle:
        from scldm.evaluation.synthvox_oracle import SynthVoxOracle

        oracle = SynthVoxOracle.from_pretrained(args.oracle).eval()
    load = os.getloadavg()[0]
    rows, reference_faces = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, steps, seed) in enumerate(settings):
            print(f"[{i + 1}/{len(settings)}] {name}, {steps} steps, seed {seed} ...", flush=True)
            faces_path = Path(tmp) / f"{i}.pt"
            cmd = [sys.executable, __file__, "--one", f"{name}:{steps}", "--faces", str(faces_path)]
            cmd += ["--model", str(args.model), "--data", str(args.data)]
            cmd += ["--voices", str(args.voices), "--guidance", str(args.guidance)]
            cmd += ["--temperature", str(args.temperature)]
            cmd += ["--seed", str(seed), "--device", args.device]
            cmd += ["--bf16"] if args.bf16 else []
            out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            if oracle is not None:
                import torch

                faces = torch.load(faces_path)
                reference_faces = faces if reference_faces is None else reference_faces
                row.update(score(oracle, faces, reference_faces, voices))
            rows.append(row)
            print("   ", {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    scale = between_voices(oracle, reference_faces) if oracle is not None else None
    text = table(args, rows, scale, load)
    print(text)
    device = "cpu" if args.device == "cpu" else args.device.replace(":", "")
    out = args.out or RESULTS / f"sampling_{device}{'_bf16' if args.bf16 else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
