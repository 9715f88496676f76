"""Reading audio files into mono float32 at the task's sample rate.

soundfile (libsndfile) reads wav, flac, ogg/vorbis, opus and mp3; PyAV, an optional extra, reads what
libsndfile cannot (m4a, aac, ...). Multi-channel audio is averaged to mono. A file at another sample
rate is resampled with soxr (fairseq raises instead; ``strict`` restores that). A path may end in
``:offset:length`` to read a byte range of a larger file (fairseq's stored-zip members).
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import threading
from typing import Tuple, Union

import numpy as np

from fairseq_lite.errors import DataError

logger = logging.getLogger(__name__)

#: Extensions libsndfile reads; anything else goes to PyAV.
SOUNDFILE_EXTENSIONS = {".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au", ".w64", ".rf64", ".caf"}

_logged_rates: set = set()
_logged_lock = threading.Lock()


def split_byte_range(path: str) -> Tuple[str, Union[Tuple[int, int], None]]:
    """``file.zip:123:456`` → (``file.zip``, (123, 456)); a plain path → (path, None)."""
    head, *fields = path.rsplit(":", 2)
    if len(fields) == 2 and all(f.isdigit() for f in fields):
        return head, (int(fields[0]), int(fields[1]))
    return path, None


def _source(path: str):
    """What the decoders open: the path, or the bytes of its ``:offset:length`` range."""
    real, byte_range = split_byte_range(path)
    if byte_range is None:
        return real
    offset, length = byte_range
    with open(real, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise DataError(f"{path}: byte range ends past the end of {real} ({len(data)} of {length} bytes)")
    return io.BytesIO(data)


def _decoder_for(path: str) -> str:
    ext = os.path.splitext(split_byte_range(path)[0])[1].lower()
    return "soundfile" if ext in SOUNDFILE_EXTENSIONS else "av"


def _import_av():
    try:
        import av
    except ImportError:
        raise DataError("reading m4a/aac and other non-libsndfile formats needs PyAV: pip install 'fairseq_lite[audio]' (or pip install av)")
    return av


def _read_av(source) -> Tuple[np.ndarray, int]:
    av = _import_av()
    with av.open(source) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        to_float = av.AudioResampler(format="fltp")  # planar float32 (channels × samples), same rate and layout
        chunks = [
            out.to_ndarray()
            for frame in itertools.chain(container.decode(stream), [None])
            for out in to_float.resample(frame)
        ]
    if not chunks:
        return np.zeros((0,), dtype=np.float32), rate
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False).T, rate


def audio_frames(path: str) -> Tuple[int, int]:
    """(number of samples, sample rate) of a file, without decoding it when the format allows."""
    if _decoder_for(path) == "soundfile":
        import soundfile as sf

        info = sf.info(_source(path))
        return info.frames, info.samplerate
    wav, rate = _read_av(_source(path))
    return len(wav), rate


def read_audio(path: str, sample_rate: int, strict: bool = False) -> np.ndarray:
    """Mono float32 samples of ``path`` at ``sample_rate``.

    Raises ``DataError`` for an unreadable or empty file, for NaN or inf samples and, with ``strict``
    (fairseq's behaviour), for a file at another rate; otherwise that file is resampled with soxr and the
    rate is logged once.
    """
    try:
        if _decoder_for(path) == "soundfile":
            import soundfile as sf

            wav, rate = sf.read(_source(path), dtype="float32", always_2d=True)
        else:
            wav, rate = _read_av(_source(path))
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found")
    except Exception as e:  # decoders raise many types for corrupt input
        if not os.path.exists(split_byte_range(path)[0]):
            raise DataError(f"{path}: file not found")
        raise DataError(f"{path}: cannot decode audio ({type(e).__name__}: {str(e).strip() or 'no detail'})")
    wav = wav.mean(axis=1, dtype=np.float32) if wav.shape[1] > 1 else wav[:, 0]
    if len(wav) == 0:
        raise DataError(f"{path}: the file holds no audio samples")
    bad = ~np.isfinite(wav)
    if bad.any():  # float files can hold them; they would make every update of their batch inf/NaN
        raise DataError(f"{path}: {int(bad.sum())} of {len(wav)} samples are NaN or inf (the first at sample "
                        f"{int(np.argmax(bad))}); the file is corrupt")
    if rate != sample_rate:
        if strict:
            raise DataError(
                f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz (task.strict_sample_rate=true); "
                "resample the file or unset strict_sample_rate to resample on the fly"
            )
        wav = resample(wav, rate, sample_rate)
    return np.ascontiguousarray(wav, dtype=np.float32)


def resample(wav: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Resample with soxr (high quality), logging each new source rate once per process."""
    import soxr

    with _logged_lock:
        if rate not in _logged_rates:
            _logged_rates.add(rate)
            logger.warning("resampling audio at %d Hz to %d Hz (logged once per rate)", rate, target_rate)
    return soxr.resample(wav, rate, target_rate, quality="HQ").astype(np.float32, copy=False)
