"""GPU checks of one preset (base by default): training and generation speed, MFU, peak memory
and the largest batch that fits, for SCLDM and the baselines, in bf16 autocast on random data.

    bash benchmarks/gpu.sh                      # on a lent GPU: base → benchmarks/results/gpu.md
    python benchmarks/gpu.py --device cpu --quick --out /tmp/gpu.md   # a smoke test anywhere

Every step is `workloads.build`'s, at random initialisation on inputs of the preset's shapes
(model, loss and optimizer only: no data loading, no EMA). Training stages run at the preset's
batch: 2 warm-up steps, then `--steps` timed steps. MFU = FLOPs per sample
(`flops.flops_per_sample`: forward and backward, a multiply-add counting 2) × samples/s ÷ the
GPU's dense bf16 peak (PEAK_BF16, or `--peak-tflops`). Generation (a face per voice, the
preset's saved sampler settings for SCLDM) runs at batch 1 and 32. Peak memory is
`torch.cuda.max_memory_allocated` from building the part's networks to its last step. The
largest batch doubles the preset's until out of memory (or `--max-batch`, or its time share),
2 steps each. Every part records its failure in the table instead of stopping the run, parts
are skipped once `--budget` seconds have passed, and the table is rewritten after each part,
so a run cut short still leaves one. Writes `--out` (gpu.sh: benchmarks/results/gpu.md).
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import flops
import torch
import workloads

# dense bf16 tensor-core peaks (FLOP/s) by device-name fragment, first match wins: a more
# specific name comes before the one it contains ("H100 PCIe" before "H100", "L40S" before "L4")
PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("B200", 2250e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
)
GENERATION_BATCHES = (1, 32)
WARMUP = 2


def peak_flops(device: torch.device, override_tflops: float | None) -> tuple[float | None, str]:
    """The device's dense bf16 peak in FLOP/s (None when unknown) and its name."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    if override_tflops:
        return override_tflops * 1e12, name
    for fragment, peak in PEAK_BF16:
        if device.type == "cuda" and fragment in name:
            return peak, name
    return None, name or device.type


def default_batch(stage: str, preset: str) -> int:
    """The preset's training batch of `stage`: its phase's where the phase has its own."""
    from scldm.config import (
        DiffusionStageConfig,
        EncoderStageConfig,
        PhaseConfig,
        Speech2FaceConfig,
        Wav2PixConfig,
        WenConfig,
        load_config,
    )

    method, part = stage.split("/")
    if method == "scldm":
        if part == "stage1":
            return load_config(EncoderStageConfig, preset, stage="pretrain").train.batch_size
        return load_config(DiffusionStageConfig, preset, stage="train").train.batch_size
    cls = {"speech2face": Speech2FaceConfig, "wen": WenConfig, "wav2pix": Wav2PixConfig}[method]
    cfg = load_config(cls, preset, stage=f"baselines/{method}")
    phase = getattr(cfg, part, None)  # Speech2Face's teacher and decoder, Wen's voice
    return phase.batch_size if isinstance(phase, PhaseConfig) else cfg.train.batch_size


# --- Measuring ------------------------------------------------------------------------------------


class Runner:
    """The run's settings and clock; each method measures one part."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.preset, self.bf16, self.steps = args.preset, not args.fp32, args.steps
        self.deadline = time.perf_counter() + args.budget
        self.peak, self.device_name = peak_flops(self.device, args.peak_tflops)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def sync(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def fresh(self) -> None:
        """Free the previous part's tensors and start a new peak-memory window."""
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else None

    def _build(self, stage: str, batch: int, optimize: bool) -> workloads.Workload:
        return workloads.build(
            stage, self.preset, batch=batch, device=self.device, bf16=self.bf16, optimize=optimize
        )

    def _rates(self, stage: str, batch: int, calls: int, seconds: float) -> dict:
        per_sample = flops.flops_per_sample(self.preset, stage)
        achieved = per_sample * batch * calls / seconds
        return {
            "calls_per_s": calls / seconds,
            "samples_per_s": batch * calls / seconds,
            "tflops": achieved / 1e12,
            "mfu": achieved / self.peak if self.peak else None,
        }

    def train_speed(self, stage: str) -> dict:
        """Steps/s, samples/s, MFU and peak memory at the preset's batch."""
        batch = default_batch(stage, self.preset)
        self.fresh()
        workload = self._build(stage, batch, optimize=True)
        for _ in range(WARMUP):
            workload.step()
        start = self.sync()
        for _ in range(self.steps):
            workload.step()
        seconds = self.sync() - start
        rates = self._rates(stage, batch, self.steps, seconds)
        return {"batch": batch, **rates, "peak_mib": self.peak_mib()}

    def generation_speed(self, stage: str, batch: int) -> dict:
        """Faces/s of one call on `batch` voices, after a warm-up call; calls repeat for
        `--steps` calls or 10 s, whichever comes first (at least one)."""
        self.fresh()
        workload = self._build(stage, batch, optimize=False)
        workload.step()
        calls, start = 0, self.sync()
        while calls < self.steps and (calls == 0 or time.perf_counter() - start < 10):
            workload.step()
            calls += 1
            self.sync()
        seconds = self.sync() - start
        rates = self._rates(stage, batch, calls, seconds)
        return {"batch": batch, **rates, "peak_mib": self.peak_mib()}

    def _fits(self, stage: str, batch: int) -> bool:
        try:
            workload = self._build(stage, batch, optimize=True)
            for _ in range(2):  # the optimizer's state appears in the first step
                workload.step()
            self.sync()
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        except RuntimeError as e:  # cuDNN or cuBLAS failing to allocate their workspace
            if "out of memory" in str(e).lower():
                return False
            raise

    def largest_batch(self, stage: str, cap: int, seconds: float) -> dict:
        """The preset's batch doubled until out of memory, `cap` or `seconds`: the last that
        fit, and why the search stopped."""
        batch, fit, stop = default_batch(stage, self.preset), None, f"cap {cap}"
        until = time.perf_counter() + seconds
        while batch <= cap:
            if time.perf_counter() > until:
                stop = "time share"
                break
            self.fresh()  # the previous trial's tensors, the exception's frames included
            if not self._fits(stage, batch):
                stop = f"out of memory at {batch}"
                break
            fit, batch = batch, batch * 2
        self.fresh()
        return {"largest_batch": fit, "stopped": stop}


# --- Table ----------------------------------------------------------------------------------------


def _num(value: float | None, fmt: str, unit: str = "") -> str:
    return "–" if value is None else format(value, fmt) + unit


def table(runner: Runner, args: argparse.Namespace, rows: dict, wall: float) -> str:
    peak = f"{runner.peak / 1e12:.0f} TFLOP/s" if runner.peak else "unknown (no MFU)"
    lines = [
        f"# GPU checks, preset {runner.preset} ({args.device}, "
        f"{'bf16 autocast' if runner.bf16 else 'fp32'})",
        "",
        f"{runner.device_name}; torch {torch.__version__}; {datetime.now():%Y-%m-%d %H:%M}; "
        f"{wall:.0f} s in all. `python benchmarks/gpu.py {' '.join(args.argv)}`. Random "
        "weights and inputs of the preset's shapes; model, loss and optimizer only (no data "
        f"loading, no EMA). Dense bf16 peak {peak}; MFU = FLOPs per sample of "
        "benchmarks/flops.py (forward + backward for training, a multiply-add = 2) × "
        f"samples/s ÷ peak. Training: {WARMUP} warm-up steps, then {runner.steps} timed steps. "
        "Peak memory: `max_memory_allocated` from building the networks to the last step.",
        "",
        "| training step | batch | steps/s | samples/s | TFLOP/s | MFU | peak memory "
        "| largest batch |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for stage, title in ((s, workloads.STAGES[s].title) for s in workloads.STAGES):
        if not workloads.STAGES[stage].trains or stage not in rows:
            continue
        r, search = rows[stage], rows.get(f"{stage}:largest", {})
        largest = search.get("error") or (
            f"{_num(search.get('largest_batch'), 'd')} ({search['stopped']})"
            if "stopped" in search
            else "–"
        )
        if "error" in r:
            lines.append(f"| {title} | | {r['error']} | | | | | {largest} |")
            continue
        lines.append(
            f"| {title} | {r['batch']} | {r['calls_per_s']:.2f} | {r['samples_per_s']:.1f} | "
            f"{r['tflops']:.3g} | {_num(r['mfu'], '.1%')} | "
            f"{_num(r['peak_mib'], ',.0f', ' MiB')} | {largest} |"
        )
    lines += [
        "",
        "| generation | batch | faces/s | s per call | TFLOP/s | MFU | peak memory |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for stage, spec in workloads.STAGES.items():
        if spec.trains:
            continue
        for batch in GENERATION_BATCHES:
            r = rows.get(f"{stage}@{batch}")
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {spec.title} | {batch} | {r['error']} | | | | |")
                continue
            lines.append(
                f"| {spec.title} | {batch} | {r['samples_per_s']:.2f} | "
                f"{1 / r['calls_per_s']:.3f} | {r['tflops']:.3g} | {_num(r['mfu'], '.1%')} | "
                f"{_num(r['peak_mib'], ',.0f', ' MiB')} |"
            )
    lines += [
        "",
        "SCLDM's generation: the front end and speech encoder once, the preset's sampler "
        "(steps, guidance: a UNet call on 2B rows per step when guidance ≠ 1) and the face "
        "decoder; the baselines': their networks on random audio of the pipeline's input "
        "length (no file reading, no voice activity detection). Largest batch: doubling the "
        "preset's batch, 2 steps each, until out of memory, the cap or the search's time share.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default=None, help="default: base (tiny with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (10; 2 with --quick)")
    parser.add_argument("--budget", type=float, default=420, help="seconds for all parts")
    parser.add_argument("--max-batch", type=int, default=1024, help="the search's cap")
    parser.add_argument("--search-seconds", type=float, default=45, help="per training stage")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak, overriding the table")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument(
        "--quick", action="store_true", help="tiny preset, 2 steps, no largest-batch search"
    )
    parser.add_argument("--stages", nargs="+", choices=list(workloads.STAGES), default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available (a table of failures would read as GPU figures)")
    args.preset = args.preset or ("tiny" if args.quick else "base")
    args.steps = args.steps or (2 if args.quick else 10)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    torch.manual_seed(0)
    if args.device.startswith("cuda"):  # as training sets them (scldm.training.loop)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    runner, start = Runner(args), time.perf_counter()
    stages = args.stages or list(workloads.STAGES)
    parts = [(s, "train") for s in stages if workloads.STAGES[s].trains]
    parts += [(s, b) for s in stages if not workloads.STAGES[s].trains for b in GENERATION_BATCHES]
    if not args.quick:  # last: the most time-variable part
        parts += [(s, "largest") for s in stages if workloads.STAGES[s].trains]
    rows: dict[str, dict] = {}
    for stage, what in parts:
        key = {"train": stage, "largest": f"{stage}:largest"}.get(what, f"{stage}@{what}")
        if runner.left() < 5:
            rows[key] = {"error": "skipped (time budget)"}
        else:
            print(f"[{time.perf_counter() - start:5.0f} s] {stage} {what} ...", flush=True)
            try:
                if what == "train":
                    rows[key] = runner.train_speed(stage)
                elif what == "largest":
                    share = min(args.search_seconds, runner.left() - 5)
                    rows[key] = runner.largest_batch(stage, args.max_batch, share)
                else:
                    rows[key] = runner.generation_speed(stage, what)
            except LookupError as e:  # a stage the preset does not have
                rows[key] = {"error": f"n/a: {e}"}
            except Exception as e:  # noqa: BLE001 (recorded in the table; the run goes on)
                rows[key] = {"error": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"}
            runner.fresh()
        print("   ", rows[key], flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table(runner, args, rows, time.perf_counter() - start))
    text = table(runner, args, rows, time.perf_counter() - start)
    args.out.write_text(text)
    print(text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
