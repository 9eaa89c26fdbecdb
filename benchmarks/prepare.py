"""Speed and resumability of `scldm prepare voxceleb` on a generated VoxCeleb2 layout.

    python benchmarks/prepare.py                      # 2,000 clips of 2-4 s (~10 min on 2 cores)
    python benchmarks/prepare.py --clips 500 --skip-naive

Generates `aac/idXXXXX/<ytid>/NNNNN.m4a` (16 kHz mono AAC, SynthVox voices, made by one ffmpeg
per video with the segment muxer), one folder of 224 px JPEG faces per VGGFace2 id
(SynthVox portraits with camera-like noise) and `vox2_meta.csv` into WORK/raw (kept and reused
when its size matches). Then measures, each run a fresh output folder:

- `scldm prepare voxceleb` with `--workers` 1 and 2 (the command as a user runs it, in its own
  process: import, directory walk, every clip's ffmpeg decode, wav + JPEG writing, manifest);
- the naive way: one ffmpeg process per clip that writes the prepared wav (first 6 s, 16 kHz
  mono PCM) and the centre-cropped 224 px JPEG, 1 and 2 at a time (no manifest, no checks),
  on every k-th clip (`--naive-clips`, default 500: its cost per clip is all it shows);
- resumability: a prepare with 2 workers killed with SIGKILL (its whole process group) when
  about half the clips are written, then rerun; the rerun must report the clips finished
  before the kill as reused and end with a manifest and files identical to an uninterrupted
  run's.

CPU seconds are those of the measured process and its descendants (getrusage), so clips per
CPU second does not depend on what else runs on the machine; wall-clock rates do. Writes
benchmarks/results/prepare_cpu.md (notes below its marker are kept).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]
NOTES_MARKER = "<!-- notes: kept when the table above is regenerated -->"
RATE = 16_000


# --- A generated VoxCeleb2 layout -----------------------------------------------------------


def _write_face(path: Path, speaker, image: int, size: int) -> None:
    from PIL import Image

    from scldm.data.synthvox import render_face

    rng = np.random.default_rng([speaker.index, image])
    face = np.asarray(render_face(speaker, image, size), np.float32)
    face = face + rng.normal(0.0, 3.0, face.shape)  # sensor noise: JPEGs the size of photos'
    Image.fromarray(np.clip(face, 0, 255).astype(np.uint8)).save(path, quality=90)


def _write_video(folder: Path, speaker, video: int, lengths: list[float]) -> None:
    """One video's utterances 00001.m4a, ... of the given lengths, cut by one ffmpeg."""
    from scldm.data.synthvox import synthesize_clip

    wave = synthesize_clip(speaker, video, seconds=sum(lengths))  # (S,) float32
    cuts = ",".join(f"{t:.3f}" for t in np.cumsum(lengths)[:-1])
    folder.mkdir(parents=True, exist_ok=True)
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "f32le", "-ar", str(RATE)]
    cmd += ["-ac", "1", "-i", "-", "-c:a", "aac", "-b:a", "48k", "-f", "segment"]
    cmd += ["-segment_format", "ipod", "-reset_timestamps", "1", "-segment_start_number", "1"]
    cmd += (["-segment_times", cuts] if cuts else []) + [str(folder / "%05d.m4a")]
    subprocess.run(cmd, input=wave.astype("<f4").tobytes(), check=True, capture_output=True)


def make_raw_vox2(
    root: Path,
    *,
    speakers: int,
    clips_per_speaker: int,
    seconds: tuple[float, float] = (2.0, 4.0),
    clips_per_video: int = 8,
    faces_per_speaker: int = 4,
    image_size: int = 224,
    test_every: int = 10,
) -> dict[str, Path]:
    """A VoxCeleb2-layout corpus in `root` (the paths `scldm prepare voxceleb` takes).

    `speakers` × `clips_per_speaker` utterances of uniform random length in `seconds`,
    `clips_per_video` to a video; every `test_every`-th speaker is in VoxCeleb2's test set.
    Reused as it is when `root/spec.json` records the same arguments (it also holds the total
    `audio_seconds`).
    """
    from scldm.data.synthvox import sample_speaker

    spec = {
        "speakers": speakers, "clips_per_speaker": clips_per_speaker, "seconds": list(seconds),
        "clips_per_video": clips_per_video, "faces_per_speaker": faces_per_speaker,
        "image_size": image_size, "test_every": test_every,
    }  # fmt: skip
    paths = {
        "audio_root": root / "vox2_dev_aac",
        "faces_root": root / "vggface2",
        "meta": root / "vox2_meta.csv",
    }
    marker = root / "spec.json"
    if marker.is_file() and json.loads(marker.read_text())["spec"] == spec:
        return paths
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    meta = ["Name \tVoxCeleb2 ID \tVGGFace2 ID \tGender \tSet "]
    videos = []
    for i in range(speakers):
        spk = sample_speaker(0, i)
        vox_id, face_id = f"id{i + 1:05d}", f"n{i + 1:06d}"
        group = "test" if test_every and i % test_every == test_every - 1 else "dev"
        meta.append(f"Speaker_{i:05d} \t{vox_id} \t{face_id} \t{spk.gender} \t{group} ")
        faces = paths["faces_root"] / face_id
        faces.mkdir(parents=True)
        for k in range(faces_per_speaker):
            _write_face(faces / f"{k + 1:04d}_01.jpg", spk, k, image_size)
        for v, start in enumerate(range(0, clips_per_speaker, clips_per_video)):
            n = min(clips_per_video, clips_per_speaker - start)
            folder = paths["audio_root"] / "aac" / vox_id / f"vid{i:04d}{v:04d}"
            videos.append((folder, spk, v, list(rng.uniform(*seconds, size=n))))
    paths["meta"].write_text("\n".join(meta) + "\n")
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # the work is in ffmpeg processes
        list(pool.map(lambda job: _write_video(*job), videos))
    seconds = sum(sum(lengths) for *_, lengths in videos)
    marker.write_text(json.dumps({"spec": spec, "audio_seconds": seconds}))
    return paths


# --- The runs --------------------------------------------------------------------------------


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def prepare_command(raw: dict[str, Path], out: Path, workers: int) -> list[str]:
    return [
        sys.executable, "-m", "scldm", "prepare", "voxceleb", "--audio-root",
        str(raw["audio_root"]), "--faces-root", str(raw["faces_root"]), "--meta",
        str(raw["meta"]), "--out", str(out), "--workers", str(workers),
    ]  # fmt: skip


def run_prepare(raw: dict[str, Path], out: Path, workers: int) -> dict:
    """`scldm prepare voxceleb` in its own process: wall and CPU seconds, written/reused."""
    cpu, start = _children_cpu(), time.perf_counter()
    proc = subprocess.run(prepare_command(raw, out, workers), capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if proc.returncode != 0:
        sys.exit(f"scldm prepare failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    done = re.search(r"(\d+) clips of \d+ speakers \((\d+) written, (\d+) already", proc.stdout)
    clips, written, reused = (int(x) for x in done.groups())
    return {"wall": wall, "cpu": cpu, "clips": clips, "written": written, "reused": reused}


def _naive_clip(job: tuple[Path, Path, Path, Path]) -> None:
    m4a, face, wav, jpg = job
    wav.parent.mkdir(parents=True, exist_ok=True)
    jpg.parent.mkdir(parents=True, exist_ok=True)
    square = "crop='min(iw,ih)':'min(iw,ih)',scale=224:224:flags=lanczos"
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(m4a), "-i", str(face)]
    cmd += ["-map", "0:a", "-t", "6", "-ac", "1", "-ar", str(RATE), "-c:a", "pcm_s16le", str(wav)]
    cmd += ["-map", "1:v", "-vf", square, "-frames:v", "1", "-q:v", "2", str(jpg)]
    subprocess.run(cmd, check=True, capture_output=True)


def run_naive(raw: dict[str, Path], out: Path, parallel: int, every: int = 1) -> dict:
    """One ffmpeg per clip writing its wav and face JPEG, `parallel` at a time, for every
    `every`-th clip."""
    cpu, start = _children_cpu() + _self_cpu(), time.perf_counter()
    jobs = []
    for m4a in sorted((raw["audio_root"] / "aac").glob("id*/*/*.m4a"))[::every]:
        spk = int(m4a.parts[-3][2:])
        faces = sorted((raw["faces_root"] / f"n{spk:06d}").glob("*.jpg"))
        name = f"{m4a.parent.name}_{m4a.stem}"
        face = faces[int(m4a.stem) % len(faces)]
        jobs.append((m4a, face, out / "audio" / m4a.parts[-3] / f"{name}.wav",
                     out / "faces" / m4a.parts[-3] / f"{name}.jpg"))  # fmt: skip
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(_naive_clip, jobs))
    wall = time.perf_counter() - start
    cpu = _children_cpu() + _self_cpu() - cpu
    return {"wall": wall, "cpu": cpu, "clips": len(jobs), "written": len(jobs), "reused": 0}


def ffmpeg_costs(clips: list[Path]) -> dict:
    """CPU ms of one ffmpeg decode of a clip as `load_audio` runs it (to f32le on a pipe), and
    of the same command stopped after 1 ms of audio (process start-up and probing)."""
    costs = {}
    for name, seconds in (("decode", "6"), ("start-up", "0.001")):
        cpu = _children_cpu()
        for path in clips:
            cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path)]
            cmd += ["-t", seconds, "-vn", "-ac", "1", "-ar", str(RATE), "-f", "f32le", "-"]
            subprocess.run(cmd, check=True, capture_output=True)
        costs[name] = (_children_cpu() - cpu) / len(clips) * 1e3
    return {**costs, "n": len(clips)}


def _finished(out: Path) -> int:
    """Clips whose wav and JPEG are both in place (what a rerun reuses)."""
    wavs = {p.relative_to(out / "audio").with_suffix("") for p in out.glob("audio/*/*.wav")}
    jpgs = {p.relative_to(out / "faces").with_suffix("") for p in out.glob("faces/*/*.jpg")}
    return len({p for p in wavs & jpgs if not p.name.startswith(".")})


def run_killed(raw: dict[str, Path], out: Path, workers: int, at: int) -> dict:
    """Start a prepare, SIGKILL its process group once `at` wav files exist; what is left."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        prepare_command(raw, out, workers),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill reaches the pool workers
    )
    while proc.poll() is None and sum(1 for _ in out.glob("audio/*/*.wav")) < at:
        time.sleep(0.05)
    if proc.poll() is not None:
        sys.exit("the prepare finished before it could be killed; use more --clips")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # let the killed pool workers go
    tmp = list(out.rglob(".*.tmp*"))
    return {"wall": time.perf_counter() - start, "finished": _finished(out), "tmp": len(tmp),
            "manifest": (out / "manifest.jsonl").exists()}  # fmt: skip


def tree_digest(out: Path) -> str:
    """SHA-256 over manifest.jsonl and every wav/JPEG (names and bytes; temporary files left
    by a kill are not part of the dataset and are ignored)."""
    digest = hashlib.sha256()
    files = [out / "manifest.jsonl", *sorted(out.glob("audio/*/*.wav")),
             *sorted(out.glob("faces/*/*.jpg"))]  # fmt: skip
    for path in files:
        if path.name.startswith("."):
            continue
        digest.update(path.relative_to(out).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


# --- Report ----------------------------------------------------------------------------------


def machine_line() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M %Z')}, load average "
        f"{load:.2f} at the end"
    )


def report(args: argparse.Namespace, rows: list[tuple[str, int, dict]], resume: dict | None,
           clips: int, seconds: float, ffmpeg: dict) -> str:  # fmt: skip
    lines = [
        "# Preparing VoxCeleb2 (`scldm prepare voxceleb`)",
        "",
        f"`python benchmarks/prepare.py {' '.join(sys.argv[1:])}`; {machine_line()}. "
        f"Generated VoxCeleb2 layout: {clips} m4a clips (16 kHz mono AAC, 48 kbit/s) of "
        f"{args.min_seconds:g}-{args.max_seconds:g} s ({seconds / 60:.0f} min of audio), "
        f"{args.speakers} speakers, 224 px JPEG faces; prepared at the defaults (224 px, first "
        "6 s). CPU s: the process and its descendants (ffmpeg, pool workers).",
        "",
        "| method | processes at once | clips | wall s | clips/s | CPU s / clip | "
        "clips per CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, workers, r in rows:
        lines.append(
            f"| {name} | {workers} | {r['clips']} | {r['wall']:.1f} | "
            f"{r['clips'] / r['wall']:.1f} | {r['cpu'] / r['clips'] * 1e3:.0f} ms | "
            f"{r['clips'] / r['cpu']:.1f} |"
        )
    lines += [
        "",
        f"One ffmpeg decode of a clip as `load_audio` runs it costs {ffmpeg['decode']:.0f} ms "
        f"CPU; the same command stopped after 1 ms of audio (start-up and probing) "
        f"{ffmpeg['start-up']:.0f} ms (mean over {ffmpeg['n']} clips).",
    ]
    if resume:
        k, again, ref = resume["killed"], resume["rerun"], resume["reference"]
        same = "identical" if resume["digest"] == ref else "DIFFERENT"
        ok = again["reused"] == k["finished"] and resume["digest"] == ref
        lines += [
            "",
            "## Resuming after SIGKILL",
            "",
            f"A prepare with 2 workers was killed (SIGKILL to its process group) "
            f"{k['wall']:.1f} s in, with {k['finished']} of {clips} clips finished (wav and "
            f"JPEG in place), {k['tmp']} temporary file(s) left and "
            f"{'a' if k['manifest'] else 'no'} manifest. The rerun (2 workers) took "
            f"{again['wall']:.1f} s and reported {again['written']} written, {again['reused']} "
            f"already done; manifest.jsonl and every wav and JPEG are {same} to the "
            f"uninterrupted 2-worker run's (SHA-256 of names and bytes). "
            f"**{'Resumes correctly' if ok else 'RESUME CHECK FAILED'}.** A rerun of a "
            f"finished prepare (everything reused) took {resume['noop']['wall']:.1f} s.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clips", type=int, default=2000, help="clips to generate (default 2000)")
    p.add_argument("--speakers", type=int, default=100)
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--max-seconds", type=float, default=4.0)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--naive-clips", type=int, default=500, help="of them for the naive way")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--skip-resume", action="store_true")
    p.add_argument("--work", type=Path, default=REPO / "data" / "benchmarks" / "prepare",
                   help="cache folder: the generated corpus and the prepared outputs")  # fmt: skip
    p.add_argument("--out", type=Path, default=RESULTS / "prepare_cpu.md")
    args = p.parse_args()
    per_speaker = -(-args.clips // args.speakers)
    start = time.perf_counter()
    raw = make_raw_vox2(
        args.work / "raw",
        speakers=args.speakers,
        clips_per_speaker=per_speaker,
        seconds=(args.min_seconds, args.max_seconds),
    )
    clips = sorted((raw["audio_root"] / "aac").glob("id*/*/*.m4a"))
    seconds = json.loads((args.work / "raw" / "spec.json").read_text())["audio_seconds"]
    print(f"corpus: {len(clips)} clips in {raw['audio_root']} "
          f"({time.perf_counter() - start:.0f} s to make or find)", flush=True)  # fmt: skip
    ffmpeg = ffmpeg_costs(clips[:: max(1, len(clips) // 40)])
    print("ffmpeg:", ffmpeg, flush=True)
    rows = []
    for workers in args.workers:
        out = args.work / f"prepared-w{workers}"
        shutil.rmtree(out, ignore_errors=True)
        rows.append(("`scldm prepare voxceleb`", workers, run_prepare(raw, out, workers)))
        print(rows[-1], flush=True)
    if not args.skip_naive:
        for parallel in (1, 2):
            out = args.work / f"naive-p{parallel}"
            shutil.rmtree(out, ignore_errors=True)
            every = max(1, round(len(clips) / args.naive_clips))
            naive = run_naive(raw, out, parallel, every)
            rows.append(("naive: one ffmpeg per clip", parallel, naive))
            print(rows[-1], flush=True)
            shutil.rmtree(out, ignore_errors=True)
    resume = None
    if not args.skip_resume:
        reference = args.work / "prepared-w2"
        if not (reference / "manifest.jsonl").is_file():
            shutil.rmtree(reference, ignore_errors=True)
            run_prepare(raw, reference, 2)
        out = args.work / "resumed"
        shutil.rmtree(out, ignore_errors=True)
        killed = run_killed(raw, out, 2, at=len(clips) // 2)
        print("killed:", killed, flush=True)
        rerun = run_prepare(raw, out, 2)
        print("rerun:", rerun, flush=True)
        noop = run_prepare(raw, out, 2)
        resume = {"killed": killed, "rerun": rerun, "noop": noop,
                  "digest": tree_digest(out), "reference": tree_digest(reference)}  # fmt: skip
    table = report(args, rows, resume, len(clips), seconds, ffmpeg)
    print(table)
    old = args.out.read_text() if args.out.is_file() else ""
    notes = old[old.index(NOTES_MARKER) :] if NOTES_MARKER in old else f"\n{NOTES_MARKER}\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n" + notes.lstrip("\n"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
