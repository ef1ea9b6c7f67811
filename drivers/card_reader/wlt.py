"""WLT card-photo decoding through a vendor library loaded with ctypes.

No open decoder exists; hospitals get one from the reader's vendor. fvagent calls ONE C function
that a thin shim over the vendor's library implements::

    int fvagent_wlt_decode(const unsigned char *wlt, size_t wlt_len,
                           unsigned char *bgr_out, size_t out_len);

``wlt``/``wlt_len``: the 1024 raw bytes read from the card. ``bgr_out``: a buffer of ``out_len`` =
102*126*3 = 38556 bytes to fill with the 102x126 photo as packed 24-bit BGR, top row first, no row
padding. Returns 0 on success, any other value is the vendor's error code. The shim is called from
one thread at a time.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path

import numpy as np

from core.errors import DriverError

log = logging.getLogger(__name__)

WIDTH, HEIGHT = 102, 126
BGR_LEN = WIDTH * HEIGHT * 3
SYMBOL = "fvagent_wlt_decode"

_cache: dict[str, ctypes.CDLL] = {}
_lock = threading.Lock()


class WltDecodeError(DriverError):
    """The WLT photo could not be decoded (library missing, wrong symbol, or the decoder refused)."""


def _load(path: str | Path) -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    key = str(path)
    lib = _cache.get(key)
    if lib is None:
        if not Path(key).is_file():
            raise WltDecodeError(
                f"WLT decoder library not found: {key}",
                hint="set [card_reader] wlt_decoder to the vendor shim's .so (docs/drivers.md)",
            )
        try:
            lib = ctypes.CDLL(key)
        except OSError as exc:
            raise WltDecodeError(
                f"cannot load WLT decoder {key}: {exc}", hint="is it built for this machine's architecture?"
            ) from exc
        _cache[key] = lib
    try:
        fn = getattr(lib, SYMBOL)
    except AttributeError:
        raise WltDecodeError(
            f"WLT decoder {key} has no function {SYMBOL}",
            hint="the shim must export int fvagent_wlt_decode(...) (docs/drivers.md)",
        ) from None
    fn.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def decode_wlt_to_bgr(wlt: bytes, decoder_path: str | Path) -> np.ndarray:
    """Decode ``wlt`` into a 126x102x3 uint8 BGR array. Raises ``WltDecodeError``."""
    with _lock:
        fn = _load(decoder_path)
        out = ctypes.create_string_buffer(BGR_LEN)
        rc = fn(bytes(wlt), len(wlt), ctypes.addressof(out), BGR_LEN)
    if rc != 0:
        raise WltDecodeError(f"WLT decoder returned {rc}", device=str(decoder_path))
    return np.frombuffer(out.raw, dtype=np.uint8).reshape(HEIGHT, WIDTH, 3).copy()


def decode_wlt_to_jpeg(wlt: bytes, decoder_path: str | Path) -> bytes:
    """Decode ``wlt`` and return the photo as JPEG (the record's headImg). Raises ``WltDecodeError``."""
    from core.images import encode_jpeg

    return encode_jpeg(decode_wlt_to_bgr(wlt, decoder_path))
