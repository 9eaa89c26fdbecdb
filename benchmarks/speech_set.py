"""The real-voice speech set of `benchmarks/real_voices.py`: recordings of real people that
Debian packages ship (Asterisk's telephone prompts, KTuberling's words for children, ALSA's
speaker test), trimmed and joined into ~6 s utterances.

`SPEAKERS` are the labelled speakers `check` scores (`build` writes their set), `CALIBRATION` the
unlabelled folders `calibrate` averages into real speech's mean GE2E embedding. An unreadable
file is skipped and counted, never a crash.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from scldm.errors import InputError

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
    through sox (libsndfile cannot read headerless GSM), resampled to float samples: no dither,
    so the set is the same on every build."""
    import soundfile as sf
    import soxr

    if path.suffix == ".gsm":
        cmd = ["sox", "-t", "gsm", str(path), "-t", "raw", "-e", "floating-point", "-b", "32"]
        raw = subprocess.run([*cmd, "-r", str(SAMPLE_RATE), "-"], capture_output=True)
        if raw.returncode != 0 or not raw.stdout:
            raise InputError(path, "not a readable GSM file")
        return np.frombuffer(raw.stdout, "<f4").copy()
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
