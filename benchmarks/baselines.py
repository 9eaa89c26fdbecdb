"""Methods side by side: training samples/s (from their runs' logs) and faces/s at generation.

    python benchmarks/baselines.py --data runs/sv2k \\
        --model scldm=runs/cmp/runs/scldm/seed0/ldm/pipeline \\
        --model speech2face=runs/cmp/runs/speech2face/seed0/pipeline \\
        --run scldm=runs/cmp/runs/scldm/seed0/encoders,runs/cmp/runs/scldm/seed0/ldm \\
        --run speech2face=runs/cmp/runs/speech2face/seed0

Generation: the first `--voices` test speakers of DATA (one clip each, read before the clock
starts), one face per voice, all voices in one call and then one voice alone (median of a few
calls), after a warm-up, with each pipeline's saved defaults (SCLDM: its sampler, steps and
guidance). Parameters: every parameter of the pipeline's networks (what generates, not the
teachers or discriminators that stay in the run folder).

Training: for each run folder (stage folders of a method joined by commas; Speech2Face's
phases are sub-folders), the median `train/samples_per_sec` its scalars.jsonl logged, and the
wall time of its log.txt (first to last line). These are what the runs measured while they
trained, so they carry that machine's load: the table says so. Writes
benchmarks/results/baselines_<device>.md (or `--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _load(path: str):
    import torch  # noqa: F401  (before diffusers, for its device checks)

    index = json.loads((Path(path) / "model_index.json").read_text())
    if index["_class_name"] == "SpeechToFacePipeline":
        from scldm.diffusion.pipeline import SpeechToFacePipeline as cls
    else:
        from scldm.baselines import pipeline_class

        cls = pipeline_class(index["_class_name"])
    pipe = cls.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generation(path: str, data: str, voices: int, device: str) -> dict:
    import torch
    from sampling import pick_voices  # the same voices as the sampler benchmark

    pipe = _load(path).to(device)
    waves = [pipe.frontend.load(Path(data) / row["audio"]) for row in pick_voices(data, voices)]
    params = sum(
        p.numel()
        for m in pipe.components.values()
        if isinstance(m, torch.nn.Module)
        for p in m.parameters()
    )

    def run(batch):
        gens = [torch.Generator().manual_seed(i) for i in range(len(batch))]
        start = time.perf_counter()
        pipe(batch, generator=gens, output_type="pt")
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(waves[:2])
    batched = run(waves)
    single = [run(waves[:1]) for _ in range(5)]
    return {
        "params": params,
        "faces_per_s": len(waves) / batched,
        "faces_per_s_b1": 1 / statistics.median(single),
    }


def training(folders: list[str]) -> dict:
    """Median logged samples/s per stage folder (phases included) and the summed wall time."""
    rates, minutes = {}, 0.0
    for folder in map(Path, folders):
        for scalars in sorted(folder.rglob("scalars.jsonl")):
            values = [
                json.loads(line).get("train/samples_per_sec")
                for line in scalars.read_text().splitlines()
                if line
            ]
            values = [v for v in values if v is not None]
            if values:
                rates[str(scalars.parent.relative_to(folder.parent))] = statistics.median(values)
        log = folder / "log.txt"
        if log.is_file():
            lines = [line for line in log.read_text().splitlines() if line[:4].isdigit()]
            stamp = lambda line: datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S")  # noqa: E731
            minutes += (stamp(lines[-1]) - stamp(lines[0])).total_seconds() / 60
    return {"samples_per_s": rates, "minutes": minutes}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", required=True)
    p.add_argument("--model", action="append", default=[], metavar="NAME=PIPELINE")
    p.add_argument("--run", action="append", default=[], metavar="NAME=RUN[,RUN]")
    p.add_argument("--voices", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    import torch

    models = dict(m.split("=", 1) for m in args.model)
    runs = {k: v.split(",") for k, v in (r.split("=", 1) for r in args.run)}
    rows = []
    for name in dict.fromkeys([*models, *runs]):
        row = {"name": name}
        if name in models:
            row |= generation(models[name], args.data, args.voices, args.device)
        if name in runs:
            row |= training(runs[name])
        rows.append(row)
        print(row)
    lines = [
        f"# Methods side by side: generation speed and training throughput ({args.device})",
        "",
        f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; "
        f"{datetime.now():%Y-%m-%d}; 1-minute load average at the end "
        f"{os.getloadavg()[0]:.2f}. Generation: {args.voices} test voices of `{args.data}`, one "
        "face each with the pipeline's saved defaults; faces/s batched = all voices in one "
        "call; batch 1 = one voice alone (median of 5). Training: the median samples/s each "
        "run logged (stage 1 and 2 of SCLDM; the teacher, decoder and voice phases of "
        "Speech2Face; the voice and GAN phases of Wen et al.; the GAN phase of Wav2Pix) and "
        "the wall time of its log, as the runs measured them (they shared the machine with "
        "other jobs, each at 1 thread).",
        "",
        "| method | parameters | faces/s (batched) | faces/s (batch 1) | training samples/s "
        "(median per stage) | training minutes |",
        "|---|---:|---:|---:|---|---:|",
    ]
    nan = float("nan")
    for r in rows:
        rates = ", ".join(f"{k} {v:.0f}" for k, v in r.get("samples_per_s", {}).items()) or "n/a"
        cells = [
            f"{r.get('params', 0) / 1e6:.2f} M",
            f"{r.get('faces_per_s', nan):.1f}",
            f"{r.get('faces_per_s_b1', nan):.1f}",
            rates,
            f"{r.get('minutes', nan):.1f}",
        ]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    out = args.out or RESULTS / f"baselines_{args.device.split(':')[0]}.md"
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out)
    print("\n".join(lines))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
