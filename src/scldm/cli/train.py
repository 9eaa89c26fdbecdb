"""The training commands: synthvox-oracle, pretrain (stage 1), prior, train (stage 2), ablate."""

from __future__ import annotations

import argparse
from pathlib import Path

from scldm.cli.options import (
    Command,
    add_data_option,
    add_run_options,
    floats,
    require_dataset,
    stage_config,
)


def _oracle_options(p: argparse.ArgumentParser) -> None:
    add_data_option(p, "a prepared SynthVox folder")
    p.add_argument(
        "--out", type=Path, required=True, help="folder for the oracle model and its report"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="training steps (default: the oracle's own)"
    )
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")


def _oracle(args: argparse.Namespace) -> int:
    from scldm.evaluation.synthvox_oracle_run import run_oracle

    print(run_oracle(args.data, args.out, steps=args.steps, seed=args.seed).summary())
    return 0


def _stage_options(p: argparse.ArgumentParser, *, encoders: bool) -> None:
    if encoders:
        p.add_argument("--encoders", type=Path, required=True, help="a `scldm pretrain` run")
    add_data_option(p)
    p.add_argument("--out", type=Path, required=True, help="the run folder")
    add_run_options(p)


def _pretrain(args: argparse.Namespace) -> int:
    from scldm.config import EncoderStageConfig
    from scldm.training.encoders import train

    cfg = stage_config(args, EncoderStageConfig, "pretrain")
    export = train(cfg, resume=args.resume, cpu=args.cpu)
    print(f"stage 1 done: encoders and decoder in {export}, numbers in {args.out}/metrics.json")
    return 0


def _train(args: argparse.Namespace) -> int:
    from scldm.config import DiffusionStageConfig
    from scldm.training.diffusion import train

    cfg = stage_config(args, DiffusionStageConfig, "train")
    pipeline = train(cfg, args.encoders, resume=args.resume, cpu=args.cpu)
    print(
        f"stage 2 done: pipeline in {pipeline}; try `scldm generate VOICE.wav --model "
        f"{pipeline} -o out/`"
    )
    return 0


def _prior_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoders", type=Path, required=True, help="a `scldm pretrain` run")
    add_data_option(p, "the prepared dataset")
    p.add_argument(
        "--num-faces",
        type=int,
        default=10_000,
        help="faces averaged, half women and half men (default: %(default)s, or all there are)",
    )
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")


def _prior(args: argparse.Namespace) -> int:
    from scldm.training.latents import face_prior, load_encoders, prior_folder

    require_dataset(args.data)
    encoders = load_encoders(args.encoders)
    report = face_prior(
        encoders, args.data, num_faces=args.num_faces, seed=args.seed, recompute=True
    )
    out = prior_folder(encoders)
    print(f"face prior of {report.num_faces} training faces (latent scale {report.scale:.4f})")
    print(report.table())
    print(f"saved to {out}/: prior.safetensors, prior_convergence.csv, prior_convergence.png")
    return 0


def _baseline_options(p: argparse.ArgumentParser) -> None:
    from scldm.baselines import BASELINES

    p.add_argument("method", choices=sorted(BASELINES), help="the baseline to train")
    add_data_option(p)
    p.add_argument("--out", type=Path, required=True, help="the run folder")
    add_run_options(p)


def _train_baseline(args: argparse.Namespace) -> int:
    from scldm.training.baselines import baseline_trainer

    cls, run = baseline_trainer(args.method)
    cfg = stage_config(args, cls, f"baselines/{args.method}")
    pipeline = run(cfg, resume=args.resume, cpu=args.cpu)
    print(
        f"{args.method} done: pipeline in {pipeline}; try `scldm generate VOICE.wav --model "
        f"{pipeline} -o out/` or `scldm evaluate --model {pipeline} ...`"
    )
    return 0


def _ablate_options(p: argparse.ArgumentParser) -> None:
    add_data_option(p, "a prepared SynthVox folder")
    p.add_argument("--out", type=Path, required=True, help="folder for every run and result")
    p.add_argument(
        "--oracle", type=Path, required=True, help="a `scldm synthvox-oracle` folder (scores)"
    )
    p.add_argument(
        "--config",
        default="small",
        help="preset name for both stages: tiny, small, base (default: %(default)s)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="STAGE.KEY=VALUE",
        help="override one config value of stage 1 (prefix pretrain.) or stage 2 (prefix "
        "train.), e.g. --set pretrain.train.max_steps=400 --set train.train.max_steps=600 "
        "--set train.lambda_train=0.01 (repeatable)",
    )
    p.add_argument(
        "--lambdas",
        type=floats,
        default=(0.0, 0.01, 0.1),
        metavar="λ,λ,...",
        help="λ values of the sweep, for training and for inference (default: 0,0.01,0.1)",
    )
    p.add_argument(
        "--max-clips", type=int, default=None, help="evaluate only the first N test clips"
    )
    p.add_argument(
        "--cpu", action="store_true", help="train and evaluate on the CPU even if a GPU is present"
    )


def _ablate(args: argparse.Namespace) -> int:
    from scldm.experiments.ablate import ablate

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


ORACLE = Command(
    "synthvox-oracle",
    "train the SynthVox oracle (face → attributes, features) and print its accuracy",
    _oracle_options,
    _oracle,
)
PRETRAIN = Command(
    "pretrain",
    "stage 1: align speech and face encoders (CLIP loss) and train the face decoder",
    lambda p: _stage_options(p, encoders=False),
    _pretrain,
    description="Stage 1 of SCLDM (paper eq. 1). Writes RUN/config.yaml, log.txt, "
    "scalars.jsonl and curves.png (TensorBoard logs too with --set train.log_with=tensorboard), "
    "samples/ (true | reconstruction grids), checkpoints/ (the last "
    "train.keep_last) and, at the end, RUN/export/ (EMA weights, save_pretrained) and "
    "RUN/metrics.json (test-split retrieval, reconstruction and probe numbers). Runs on "
    "many GPUs or nodes unchanged under `accelerate launch -m scldm pretrain ...`.",
)
PRIOR = Command(
    "prior",
    "the face prior: the mean scaled latent of gender-balanced training faces",
    _prior_options,
    _prior,
    description="Paper eq. 3. Encodes the training split with the frozen stage-1 face "
    "encoder (cached in ENCODERS/cache/, reused by `scldm train`), fixes the latent scale "
    "(unit variance), and writes ENCODERS/prior/: prior.safetensors and the convergence "
    "table of paper Table 1 (prior_convergence.csv and .png).",
)
TRAIN = Command(
    "train",
    "stage 2: the speech-conditioned latent diffusion model with the face prior",
    lambda p: _stage_options(p, encoders=True),
    _train,
    description="Stage 2 of SCLDM (paper eq. 2, 4-6) on cached latents of the frozen "
    "stage-1 encoders. Writes RUN/config.yaml, log.txt, scalars.jsonl, curves.png, "
    "samples/ (true face | generated faces for fixed validation voices and seeds), "
    "checkpoints/ and RUN/pipeline/ (a SpeechToFacePipeline for `scldm generate`). With "
    "decoder.steps > 0 it first refines the stage-1 face decoder on the frozen latents "
    "(decoder.loss: l1, or mse as in small; decoder.precision: auto runs it in bfloat16 "
    "where the CPU or GPU does so natively, no keeps float32; decoder.model, e.g. "
    "{preset: small_h4_wide}, trains a new decoder of that architecture from scratch on the "
    "latents instead; decoder.adversarial adds a PatchGAN, in small one shown only the eye "
    "band) and ships that one; the refined decoder is kept "
    "in ENCODERS/cache/decoder-KEY/ and reused by "
    "later runs with the same settings. The presets are the YAML files of scldm/configs/ "
    "(docs/architecture.md, Configuration).",
)
ABLATE = Command(
    "ablate",
    "paper Table 4 (base / +CP / +CP+PN) and the λ sweep of Fig. 6, on SynthVox",
    _ablate_options,
    _ablate,
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
TRAIN_BASELINE = Command(
    "train-baseline",
    "train a published baseline (speech2face, wen, wav2pix) with its presets, for `scldm compare`",
    _baseline_options,
    _train_baseline,
    description="Trains a baseline in phases, each a folder of RUN with its scalars.jsonl, "
    "curves.png, samples/ (grids) and checkpoints/ (safetensors), then writes RUN/config.yaml, "
    "log.txt, metrics.json and RUN/pipeline/ (for `scldm generate`, `evaluate` and `compare`, "
    "with the method's deviations from its publication in model_index.json). "
    "speech2face (Oh et al., CVPR 2019): teacher/ (the face teacher: an identity classifier of "
    "the training faces, or VGGFace with --config base --set teacher.weights="
    "vgg_face_dag.pth), decoder/ (the Cole et al. face decoder on the teacher's fc7), voice/ "
    "(the voice encoder on the paper's Eq. 1). "
    "wen (Wen et al., NeurIPS 2019, as its official code): voice/ (the voice encoder trained "
    "as a speaker classifier, then frozen), gan/ (generator against a face embedding with "
    "real/fake and identity heads; a loss that becomes NaN stops the run with exit status 1, "
    "naming the last good checkpoint). "
    "wav2pix (Duarte et al., ICASSP 2019, as its official code): gan/ (speech encoder on 1 s of "
    "raw waveform, generator and auxiliary speaker classifier against a discriminator "
    "conditioned on the speech embedding; LSGAN, feature matching, L1 and classification "
    "losses; dropout stays on at inference, seeded per image). "
    "--resume latest continues where a run stopped, reusing finished phases. The presets "
    "(tiny, small, base) are the YAML files of scldm/configs/baselines/<method>/.",
)
