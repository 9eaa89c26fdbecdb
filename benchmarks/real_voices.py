"""Real voices into a model trained on synthetic ones: does the face follow the speaker's gender?

    python benchmarks/real_voices.py build --out data/real_voices
    python benchmarks/real_voices.py check --model runs/ldm/pipeline --oracle runs/oracle \\
        --voices data/real_voices --name my_model [--faces 4] [--seed 0]
    python benchmarks/real_voices.py calibrate [--out FILE]

`build` makes a set of real speech from recordings of real people that Debian packages ship
(Asterisk's telephone prompts, KTuberling's words for children, ALSA's speaker test): for each
speaker of `SPEAKERS`, their files with silences trimmed to short gaps, concatenated into 2-6
utterances of about 6 s (16 kHz mono 16-bit wav, OUT/<speaker>/<n>.wav) and OUT/labels.csv.
A missing package is named with the one `apt-get install` line that brings it.

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
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from scldm.errors import InputError

RESULTS = Path(__file__).parent / "results"
SAMPLE_RATE = 16_000
UTTERANCE_SECONDS = 6.0  # what SCLDM's front end hears
MAX_UTTERANCES = 6
MIN_UTTERANCE_SECONDS = 4.0
GAP_SECONDS = 0.15  # the silence put between two trimmed files
TRIM_DB = 40.0  # frames this far below a file's loudest 10 ms frame are silence
MAX_FILE_SECONDS = 4.0  # longer prompts are left out: an utterance holds several files
AST = "/usr/share/asterisk/sounds"
KT = "/usr/share/ktuberling/sounds"
NON_SPEECH = r"^(beep|beeperr|ascending-2tone|descending-2tone)\."


# --- The speakers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Speaker:
    """One speaker: the top-level files of `folder` whose names match `include` and not
    `exclude` (regular expressions), in name order, and the label with its evidence."""

    name: str
    gender: str  # "f", "m", or "" (unknown: reported only)
    group: str  # "adult" or "child"
    language: str
    package: str
    folder: str
    basis: str
    include: str = "."
    exclude: str = NON_SPEECH


# Labels, and the evidence for them. Metadata first: Asterisk's folder names carry the speaker
# and gender; the Colombian Spanish prompts were recorded "con la voz de July E. Jiménez"
# (/usr/share/doc/asterisk-prompt-es-co/LEEME) and the French ones by "Voice actor: Armelle
# Desjardins" (its copyright file). es_MX_f_Allison is en_US_f_Allison's voice: not repeated.
# KTuberling and ALSA name no speaker. There, one speaker per entry was checked with the GE2E
# speaker encoder (resemblyzer; exploration only, not a dependency): "min cos" is the lowest
# cosine similarity between two of the built ~6 s utterances (same speaker about 0.8-0.95, two
# speakers 0.5-0.7; between two speakers of this set at most 0.86). KTuberling's themes
# (egypt_, moon_, tv_, ...) were recorded apart, and where two voices share a folder (ru, da,
# uk) the themes of one voice are taken (between the ru voices' themes 0.56-0.72, within each
# 0.89-0.98). The gender then follows the pitch: median F0 (librosa.yin over loud frames) of the
# built utterances; adult men about 85-155 Hz, adult women 165-255 Hz. Telephone audio has no
# energy below 300 Hz, so Asterisk's F0 is unreliable (Carlo reads 178 Hz) and not used there.
# Above the adult range (fi, nl, sr, sv: 294-437 Hz) the speaker is likely a child. Left out
# as ambiguous: el (159 Hz), lt (156 Hz, min cos 0.66), sl (173 Hz); en, fr and ca (several
# voices between 145 and 280 Hz in themes the encoder does not cleanly separate); da's xmas_ and
# tux- voice (273 Hz, min cos 0.70); uk's second voice (robot_workshop_, butterflies_; 242 Hz,
# adult or child); gl (yin finds no stable F0).
def _ast(name: str, gender: str, lang: str, package: str, folder: str, basis: str) -> Speaker:
    return Speaker(name, gender, "adult", lang, package, f"{AST}/{folder}", basis)


def _kt(name: str, gender: str, lang: str, basis: str, **files: str) -> Speaker:
    group = "child" if gender == "" else "adult"
    return Speaker(name, gender, group, lang, "ktuberling-data", f"{KT}/{lang}", basis, **files)


# fmt: off
SPEAKERS: tuple[Speaker, ...] = (
    _ast("allison_en", "f", "en", "asterisk-core-sounds-en-wav", "en_US_f_Allison",
         "metadata: directory en_US_f_Allison; one speaker by GE2E (min cos 0.93)"),
    _ast("june_fr", "f", "fr", "asterisk-core-sounds-fr-wav", "fr_CA_f_June",
         "metadata: directory fr_CA_f_June; one speaker by GE2E (min cos 0.87)"),
    _ast("menardi_it", "f", "it", "asterisk-prompt-it-menardi-wav", "it_IT_f_Menardi",
         "metadata: directory it_IT_f_Menardi; one speaker by GE2E (min cos 0.78)"),
    _ast("carlo_it", "m", "it", "asterisk-core-sounds-it-wav", "it_IT_m_Carlo",
         "metadata: directory it_IT_m_Carlo; one speaker by GE2E (min cos 0.85)"),
    _ast("ivrvoice_ru", "f", "ru", "asterisk-core-sounds-ru-wav", "ru_RU_f_IvrvoiceRU",
         "metadata: directory ru_RU_f_IvrvoiceRU; one speaker by GE2E (min cos 0.91)"),
    _ast("july_es", "f", "es", "asterisk-prompt-es-co", "es",
         "metadata: LEEME 'con la voz de July E. Jiménez'; pitch 231 Hz; one speaker by "
         "GE2E (min cos 0.85)"),
    _ast("armelle_fr", "f", "fr", "asterisk-prompt-fr-armelle", "fr",
         "metadata: copyright 'Voice actor: Armelle Desjardins'; one speaker by GE2E "
         "(min cos 0.92)"),
    _kt("es_m", "m", "es", "pitch 133 Hz, one speaker by GE2E (min cos 0.87); pelo.wav left "
        "out (213 Hz, an outlier to the others)", exclude=r"^pelo\."),
    _kt("ga_m", "m", "ga", "pitch 121 Hz, one speaker by GE2E (min cos 0.87)"),
    _kt("nds_m", "m", "nds", "pitch 100 Hz, one speaker by GE2E (min cos 0.92)"),
    _kt("wa_m", "m", "wa", "pitch 132 Hz, one speaker by GE2E (min cos 0.85); one outlier "
        "file left out", exclude=r"^moon_schitante-sitoele\."),
    _kt("de_m", "m", "de", "pitch 154 Hz (top of the male range), one speaker by GE2E "
        "(min cos 0.91)"),
    _kt("ru_m", "m", "ru", "pitch 141 Hz, themes egypt_/moon_/pizzeria_ (the folder's other "
        "voice, 222 Hz, is ru_f), one speaker by GE2E (min cos 0.85)",
        include=r"^(egypt|moon|pizzeria)_"),
    _kt("da_m", "m", "da", "pitch 137 Hz, themes egypt_/moon_/pizza_ (cos between themes "
        "0.96-0.97), one speaker by GE2E (min cos 0.77)", include=r"^(egypt|moon|pizza)_"),
    _kt("it_f", "f", "it", "pitch 226 Hz, one speaker by GE2E (min cos 0.93)"),
    _kt("ro_f", "f", "ro", "pitch 235 Hz, one speaker by GE2E (min cos 0.94)"),
    _kt("pt_f", "f", "pt", "pitch 229 Hz, one speaker by GE2E (min cos 0.86)"),
    _kt("nn_f", "f", "nn", "pitch 194 Hz, one speaker by GE2E (min cos 0.87; between themes "
        "0.92-0.99)"),
    _kt("uk_f", "f", "uk", "pitch 241 Hz, themes tv_/xmas_/egypt_/moon_/pizzeria_ (cos "
        "between them 0.93-0.97), one speaker by GE2E (min cos 0.89)",
        include=r"^(tv|xmas|egypt|moon|pizzeria)_"),
    _kt("ru_f", "f", "ru", "pitch 222 Hz, tux-/tv_/xmas_ files (cos between themes "
        "0.96-0.98), one speaker by GE2E (min cos 0.85)", include=r"^(tux-|tv_|xmas_)"),
    Speaker("alsa_f", "f", "adult", "en", "alsa-utils", "/usr/share/sounds/alsa",
            "pitch 192 Hz, one speaker by GE2E (min cos 0.93); Noise.wav left out",
            exclude=r"^Noise\."),
    _kt("fi_child", "", "fi", "pitch 437 Hz: likely a child; "
        "one speaker by GE2E (min cos 0.82)"),
    _kt("nl_child", "", "nl", "pitch 346 Hz: likely a child; "
        "one speaker by GE2E (min cos 0.90)"),
    _kt("sr_child", "", "sr", "pitch 296 Hz: likely a child; "
        "one speaker by GE2E (min cos 0.88)"),
    _kt("sv_child", "", "sv", "pitch 294 Hz: likely a child; "
        "one speaker by GE2E (min cos 0.83)"),
)
# fmt: on

# Unlabelled real voices for GE2E's real direction (`calibrate`): KTuberling's folders in the
# languages SPEAKERS leaves out. None of their files is nearer a checked speaker's mean GE2E
# embedding than cosine 0.78 (a checked speaker's own utterances: at least 0.91), so the check
# never hears a voice its model was calibrated on. Several voices share the ca, en and fr
# folders; whether any is a child's is unknown.
CALIBRATION: tuple[Speaker, ...] = tuple(
    _kt(f"calibration_{lang}", "", lang, "unlabelled; for GE2E's real direction only")
    for lang in ("ca", "el", "en", "fr", "gl", "lt", "sl")
)
CALIBRATION_UTTERANCES = 100  # per folder: all its files


# --- build: the speech set ----------------------------------------------------------------------


def missing_packages(speakers: Sequence[Speaker]) -> list[str]:
    """The Debian packages whose folders (or tools: sox decodes GSM) are not installed."""
    missing = [s.package for s in speakers if not Path(s.folder).is_dir()]
    if any(s.folder.endswith(("/es", "/fr")) for s in speakers) and shutil.which("sox") is None:
        missing.append("sox")
    return sorted(set(missing))


def speaker_files(speaker: Speaker) -> list[Path]:
    import re

    folder = Path(speaker.folder)
    return [
        p
        for p in sorted(folder.iterdir())
        if p.is_file()
        and p.suffix in (".wav", ".ogg", ".opus", ".gsm")
        and re.search(speaker.include, p.name)
        and not re.search(speaker.exclude, p.name)
    ]


def read_file(path: Path) -> np.ndarray:
    """Mono float32 at 16 kHz; `InputError` naming the file when it is not usable audio. GSM
    through sox (libsndfile cannot read headerless GSM)."""
    import soundfile as sf
    import soxr

    if path.suffix == ".gsm":
        cmd = ["sox", "-t", "gsm", str(path), "-t", "raw", "-e", "signed-integer", "-b", "16"]
        raw = subprocess.run([*cmd, "-r", str(SAMPLE_RATE), "-"], capture_output=True)
        if raw.returncode != 0 or not raw.stdout:
            raise InputError(path, "not a readable GSM file")
        return np.frombuffer(raw.stdout, "<i2").astype(np.float32) / 32768
    try:
        wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise InputError(path, f"not a readable audio file ({e})") from None
    if not wave.size or not np.isfinite(wave).all():
        raise InputError(path, "no finite audio samples")
    wave = wave.mean(axis=1)
    return soxr.resample(wave, sr, SAMPLE_RATE, quality="HQ") if sr != SAMPLE_RATE else wave


def trim_silence(wave: np.ndarray, top_db: float = TRIM_DB) -> np.ndarray:
    """The span from the first to the last 10 ms frame within `top_db` of the loudest, with
    20 ms kept either side."""
    hop = SAMPLE_RATE // 100
    frames = wave[: len(wave) // hop * hop].reshape(-1, hop)  # (T, hop)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) > -top_db)
    if not loud.size:
        return wave[:0]
    return wave[max(loud[0] - 2, 0) * hop : (loud[-1] + 3) * hop]


def utterances(
    pieces: Sequence[np.ndarray], max_utterances: int = MAX_UTTERANCES
) -> list[np.ndarray]:
    """Trimmed files → 2-6 disjoint utterances, each the next files joined by short gaps: up to
    `max_utterances` utterances of at least `UTTERANCE_SECONDS` (a rest shorter than
    `MIN_UTTERANCE_SECONDS` is dropped), or, from less than two such lengths of speech, two
    halves."""
    gap = int(GAP_SECONDS * SAMPLE_RATE)
    lengths = np.array([len(p) + gap for p in pieces], dtype=float) / SAMPLE_RATE
    if lengths.sum() >= 2 * UTTERANCE_SECONDS:
        groups, start = [], 0
        for i in range(len(pieces)):
            if lengths[start : i + 1].sum() >= UTTERANCE_SECONDS or i == len(pieces) - 1:
                groups.append(list(pieces[start : i + 1]))
                start = i + 1
            if len(groups) == max_utterances:
                break
        if lengths[-len(groups[-1]) :].sum() < MIN_UTTERANCE_SECONDS:
            groups.pop()  # the rest
    else:  # split at the file nearest the middle
        middle = np.cumsum(lengths) - lengths / 2
        first = middle < lengths.sum() / 2
        groups = [[p for p, f in zip(pieces, first, strict=True) if f == half] for half in (1, 0)]
    out = []
    for parts in groups:
        joined = np.concatenate([np.pad(p, (0, gap)) for p in parts])[:-gap]
        out.append(0.9 * joined / max(float(np.abs(joined).max()), 1e-6))
    return out


def speaker_pieces(speaker: Speaker, max_utterances: int, unreadable: list[Path]) -> list:
    """The speaker's files, silences trimmed, each loudness-matched (RMS): enough for
    `max_utterances` utterances. Files that cannot be read are skipped and added to
    `unreadable`; `InputError` naming the folder when no speech is left."""
    budget = max_utterances * (UTTERANCE_SECONDS + MAX_FILE_SECONDS) * SAMPLE_RATE
    pieces, used = [], 0
    for path in speaker_files(speaker):
        try:
            piece = trim_silence(read_file(path))
        except InputError:
            unreadable.append(path)
            continue
        if not 0.2 * SAMPLE_RATE <= len(piece) <= MAX_FILE_SECONDS * SAMPLE_RATE:
            continue
        if not np.any(piece):  # digital silence: no loudness to match
            continue
        pieces.append(0.1 * piece / np.sqrt(np.mean(piece.astype(np.float64) ** 2)))
        used += len(piece) + GAP_SECONDS * SAMPLE_RATE
        if used >= budget:
            break
    if not pieces:
        raise InputError(speaker.folder, f"{speaker.name}: no readable speech")
    return pieces


def build_speaker(speaker: Speaker, out: Path, unreadable: list[Path]) -> list[Path]:
    """OUT/<speaker>/<n>.wav; files that cannot be read are skipped and added to `unreadable`."""
    import soundfile as sf

    waves = utterances(speaker_pieces(speaker, MAX_UTTERANCES, unreadable))
    short = min(len(w) for w in waves) / SAMPLE_RATE
    if short < MIN_UTTERANCE_SECONDS:
        raise InputError(speaker.folder, f"{speaker.name}: an utterance of only {short:.1f} s")
    folder = out / speaker.name
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, wave in enumerate(waves):
        sf.write(str(folder / f"{k}.wav"), np.clip(wave, -1, 1), SAMPLE_RATE, subtype="PCM_16")
        paths.append(folder / f"{k}.wav")
    return paths


def build(out: Path, speakers: Sequence[Speaker] = SPEAKERS) -> tuple[Path, list[Path]]:
    """Write OUT/<speaker>/*.wav and then OUT/labels.csv (the set is whole once it exists);
    returns the labels file and the source files skipped as unreadable."""
    from tqdm.auto import tqdm

    from scldm.io import write_csv

    rows, unreadable = [], []
    for speaker in tqdm(speakers, desc="building", unit="speaker"):
        build_speaker(speaker, out, unreadable)
        source = f"{speaker.package}: {speaker.folder}"
        if speaker.include != ".":
            source += f" (files matching {speaker.include})"
        rows.append({
            "speaker": speaker.name, "gender": speaker.gender, "age": "",
            "group": speaker.group, "language": speaker.language, "source": source,
            "label_basis": speaker.basis,
        })  # fmt: skip
    return write_csv(out / "labels.csv", rows), unreadable


def calibrate(
    out: Path | None = None,
    speakers: Sequence[Speaker] = CALIBRATION,
    ge2e_weights: Path | None = None,
) -> dict[str, Any]:
    """Real speech's mean GE2E partial embedding, over the speakers' files built into ~6 s
    utterances as `build` does, heard through the GE2E front end: written to OUT as JSON (what
    `speech_encoder.remove_real_direction` reads; `scldm.models.ge2e.real_speech_mean`). OUT
    None: the file scldm ships, `scldm.models.ge2e.REAL_SPEECH_FILE`."""
    import torch
    from tqdm.auto import tqdm

    from scldm.audio.mel import MelFrontend
    from scldm.io import write_json
    from scldm.models.ge2e import GE2E_PRESETS, REAL_SPEECH_FILE, GE2ESpeechEncoder

    out = REAL_SPEECH_FILE if out is None else out
    frontend = MelFrontend()
    encoder = GE2ESpeechEncoder(**GE2E_PRESETS["tiny"]).eval()  # the head is not used
    weights = encoder.load_backbone(ge2e_weights)
    total, partials, sources = torch.zeros(encoder.config.ge2e_dim, dtype=torch.float64), 0, []
    unreadable: list[Path] = []
    for speaker in tqdm(speakers, desc="calibrating", unit="folder"):
        pieces = speaker_pieces(speaker, CALIBRATION_UTTERANCES, unreadable)
        waves = utterances(pieces, CALIBRATION_UTTERANCES)
        waves = [w for w in waves if len(w) >= MIN_UTTERANCE_SECONDS * SAMPLE_RATE]
        if not waves:
            raise InputError(speaker.folder, f"{speaker.name}: no utterance of real speech")
        with torch.no_grad():
            mel = frontend(torch.stack([frontend.prepare(w.astype(np.float32)) for w in waves]))
            embeds = encoder.partials(mel).flatten(0, 1)  # (N·P, ge2e_dim)
        total += embeds.double().sum(0)
        partials += embeds.shape[0]
        sources.append({"folder": speaker.folder, "package": speaker.package,
                        "utterances": len(waves)})  # fmt: skip
    result = {
        "mean": [round(float(x), 6) for x in total / partials],
        "partial_embeddings": partials,
        "sources": sources,
        "ge2e_weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "made_by": "benchmarks/real_voices.py calibrate",
        "date": date.today().isoformat(),
    }
    write_json(out, result)
    return {**result, "out": out, "unreadable": unreadable}


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
            labels, unreadable = build(args.out)
            print_skipped(unreadable)
            print(labels)
            return 0
        if args.command == "calibrate":
            if missing := missing_packages(CALIBRATION):
                print(f"real_voices: error: run: apt-get install {' '.join(missing)}",
                      file=sys.stderr)  # fmt: skip
                return 2
            result = calibrate(args.out, ge2e_weights=args.ge2e_weights)
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
