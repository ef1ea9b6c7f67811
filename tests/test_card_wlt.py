"""The WLT decoder binding against a small shared library built here that honours the C signature."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from core.images import decode_image
from drivers.card_reader import decode_wlt_to_jpeg
from drivers.card_reader.simulator import SYNTHETIC_WLT
from drivers.card_reader.wlt import BGR_LEN, WltDecodeError, decode_wlt_to_bgr

SHIM = r"""
#include <stddef.h>
int fvagent_wlt_decode(const unsigned char *wlt, size_t wlt_len, unsigned char *bgr, size_t out_len) {
    if (wlt_len != 1024 || wlt[0] != 'W') return -4;        /* format error, like the vendor DLLs */
    if (out_len != 102 * 126 * 3) return -1;
    for (size_t y = 0; y < 126; y++)
        for (size_t x = 0; x < 102; x++) {
            unsigned char *p = bgr + (y * 102 + x) * 3;
            p[0] = (unsigned char)(x * 2); p[1] = (unsigned char)(y * 2); p[2] = 200;
        }
    return 0;
}
"""


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("wlt")
    (d / "shim.c").write_text(SHIM)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(d / "libshim.so"), str(d / "shim.c")], check=True)
    return d / "libshim.so"


def test_decodes_to_a_jpeg_head_image(decoder):
    jpeg = decode_wlt_to_jpeg(SYNTHETIC_WLT, decoder)
    assert jpeg[:3] == b"\xff\xd8\xff"
    img = decode_image(jpeg)
    assert img.shape == (126, 102, 3)
    bgr = decode_wlt_to_bgr(SYNTHETIC_WLT, decoder)
    assert bgr.nbytes == BGR_LEN and bgr[10, 20].tolist() == [40, 20, 200]
    assert np.abs(img.astype(int) - bgr.astype(int)).mean() < 8  # the JPEG is that image


def test_decoder_refusal_is_an_error(decoder):
    with pytest.raises(WltDecodeError, match="returned -4"):
        decode_wlt_to_jpeg(b"X" * 1024, decoder)


def test_missing_library_and_missing_symbol(tmp_path, decoder):
    with pytest.raises(WltDecodeError, match="not found") as info:
        decode_wlt_to_jpeg(SYNTHETIC_WLT, tmp_path / "none.so")
    assert "wlt_decoder" in info.value.hint
    other = tmp_path / "other.c"
    other.write_text("int something(void) { return 0; }\n")
    subprocess.run(
        [shutil.which("cc") or "gcc", "-shared", "-fPIC", "-o", str(tmp_path / "o.so"), str(other)], check=True
    )
    with pytest.raises(WltDecodeError, match="no function fvagent_wlt_decode"):
        decode_wlt_to_jpeg(SYNTHETIC_WLT, tmp_path / "o.so")


def test_serial_reader_with_decoder_yields_jpeg_and_keeps_wlt(tmp_path, decoder):
    from drivers import registry
    from drivers.card_reader.fake import SAMPLES_DIR, load_fixtures
    from drivers.card_reader.simulator import SamSimulator

    card = load_fixtures(SAMPLES_DIR)[0]
    with SamSimulator(tmp_path / "tty") as sim:
        opts = {"port": str(sim.port), "baudrate": 115200, "poll_interval_s": 0.02, "wlt_decoder": str(decoder)}
        with registry.create("card_reader", "sam-serial", opts) as reader:
            sim.present(card)
            got = reader.read_card(3.0)
            assert got.photo_jpeg[:3] == b"\xff\xd8\xff" and got.photo_wlt == SYNTHETIC_WLT
            sim.remove()
            reader.read_card(0.1)
            sim.present(card, wlt=b"Z" * 1024)  # the decoder refuses: raw WLT kept, the card still read
            got = reader.read_card(3.0)
            assert got.photo_jpeg is None and got.photo_wlt == b"Z" * 1024
