"""Stage-2 inputs: the latent cache (reused, invalidated by hash), the latent scale and the
face prior with its convergence table, and `scldm prior`."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from scldm.cli import main
from scldm.data.manifest import read_manifest, write_manifest
from scldm.diffusion.prior import balanced_order, compute_prior, latent_scale, load_prior
from scldm.errors import InputError
from scldm.training.latents import build_cache, load_encoders


@pytest.fixture
def stage1(tiny_stage1):
    return tiny_stage1


def test_cache_is_built_once_and_rebuilt_when_the_manifest_changes(stage1, tmp_path):
    data, run = stage1
    encoders = load_encoders(run)
    cache = build_cache(encoders, data, "train", batch_size=7)
    n_train = len(read_manifest(data, split="train"))
    assert len(cache) == n_train and cache.latents.shape[1:] == (4, 8, 8)
    assert cache.tokens.shape[0] == n_train and cache.tokens.dim() == 3
    # the cached rows are what the encoders compute now
    with torch.no_grad():
        from scldm.faces import load_face_tensor

        row = cache.rows[int(cache.tensors["row"][3])]
        face = load_face_tensor(data / row["face"], 32)[None]
        torch.testing.assert_close(encoders.face_encoder.encode(face)[0], cache.latents[3])
    stamp = (cache.path / "done.json").stat().st_mtime_ns
    again = build_cache(encoders, data, "train")
    assert again.path == cache.path and (cache.path / "done.json").stat().st_mtime_ns == stamp
    assert torch.equal(again.latents, cache.latents)
    # a different manifest is a different cache
    copy = tmp_path / "copy"
    copy.mkdir()
    for sub in ("audio", "faces"):
        (copy / sub).symlink_to(data / sub)
    rows = read_manifest(data)
    write_manifest(rows[2:], copy)
    other = build_cache(encoders, copy, "train")
    assert other.path != cache.path and len(other) < len(cache)


def test_cache_is_read_memory_mapped_and_an_older_format_is_rebuilt(stage1):
    import numpy as np

    from scldm.training.diffusion import CachedPairs, as_batch

    data, run = stage1
    encoders = load_encoders(run)
    cache = build_cache(encoders, data, "train")
    info = json.loads((cache.path / "done.json").read_text())
    assert info["rows"] == len(cache) and sorted(info["tensors"]) == sorted(cache.tensors)
    for name, tensor in cache.tensors.items():  # each tensor is its file, mapped, not a copy
        file = cache.path / f"{name}.bin"
        assert file.stat().st_size == tensor.numel() * tensor.element_size()
        assert list(tensor.shape) == info["tensors"][name]["shape"]
        mapped = [line.split()[0] for line in open("/proc/self/maps") if str(file) in line]
        lo, hi = (int(a, 16) for a in mapped[0].split("-"))
        assert lo <= tensor.data_ptr() < hi
    # stage 2 gathers a batch's rows: what the old in-memory dataset gave
    scale, rows = latent_scale(cache.latents), [5, 0, 3]
    z, tokens = as_batch(CachedPairs(cache, scale).__getitems__(rows))
    assert torch.equal(z, cache.latents[rows].clone() * scale) and tokens.dtype == torch.float32
    assert torch.equal(tokens, cache.tokens[rows])
    # a cache of the previous format (safetensors shards) is rebuilt in place
    info["format"] = 1
    (cache.path / "done.json").write_text(json.dumps(info))
    again = build_cache(encoders, data, "train")
    assert again.path == cache.path
    assert json.loads((cache.path / "done.json").read_text())["format"] == 2
    torch.testing.assert_close(again.latents, cache.latents)  # (batched otherwise: not bitwise)
    np.testing.assert_array_equal(again.tensors["row"].numpy(), cache.tensors["row"].numpy())
    # a file cut short since (a full disk, a copy that stopped) is rebuilt too, not mapped
    with open(cache.path / "tokens.bin", "r+b") as f:
        f.truncate(100)
    build_cache(encoders, data, "train")
    assert (cache.path / "tokens.bin").stat().st_size == cache.tokens.numel() * 4


def test_latent_scale_is_one_over_the_std_summed_in_chunks():
    torch.manual_seed(0)
    latents = torch.randn(1000, 4, 8, 8) * 3 + 1
    expected = 1 / latents.double().std().item()
    assert latent_scale(latents, chunk=7) == pytest.approx(expected, rel=1e-7)
    assert latent_scale(latents) == pytest.approx(expected, rel=1e-7)
    assert latent_scale(latents) == torch.tensor(latent_scale(latents)).item()  # saved as float32
    assert latent_scale(torch.zeros(3, 4)) == pytest.approx(1e8)  # no spread: clamped, as LDM's


def test_prior_is_the_mean_of_balanced_scaled_latents(stage1):
    data, run = stage1
    cache = build_cache(load_encoders(run), data, "train")
    scale = latent_scale(cache.latents)
    assert (cache.latents * scale).std().item() == pytest.approx(1.0, rel=1e-4)
    rows = [cache.rows[i] for i in cache.tensors["row"].tolist()]
    all_faces, all_genders = [r["face"] for r in rows], [r["gender"] for r in rows]
    order = balanced_order(all_faces, all_genders, None)
    genders = [all_genders[i] for i in order]
    faces = [all_faces[i] for i in order]
    assert len(set(faces)) == len(faces)  # each face image once
    fewest = min(Counter(genders).values())
    for n in (2, 10, 2 * fewest):
        assert Counter(genders[:n])["f"] == n // 2  # even prefixes are balanced while both last
    report = compute_prior(cache.latents, all_faces, all_genders, num_faces=10)
    assert report.scale == scale
    torch.testing.assert_close(report.prior, cache.latents[order[:10]].mean(0) * scale)
    assert report.num_faces == 10
    last = report.convergence[-1]
    assert last["n"] == 10 and last["rms"] < 1e-6 and last["cosine"] == pytest.approx(1.0)


def test_prior_command(stage1, capsys):
    data, run = stage1
    assert main(["prior", "--encoders", str(run), "--data", str(data), "--num-faces", "20"]) == 0
    out = capsys.readouterr().out
    assert "face prior of 20 training faces" in out and "| 10 |" in out
    report = load_prior(run / "prior")
    assert report.prior.shape == (4, 8, 8) and report.scale > 0 and report.num_faces == 20
    assert report.convergence[-1]["n"] == 20  # the table read back
    assert (run / "prior" / "prior_convergence.png").is_file()
    rows = (run / "prior" / "prior_convergence.csv").read_text().splitlines()
    assert rows[0] == "n,rms,cosine" and rows[-1].startswith("20,")
    assert main(["prior", "--encoders", str(data), "--data", str(data)]) == 2
    assert "not a stage-1 run" in capsys.readouterr().err
    with pytest.raises(InputError, match="no such prior"):
        load_prior(data)
    json.loads((next((run / "cache").glob("train-*")) / "done.json").read_text())
