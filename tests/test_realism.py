"""Realism metrics with known answers: the two-sample classifier test and KID on identical,
shifted and speaker-clustered distributions, a hand-computed MMD², and the protocol's speaker
halves; then `evaluate` with a reconstructor and `--encoders` from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scldm.errors import InputError
from scldm.evaluation.demo_report import demo_report
from scldm.evaluation.evaluate import EvalSettings, evaluate
from scldm.evaluation.realism import (
    detail_kernel,
    fine_detail,
    kid,
    mmd2_unbiased,
    polynomial_kernel,
    speaker_halves,
    two_sample_test,
    wilson_interval,
)
from test_evaluate import CopyTrueFace, LookupAttributes, PixelFeatures


def _images(n: int, *, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g) + shift  # (n, 3, 8, 8)


def _clustered(groups: int, *, dim: int = 16, seed: int) -> tuple[torch.Tensor, list[int]]:
    """Two near-identical rows per group (a speaker's two faces): (2·groups, dim), group ids."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(groups, dim, generator=g)
    rows = centres.repeat_interleave(2, 0) + 0.05 * torch.randn(2 * groups, dim, generator=g)
    return rows, [i // 2 for i in range(2 * groups)]


# --- MMD² and KID ------------------------------------------------------------------------------


def test_mmd2_matches_a_hand_computation():
    # D = 1: k(a, b) = (a·b + 1)³
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[2.0], [3.0]])
    assert polynomial_kernel(x, y).tolist() == [[1.0, 1.0], [27.0, 64.0]]
    # xx: k(0, 1) = 1; yy: k(2, 3) = 343; xy: mean(1, 1, 27, 64) = 23.25
    assert mmd2_unbiased(x, y) == pytest.approx(1 + 343 - 2 * 23.25)
    # groups: the pair of x of group "a" is left out; xx = mean(k(0, .5), k(1, .5)) = 2.1875
    x3 = torch.tensor([[0.0], [1.0], [0.5]])
    xy = polynomial_kernel(x3, y).mean().item()
    got = mmd2_unbiased(x3, y, x_groups=["a", "a", "b"])
    assert got == pytest.approx((1 + 3.375) / 2 + 343 - 2 * xy)
    with pytest.raises(ValueError, match="2 samples"):
        mmd2_unbiased(x3, y, x_groups=["a", "a", "a"])


def test_kid_is_unbiased_near_zero_for_one_distribution_and_positive_for_a_shift():
    g = torch.Generator().manual_seed(0)
    draws = [
        mmd2_unbiased(torch.randn(20, 8, generator=g), torch.randn(20, 8, generator=g))
        for _ in range(300)
    ]
    mean, se = np.mean(draws), np.std(draws) / np.sqrt(len(draws))
    assert abs(mean) < 3 * se  # unbiased: its expectation is 0
    # the biased estimate (diagonals kept) is clearly positive on the same draws: a real check
    x, y = torch.randn(20, 8, generator=g), torch.randn(20, 8, generator=g)
    biased = (
        polynomial_kernel(x, x).mean()
        + polynomial_kernel(y, y).mean()
        - 2 * polynomial_kernel(x, y).mean()
    )
    assert biased > 10 * se
    same = kid(torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g), subset_size=100)
    shifted = kid(
        torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g) + 1, subset_size=100
    )
    assert abs(same["value"]) < 3 * same["std"] / np.sqrt(same["num_subsets"]) + 0.01
    assert shifted["value"] > 0.5 and shifted["value"] > 20 * abs(same["value"])
    assert same["subset_size"] == 100 and same["num_subsets"] == 100 and same["n"] == [400, 400]


def test_kid_is_seeded_and_whole_sets_give_one_subset():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 4, generator=g), torch.randn(50, 4, generator=g)
    assert kid(x, y, subset_size=30, seed=3) == kid(x, y, subset_size=30, seed=3)
    assert kid(x, y, subset_size=30, seed=3) != kid(x, y, subset_size=30, seed=4)
    whole = kid(x[:50], y)
    assert whole["num_subsets"] == 1 and whole["std"] == 0.0
    assert whole["value"] == pytest.approx(mmd2_unbiased(x[:50], y))
    assert kid(x[:1], y) is None


def test_kid_with_speaker_groups_is_unbiased_where_pairs_of_a_speaker_are_not():
    grouped, plain = [], []
    for seed in range(40):
        x, gx = _clustered(15, seed=2 * seed)
        y, gy = _clustered(15, seed=2 * seed + 1)
        plain.append(mmd2_unbiased(x, y))
        grouped.append(mmd2_unbiased(x, y, x_groups=gx, y_groups=gy))
    se = np.std(grouped) / np.sqrt(len(grouped))
    assert abs(np.mean(grouped)) < 3 * se
    assert np.mean(plain) > 10 * se  # a speaker's two alike faces look like a difference


# --- the classifier two-sample test ----------------------------------------------------------


def test_two_sample_test_cannot_tell_one_distribution_and_tells_a_shift():
    same = two_sample_test(_images(100, seed=0), _images(100, seed=1))
    assert 0.35 < same["accuracy"] < 0.65
    lo, hi = same["ci"]
    assert lo < 0.5 < hi and lo < same["accuracy"] < hi
    shifted = two_sample_test(_images(100, seed=0), _images(100, shift=1.0, seed=1))
    assert shifted["accuracy"] > 0.95
    assert same["n"] == 100 and same["folds"] == 5


def test_two_sample_test_balances_classes_and_is_seeded():
    x, y = _images(80, seed=0), _images(30, shift=0.3, seed=1)
    res = two_sample_test(x, y, seed=7)
    assert res["n"] == 30  # the larger set subsampled to the smaller
    assert two_sample_test(x, y, seed=7) == res
    small = two_sample_test(x, y, size=4)  # downsampled before flattening
    assert small["size"] == 4 and 0 <= small["accuracy"] <= 1
    assert two_sample_test(x[:1], y) is None


def test_the_detail_test_finds_blur_and_ignores_colour():
    # aligned "faces": one fixed pattern (eyes, edges at fixed pixels) plus a little noise each
    g = torch.Generator().manual_seed(0)
    pattern = torch.randn(1, 3, 16, 16, generator=g)
    x = pattern + 0.3 * torch.randn(100, 3, 16, 16, generator=g)
    y = pattern + 0.3 * torch.randn(100, 3, 16, 16, generator=g)
    kernel = detail_kernel(16)
    assert kernel == 3 and detail_kernel(64) == 5 and detail_kernel(224) == 17
    # a constant image has no detail; a blurred copy keeps its colours and loses its edges
    assert fine_detail(torch.full((1, 3, 8, 8), 0.7), 3).abs().max() < 1e-6
    blurred = F.avg_pool2d(y, 3, stride=1, padding=1, count_include_pad=False)
    recoloured = y + 0.5 + 0.5 * torch.rand(100, 3, 1, 1, generator=g)  # other colours, same edges
    assert two_sample_test(x, recoloured)["accuracy"] > 0.95
    assert 0.3 < two_sample_test(x, recoloured, detail=kernel)["accuracy"] < 0.7
    found = two_sample_test(x, blurred, detail=kernel)
    assert found["accuracy"] > 0.95 and found["detail"] == kernel
    assert 0.3 < two_sample_test(x, y, detail=kernel)["accuracy"] < 0.7


def test_two_sample_folds_grouped_by_speaker_do_not_recognise_people():
    # more pixels than images, as with faces: a linear classifier can recognise each speaker
    x, gx = _clustered(40, dim=192, seed=0)
    y, gy = _clustered(40, dim=192, seed=1)
    x, y = x.view(-1, 3, 8, 8), y.view(-1, 3, 8, 8)
    plain = two_sample_test(x, y)
    grouped = two_sample_test(x, y, x_groups=gx, y_groups=gy)
    assert plain["accuracy"] > 0.8  # one face of a speaker seen in training: the other is known
    assert 0.3 < grouped["accuracy"] < 0.7


def test_wilson_interval_hand_checked():
    lo, hi = wilson_interval(8, 10)
    assert (lo, hi) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


def test_speaker_halves_are_disjoint_seeded_and_cover_everyone():
    speakers = [f"s{i}" for i in range(7) for _ in range(3)]
    s1, s2 = speaker_halves(speakers, seed=0)
    assert s1.isdisjoint(s2) and s1 | s2 == set(speakers) and (len(s1), len(s2)) == (3, 4)
    assert speaker_halves(speakers, seed=0) == (s1, s2)
    assert any(speaker_halves(speakers, seed=k)[0] != s1 for k in range(1, 5))


# --- in the evaluation ---------------------------------------------------------------------


class CopyReconstructor:
    """A perfect autoencoder: the face itself."""

    path = "identity"

    def __call__(self, faces, batch_size=64):
        return faces.clone()


def test_evaluate_and_demo_report_score_realism_and_a_perfect_reconstruction(tiny_stage1, tmp_path):
    data, _ = tiny_stage1
    out = tmp_path / "demo" / "eval"
    res = evaluate(
        CopyTrueFace(data, 32),
        data,
        out,
        features={"pixels": PixelFeatures()},
        attributes={"synthvox": LookupAttributes(data, 32)},
        settings=EvalSettings(split="train", bootstrap=100),
        reconstructor=CopyReconstructor(),
        progress=False,
    )
    realism = res["realism"]
    assert set(realism["two_sample"]) == {"model", "reconstruction", "floor"}
    # the copy model and the perfect reconstruction are true faces: no better than the floor
    # can tell them apart; reconstruction and floor are even the same faces
    assert realism["two_sample"]["reconstruction"] == realism["two_sample"]["floor"]
    kids = realism["kid"]["pixels"]
    assert kids["reconstruction"]["value"] == pytest.approx(kids["floor"]["value"])
    assert kids["network"] == PixelFeatures.convention
    for cond in ("model", "floor"):
        assert realism["two_sample"][cond]["n"] == realism["n"] >= 2
    rec = res["reconstruction"]
    a = rec["attributes"]["synthvox"]
    assert a["reconstruction"]["gender_acc"]["value"] == 1.0
    assert a["reconstruction"] == a["true_face"]
    assert rec["psnr"]["value"] > 99  # identical images: the MSE floor of 1e-10
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["realism"]["n"] == realism["n"] and "reconstruction" in saved
    report = (out / "report.md").read_text()
    assert "## Realism" in report and "| floor |" in report and "| reconstruction |" in report
    assert "## Reconstruction fidelity" in report and (out / "reconstructions.png").is_file()
    text = demo_report(tmp_path / "demo").read_text()  # the demo's page carries them too
    assert "## Do the faces look real?" in text and "| model |" in text
    background = next(line for line in text.splitlines() if "| background |" in line)
    assert background.startswith("| face-only") and background.count("1.000 [1.000, 1.000]") == 2
    assert (tmp_path / "demo" / "reconstructions.png").is_file()


def test_load_reconstructor_checks_the_folder_and_the_fit(tiny_stage1, tmp_path):
    from scldm.evaluation.fidelity import load_reconstructor
    from scldm.models import FACE_DECODER_PRESETS, FaceDecoder

    _, run = tiny_stage1
    decoder = FaceDecoder.from_pretrained(run / "export" / "face_decoder").eval()
    for folder in (run, run / "export"):
        rec = load_reconstructor(folder, decoder)
        faces = torch.rand(3, 3, 32, 32) * 2 - 1
        assert rec(faces, batch_size=2).shape == faces.shape
    with pytest.raises(InputError, match="holds no face encoder") as e:
        load_reconstructor(tmp_path, decoder)
    assert str(tmp_path) in str(e.value)
    other = FaceDecoder(**{**FACE_DECODER_PRESETS["tiny"], "latent_channels": 8})
    with pytest.raises(InputError, match="does not fit"):
        load_reconstructor(run, other)


def test_cli_evaluate_refuses_a_folder_without_face_encoder(tiny_stage1, tmp_path, capsys):
    from scldm.cli import main

    data, _ = tiny_stage1
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    args = ["evaluate", "--model", str(model), "--data", str(data), "-o", str(tmp_path / "ev")]
    assert main([*args, "--encoders", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "holds no face encoder" in err and str(tmp_path / "nothing") in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "ev").exists()
