"""What an upload must pass before it is decoded, and the decoding: the limits of ``siamax serve``.

An upload's bytes go to the model by the one route of files (``siamax.data.adapters.decode_bytes`` and
``to_model_format``, the two halves of ``read_bytes``: the decoders of ``image_files`` / ``audio_files``),
but only after its header has been read and found within the limits: an image's width x height (PIL
reads the header alone) at most ``max_pixels``, a clip's length (soundfile's header: frames / sample
rate) at most ``max_seconds``. So a decompression bomb or an hour-long WAV is refused before anything
is decoded. The upload's size itself is bounded before it is read (``app.py``: Content-Length, and the
bytes as they arrive). The second half, the model format, runs in the batcher for many requests at once.

Every refusal is a :class:`RequestError` with its HTTP status: 400 over a limit, 415 not decodable as
the model's kind of file, 422 a malformed request.
"""

from __future__ import annotations

import dataclasses
import io

from siamax.data import adapters
from siamax.errors import UserError, one_line

MAX_CHANNELS = 8  # a clip with more channels than this is refused (every channel is decoded, then averaged)
MAX_RATE = 384_000  # Hz; with max_seconds, bounds the samples a clip may decode to


class RequestError(Exception):
    """A request the server refuses: ``status`` and the message of the JSON ``{"error": ...}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may carry (``siamax serve`` flags of the same names)."""

    max_upload_bytes: int = 20 * 2**20  # the whole request body (413 above)
    max_pixels: int = 25_000_000  # width x height of one image (400 above); e.g. 5000 x 5000
    max_seconds: float = 60.0  # one clip's duration (400 above)


def _check_image(blob: bytes, name: str, limits: Limits) -> None:
    from PIL import Image  # pylint: disable=g-import-not-at-top

    try:
        with Image.open(io.BytesIO(blob)) as im:  # reads the header only
            w, h = im.size
    except Image.DecompressionBombError as e:  # PIL's own guard (at --max-pixels) fires in open(): a limit
        raise RequestError(400, f"{name} is larger than this server takes ({limits.max_pixels:,} pixels): {e}") from e
    except Exception as e:  # noqa: BLE001  PIL raises many types for what is not an image it knows
        raise RequestError(415, f"{name} is not an image siamax can read ({type(e).__name__})") from e
    if w * h > limits.max_pixels:
        raise RequestError(
            400, f"{name} is {w}x{h} = {w * h:,} pixels; this server takes at most {limits.max_pixels:,}"
        )


def _check_clip(blob: bytes, name: str, limits: Limits) -> None:
    import soundfile  # pylint: disable=g-import-not-at-top

    try:
        info = soundfile.info(io.BytesIO(blob))  # the header only
    except Exception as e:  # noqa: BLE001  libsndfile's error for anything it cannot open
        raise RequestError(415, f"{name} is not a sound file siamax can read (WAV, FLAC): {one_line(e)}") from e
    if info.frames <= 0 or info.samplerate <= 0:
        raise RequestError(415, f"{name}: its header gives no length ({info.frames} frames at {info.samplerate} Hz)")
    seconds = info.frames / info.samplerate
    if seconds > limits.max_seconds:
        raise RequestError(
            400, f"{name} lasts {seconds:.1f} s; this server takes clips of at most {limits.max_seconds:g} s"
        )
    if info.channels > MAX_CHANNELS or info.samplerate > MAX_RATE:
        raise RequestError(
            400, f"{name} has {info.channels} channels at {info.samplerate} Hz; at most {MAX_CHANNELS} at {MAX_RATE} Hz"
        )


def decode(model, blobs: list[bytes], names: list[str], limits: Limits):
    """Uploads -> decoded on the host (``adapters.decode_bytes``: for the batcher to bring to model format,
    with those of other requests, by ``adapters.to_model_format``), each checked against ``limits``
    first. ``model``: a ``siamax.commands.Model``; its modality says how the bytes are read."""
    for blob, name in zip(blobs, names):
        if not blob:
            raise RequestError(422, f"{name} is empty")
        (_check_clip if model.modality == "audio" else _check_image)(blob, name, limits)
    try:
        return adapters.decode_bytes(
            blobs, model.spec, modality=model.modality, fallback=model.ink, mel=model.mel, names=names
        )
    except UserError as e:  # the decoders' own refusals: truncated or damaged files, too small, odd pixels
        raise RequestError(415, one_line(e)) from e
