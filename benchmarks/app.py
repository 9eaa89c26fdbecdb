"""How long `scldm app` makes a user wait: seconds from "Generate faces" to faces, in-process
(the handler alone) and through the running server with 1 and 4 clients at once.

    python benchmarks/app.py --model runs/demo/ldm/pipeline --voice runs/demo/data/audio/X/0.wav
    python benchmarks/app.py --model runs/demo/ldm/pipeline --model runs/s2f/pipeline --voice V

In-process: `Studio.run` for 1, 4 and 8 faces (median of 5 after a warm-up), with the part that
reads and checks the upload and draws the spectrogram timed separately. Server: `scldm app` on
a free port of 127.0.0.1, called through `gradio_client` (upload, queue, generation, PNG
encoding, download); with 4 clients the requests queue (one samples at a time), so the last
waits for all four. Writes benchmarks/results/app_cpu.md (or `--out`)."""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _median_seconds(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def in_process(models: list[str], voice: Path) -> list[tuple[str, float]]:
    from scldm.app.studio import Studio, model_names, spectrogram

    studio = Studio(model_names(models))
    rows = [("read and check the upload", _median_seconds(lambda: studio.listen(voice)))]
    heard = studio.run(voice, 1).heard
    rows.append(("draw the spectrogram", _median_seconds(lambda: spectrogram(heard))))
    for n in (1, 4, 8):
        rows.append(
            (f"a request, {n} face(s) per model", _median_seconds(lambda n=n: studio.run(voice, n)))
        )
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def through_server(models: list[str], voice: Path, threads: int) -> list[tuple[str, float]]:
    from gradio_client import Client, handle_file

    port = _free_port()
    args = [sys.executable, "-m", "scldm", "app", "--port", str(port)]
    args += [a for m in models for a in ("--model", m)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        start = time.perf_counter()
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.perf_counter() - start > 180:
                    raise SystemExit("the app did not start") from None
                time.sleep(0.25)
        rows = [("server start (imports, models, page)", time.perf_counter() - start)]

        def request() -> float:
            t = time.perf_counter()
            Client(url, verbose=False).predict(handle_file(str(voice)), 4, 0, api_name="/generate")
            return time.perf_counter() - t

        request()  # warm-up
        rows.append(("1 client, 4 faces per model", statistics.median(request() for _ in range(3))))
        with ThreadPoolExecutor(4) as pool:
            waits = sorted(pool.map(lambda _: request(), range(4)))
        rows.append(("4 clients at once: the first answered", waits[0]))
        rows.append(("4 clients at once: the last answered", waits[-1]))
        return rows
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="[NAME=]DIR, repeatable")
    p.add_argument("--voice", type=Path, required=True, help="a recording")
    p.add_argument("--out", type=Path, default=RESULTS / "app_cpu.md")
    p.add_argument("--note", default="", help="a sentence for the table, e.g. what else ran")
    args = p.parse_args()
    import torch

    threads = torch.get_num_threads()
    rows = in_process(args.model, args.voice) + through_server(args.model, args.voice, threads)
    lines = [
        "# scldm app: seconds from the button to the faces",
        "",
        f"Models: {', '.join(args.model)}. Voice: {args.voice.name}. "
        f"{platform.machine()}, {os.cpu_count()} cores, torch threads {threads}. "
        f"{args.note or 'Alone on the machine.'} `python benchmarks/app.py`.",
        "",
        "| what | seconds |",
        "|---|---|",
        *(f"| {name} | {seconds:.2f} |" for name, seconds in rows),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
