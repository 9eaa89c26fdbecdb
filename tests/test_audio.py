"""Audio loading and the Speech2Face front end: known answers, formats and every bad input."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import SR, tone, write_wav
from scldm import InputError
from scldm.audio import SpectrogramFrontend, load_audio, loop_to_length, random_crop

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


# --- Front end: known answers ----------------------------------------------------------------


def test_tone_of_1khz_peaks_at_bin_32():
    spec = SpectrogramFrontend()(torch.from_numpy(tone(1000.0, 6.0)))  # (1, 2, 257, 598)
    power = spec[0].pow(2).sum(0).mean(-1)  # compressed |.|^2 summed over re/im: (F,)
    assert power.argmax().item() == 32  # 1000 Hz · 512 / 16000


def test_six_seconds_give_598_frames_of_257_bins():
    fe = SpectrogramFrontend()
    spec = fe(torch.randn(3, 6 * SR))
    assert spec.shape == (3, 2, 257, 598) == (3, 2, 257, fe.num_frames)
    assert fe.segment_samples == 96_000


def test_silence_gives_finite_zeros():
    spec = SpectrogramFrontend()(torch.zeros(1, 6 * SR))
    assert torch.isfinite(spec).all() and spec.abs().max() == 0


def test_power_law_compression_of_real_and_imaginary_parts():
    fe = SpectrogramFrontend()
    x = torch.randn(1, 6 * SR)
    raw = torch.stft(
        torch.nn.functional.pad(x, (56, 56)),
        512,
        160,
        400,
        window=torch.hann_window(400),
        center=False,
        return_complex=True,
    )
    expected = torch.view_as_real(raw).permute(0, 3, 1, 2)
    expected = expected.sign() * expected.abs() ** 0.3
    torch.testing.assert_close(fe(x), expected)
    # frame k windows exactly samples [160k, 160k + 400): moving sample 400 leaves frame 0 alone
    y = x.clone()
    y[0, 400] += 10.0
    assert torch.equal(fe(y)[..., 0], fe(x)[..., 0]) and not torch.equal(
        fe(y)[..., 1], fe(x)[..., 1]
    )


def test_frontend_batches_and_follows_dtype_device():
    fe = SpectrogramFrontend()
    x = torch.randn(2, 6 * SR)
    batched = fe(x)
    single = torch.cat([fe(x[0]), fe(x[1])])
    torch.testing.assert_close(batched, single)
    assert fe(x.double()).dtype == torch.float32


def test_frontend_round_trips_through_save_pretrained(tmp_path):
    fe = SpectrogramFrontend(segment_seconds=2.0, power=0.5)
    fe.save_pretrained(tmp_path)
    again = SpectrogramFrontend.from_pretrained(tmp_path)
    assert again.config.segment_seconds == 2.0 and again.config.power == 0.5
    x = torch.randn(1, 2 * SR)
    assert torch.equal(fe(x), again(x))
    assert sum(p.numel() for p in again.parameters()) == 0  # no trainable weights


# --- Loading ---------------------------------------------------------------------------------


def test_short_clip_is_looped_to_six_seconds(tmp_path):
    wave = tone(440.0, 2.0)
    segment = SpectrogramFrontend().load(write_wav(tmp_path / "a.wav", wave))
    assert segment.shape == (96_000,)
    np.testing.assert_allclose(segment[32_000:64_000].numpy(), wave, atol=1e-4)
    np.testing.assert_allclose(segment[64_000:].numpy(), wave, atol=1e-4)


def test_loop_to_length_trims_and_repeats():
    assert loop_to_length(np.arange(3), 7).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert loop_to_length(np.arange(10), 4).tolist() == [0, 1, 2, 3]


def test_random_crop_takes_one_contiguous_window_per_row():
    wave = torch.arange(4 * 100, dtype=torch.float32).reshape(4, 100)  # row r: 100r … 100r+99
    crops = random_crop(wave, 30, torch.Generator().manual_seed(0))
    assert crops.shape == (4, 30)
    starts = crops[:, 0] - 100 * torch.arange(4)
    assert ((starts >= 0) & (starts <= 70)).all()
    for row, start in enumerate(starts.long().tolist()):
        assert torch.equal(crops[row], wave[row, start : start + 30])
    again = random_crop(wave, 30, torch.Generator().manual_seed(0))
    assert torch.equal(crops, again)  # the generator alone decides the windows
    many = random_crop(wave.repeat(64, 1), 30, torch.Generator().manual_seed(1))
    assert len(set((many[:, 0] % 100).tolist())) > 20  # offsets vary across rows
    assert random_crop(wave, 100) is wave and random_crop(wave, 500) is wave


def test_load_reads_only_the_seconds_asked_for(tmp_path):
    wave = tone(300.0, 10.0)
    out = load_audio(write_wav(tmp_path / "long.wav", wave), max_seconds=6.0)
    assert out.shape == (96_000,) and out.dtype == np.float32
    np.testing.assert_allclose(out, wave[:96_000], atol=1e-4)


def test_one_hour_file_is_read_only_as_far_as_the_segment(tmp_path, monkeypatch):
    path = tmp_path / "hour.wav"
    with sf.SoundFile(str(path), "w", SR, 1, "PCM_16") as f:
        block = tone(200.0, 60.0)
        for _ in range(60):
            f.write(block)
    frames_read = []  # frames each soundfile read consumed (sf.read and blocks use read too)

    def counting(method):
        def read(self, *args, **kwargs):
            before = self.tell()
            data = method(self, *args, **kwargs)
            frames_read.append(self.tell() - before)
            return data

        return read

    for name in ("read", "buffer_read"):
        monkeypatch.setattr(sf.SoundFile, name, counting(getattr(sf.SoundFile, name)))
    out = SpectrogramFrontend().load(path)
    assert out.shape == (96_000,)
    np.testing.assert_allclose(out.numpy(), tone(200.0, 6.0), atol=1e-4)
    # the 6 s segment plus the resampler's few-sample tail, not the 57.6M frames of the hour
    assert 96_000 <= sum(frames_read) <= 96_000 + 1_024, frames_read


@pytest.mark.parametrize("rate", [8_000, 22_050, 44_100, 48_000])
def test_other_rates_are_resampled_without_aliasing_or_shift(tmp_path, rate):
    path = write_wav(tmp_path / "a.wav", tone(440.0, 1.0, sr=rate), sr=rate)
    out = load_audio(path)
    assert abs(out.size - SR) <= 1
    spectrum = np.abs(np.fft.rfft(out * np.hanning(out.size)))
    assert abs(np.argmax(spectrum) * SR / out.size - 440.0) < 2.0
    np.testing.assert_allclose(out[2000:4000], tone(440.0, 1.0)[2000:4000], atol=2e-2)


def test_48k_stereo_is_mixed_down(tmp_path):
    left, right = tone(440.0, 1.0, 48_000, 0.4), tone(440.0, 1.0, 48_000, 0.2)
    path = write_wav(tmp_path / "stereo.wav", np.stack([left, right], 1), sr=48_000)
    out = load_audio(path)
    assert out.ndim == 1 and abs(out.size - SR) <= 1
    assert abs(np.abs(out[1000:-1000]).max() - 0.3) < 0.01  # the mean of the channels


def test_24_bit_and_float_wav_flac_ogg(tmp_path):
    wave = tone(440.0, 0.5)
    for name, subtype in [
        ("a24.wav", "PCM_24"),
        ("af.wav", "FLOAT"),
        ("a.flac", "PCM_16"),
        ("a.ogg", "VORBIS"),
    ]:
        out = load_audio(write_wav(tmp_path / name, wave, subtype=subtype))
        assert out.shape == wave.shape
        assert np.corrcoef(out, wave)[0, 1] > 0.99, name


@needs_ffmpeg
@pytest.mark.parametrize("suffix", [".m4a", ".mp3", ".mp4"])
def test_compressed_formats_through_ffmpeg(tmp_path, suffix):
    src = write_wav(tmp_path / "src.wav", tone(440.0, 3.0, sr=44_100), sr=44_100)
    path = tmp_path / f"clip{suffix}"
    _ffmpeg("-i", str(src), str(path))
    out = load_audio(path, max_seconds=2.0)
    assert abs(out.size - 2 * SR) <= 160  # codec padding
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * SR / out.size - 440.0) < 3.0


# --- Bad input: one clear InputError naming the file -----------------------------------------


def _bad(path: Path, problem: str, loader=load_audio) -> None:
    with pytest.raises(InputError) as e:
        loader(path)
    msg = str(e.value)
    assert str(path) in msg and problem in msg and "\n" not in msg
    assert isinstance(e.value, ValueError)


def test_missing_path(tmp_path):
    _bad(tmp_path / "nope.wav", "no such file")


def test_directory(tmp_path):
    _bad(tmp_path, "is a directory")


def test_empty_file(tmp_path):
    (tmp_path / "e.wav").write_bytes(b"")
    _bad(tmp_path / "e.wav", "empty file")


def test_non_audio_bytes_named_wav(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"this is not audio at all, just text\n" * 20)
    _bad(tmp_path / "x.wav", "not a readable audio file")


@pytest.mark.parametrize(
    "script",
    [
        "ffconcat version 1.0\nfile '{secret.name}'\n",  # ffmpeg's concat demuxer
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile://{secret}\n#EXT-X-ENDLIST\n",
    ],
    ids=["concat", "hls"],
)
def test_a_playlist_named_m4a_cannot_make_ffmpeg_read_another_file(tmp_path, script):
    """An upload that is a playlist or concat script naming a file of the machine is refused
    (ffmpeg may only demux media containers from the one file given)."""
    secret = write_wav(tmp_path / "secret.wav", tone(300.0, 1.0))
    path = tmp_path / "upload.m4a"
    path.write_text(script.format(secret=secret))
    _bad(path, "not a readable audio file")


def test_truncated_wav_gives_the_samples_that_are_there(tmp_path):
    path = write_wav(tmp_path / "t.wav", tone(440.0, 1.0))
    data = path.read_bytes()
    path.write_bytes(data[: 44 + 2 * 8000])  # header claims 1 s, half of it is there
    out = load_audio(path)
    assert 7_000 <= out.size <= 8_000
    np.testing.assert_allclose(out, tone(440.0, 1.0)[: out.size], atol=1e-4)


def test_truncated_header(tmp_path):
    path = write_wav(tmp_path / "h.wav", tone(440.0, 1.0))
    path.write_bytes(path.read_bytes()[:20])
    _bad(path, "not a readable audio file")


def test_zero_samples(tmp_path):
    path = write_wav(tmp_path / "z.wav", np.zeros(0, np.float32))
    _bad(path, "no audio samples")


def test_ten_milliseconds_is_too_short_for_a_segment(tmp_path):
    path = write_wav(tmp_path / "ten.wav", tone(440.0, 0.01))
    assert load_audio(path).size == 160  # loading itself is fine
    _bad(path, "too short", SpectrogramFrontend().load)


def test_nan_samples(tmp_path):
    wave = tone(440.0, 0.5)
    wave[100] = np.nan
    _bad(write_wav(tmp_path / "nan.wav", wave, subtype="FLOAT"), "NaN")


@pytest.mark.parametrize("library", ["scldm.audio", "scldm.audio.spectrogram"])
def test_pipelines_saved_before_and_after_audio_became_a_package_load(tmp_path, library):
    """model_index.json names a front end's module: `scldm.audio` in folders saved before the
    package split, `scldm.audio.spectrogram` after; diffusers must find a loader in both."""
    import json

    from baseline_fixtures import tiny_speech2face_pipeline
    from scldm.baselines.speech2face import Speech2FacePipeline

    tiny_speech2face_pipeline().save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    index["frontend"] = [library, "SpectrogramFrontend"]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    pipe = Speech2FacePipeline.from_pretrained(tmp_path)
    assert isinstance(pipe.frontend, SpectrogramFrontend)
