"""Cost of stage 2's face-decoder refinement (`decoder.steps` of the stage-2 config).

    python benchmarks/decoder_refine.py --encoders runs/enc --data data/sv2k
    python benchmarks/decoder_refine.py --encoders ... --data ... --config base --device cuda

Loads the training faces and their cached latents as `scldm train` does (`unique_faces`, the
cache built now if the stage-1 run has none), then times `--steps` steps of `refine` (of the
new decoder the preset's `decoder.model` names, or of stage 1's) after 3 warm-up steps, once
per precision (`decoder.precision`: float32, and bfloat16 autocast where the device runs it
natively, which the presets' "auto" then takes). With a discriminator in the preset
(`decoder.adversarial`), the steps before its `start_step` and those after it are timed apart
(the latter with the discriminator's own step and, with `decoder.anchor`, the frozen copy's
forward). Reports s/step, the projected time of the preset's `decoder.steps`, the faces held in
memory and the process's peak memory (max RSS on CPU, `max_memory_allocated` on a GPU). Writes
benchmarks/results/decoder_refine_<device>.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--encoders", type=Path, required=True, help="a `scldm pretrain` run")
    p.add_argument("--data", type=Path, required=True, help="the prepared dataset")
    p.add_argument("--config", default="small", help="stage-2 preset or YAML (default: small)")
    p.add_argument("--steps", type=int, default=30, help="timed steps (default: 30)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--out", type=Path, help="default: benchmarks/results/decoder_refine_<device>.md"
    )
    args = p.parse_args()

    import torch

    from scldm.config import AdversarialConfig, DiffusionStageConfig, load_config
    from scldm.training.decoder import new_decoder, refine, unique_faces, use_bf16
    from scldm.training.latents import build_cache, load_encoders

    cfg = load_config(DiffusionStageConfig, args.config, stage="train")
    encoders = load_encoders(args.encoders)
    cache = build_cache(encoders, args.data, "train")
    tick = time.perf_counter()
    latents, faces = unique_faces(cache, args.data, encoders.image_size)
    load_s = time.perf_counter() - tick
    cuda = args.device.startswith("cuda")
    model = cfg.decoder.model
    decoder = new_decoder(encoders.face_decoder, model) if model else encoders.face_decoder
    params = sum(p.numel() for p in decoder.parameters())

    adversarial = cfg.decoder.adversarial
    # the phases of a refinement: the pixel loss alone, then (from adversarial.start_step) with
    # the discriminator, timed from its first step
    phases = {"pixel": dataclasses.replace(cfg.decoder, adversarial=AdversarialConfig(), anchor=0)}
    if adversarial.enabled:
        phases["adversarial"] = dataclasses.replace(
            cfg.decoder, adversarial=dataclasses.replace(adversarial, start_step=0)
        )
    preset_steps = cfg.decoder.steps
    start = min(adversarial.start_step, preset_steps) if adversarial.enabled else preset_steps
    counts = {"pixel": start, "adversarial": preset_steps - start}

    def run(phase: str, steps: int, precision: str) -> float:
        settings = dataclasses.replace(phases[phase], steps=steps, precision=precision)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        refine(decoder, latents, faces, settings, device=args.device, progress=False)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    precisions = ["no"] + (["bf16"] if use_bf16("auto", torch.device(args.device)) else [])
    per_step: dict[str, dict[str, float]] = {precision: {} for precision in precisions}
    for precision in precisions:
        for phase in phases:
            run(phase, 3, precision)  # warm-up
            per_step[precision][phase] = run(phase, args.steps, precision) / args.steps
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    device = "cuda" if cuda else "cpu"
    auto = "bf16" if use_bf16(cfg.decoder.precision, torch.device(args.device)) else "no"
    name = {"no": "float32", "bf16": "bfloat16 autocast"}
    rows = [
        f"| {name[k]}{' (the preset)' if k == auto else ''} | {t['pixel']:.3f} "
        + (f"| {t['adversarial']:.3f} " if adversarial.enabled else "")
        + f"| {cfg.decoder.batch_size / t['pixel']:.1f} "
        f"| {sum(counts[ph] * s for ph, s in t.items()) / 60:.1f} min |"
        for k, t in per_step.items()
    ]
    with_d = "| s/step with the discriminator " if adversarial.enabled else ""
    phases_text = (
        f" The discriminator (shown the box {adversarial.box}) from step {start}"
        + (f", the anchor {cfg.decoder.anchor:g}" if cfg.decoder.anchor else "")
        + "."
        if adversarial.enabled
        else ""
    )
    text = "\n".join(
        [
            f"# Stage-2 face-decoder refinement ({device})",
            "",
            f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
            f"threads; 1-minute load average {os.getloadavg()[0]:.2f} at the end. Preset "
            f"`{args.config}` (decoder.steps {preset_steps}, batch {cfg.decoder.batch_size}); "
            f"stage 1 `{args.encoders}`, {len(faces)} distinct training faces of "
            f"{encoders.image_size} px from `{args.data}`; the decoder "
            f"{'`decoder.model` ' + str(dict(model)) if model else 'of stage 1'} "
            f"({params:,} parameters); {args.steps} timed steps after 3 warm-up steps."
            f"{phases_text}",
            "",
            f"| precision | s/step {with_d}| samples/s | projected time of {preset_steps} steps |",
            "|---|---:|---:|---:|" + ("---:|" if adversarial.enabled else ""),
            *rows,
            "",
            f"Faces in memory {faces.numel() / 2**20:.0f} MiB (uint8), loaded in {load_s:.1f} s; "
            f"peak memory {peak:.0f} MiB.",
            "",
            "The refined decoder is saved in the stage-1 run's cache and reused: later stage-2 "
            "runs with the same stage 1 and settings pay none of this.",
            "",
        ]
    )
    print(text)
    out = args.out or RESULTS / f"decoder_refine_{device}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
