"""The Wen et al. (2019) front end: WebRTC VAD and log mel filterbanks against a numpy reference
transcribed from the official code (cmu-mlsp/reconstructing_faces_from_voices, `mfcc.py` and
`utils.get_fbank`), silence removal on SynthVox speech, loading and every bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SR, write_wav
from scldm import InputError
from scldm.audio import FbankFrontend, load_audio, vad_trim
from scldm.data.synthvox import sample_speaker, synthesize_clip

FRAME = 320  # one 20 ms VAD frame at 16 kHz
RING = 2  # the collector's ring buffer: padding_ms // frame_ms frames
HANGOVER = 6  # webrtcvad mode 2 goes on calling up to 6 frames after speech ends speech


# --- Numpy reference: the official computation -----------------------------------------------


def _mel(f):
    return 2595.0 * np.log10(1.0 + f / 700.0)


def reference_filters(sr=16000, nfft=1024, nfilt=64, lowerf=20.0, upperf=7200.0) -> np.ndarray:
    """MFCC.__init__'s filter loop: (nfft // 2 + 1, nfilt)."""
    filters = np.zeros((nfft // 2 + 1, nfilt))
    dfreq = sr / nfft
    step = (_mel(upperf) - _mel(lowerf)) / (nfilt + 1)
    edges = 700.0 * (np.power(10.0, (_mel(lowerf) + step * np.arange(nfilt + 2.0)) / 2595.0) - 1)
    for j in range(nfilt):
        left, centre, right = (int(round(edges[j + i] / dfreq)) for i in range(3))
        height = 2.0 / ((right - left) * dfreq)
        k = left + 1
        while k < centre:
            filters[k, j] = (k - left) * (height / (centre - left))
            k += 1
        if k == centre:  # false when centre == left: then the filter has no peak bin
            filters[k, j] = height
            k += 1
        while k < right:
            filters[k, j] = (k - right) * (height / (centre - right))
            k += 1
    return filters


def reference_fbank(pcm: np.ndarray, accumulate=np.float32) -> np.ndarray:
    """sig2logspec + get_fbank (without the tiling) on int16 samples: (64, T) float32.

    `accumulate` is the dtype numpy sums the mean and std in: float32 is the official (numpy adds
    the frames one by one in float32), float64 the same statistics summed exactly.
    """
    window, filters, prior = np.hamming(400), reference_filters(), 0
    logspec = []
    for fr in range(int(len(pcm) / 160.0 + 1)):
        start = round(fr * 160.0)
        frame = pcm[start : min(len(pcm), start + 400)]
        if len(frame) < 400:
            frame = np.resize(frame, 400)
        frame = np.insert(frame, 0, prior)  # pre_emphasis with the previous frame's last sample
        prior = frame[-1]
        emphasised = frame[1:] - 0.97 * frame[:-1]
        spectrum = np.fft.rfft(emphasised * window, 1024)
        power = spectrum.real * spectrum.real + spectrum.imag * spectrum.imag
        logspec.append(np.log(np.dot(power, filters).clip(1e-5, np.inf)))
    fbank = np.array(logspec).astype("float32")  # (T, 64)
    fbank = fbank - fbank.mean(axis=0, dtype=accumulate).astype(np.float32)
    fbank = fbank / (fbank.std(axis=0, dtype=accumulate).astype(np.float32) + np.finfo("f4").eps)
    return fbank.T


def _signals(length: int, rng: np.random.Generator) -> np.ndarray:
    """Two int16 rows: full-scale uniform noise, and quiet speech-like noise with a stretch of
    digital silence (whose log energies hit the 1e-5 floor)."""
    loud = rng.integers(-32768, 32768, length)
    quiet = np.round(rng.standard_normal(length) * 300 * np.sin(np.arange(length) / 700) ** 2)
    quiet[length // 3 : length // 3 + 1000] = 0
    return np.stack([loud, quiet]).astype(np.int16)


# --- Filterbank: the official numbers ----------------------------------------------------------


@pytest.mark.parametrize("length", [400, 3200, 16077, 48000])  # 3200, 48000: multiples of 160
def test_fbank_matches_the_official_computation(length):
    pcm = _signals(length, np.random.default_rng(length))  # (2, S) int16
    fe = FbankFrontend()
    out = fe(torch.from_numpy(pcm / np.float32(32768)))  # (2, 64, T), from float32 q / 32768
    assert out.shape == (2, 64, length // 160 + 1) and out.dtype == torch.float32
    exact = np.stack([reference_fbank(row, np.float64) for row in pcm])
    assert np.abs(out.numpy() - exact).max() <= 1e-6
    # the official sums its statistics frame by frame in float32; that rounding (≈1e-5) is the
    # whole of the remaining difference
    official = np.stack([reference_fbank(row) for row in pcm])
    assert np.abs(out.numpy() - official).max() <= np.abs(official - exact).max() + 1e-6


def test_fbank_log_energies_before_normalisation_are_the_official_ones():
    pcm = _signals(8000 + 17, np.random.default_rng(1))[1]
    fe = FbankFrontend()
    window, filters, prior, frames = np.hamming(400), reference_filters(), 0, []
    for k in range(8017 // 160 + 1):
        frame = np.insert(np.resize(pcm[k * 160 : k * 160 + 400], 400), 0, prior)
        prior = frame[-1]
        spectrum = np.fft.rfft((frame[1:] - 0.97 * frame[:-1]) * window, 1024)
        frames.append(np.log(np.maximum(np.abs(spectrum) ** 2 @ filters, 1e-5)))
    log_mel = fe.log_mel(torch.from_numpy(pcm / 32768.0))[0]  # (64, T) float64
    np.testing.assert_allclose(log_mel.numpy(), np.array(frames).T, rtol=1e-12, atol=1e-12)


def test_filters_are_the_official_triangles():
    filters = FbankFrontend().filters.numpy()  # (513, 64)
    np.testing.assert_array_equal(filters, reference_filters())
    hz = np.arange(513) * 16000 / 1024
    assert filters.shape == (513, 64) and filters.dtype == np.float64
    for j in range(64):
        support = np.flatnonzero(filters[:, j])
        left, right = support[0] - 1, support[-1] + 1  # the zero-valued edge bins
        assert 20 <= hz[support[0]] and hz[support[-1]] <= 7200
        assert np.isclose(filters[:, j].max(), 2 / ((right - left) * 16000 / 1024), rtol=1e-12)
        rise = np.diff(filters[left : right + 1, j])  # up, then down: one triangle
        peak = np.argmax(rise < 0)
        assert (rise[:peak] > 0).all() and (rise[peak:] < 0).all()


def test_fbank_normalises_every_filter_over_time():
    x = torch.from_numpy(_signals(32000, np.random.default_rng(2)) / np.float32(32768))
    out = FbankFrontend()(x).double()  # (2, 64, 201)
    torch.testing.assert_close(
        out.mean(-1), torch.zeros(2, 64, dtype=torch.float64), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        out.var(-1, correction=0), torch.ones(2, 64, dtype=torch.float64), atol=1e-5, rtol=0
    )


def test_fbank_of_one_waveform_is_its_row_of_the_batch():
    x = torch.from_numpy(_signals(4000, np.random.default_rng(3)) / np.float32(32768))
    fe = FbankFrontend()
    assert torch.equal(fe(x)[1:], fe(x[1]))
    with pytest.raises(ValueError, match="shorter than a frame"):
        fe(x[:, :399])


def test_frontend_rejects_impossible_settings():
    with pytest.raises(ValueError, match="Nyquist"):
        FbankFrontend(high_hz=8001.0)
    with pytest.raises(ValueError, match="webrtcvad"):
        FbankFrontend(sample_rate=22050, high_hz=7000.0)
    FbankFrontend(sample_rate=22050, high_hz=7000.0, vad_mode=None)  # no VAD: any rate


# --- Voice activity detection ------------------------------------------------------------------


def _speech() -> np.ndarray:
    """What webrtcvad calls speech in a 2 s SynthVox clip, on the int16 grid of a wav file."""
    clip = synthesize_clip(sample_speaker(0, 0), 0, seconds=2.0)
    return vad_trim(np.round(clip * 32768).astype(np.float32) / 32768)


def _kept_frames(wave: np.ndarray) -> np.ndarray:
    """Indices of the 20 ms frames of `wave` that vad_trim keeps; asserts that its output is
    whole input frames, in order, with their values unchanged."""
    kept = vad_trim(wave)
    assert kept.dtype == np.float32 and kept.size % FRAME == 0
    frames, index, k = wave[: wave.size // FRAME * FRAME].reshape(-1, FRAME), [], 0
    for out in kept.reshape(-1, FRAME):
        while not np.array_equal(frames[k], out):
            k += 1  # IndexError here: a kept frame that is not an input frame
        index.append(k)
        k += 1
    return np.array(index)


@pytest.mark.parametrize("gap", ["digital silence", "noise at -60 dB"])
def test_vad_removes_inserted_silence(gap):
    speech = _speech()
    n, half = speech.size // FRAME, speech.size // FRAME // 2 * FRAME
    rng = np.random.default_rng(0)
    gaps = [
        np.zeros(SR) if gap == "digital silence" else np.round(rng.normal(0, 32.8, SR)) / 32768
        for _ in range(3)
    ]
    wave = np.concatenate([gaps[0], speech[:half], gaps[1], speech[half:], gaps[2]])
    # regions in frames: gap, speech, gap, speech, gap (1 s = 50 frames)
    bounds = np.cumsum([0, 50, half // FRAME, 50, n - half // FRAME, 50])
    region = np.searchsorted(bounds, _kept_frames(wave.astype(np.float32)), side="right") - 1
    from_gaps = [int((region == g).sum()) for g in (0, 2, 4)]
    from_speech = int(np.isin(region, (1, 3)).sum())
    # after speech, webrtcvad's hangover and the ring buffer's two frames; before the first
    # speech nothing of digital silence and webrtcvad's start-up frames of noise
    assert max(from_gaps) <= HANGOVER + RING
    assert from_gaps[0] == 0 or gap != "digital silence"
    assert from_speech >= n - (RING if gap == "digital silence" else HANGOVER + RING)


def test_vad_trim_keeps_only_whole_frames_and_checks_its_settings():
    speech = _speech()  # 91 whole frames
    n = speech.size // FRAME
    # like the official frame generator, a frame that ends exactly at the end is not looked at
    assert _kept_frames(speech)[-1] == n - 2
    assert _kept_frames(np.append(speech, np.float32(0)))[-1] == n - 1
    assert vad_trim(np.zeros(0, np.float32)).size == 0
    for kwargs in ({"sample_rate": 22050}, {"frame_ms": 25}, {"mode": 4}, {"padding_ms": 10}):
        with pytest.raises(InputError) as e:
            vad_trim(speech, **kwargs)
        assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="1-D"):
        vad_trim(speech.reshape(7, -1))


# --- Loading and inference inputs --------------------------------------------------------------


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory):
    clip = synthesize_clip(sample_speaker(0, 1), 0, seconds=3.0)
    return write_wav(tmp_path_factory.mktemp("fbank") / "speech.wav", clip)


def test_load_gives_exactly_one_segment_of_speech(speech_wav):
    fe = FbankFrontend(segment_seconds=2.0)  # the speech in the first 2 s, looped to 2 s
    item = fe.load(speech_wav)
    assert item.shape == (fe.segment_samples,) == (32000,) and item.dtype == torch.float32
    speech = vad_trim(load_audio(speech_wav, max_seconds=2.0))
    assert torch.equal(item, torch.from_numpy(np.resize(speech, 32000)))
    item = FbankFrontend(segment_seconds=5.0).load(speech_wav)  # all 3 s of the file, looped
    assert torch.equal(item, torch.from_numpy(np.resize(vad_trim(load_audio(speech_wav)), 80000)))


@pytest.mark.parametrize("content", ["zeros", "noise"])
def test_load_of_a_file_without_speech_fails_naming_it(tmp_path, content):
    rng = np.random.default_rng(0)
    wave = np.zeros(3 * SR) if content == "zeros" else rng.normal(0, 10 ** (-60 / 20), 3 * SR)
    path = write_wav(tmp_path / f"{content}.wav", wave.astype(np.float32))
    with pytest.raises(InputError, match="speech") as e:
        FbankFrontend().load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_utterance_keeps_long_speech_whole_and_loops_short_speech(speech_wav):
    fe = FbankFrontend(segment_seconds=1.0)
    wave = load_audio(speech_wav)  # 3 s, about 2.5 s of speech
    kept = vad_trim(wave)
    assert torch.equal(fe.utterance(speech_wav), torch.from_numpy(kept))
    assert torch.equal(fe.utterance(torch.from_numpy(wave)), torch.from_numpy(kept))
    short = FbankFrontend(segment_seconds=6.0).utterance(wave)
    assert torch.equal(short, torch.from_numpy(np.resize(kept, 96000)))
    capped = FbankFrontend(segment_seconds=1.0, vad_mode=None, max_seconds=2.0)
    assert torch.equal(capped.utterance(speech_wav), torch.from_numpy(wave[:32000]))


@pytest.mark.parametrize(
    ("item", "match"),
    [
        (np.zeros((2, 16000), np.float32), "1-D"),
        (np.full(16000, np.nan, np.float32), "NaN"),
        ([0.0] * 16000, "got list"),
        (np.array(["a"] * 16000), "real numbers"),
        (np.zeros(100, np.float32), "too short"),
        (np.zeros(16000, np.float32), "no speech"),
    ],
)
def test_utterance_rejects_bad_waveforms_in_one_line(item, match):
    with pytest.raises(InputError, match=match) as e:
        FbankFrontend().utterance(item)
    assert "\n" not in str(e.value)


def test_frontend_round_trips_through_save_pretrained(tmp_path):
    fe = FbankFrontend(num_filters=40, high_hz=6000.0, segment_seconds=3.0, max_seconds=8.0)
    fe.save_pretrained(tmp_path)
    assert {p.suffix for p in tmp_path.iterdir()} == {".json", ".safetensors"}
    back = FbankFrontend.from_pretrained(tmp_path)
    settings = {k: v for k, v in fe.config.items() if not k.startswith("_")}  # not diffusers'
    assert {k: back.config[k] for k in settings} == settings
    assert back.config.max_seconds == 8.0 and back.config.num_filters == 40
    assert sum(p.numel() for p in back.parameters()) == 0  # buffers only
    assert back.filters.dtype == back.window.dtype == torch.float64
    x = torch.from_numpy(_signals(5000, np.random.default_rng(4)) / np.float32(32768))
    assert torch.equal(back(x), fe(x))
