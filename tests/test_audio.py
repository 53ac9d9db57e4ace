"""siamax.audio (the log-mel front-end against librosa, resampling, lengths, augmentations), FSDD and
audio folders.

Tolerance against librosa (``librosa.feature.melspectrogram``, ``center=True``, ``pad_mode="constant"``,
then ``power_to_db(ref=1, amin=1e-10, top_db=None)``): at most ``DB_TOL`` = 0.01 dB on every cell
within 80 dB of the spectrogram's maximum (the cells ``to_image`` keeps), and the [0, 1] images
within ``IMAGE_TOL`` = 1e-4 (uint8 model format then differs by at most one level, at rounding
ties). Measured: 3e-5 dB on an FSDD clip, 1.6e-3 dB on a synthetic chirp (a chirp in faint white noise;
float32 FFT rounding; the cells far below the top differ more, up to ~0.07 dB 100 dB down, which the image floors away).
"""

import io
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siamax import audio
from siamax.audio import MelConfig

DB_TOL = 0.01
IMAGE_TOL = 1e-4
CLIP = "fsdd/recordings/7_jackson_32.wav"


def _librosa_db(y, cfg: MelConfig):
    librosa = pytest.importorskip("librosa")
    s = librosa.feature.melspectrogram(
        y=y,
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
        center=True,
        pad_mode="constant",
        power=2.0,
    )
    return librosa.power_to_db(s, ref=1.0, amin=cfg.amin, top_db=None)


def _assert_matches_librosa(y, cfg: MelConfig):
    ours = np.asarray(jax.jit(audio.log_mel, static_argnums=1)(y, cfg))
    ref = _librosa_db(y, cfg)
    assert ours.shape == ref.shape == (cfg.n_mels, 1 + len(y) // cfg.hop)
    kept = ref > ref.max() - cfg.top_db
    assert kept.mean() > 0.3  # the comparison covers most of the spectrogram
    assert np.abs(ours - ref)[kept].max() <= DB_TOL
    image = np.asarray(audio.to_image(jnp.asarray(ours), cfg))
    ref_image = np.clip(1 + (ref - ref.max()) / cfg.top_db, 0, 1)
    assert np.abs(image - ref_image).max() <= IMAGE_TOL


def _chirp(rate: int, seconds: float, f0: float, f1: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
    noise = np.random.default_rng(0).normal(0, 0.003, len(t))  # so that every band has some energy
    return (0.5 * np.sin(phase) * np.hanning(len(t)) + noise).astype(np.float32)


def _tone(rate: int, f: float, seconds: float = 0.5, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * f * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def _shifted(x: np.ndarray, s: int) -> np.ndarray:
    out = np.zeros_like(x)
    if s >= 0:
        out[s:] = x[: len(x) - s]
    else:
        out[:s] = x[-s:]
    return out


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=8 * len(x)))
    return float(np.argmax(spectrum) * rate / (8 * len(x)))


# ---- the front-end against librosa


@pytest.mark.parametrize("cfg", [MelConfig(), MelConfig.square(35), MelConfig(fmin=50.0, fmax=3500.0)])
def test_mel_filterbank_is_librosas(cfg):
    librosa = pytest.importorskip("librosa")
    ref = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax)
    fb = audio.mel_filterbank(cfg)
    assert fb.shape == (cfg.n_mels, cfg.n_fft // 2 + 1) and fb.dtype == np.float32
    np.testing.assert_allclose(fb, ref, rtol=1e-5, atol=1e-7)
    assert (fb.max(axis=1) > 0).all()  # no empty band


def test_log_mel_matches_librosa_on_a_chirp():
    _assert_matches_librosa(_chirp(8000, 1.0, 60.0, 3900.0), MelConfig())
    _assert_matches_librosa(_chirp(8000, 0.7, 200.0, 3000.0), MelConfig.square(35))


@pytest.mark.slow  # reads the real data
def test_log_mel_matches_librosa_on_an_fsdd_clip(siamax_data_dir):
    y = audio.read_audio(siamax_data_dir / CLIP)
    _assert_matches_librosa(y, MelConfig())


def test_default_config_is_a_square_second_at_8khz():
    cfg = MelConfig()
    assert cfg == MelConfig.square(64)
    assert cfg.shape == (64, 64) and cfg.samples == 8064 and cfg.seconds == pytest.approx(1.008)
    for s in (28, 35, 105):
        c = MelConfig.square(s)
        assert c.shape == (s, s) and c.seconds >= 1.0 and c.n_fft >= 2 * c.hop
    with pytest.raises(ValueError, match="fmax"):
        MelConfig(fmax=5000.0)


# ---- reading, resampling, lengths


@pytest.mark.parametrize("rate,f", [(44100, 440.0), (16000, 3000.0), (22050, 1234.5)])
def test_resample_keeps_a_sines_frequency(rate, f):
    y = audio.resample(_tone(rate, f), rate, 8000)
    assert y.dtype == np.float32 and len(y) == int(np.ceil(rate * 0.5 * 8000 / rate))
    assert abs(_peak_hz(y, 8000) - f) < 2.0
    mid = y[len(y) // 4 : -len(y) // 4]
    assert np.sqrt(np.mean(mid**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)  # amplitude kept


def test_resample_filters_rather_than_aliases():
    # 5 kHz is above 8 kHz's Nyquist frequency: removed, not folded down to 3 kHz.
    y = audio.resample(_tone(16000, 5000.0), 16000, 8000)
    assert np.sqrt(np.mean(y[100:-100] ** 2)) < 0.01 * 0.5


def test_read_audio_mono_and_rate(tmp_path):
    sf = pytest.importorskip("soundfile")
    left, right = _tone(16000, 440.0, 0.25), _tone(16000, 880.0, 0.25, 0.25)
    sf.write(tmp_path / "stereo.flac", np.stack([left, right], 1), 16000, subtype="PCM_16")
    native, rate = audio.read_audio_native(tmp_path / "stereo.flac")
    assert rate == 16000 and native.shape == (4000,)
    np.testing.assert_allclose(native, (left + right) / 2, atol=1e-4)
    y = audio.read_audio(tmp_path / "stereo.flac")
    assert y.shape == (2000,) and y.dtype == np.float32


def test_fix_length_centre_crops_and_pads():
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(audio.fix_length(x, 4), [3, 4, 5, 6])
    np.testing.assert_array_equal(audio.fix_length(x, 13), [0, *range(10), 0, 0])
    assert isinstance(audio.fix_length(x, 4), np.ndarray)
    np.testing.assert_array_equal(audio.fix_length(jnp.asarray(x), 13), audio.fix_length(x, 13))
    assert audio.fix_length(np.zeros((2, 3, 10)), 7, axis=1).shape == (2, 7, 10)
    stacked = audio.stack_clips([np.ones(5), np.ones(20)], 9)
    assert stacked.shape == (2, 9) and stacked[0].sum() == 5 and stacked[1].sum() == 9
    cfg = MelConfig()
    for n in (1000, cfg.samples, 20000):  # any length becomes one image of the config's shape
        assert audio.features(jnp.asarray(_chirp(8000, n / 8000, 100, 3000)), cfg).shape == (64, 64)


# ---- jit, vmap, model format


def test_features_are_pure_jittable_and_batched():
    cfg = MelConfig.square(35)
    waves = np.stack([_chirp(8000, 0.9, 100 * (i + 1), 3000) for i in range(3)])
    batched = np.asarray(audio.frontend(cfg)(waves))
    assert batched.shape == (3, 35, 35) and batched.dtype == np.float32
    vmapped = np.asarray(jax.jit(jax.vmap(lambda w: audio.features(w, cfg)))(waves))
    np.testing.assert_allclose(vmapped, batched, atol=1e-5)
    assert batched.min() >= 0 and np.allclose(batched.max(axis=(1, 2)), 1.0)
    images = audio.clips_to_images(list(waves) + [waves[0][:500]], cfg, chunk=2)
    assert images.shape == (4, 35, 35) and images.dtype == jnp.uint8
    np.testing.assert_allclose(np.asarray(images[:3]), np.round(batched * 255), atol=1)
    with pytest.raises(ValueError, match="float"):
        audio.features(jnp.zeros(100, jnp.int16))


# ---- augmentations


def test_waveform_augmentations():
    key, other = jax.random.key(0), jax.random.key(1)
    w = jnp.asarray(np.stack([_chirp(8000, 0.5, 200, 3000)] * 4))
    shifted = audio.time_shift(key, w, 400)
    assert shifted.shape == w.shape
    np.testing.assert_array_equal(shifted, audio.time_shift(key, w, 400))  # same key, same draw
    assert not np.array_equal(shifted, audio.time_shift(other, w, 400))
    assert not np.array_equal(shifted[0], shifted[1])  # one draw per example
    for row, orig in zip(np.asarray(shifted), np.asarray(w)):
        assert any(np.array_equal(row, _shifted(orig, s)) for s in range(-400, 401))  # a zero-filled shift
    rolled = audio.time_shift(key, w, 400, mode="roll")
    np.testing.assert_allclose(np.sort(np.asarray(rolled), 1), np.sort(np.asarray(w), 1))  # nothing lost
    loud = audio.gain(key, w, 6.0)
    ratio = np.asarray(jnp.max(jnp.abs(loud), 1) / jnp.max(jnp.abs(w), 1))
    assert ((ratio >= 10 ** (-6 / 20) - 1e-6) & (ratio <= 10 ** (6 / 20) + 1e-6)).all() and np.ptp(ratio) > 0
    np.testing.assert_array_equal(loud, audio.gain(key, w, 6.0))


def test_spec_augment_masks():
    key = jax.random.key(3)
    spec = jnp.ones((5, 64, 64))
    t = audio.time_mask(key, spec, 10, n_masks=2)
    f = audio.freq_mask(key, spec, 10)
    assert t.shape == f.shape == spec.shape
    t, f = np.asarray(t), np.asarray(f)
    # time masks blank whole columns, frequency masks whole rows, at most the widths asked for
    assert ((t == 0).all(axis=1) == (t == 0).any(axis=1)).all() and ((t == 0).all(axis=1).sum(1) <= 20).all()
    assert ((f == 0).all(axis=2) == (f == 0).any(axis=2)).all() and ((f == 0).all(axis=2).sum(1) <= 10).all()
    assert (t == 0).any() and (f == 0).any() and len({t[i].tobytes() for i in range(5)}) > 1  # per example
    np.testing.assert_array_equal(t, audio.time_mask(key, spec, 10, n_masks=2))  # same key, same masks
    assert not np.array_equal(t, audio.time_mask(jax.random.key(4), spec, 10, n_masks=2))
    both = np.asarray(audio.spec_augment(key, spec, time_width=10, freq_width=10, time_masks=2))
    assert (both == 0).any(axis=1).any() and (both == 0).any(axis=2).any()
    keys = jax.random.split(key, 5)  # under vmap, one key per example
    vmapped = jax.vmap(lambda k, x: audio.time_mask(k, x, 10, n_masks=2))(keys, spec)
    assert vmapped.shape == spec.shape and (np.asarray(vmapped) == 0).any()
    images = audio.freq_mask(key, jnp.full((2, 64, 64), 255, jnp.uint8), 10)  # model format too
    assert images.dtype == jnp.uint8 and (np.asarray(images) == 0).any()


# ---- FSDD


def _fake_fsdd(root, content=b"x"):
    from siamax.data import fsdd

    for r in fsdd.RELPATHS:
        (root / r).parent.mkdir(parents=True, exist_ok=True)
        (root / r).write_bytes(content)


def test_fsdd_missing_says_what_to_put_where(tmp_path, monkeypatch):
    from siamax.data import download, fsdd
    from siamax.errors import ChecksumError, DataError

    with pytest.raises(DataError, match=r"3000 of the 3000 files are missing.*downloads are off.*fsdd/recordings"):
        fsdd.fsdd_files(tmp_path, download=False)
    with pytest.raises(DataError, match=r"does not exist"):
        fsdd.fsdd_files(tmp_path / "typo")
    monkeypatch.setattr(download, "_reachable", lambda *a, **k: False)
    with pytest.raises(DataError, match=r"not reachable.*Jakobovski/free-spoken-digit-dataset"):
        fsdd.fsdd_files(tmp_path)
    monkeypatch.setattr(fsdd, "RELPATHS", fsdd.RELPATHS[:20])  # a short set: any other set fails the digest
    _fake_fsdd(tmp_path)
    with pytest.raises(ChecksumError, match=fsdd.DIGEST):
        fsdd.fsdd_files(tmp_path)


def _serve(monkeypatch, archive: bytes):
    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(archive))
    from siamax.data import download

    monkeypatch.setattr(download, "_reachable", lambda *a, **k: True)


def _github_archive(files: dict[str, bytes]) -> bytes:
    from siamax.data import fsdd

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tf:
        for name, data in {"README.md": b"FSDD", **files}.items():
            info = tarfile.TarInfo(f"free-spoken-digit-dataset-{fsdd.COMMIT}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_fsdd_download_refuses_a_wrong_archive(tmp_path, monkeypatch):
    from siamax.data import fsdd
    from siamax.errors import ChecksumError

    _serve(monkeypatch, _github_archive({f"recordings/{r.rsplit('/', 1)[1]}": b"x" for r in fsdd.RELPATHS[:10]}))
    with pytest.raises(ChecksumError, match="nothing was written"):
        fsdd.fsdd_files(tmp_path)
    assert not any((tmp_path / fsdd.FOLDER).iterdir())  # no partial folder, no temporary left behind
    assert [p.name for p in (tmp_path / "fsdd").iterdir()] == ["recordings"]


@pytest.mark.slow  # reads the real data
def test_fsdd_download_verifies_and_fills_in(siamax_data_dir, tmp_path, monkeypatch):
    from siamax.data import _paths, fsdd

    files = {f"recordings/{r.rsplit('/', 1)[1]}": (siamax_data_dir / r).read_bytes() for r in fsdd.RELPATHS}
    _serve(monkeypatch, _github_archive(files))
    paths = fsdd.fsdd_files(tmp_path)  # fresh download: the same content digest as the project's copy
    assert len(paths) == fsdd.N_FILES and _paths.content_digest(paths) == fsdd.DIGEST
    (tmp_path / fsdd.RELPATHS[5]).unlink()  # one file lost: fetched again, the others kept
    assert fsdd.fsdd_files(tmp_path)[fsdd.RELPATHS[5]].read_bytes() == files[f"recordings/{fsdd.RELPATHS[5][16:]}"]


@pytest.mark.slow
def test_fsdd_real_data(siamax_data_dir, siamax_tfds_dir):
    from siamax.data import _paths, fsdd

    assert _paths.content_digest(fsdd.fsdd_files(siamax_data_dir, download=False)) == fsdd.DIGEST
    data = fsdd.load_fsdd(siamax_data_dir, siamax_tfds_dir, download=False)
    assert len(data) == 3000 and data.sample_rate == 8000
    assert (np.bincount(data.digits) == 300).all() and (np.bincount(data.speakers) == 500).all()
    counts = np.zeros((10, 6), int)
    np.add.at(counts, (data.digits, data.speakers), 1)
    assert (counts == 50).all()  # 10 digits x 6 speakers x 50 takes
    assert data.lengths.min() == 1148 and data.lengths.max() == 18262
    i = fsdd.RELPATHS.index(CLIP)
    np.testing.assert_array_equal(data.wave(i), audio.read_audio(siamax_data_dir / CLIP))
    assert (data.digits[i], data.speaker_names[data.speakers[i]], data.indices[i]) == (7, "jackson", 32)
    waves, digits, speakers = fsdd.fsdd_clips(data, 8064)
    assert waves.shape == (3000, 8064) and digits.shape == speakers.shape == (3000,)
    table = fsdd.fsdd_table(data, label="speaker")
    assert table.images.shape == (3000, 64, 64) and table.n_classes == 6 and table.paths[i] == CLIP


# ---- audio folders


def _write_folder(root):
    sf = pytest.importorskip("soundfile")
    for c, f in (("low", 300.0), ("high", 2500.0), ("sweep", None)):
        (root / c).mkdir(parents=True)
        for k in range(3):
            y = _tone(8000, f * (1 + 0.05 * k), 0.4 + 0.4 * k) if f else _chirp(16000, 0.5, 100, 3000)
            sf.write(root / c / f"{k}.{'flac' if k == 2 else 'wav'}", y, 16000 if f is None else 8000)
    (root / "low" / "notes.txt").write_text("not audio")
    (root / "high" / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")


def test_audio_folder_reads_and_reports(tmp_path):
    from siamax.data.audio_folder import audio_folder, is_audio_file, is_audio_folder

    _write_folder(tmp_path / "clips")
    table, report = audio_folder(tmp_path / "clips")
    assert table.images.shape == (9, 64, 64) and table.images.dtype == jnp.uint8
    assert table.class_names == ("high", "low", "sweep") and table.name == "clips"
    assert sorted(p for p, _ in report.skipped) == ["high/broken.wav", "low/notes.txt"]
    assert "not an audio file" in dict(report.skipped)["low/notes.txt"]
    assert "cannot be decoded" in dict(report.skipped)["high/broken.wav"]
    assert report.n_resampled == 3 and report.rates == ((8000, 6), (16000, 3))
    assert report.n_cropped == 2 and report.n_padded == 7  # the two 1.2 s tones are cropped to 1.008 s
    assert "skipped 2 file(s)" in report.summary() and "64x64" in report.summary()
    # the tones' energy sits in different mel rows
    rows = np.asarray(table.images, np.float32).mean(axis=2)
    assert rows[table.labels == 1].mean(0).argmax() < rows[table.labels == 0].mean(0).argmax()
    small, _ = audio_folder(tmp_path / "clips", size=35)
    assert small.images.shape == (9, 35, 35)
    assert is_audio_folder(tmp_path / "clips") and is_audio_file("a/B.FLAC") and not is_audio_file("a.png")
    (tmp_path / "pics" / "a").mkdir(parents=True)
    (tmp_path / "pics" / "a" / "x.png").write_bytes(b"")
    assert not is_audio_folder(tmp_path / "pics") and not is_audio_folder(tmp_path / "nowhere")


def test_audio_folder_errors(tmp_path):
    from siamax.data.audio_folder import audio_files, audio_folder
    from siamax.errors import DataError, InputError

    _write_folder(tmp_path / "clips")
    with pytest.raises(InputError, match="fewer than 4 readable clip"):
        audio_folder(tmp_path / "clips", min_clips=4)
    with pytest.raises(InputError, match="the model takes 35x35"):
        audio_folder(tmp_path / "clips", size=35, config=MelConfig())
    with pytest.raises(DataError, match="does not exist"):
        audio_folder(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.wav").write_bytes(b"")
    with pytest.raises(InputError, match="directly"):
        audio_folder(tmp_path / "flat")
    images = audio_files([tmp_path / "clips" / "low" / "0.wav"], size=35)
    assert images.shape == (1, 35, 35)
    with pytest.raises(InputError, match="not readable as audio"):
        audio_files([tmp_path / "clips" / "high" / "broken.wav"])
