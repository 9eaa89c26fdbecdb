"""Face image I/O: modes, crops, tensor round-trip, grids, detection, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import face_image
from scldm import InputError
from scldm.faces import (
    center_crop_resize,
    crop_around,
    load_face,
    load_face_tensor,
    make_grid,
    save_image,
    to_pil,
    to_tensor,
)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_formats_load_as_rgb(tmp_path, suffix):
    path = save_image(face_image(64), tmp_path / f"f{suffix}")
    img = load_face(path)
    assert img.mode == "RGB" and img.size == (64, 64)


def test_modes_are_converted_sensibly(tmp_path):
    base = face_image(40)
    gray = base.convert("L")
    gray.save(tmp_path / "l.png")
    assert load_face(tmp_path / "l.png").getpixel((0, 0)) == (gray.getpixel((0, 0)),) * 3

    rgba = base.convert("RGBA")
    rgba.putalpha(0)  # fully transparent → white, not black
    rgba.save(tmp_path / "rgba.png")
    assert load_face(tmp_path / "rgba.png").getpixel((5, 5)) == (255, 255, 255)

    base.convert("CMYK").save(tmp_path / "cmyk.jpg")
    got = np.asarray(load_face(tmp_path / "cmyk.jpg"), dtype=float)
    assert np.abs(got - np.asarray(base, dtype=float)).mean() < 12

    arr16 = (np.asarray(gray, dtype=np.uint16) * 257).astype(np.uint16)  # full 16-bit range
    Image.fromarray(arr16).save(tmp_path / "g16.png")
    got16 = np.asarray(load_face(tmp_path / "g16.png"))[..., 0].astype(int)
    assert np.abs(got16 - np.asarray(gray, dtype=int)).max() <= 1

    base.convert("P").save(tmp_path / "p.png")
    assert load_face(tmp_path / "p.png").mode == "RGB"


def test_tensor_round_trip_is_exact():
    img = face_image(32)
    t = to_tensor(img)
    assert t.shape == (3, 32, 32) and t.min() >= -1 and t.max() <= 1
    assert np.array_equal(np.asarray(to_pil(t)), np.asarray(img))
    assert to_pil(torch.full((3, 4, 4), 5.0)).getpixel((0, 0)) == (255, 255, 255)  # clipped


def test_center_crop_resize_takes_the_middle_square():
    img = Image.new("RGB", (300, 100), "blue")
    img.paste(Image.new("RGB", (100, 100), "red"), (100, 0))
    out = center_crop_resize(img, 32)
    assert out.size == (32, 32) and np.asarray(out)[..., 0].min() > 240  # all red


def test_crop_around_centres_on_the_point_and_pads_at_borders():
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[70:80, 150:160] = 255  # a white square centred at (155, 75)
    img = Image.fromarray(arr)
    out = crop_around(img, 155 / 200, 75 / 100, scale=0.3)  # 30 px square
    a = np.asarray(out)
    assert out.size == (30, 30) and a[15, 15].min() == 255 and a[0, 0].max() == 0
    edge = crop_around(img, 0.0, 0.0, scale=0.5)
    assert edge.size == (50, 50)
    with pytest.raises(ValueError):
        crop_around(img, 1.5, 0.5)


def test_grid_has_captions_and_layout():
    faces = [to_tensor(face_image(32, (i * 40, 100, 100))) for i in range(5)]
    grid = make_grid(faces, ncols=3, captions=[f"#{i}" for i in range(5)])
    cap = max(10, min(16, 32 // 6)) + 4
    assert grid.size == (3 * 34 + 2, 2 * (32 + cap + 2) + 2)
    top = np.asarray(grid)[2 : 2 + cap, 2:34]
    assert top.min() < 100  # caption text drawn above the first face
    with pytest.raises(ValueError):
        make_grid(faces, ncols=2, captions=["only one"])


def test_load_face_tensor_shape(tmp_path):
    path = save_image(face_image(80), tmp_path / "f.jpg")
    t = load_face_tensor(path, 64)
    assert t.shape == (3, 64, 64) and t.dtype == torch.float32


def _bad(path, problem):
    with pytest.raises(InputError) as e:
        load_face(path)
    assert str(path) in str(e.value) and problem in str(e.value) and "\n" not in str(e.value)


def test_bad_images(tmp_path):
    _bad(tmp_path / "missing.jpg", "no such file")
    _bad(tmp_path, "is a directory")
    (tmp_path / "empty.jpg").write_bytes(b"")
    _bad(tmp_path / "empty.jpg", "empty file")
    (tmp_path / "text.jpg").write_bytes(b"not an image" * 10)
    _bad(tmp_path / "text.jpg", "not a readable image")
    face_image(64).save(tmp_path / "trunc.jpg")
    (tmp_path / "trunc.jpg").write_bytes((tmp_path / "trunc.jpg").read_bytes()[:200])
    _bad(tmp_path / "trunc.jpg", "not a readable image")
    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    _bad(tmp_path / "one.png", "1x1")


def test_save_image_is_atomic(tmp_path):
    save_image(face_image(16), tmp_path / "sub" / "a.png")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.png"]


def test_dlib_detects_and_aligns_a_real_face():
    pytest.importorskip("dlib")
    skdata = pytest.importorskip("skimage.data")
    from scldm.faces import align_face, detect_faces

    photo = Image.fromarray(skdata.astronaut())  # Eileen Collins, public domain, 512 × 512
    boxes = detect_faces(photo)
    assert len(boxes) >= 1
    left, top, right, bottom = boxes[0]
    assert 150 < (left + right) / 2 < 300 and 50 < (top + bottom) / 2 < 200  # her face
    chip = align_face(photo, 96)
    assert chip is not None and chip.size == (96, 96)
    assert align_face(Image.new("RGB", (200, 200), "gray"), 64) is None  # no face → None
