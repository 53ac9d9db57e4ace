"""Audio as 1-channel images for the towers: reading, resampling, a log-mel front-end in JAX, augmentations.

The route from a sound file to what the towers see, in two halves:

* on the host (numpy, once per file): :func:`read_audio` reads WAV / FLAC with ``soundfile``, averages
  the channels to mono and resamples to one rate (:func:`resample`: ``scipy.signal.resample_poly``,
  polyphase with its Kaiser-windowed anti-aliasing filter); :func:`stack_clips` centre-crops or
  zero-pads each clip to :attr:`MelConfig.samples` and stacks them;
* on the device (pure, jit-able, any leading batch axes, vmap-able): :func:`log_mel` frames the
  waveform (centred, zero padded by ``n_fft // 2`` at both ends, as librosa's ``center=True``),
  applies a periodic Hann window, ``jnp.fft.rfft``, the power spectrum and a Slaney-style mel filter
  bank (librosa's default: Slaney's mel scale, area-normalised triangles; built once in numpy), then
  ``10 log10(max(mel, amin))``; :func:`to_image` maps the top ``top_db`` decibels of each clip to
  [0, 1]; :func:`features` does both on a clip of any length (centre crop / zero pad first).

The image is ``(n_mels, frames)``: row 0 the lowest mel band, column 0 the first frame; 1 = the
clip's loudest cell, 0 = ``top_db`` below it or quieter (silence). The default :class:`MelConfig`
(8 kHz, 256-sample FFT, hop 128, 64 mel bands, 64 frames) makes 1.008 s of audio a 64 x 64 image:
FSDD's clips are 0.14 - 2.3 s, 99.4% of them under 1.008 s. :meth:`MelConfig.square` gives the
config for another square size ``S`` (``S`` mel bands x ``S`` frames over about one second).

Model format (what ``siamax.data.labelled.LabelledImages`` holds) is the image rounded to uint8
(x 255): :func:`clips_to_images`. Loudness (the clip's level) does not survive :func:`to_image`
unless ``MelConfig.ref_db`` fixes the top; speech content and timbre do.

Augmentations (jitted, take a key, one independent draw per example over the leading axes):
:func:`time_shift` and :func:`gain` on waveforms, :func:`time_mask` and :func:`freq_mask`
(SpecAugment, Park et al. 2019) on spectrograms or images, :func:`spec_augment` for both masks.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from fractions import Fraction

import chex
import jax
import jax.numpy as jnp
import numpy as np

from siamax.errors import InputError

SAMPLE_RATE = 8000  # FSDD's rate, the default everywhere
AUDIO_SUFFIXES = (".wav", ".flac")


@dataclasses.dataclass(frozen=True)
class MelConfig:
    """The log-mel front-end's parameters (hashable: a static argument under ``jit``).

    Attributes:
      sample_rate: the rate every clip is resampled to, Hz (8000: FSDD's).
      n_fft: FFT (and Hann window) length in samples (256: 32 ms at 8 kHz).
      hop: samples between frames (128: 16 ms at 8 kHz).
      n_mels: mel bands, the image's height.
      fmin, fmax: the filter bank's frequency range, Hz (``fmax=None``: ``sample_rate / 2``).
      frames: frames per clip, the image's width; a clip is cropped / padded to :attr:`samples`.
      top_db: the dynamic range the image keeps, dB below its top (librosa's ``power_to_db`` default).
      ref_db: the image's top in dB; None: each clip's own maximum (level-invariant images).
      amin: the power floor before the log (``10 log10(max(power, amin))``).
    """

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 256
    hop: int = 128
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float | None = None
    frames: int = 64
    top_db: float = 80.0
    ref_db: float | None = None
    amin: float = 1e-10

    def __post_init__(self):
        for name in ("sample_rate", "n_fft", "hop", "n_mels", "frames"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InputError(f"MelConfig.{name} must be a positive whole number, got {v!r}")
        if self.n_fft < 2 or self.n_fft % 2:
            raise InputError(f"MelConfig.n_fft must be even and >= 2, got {self.n_fft}")
        if not 0 <= self.fmin < self.f_max <= self.sample_rate / 2:
            raise InputError(
                f"MelConfig needs 0 <= fmin < fmax <= sample_rate / 2 = {self.sample_rate / 2:g} Hz, "
                f"got fmin={self.fmin}, fmax={self.f_max}"
            )
        if not (self.top_db > 0 and self.amin > 0):
            raise InputError(f"MelConfig.top_db and amin must be positive, got {self.top_db}, {self.amin}")

    @property
    def f_max(self) -> float:
        """``fmax``, or the Nyquist frequency when it is None."""
        return self.sample_rate / 2 if self.fmax is None else float(self.fmax)

    @property
    def samples(self) -> int:
        """Waveform length that centred framing turns into exactly ``frames`` frames: ``hop * (frames - 1)``."""
        return self.hop * (self.frames - 1)

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate

    @property
    def shape(self) -> tuple[int, int]:
        """The image's shape, ``(n_mels, frames)``."""
        return (self.n_mels, self.frames)

    @classmethod
    def square(cls, size: int, sample_rate: int = SAMPLE_RATE, seconds: float = 1.0, **kw) -> MelConfig:
        """``size`` mel bands x ``size`` frames covering at least ``seconds`` of audio: the hop is
        ``seconds * sample_rate / (size - 1)`` rounded up to a multiple of 16 samples, ``n_fft`` the
        smallest power of two >= 2 x hop whose filter bank has no empty band (every band holds an FFT
        bin). ``square(64)`` is the default config (hop 128, n_fft 256: 1.008 s at 8 kHz)."""
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 2:
            raise InputError(f"MelConfig.square needs a whole size >= 2, got {size!r}")
        hop = 16 * math.ceil(seconds * sample_rate / (size - 1) / 16)
        n_fft = max(2, 1 << math.ceil(math.log2(2 * hop)))
        while True:
            cfg = cls(sample_rate=sample_rate, n_fft=n_fft, hop=hop, n_mels=int(size), frames=int(size), **kw)
            if (mel_filterbank(cfg).max(axis=1) > 0).all() or n_fft >= 1 << 16:
                return cfg
            n_fft *= 2


# ---------------------------------------------------------------------------------------------
# Host side: files, rates, lengths.


def read_audio(path, sample_rate: int | None = SAMPLE_RATE) -> np.ndarray:
    """A WAV / FLAC file as mono float32 ``(T,)`` in [-1, 1] at ``sample_rate`` Hz (None: the file's own rate).

    Channels are averaged; integer PCM is scaled by soundfile (int16 / 32768). Raises soundfile's
    error (a ``RuntimeError`` / ``LibsndfileError``) for a file it cannot decode.
    """
    x, rate = read_audio_native(path)
    return x if sample_rate is None else resample(x, rate, sample_rate)


def read_audio_native(path) -> tuple[np.ndarray, int]:
    """``(mono float32 (T,), the file's sample rate)``: :func:`read_audio` before resampling."""
    import soundfile  # pylint: disable=g-import-not-at-top

    source = path if hasattr(path, "read") else str(path)  # a path, or a file object (uploads: audio_bytes)
    x, rate = soundfile.read(source, dtype="float32", always_2d=True)
    return (x[:, 0] if x.shape[1] == 1 else x.mean(axis=1, dtype=np.float32)), int(rate)


def resample(x, orig_rate: int, target_rate: int, axis: int = -1) -> np.ndarray:
    """``x`` resampled from ``orig_rate`` to ``target_rate`` Hz along ``axis``, float32.

    Polyphase (``scipy.signal.resample_poly``, up / down = the reduced rate ratio) with its default
    Kaiser (beta 5) low-pass: content above the lower Nyquist frequency is filtered out, not aliased.
    Length: ``ceil(T * target / orig)``.
    """
    from scipy.signal import resample_poly  # pylint: disable=g-import-not-at-top

    if orig_rate < 1 or target_rate < 1:
        raise InputError(f"sample rates must be positive, got {orig_rate} -> {target_rate}")
    x = np.asarray(x, np.float32)
    if orig_rate == target_rate:
        return x
    ratio = Fraction(int(target_rate), int(orig_rate))
    return resample_poly(x, ratio.numerator, ratio.denominator, axis=axis).astype(np.float32)


def fix_length(x, length: int, axis: int = -1):
    """Centre crop or zero pad ``x`` to ``length`` along ``axis`` (numpy in, numpy out; else jnp, jit-able).

    A clip longer than ``length`` keeps its middle (``(T - length) // 2`` dropped at the start); a
    shorter one is padded with ``(length - T) // 2`` zeros before it and the rest after.
    """
    xp = np if isinstance(x, np.ndarray) else jnp
    axis = axis % x.ndim
    n = x.shape[axis]
    if n >= length:
        start = (n - length) // 2
        return xp.take(x, xp.arange(start, start + length), axis=axis) if n > length else x
    widths = [(0, 0)] * x.ndim
    widths[axis] = ((length - n) // 2, length - n - (length - n) // 2)
    return xp.pad(x, widths)


def stack_clips(waves: Sequence[np.ndarray], length: int) -> np.ndarray:
    """Clips of any lengths (1-D each) -> float32 ``(N, length)``, each centre-cropped / zero-padded."""
    out = np.zeros((len(waves), length), np.float32)
    for i, w in enumerate(waves):
        w = np.asarray(w, np.float32)
        if w.ndim != 1:
            raise InputError(f"clip {i} has shape {w.shape}; expected a mono waveform (T,)")
        out[i] = fix_length(w, length)
    return out


# ---------------------------------------------------------------------------------------------
# The mel filter bank (numpy, built once per config).


def hz_to_mel(f):
    """Slaney's mel scale (librosa's ``htk=False``): linear below 1 kHz (3 mels per 200 Hz), log above."""
    f = np.asarray(f, np.float64)
    linear = f * 3.0 / 200.0
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, linear)


def mel_to_hz(m):
    """The inverse of :func:`hz_to_mel`."""
    m = np.asarray(m, np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * 200.0 / 3.0)


@functools.lru_cache(maxsize=32)
def mel_filterbank(cfg: MelConfig) -> np.ndarray:
    """float32 ``(n_mels, n_fft // 2 + 1)``: triangles equally spaced on Slaney's mel scale from
    ``fmin`` to ``fmax``, each scaled by ``2 / (its width in Hz)`` (Slaney's area normalisation), as
    ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)`` with its defaults. Read-only."""
    bins = np.linspace(0.0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(cfg.fmin), hz_to_mel(cfg.f_max), cfg.n_mels + 2))
    width = np.diff(edges)
    ramps = edges[:, None] - bins[None, :]
    rising = -ramps[:-2] / width[:-1, None]
    falling = ramps[2:] / width[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    weights = weights.astype(np.float32)
    weights.setflags(write=False)
    return weights


def hann_window(n: int) -> np.ndarray:
    """The periodic Hann window of length ``n`` (``scipy.signal.get_window("hann", n)``, librosa's)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Device side: the front-end (pure jnp; any leading axes).


def _check_wave(wave, where: str):
    chex.assert_rank(wave, {1, 2, 3, 4})
    if not jnp.issubdtype(wave.dtype, jnp.floating):
        raise InputError(f"{where} expects a float waveform (..., T) in [-1, 1], got {wave.dtype}")


def power_spectrogram(wave: jax.Array, cfg: MelConfig = MelConfig()) -> jax.Array:
    """``|rfft(hann * frame)|^2`` of centred frames: float32 ``(..., n_fft // 2 + 1, 1 + T // hop)``."""
    wave = jnp.asarray(wave)
    _check_wave(wave, "power_spectrogram")
    pad = cfg.n_fft // 2
    x = jnp.pad(wave.astype(jnp.float32), [(0, 0)] * (wave.ndim - 1) + [(pad, pad)])
    n_frames = 1 + (x.shape[-1] - cfg.n_fft) // cfg.hop
    index = np.arange(n_frames)[:, None] * cfg.hop + np.arange(cfg.n_fft)[None, :]
    spectrum = jnp.fft.rfft(x[..., index] * hann_window(cfg.n_fft), axis=-1)  # (..., frames, bins)
    power = spectrum.real**2 + spectrum.imag**2
    return jnp.swapaxes(power, -1, -2)


def log_mel(wave: jax.Array, cfg: MelConfig = MelConfig()) -> jax.Array:
    """Log-mel spectrogram in dB, ``10 log10(max(mel power, amin))``: float32 ``(..., n_mels, 1 + T // hop)``.

    Equals ``librosa.power_to_db(librosa.feature.melspectrogram(y=wave, sr, n_fft, hop_length=hop,
    n_mels, fmin, fmax, center=True, pad_mode="constant"), ref=1, amin, top_db=None)`` within float32
    rounding (``tests/test_audio.py`` states the tolerance). ``wave`` is not cropped or padded here.
    """
    power = power_spectrogram(wave, cfg)
    mel = jnp.einsum("mk,...kt->...mt", mel_filterbank(cfg), power, precision=jax.lax.Precision.HIGHEST)
    return 10.0 * jnp.log10(jnp.maximum(mel, cfg.amin))


def to_image(db: jax.Array, cfg: MelConfig = MelConfig()) -> jax.Array:
    """Log-mel dB ``(..., n_mels, frames)`` -> float32 in [0, 1]: ``clip(1 + (db - top) / top_db, 0, 1)``,
    ``top`` each spectrogram's own maximum (or ``cfg.ref_db``)."""
    chex.assert_rank(db, {2, 3, 4, 5})
    top = jnp.max(db, axis=(-2, -1), keepdims=True) if cfg.ref_db is None else cfg.ref_db
    return jnp.clip(1.0 + (db - top) / cfg.top_db, 0.0, 1.0)


def features(wave: jax.Array, cfg: MelConfig = MelConfig()) -> jax.Array:
    """The front-end: waveform(s) ``(..., T)`` (any T) -> images float32 ``(..., n_mels, frames)`` in [0, 1].

    Centre crop / zero pad to ``cfg.samples``, :func:`log_mel`, :func:`to_image`. Pure; ``jax.jit(features,
    static_argnums=1)`` or :func:`frontend`.
    """
    wave = jnp.asarray(wave)
    _check_wave(wave, "features")
    image = to_image(log_mel(fix_length(wave, cfg.samples), cfg), cfg)
    chex.assert_shape(image, (*wave.shape[:-1], *cfg.shape))
    return image


@functools.lru_cache(maxsize=16)
def frontend(cfg: MelConfig = MelConfig()):
    """:func:`features` for ``cfg``, jitted (one compilation per input shape)."""
    return jax.jit(functools.partial(features, cfg=cfg))


def clips_to_images(waves: Sequence[np.ndarray], cfg: MelConfig = MelConfig(), *, chunk: int = 256) -> jax.Array:
    """Clips (1-D float arrays at ``cfg.sample_rate``, any lengths) -> uint8 ``(N, n_mels, frames)`` model
    format (image x 255, rounded) on the device, in jitted chunks of one size (the last one padded),
    so any number of clips compiles once."""
    if not len(waves):
        raise InputError("clips_to_images expects at least one clip")
    convert = _uint8_frontend(cfg)
    chunk = min(chunk, len(waves))
    out = []
    for lo in range(0, len(waves), chunk):
        part = stack_clips(waves[lo : lo + chunk], cfg.samples)
        if len(part) < chunk:
            part = np.concatenate([part, np.zeros((chunk - len(part), cfg.samples), np.float32)])
        out.append(convert(part))
    return jnp.concatenate(out)[: len(waves)]


@functools.lru_cache(maxsize=16)
def _uint8_frontend(cfg: MelConfig):
    return jax.jit(lambda w: jnp.round(features(w, cfg) * 255.0).astype(jnp.uint8))


# ---------------------------------------------------------------------------------------------
# Augmentations: one independent draw per example (every leading axis is a batch axis).


def _lead(x: jax.Array, core: int) -> int:
    """The number of examples in ``x``: the product of its axes before the last ``core``."""
    return math.prod(x.shape[: x.ndim - core])


@functools.partial(jax.jit, static_argnames=("max_shift", "mode"))
def time_shift(key: jax.Array, wave: jax.Array, max_shift: int, mode: str = "pad") -> jax.Array:
    """Shift waveforms ``(..., T)`` in time by a uniform whole number of samples in ``[-max_shift, max_shift]``.

    ``mode="pad"``: what moves past an end is dropped and zeros come in; ``"roll"``: it wraps around.
    """
    if mode not in ("pad", "roll"):
        raise InputError(f"time_shift mode must be 'pad' or 'roll', got {mode!r}")
    chex.assert_rank(wave, {1, 2, 3})
    n, length = _lead(wave, 1), wave.shape[-1]
    shift = jax.random.randint(key, (n, 1), -max_shift, max_shift + 1)
    source = jnp.arange(length)[None, :] - shift  # output sample t comes from t - shift
    flat = wave.reshape(n, length)
    out = jnp.take_along_axis(flat, source % length, axis=1)
    if mode == "pad":
        out = jnp.where((source >= 0) & (source < length), out, jnp.zeros((), wave.dtype))
    return out.reshape(wave.shape)


@functools.partial(jax.jit, static_argnames=("max_db",))
def gain(key: jax.Array, wave: jax.Array, max_db: float = 6.0) -> jax.Array:
    """Scale waveforms ``(..., T)`` by ``10 ** (g / 20)``, ``g`` uniform in ``[-max_db, max_db]`` dB each."""
    chex.assert_rank(wave, {1, 2, 3})
    db = jax.random.uniform(key, (_lead(wave, 1), 1), minval=-max_db, maxval=max_db)
    return (wave.reshape(db.shape[0], -1) * 10.0 ** (db / 20.0)).reshape(wave.shape).astype(wave.dtype)


def _bands(key, n: int, size: int, max_width: int, n_masks: int) -> jax.Array:
    """(n, size) True where one of ``n_masks`` bands per example, each of a uniform width in
    [0, max_width] at a uniform start, covers."""
    kw, ks = jax.random.split(key)
    width = jax.random.randint(kw, (n, n_masks, 1), 0, min(max_width, size) + 1)
    start = jnp.floor(jax.random.uniform(ks, (n, n_masks, 1)) * (size - width + 1)).astype(width.dtype)
    pos = jnp.arange(size)
    return ((pos >= start) & (pos < start + width)).any(axis=1)


@functools.partial(jax.jit, static_argnames=("max_width", "n_masks"))
def time_mask(key: jax.Array, spec: jax.Array, max_width: int, n_masks: int = 1, value: float = 0.0) -> jax.Array:
    """SpecAugment time masks: ``n_masks`` bands of up to ``max_width`` frames of ``spec`` ``(..., n_mels,
    frames)`` set to ``value`` (0: silence in :func:`to_image`'s scale), drawn per example."""
    chex.assert_rank(spec, {2, 3, 4})
    n, (mels, frames) = _lead(spec, 2), spec.shape[-2:]
    masked = _bands(key, n, frames, max_width, n_masks)[:, None, :]
    out = jnp.where(masked, jnp.asarray(value, spec.dtype), spec.reshape(n, mels, frames))
    return out.reshape(spec.shape)


@functools.partial(jax.jit, static_argnames=("max_width", "n_masks"))
def freq_mask(key: jax.Array, spec: jax.Array, max_width: int, n_masks: int = 1, value: float = 0.0) -> jax.Array:
    """SpecAugment frequency masks: ``n_masks`` bands of up to ``max_width`` mel rows of ``spec``
    ``(..., n_mels, frames)`` set to ``value``, drawn per example."""
    chex.assert_rank(spec, {2, 3, 4})
    n, (mels, frames) = _lead(spec, 2), spec.shape[-2:]
    masked = _bands(key, n, mels, max_width, n_masks)[:, :, None]
    out = jnp.where(masked, jnp.asarray(value, spec.dtype), spec.reshape(n, mels, frames))
    return out.reshape(spec.shape)


def spec_augment(
    key: jax.Array,
    spec: jax.Array,
    *,
    time_width: int = 8,
    freq_width: int = 8,
    time_masks: int = 1,
    freq_masks: int = 1,
    value: float = 0.0,
) -> jax.Array:
    """:func:`time_mask` then :func:`freq_mask`, with independent keys (defaults: one of each, up to 8 wide)."""
    kt, kf = jax.random.split(key)
    spec = time_mask(kt, spec, time_width, time_masks, value)
    return freq_mask(kf, spec, freq_width, freq_masks, value)
