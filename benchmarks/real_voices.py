"""Real voices into a model trained on synthetic ones: does the face follow the speaker's gender?

    python benchmarks/real_voices.py build --out data/real_voices
    python benchmarks/real_voices.py check --model runs/ldm/pipeline --oracle runs/oracle \\
        --voices data/real_voices --name my_model [--faces 4] [--seed 0]
    python benchmarks/real_voices.py calibrate [--out FILE]

`build` makes a set of real speech from recordings of real people that Debian packages ship
(Asterisk's telephone prompts, KTuberling's words for children, ALSA's speaker test): for each
speaker of `SPEAKERS`, their files with silences trimmed to short gaps, concatenated into 2-6
utterances of about 6 s (16 kHz mono 16-bit wav, OUT/<speaker>/<n>.wav) and OUT/labels.csv.
A missing package is named with the one `apt-get install` line that brings it. (The set's
speakers and how it is cut: benchmarks/speech_set.py.)

`check` generates K faces per utterance with any model `load_generator` reads, has the SynthVox
oracle read each face's gender and age, and votes per speaker (mean P(female) over all that
speaker's faces > 0.5 → female). It prints one line per speaker and the balanced accuracy over
the adults (mean of the per-gender recalls), and writes benchmarks/results/real_voices_<NAME>
.md, .json (every face's reading) and .png (a row per speaker: the faces of its first utterance).
Children are reported, not scored. The speakers' ages are unknown: the age read is reported
only (SynthVox adults are 18-80).

`calibrate` writes real speech's mean GE2E embedding (scldm's src/scldm/models/
ge2e_real_speech.json by default) from other voices of the same packages (`CALIBRATION`: none
of them is a speaker `check` scores), for the GE2E option `remove_real_direction`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from speech_set import CALIBRATION, SPEAKERS, build, calibrate, missing_packages

from scldm.errors import InputError

RESULTS = Path(__file__).parent / "results"
# --- check: faces for the voices, read by the oracle -----------------------------------------


def read_labels(voices: Path) -> list[dict[str, Any]]:
    """labels.csv's rows with each speaker's wav files; `InputError` naming the file for a
    missing file or column, an unknown gender or group, or a speaker without wav files."""
    labels = voices / "labels.csv"
    if not labels.is_file():
        raise InputError(labels, "missing (build the set with `real_voices.py build --out DIR`)")
    with labels.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"speaker", "gender", "age"} - set(reader.fieldnames or ())
        if missing:
            raise InputError(labels, f"has no column {', '.join(sorted(missing))}")
        rows = list(reader)
    if not rows:
        raise InputError(labels, "lists no speaker")
    out = []
    for line, row in enumerate(rows, start=2):
        gender, group = row["gender"].strip().lower(), (row.get("group") or "adult").strip()
        if gender not in ("f", "m", ""):
            raise InputError(
                labels, f"line {line}: unknown gender {row['gender']!r} (f, m or empty)"
            )
        if group not in ("adult", "child"):
            raise InputError(labels, f"line {line}: unknown group {group!r} (adult or child)")
        if group == "adult" and not gender:
            raise InputError(labels, f"line {line}: an adult needs a gender (f or m)")
        folder = voices / row["speaker"]
        wavs = sorted(folder.glob("*.wav"), key=lambda p: (len(p.stem), p.stem))
        if not wavs:
            raise InputError(folder, f"no wav files for speaker {row['speaker']!r}")
        out.append({**row, "gender": gender, "group": group, "audio": wavs})
    return out


def face_seed(seed: int, speaker: str, utterance: str, k: int) -> int:
    digest = hashlib.sha256(f"{seed}/{speaker}/{utterance}/{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def summarize(speaker: Mapping[str, Any], faces: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A speaker's vote from its faces' readings: mean P(female) > 0.5 → "f"."""
    p = np.array([f["p_female"] for f in faces])
    age = np.array([f["age"] for f in faces])
    vote = "f" if p.mean() > 0.5 else "m"
    return {
        "speaker": speaker["speaker"], "gender": speaker["gender"], "group": speaker["group"],
        "language": speaker.get("language", ""), "utterances": len({f["utterance"] for f in faces}),
        "p_female": float(p.mean()), "read_female": float((p > 0.5).mean()), "vote": vote,
        "correct": vote == speaker["gender"] if speaker["gender"] else None,
        "age_median": float(np.median(age)),
        "age_iqr": [float(np.percentile(age, 25)), float(np.percentile(age, 75))],
        "faces": list(faces),
    }  # fmt: skip


def balanced_accuracy(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean of the per-gender recalls of the votes over the adult speakers, and the median of
    their median ages read."""
    adults = [r for r in rows if r["group"] == "adult"]
    recall = {
        g: float(np.mean([r["vote"] == g for r in adults if r["gender"] == g]))
        for g in ("f", "m")
        if any(r["gender"] == g for r in adults)
    }
    return {
        "balanced_accuracy": float(np.mean(list(recall.values()))) if recall else float("nan"),
        "recall": recall,
        "adults": {g: sum(r["gender"] == g for r in adults) for g in ("f", "m")},
        "children": sum(r["group"] == "child" for r in rows),
        "median_age_adults": float(np.median([r["age_median"] for r in adults]))
        if adults
        else float("nan"),
    }


def speaker_line(r: Mapping[str, Any]) -> str:
    mark = {True: "✓", False: "✗", None: "-"}[r["correct"]]
    lo, hi = r["age_iqr"]
    return (
        f"{r['speaker']:<14} {r['group']:<5} true {r['gender'] or '?'}  utts {r['utterances']}  "
        f"read female {r['read_female']:.2f}  vote {r['vote']} {mark}  "
        f"age {r['age_median']:.0f} [{lo:.0f}-{hi:.0f}]"
    )


def summary_line(s: Mapping[str, Any]) -> str:
    n = s["adults"]
    return (
        f"balanced accuracy {s['balanced_accuracy']:.3f} over {n['f'] + n['m']} adults "
        f"({n['f']} f, {n['m']} m; recall "
        + ", ".join(f"{g} {v:.2f}" for g, v in s["recall"].items())
        + f"); median age read {s['median_age_adults']:.0f}; "
        f"{s['children']} children reported apart"
    )


def print_skipped(unreadable: Sequence[Any]) -> None:
    """'skipped N unreadable files (the first: ...)', where there are any."""
    if unreadable:
        print(f"skipped {len(unreadable)} unreadable files (the first: {unreadable[0]})")


def label_cell(r: Mapping[str, Any], size: int) -> Any:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (size, size), "white")
    lines = [r["speaker"], f"{r['group']}, true {r['gender'] or '?'}", f"vote {r['vote']}"]
    lines.append({True: "right", False: "WRONG", None: "(not scored)"}[r["correct"]])
    font = ImageFont.load_default()
    for i, text in enumerate(lines):
        ImageDraw.Draw(img).text((3, 3 + 13 * i), text, fill="black", font=font)
    return img


def check(
    model: Path, oracle: Path, voices: Path, *, faces: int = 4, seed: int = 0, name: str,
    results: Path = RESULTS,
) -> dict[str, Any]:  # fmt: skip
    """Generate, read, vote and write results/real_voices_<name>.{md,json,png}; returns the
    JSON's content."""
    import torch
    from tqdm.auto import tqdm

    from scldm.evaluation.generators import describe, load_generator
    from scldm.evaluation.synthvox_oracle import SynthVoxOracle
    from scldm.faces import make_grid, save_image, to_pil
    from scldm.io import write_text

    if faces < 1:
        raise InputError(None, f"--faces must be at least 1, got {faces}")
    speakers = read_labels(voices)
    if not (oracle / "config.json").is_file():
        raise InputError(oracle, "is not a SynthVox oracle folder (no config.json)")
    generator = load_generator(model)
    reader = SynthVoxOracle.from_pretrained(oracle).eval()
    female = reader.class_names["gender"].index("f")
    torch.manual_seed(seed)
    rows, grid_images, unreadable = [], {}, []
    bar = tqdm(total=sum(len(s["audio"]) for s in speakers) * faces, desc="faces", unit="face")
    for s in speakers:
        readings = []
        for audio in s["audio"]:
            bar.update(faces)
            gens = [
                torch.Generator().manual_seed(face_seed(seed, s["speaker"], audio.name, k))
                for k in range(faces)
            ]
            try:
                with torch.no_grad():
                    images = generator([audio] * faces, gens)  # (K, 3, H, W) in [-1, 1]
            except InputError as e:  # a damaged file: skipped and counted
                unreadable.append(str(e))
                continue
            with torch.no_grad():
                pred = reader.predict_attributes(images)
            for k in range(faces):
                p, age = float(pred["gender"][k, female]), float(pred["age"][k])
                readings.append({"utterance": audio.name, "k": k, "p_female": p, "age": age})
            grid_images.setdefault(s["speaker"], [to_pil(im) for im in images])
        if readings:
            rows.append(summarize(s, readings))
    bar.close()
    if not rows:
        raise InputError(voices, f"no readable utterance ({unreadable[0]})")
    summary = balanced_accuracy(rows)
    result = {
        "name": name, "model": str(model), "model_info": describe(model), "oracle": str(oracle),
        "voices": str(voices), "date": date.today().isoformat(), "faces_per_utterance": faces,
        "seed": seed, "summary": summary, "speakers": rows, "unreadable": unreadable,
    }  # fmt: skip
    stem = results / f"real_voices_{name}"
    results.mkdir(parents=True, exist_ok=True)
    write_text(stem.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    write_text(stem.with_suffix(".md"), report(result))
    size = max(96, generator.image_size)
    cells, captions = [], []
    for r in rows:
        cells.append(label_cell(r, size))
        captions.append("")
        for k, im in enumerate(grid_images[r["speaker"]]):
            cells.append(im)
            f = r["faces"][k]
            captions.append(f"P(f) {f['p_female']:.2f}, {f['age']:.0f} y")
    grid = make_grid(cells, ncols=faces + 1, captions=captions, caption_height=14)
    save_image(grid, stem.with_suffix(".png"), optimize=True)
    return result


def report(result: Mapping[str, Any]) -> str:
    info = result["model_info"]
    lines = [
        f"# Real voices: {result['name']}",
        "",
        f"Model `{result['model']}` ({info.get('title') or info.get('class')}), oracle "
        f"`{result['oracle']}`, voices `{result['voices']}`; {result['date']}, "
        f"{result['faces_per_utterance']} faces per utterance, seed {result['seed']}. Made by "
        "`benchmarks/real_voices.py check`; the voices by `benchmarks/real_voices.py build` "
        "(recordings of real people shipped in Debian packages; the speakers' ages are unknown).",
        "",
        "The SynthVox oracle reads each face's P(female) and age; a speaker's vote is female "
        "when the mean P(female) over all its faces exceeds 0.5. Balanced accuracy = mean of "
        "the per-gender recalls over the adult speakers; children are reported, not scored.",
        "",
        "| speaker | group | language | true | utterances | faces read female | vote | ok "
        "| median age read [IQR] |",
        "|---|---|---|---|---:|---:|---|---|---|",
    ]
    for r in result["speakers"]:
        mark = {True: "✓", False: "✗", None: "-"}[r["correct"]]
        lo, hi = r["age_iqr"]
        lines.append(
            f"| {r['speaker']} | {r['group']} | {r['language']} | {r['gender'] or '?'} | "
            f"{r['utterances']} | {r['read_female']:.2f} | {r['vote']} | {mark} | "
            f"{r['age_median']:.0f} [{lo:.0f}-{hi:.0f}] |"
        )
    lines += [
        "",
        summary_line(result["summary"]),
        "",
        f"![faces](real_voices_{result['name']}.png)",
    ]
    return "\n".join(lines) + "\n"


# --- Command line -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--") and argv[0] not in ("--help", "-h"):
        argv.insert(0, "check")  # the issue's form: real_voices.py --model ... --voices ...
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="make the speech set from the installed Debian packages")
    b.add_argument("--out", type=Path, required=True, help="the folder to write")
    k = sub.add_parser(
        "calibrate",
        help="real speech's mean GE2E embedding, for speech_encoder.remove_real_direction",
    )
    k.add_argument("--out", type=Path, help="(default: the file scldm ships)")
    k.add_argument("--ge2e-weights", type=Path, help="(default: the resemblyzer package's)")
    c = sub.add_parser("check", help="generate faces for the set and score their gender")
    c.add_argument("--model", type=Path, required=True, help="a pipeline folder")
    c.add_argument("--oracle", type=Path, required=True, help="a `scldm synthvox-oracle` folder")
    c.add_argument("--voices", type=Path, required=True, help="a folder made by `build`")
    c.add_argument("--faces", type=int, default=4, help="faces per utterance (default 4)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--name", default="model", help="results/real_voices_<NAME>.*")
    c.add_argument("--results", type=Path, default=RESULTS, help=f"(default {RESULTS})")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            if missing := missing_packages(SPEAKERS):
                missing_line = "apt-get install " + " ".join(missing)
                print(
                    f"real_voices: error: missing Debian packages; run: {missing_line}",
                    file=sys.stderr,
                )
                return 2
            labels, unreadable = build(args.out, SPEAKERS)
            print_skipped(unreadable)
            print(labels)
            return 0
        if args.command == "calibrate":
            if missing := missing_packages(CALIBRATION):
                print(f"real_voices: error: run: apt-get install {' '.join(missing)}",
                      file=sys.stderr)  # fmt: skip
                return 2
            result = calibrate(args.out, CALIBRATION, ge2e_weights=args.ge2e_weights)
            print_skipped(result["unreadable"])
            print(f"wrote {result['out']}: the mean of {result['partial_embeddings']} partial "
                  "embeddings")  # fmt: skip
            return 0
        result = check(
            args.model, args.oracle, args.voices, faces=args.faces, seed=args.seed,
            name=args.name, results=args.results,
        )  # fmt: skip
    except InputError as e:
        print(f"real_voices: error: {e}", file=sys.stderr)
        return 2
    for r in result["speakers"]:
        print(speaker_line(r))
    print(summary_line(result["summary"]))
    print_skipped(result["unreadable"])
    stem = args.results / f"real_voices_{args.name}"
    print(f"wrote {stem}.md, .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
