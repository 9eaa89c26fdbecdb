"""What age accuracy the voice allows a face generator (issue 5's "age within ±10 years").

    python benchmarks/age_bound.py --encoders runs/enc --data data/sv2k --oracle runs/oracle

Stage 2 can only give a face the age that its speech tokens carry. For each test clip, a ridge
read-out of age from the stage-1 speech embedding (fit on train clips, its strength chosen on
the val clips) scores two idealised generators against the true age, as if the decoder and the
oracle were perfect:

  point   a face of exactly the predicted age;
  sample  the age drawn from the read-out's predictive spread (prediction + a Gaussian of the
          residual's standard deviation), as a sampler of p(face | voice) without guidance would;
          its rate is the expectation over that Gaussian, so no seed is involved.

The same for the spectrogram statistics of the SynthVox audio probe, a read-out with no
training. With --oracle, also the oracle's age reading of the true faces and of the stage-1
reconstructions (face encoder → decoder) of the same clips. Per clip, like `scldm evaluate`:
the first --max-clips test clips. Writes benchmarks/results/age_bound.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TOLERANCE = 10.0  # years, as `scldm evaluate`


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoders", type=Path, required=True, help="a `scldm pretrain` run")
    parser.add_argument("--data", type=Path, required=True, help="its prepared SynthVox folder")
    parser.add_argument("--oracle", type=Path, help="a `scldm synthvox-oracle` folder")
    parser.add_argument("--max-clips", type=int, default=400, help="test clips (default 400)")
    parser.add_argument("--train-clips", type=int, default=4000, help="clips the probes fit on")
    args = parser.parse_args()

    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Subset

    from scldm.audio import load_audio
    from scldm.data.datasets import SpeechFaceDataset, collate
    from scldm.data.synthvox.probe import spectrogram_stats
    from scldm.evaluation.metrics import pearson_r, ridge_probe
    from scldm.evaluation.stage1 import PROBE_ALPHAS
    from scldm.training.latents import load_encoders

    enc = load_encoders(args.encoders)
    oracle = None
    if args.oracle is not None:
        from scldm.evaluation.synthvox_oracle import SynthVoxOracle

        oracle = SynthVoxOracle.from_pretrained(args.oracle).eval()
    limits = {"train": args.train_clips, "val": None, "test": args.max_clips}

    @torch.no_grad()
    def embed(split: str) -> dict[str, torch.Tensor]:
        ds = SpeechFaceDataset(args.data, split, frontend=enc.frontend, image_size=enc.image_size)
        n = len(ds) if limits[split] is None else min(len(ds), limits[split])
        out: dict[str, list] = {"speech": [], "stats": [], "recon_age": [], "true_age": []}
        for batch in DataLoader(Subset(ds, range(n)), batch_size=64, collate_fn=collate):
            emb = enc.speech_encoder(enc.frontend(batch["waveform"])).embedding
            out["speech"].append(torch.nn.functional.normalize(emb, dim=-1))
            if oracle is not None and split == "test":
                recon = enc.face_decoder(enc.face_encoder.encode(batch["face"]))
                for key, faces in (("recon_age", recon), ("true_age", batch["face"])):
                    out[key].append(oracle.predict_attributes(faces)["age"])
        rows = ds.rows[:n]
        stats = np.stack([spectrogram_stats(load_audio(args.data / r["audio"])) for r in rows])
        return {
            "speech": torch.cat(out["speech"]),
            "stats": torch.from_numpy(stats).float(),
            "age": torch.tensor([float(r["age"]) for r in rows]),
            **{k: torch.cat(v) for k, v in out.items() if k.endswith("_age") and v},
        }

    splits = {s: embed(s) for s in ("train", "val", "test")}
    y = splits["test"]["age"]
    lines = [
        "# What age accuracy the voice allows (issue 5)",
        "",
        f"Stage 1 `{args.encoders}` on `{args.data}`: read-outs fit on "
        f"{len(splits['train']['age'])} train clips (ridge strength chosen on "
        f"{len(splits['val']['age'])} val clips), scored on "
        f"the first {len(y)} test clips, one age per clip. *point*: a generator that draws a face "
        "of exactly the predicted age; *sample*: one that draws the age from the read-out's "
        "predictive spread (prediction + Gaussian residual), like a sampler of p(face | voice) "
        "without guidance. Both as if the decoder and the oracle were perfect.",
        "",
        f"| read-out of the voice | Pearson r | residual SD (y) | within ±{TOLERANCE:g} y: point "
        "| sample |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, name in (
        ("speech", "stage-1 speech embedding, ridge"),
        ("stats", "spectrogram statistics (audio probe), ridge"),
    ):
        fit = lambda a, split, key=key: ridge_probe(  # noqa: E731
            splits["train"][key], splits["train"]["age"], splits[split][key], alpha=a
        )
        alpha = max(PROBE_ALPHAS, key=lambda a: pearson_r(fit(a, "val"), splits["val"]["age"]))
        pred = fit(alpha, "test")
        resid = (pred - y).std().item()
        err = pred - y  # P(|err + N(0, resid²)| <= tolerance), averaged over the clips
        point_ok = (err.abs() <= TOLERANCE).float().mean().item()
        ndtr = torch.special.ndtr
        sample_ok = (
            (ndtr((TOLERANCE - err) / resid) - ndtr((-TOLERANCE - err) / resid)).mean().item()
        )
        lines.append(
            f"| {name} (α {alpha:g}) | {pearson_r(pred, y):.3f} | {resid:.1f} | "
            f"{point_ok:.1%} | {sample_ok:.1%} |"
        )
    if oracle is not None:
        lines += [
            "",
            f"The oracle `{args.oracle}` reading the same clips' faces (true mean age "
            f"{y.mean():.1f}):",
            "",
            f"| faces | Pearson r | within ±{TOLERANCE:g} y | mean age read |",
            "|---|---:|---:|---:|",
        ]
        for key, name in (
            ("true_age", "true faces"),
            ("recon_age", "stage-1 reconstructions (encoder → decoder)"),
        ):
            a = splits["test"][key]
            within = ((a - y).abs() <= TOLERANCE).float().mean().item()
            lines.append(f"| {name} | {pearson_r(a, y):.3f} | {within:.1%} | {a.mean():.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "age_bound.md").write_text(text)
    print(f"written to {RESULTS / 'age_bound.md'}")


if __name__ == "__main__":
    main()
