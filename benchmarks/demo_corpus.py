"""Write a small `root/<speaker>/` corpus (tones as voices, drawn faces) for `make demo`.

python benchmarks/demo_corpus.py OUT_DIR [--speakers 12]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--speakers", type=int, default=12)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    t = np.arange(3 * 16_000) / 16_000
    lines = ["speaker,gender,age"]
    for s in range(args.speakers):
        folder = args.out / f"speaker{s:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        gender = "fm"[s % 2]
        f0 = rng.uniform(165, 255) if gender == "f" else rng.uniform(85, 155)
        for k in range(3):
            wave = sum(np.sin(2 * np.pi * f0 * h * t * (1 + 0.02 * k)) / h for h in range(1, 10))
            sf.write(folder / f"clip{k}.wav", (0.1 * wave).astype(np.float32), 16_000)
        img = Image.new("RGB", (96, 96), tuple(int(c) for c in rng.integers(60, 200, 3)))
        draw = ImageDraw.Draw(img)
        draw.ellipse((24, 14, 72, 82), fill=(224, 180, 150))
        draw.ellipse((36, 38, 42, 44), fill="black")
        draw.ellipse((54, 38, 60, 44), fill="black")
        img.save(folder / "face.png")
        lines.append(f"speaker{s:02d},{gender},{int(rng.integers(18, 80))}")
    (args.out / "speakers.csv").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.speakers} speakers to {args.out}")


if __name__ == "__main__":
    main()
