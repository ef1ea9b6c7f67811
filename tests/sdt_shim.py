"""A C library implementing the SDT-style vendor API over the project's synthetic cards, built with
the system's cc, for the ``sdt`` driver's tests.

The shim keeps its state in files of the directory named by ``$SDT_SHIM_DIR`` (so a test drives it
from Python while the driver calls it through ctypes): ``present`` (a card is in the field),
``text.bin`` / ``photo.wlt`` / ``app.bin`` (the card), ``read_done`` (find fails until the card
leaves, as a real SAM's does), ``fail_<function>`` (hex code the next call of that function
returns), ``port`` (the port number that opens; default 1001), and ``calls`` (one line per call).
It returns the documented codes: 0x90 success, 0x9F found, 0x80 no card, 0x81 select failed, 0x41
read failed, 0x91 no appended address, 0x01 port open failed. ``unpack(src, dst, 602)`` writes a
102x126 BMP (a gradient) and returns 1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from core.card import IdCard
from drivers.card_reader import codec

SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char path_buf[4096];

static const char *in_dir(const char *name) {
    const char *dir = getenv("SDT_SHIM_DIR");
    snprintf(path_buf, sizeof path_buf, "%s/%s", dir ? dir : ".", name);
    return path_buf;
}
static int has(const char *name) { return access(in_dir(name), F_OK) == 0; }
static void touch(const char *name) { FILE *f = fopen(in_dir(name), "a"); if (f) fclose(f); }
static long slurp(const char *name, unsigned char *buf, long max) {
    FILE *f = fopen(in_dir(name), "rb");
    if (!f) return -1;
    long n = (long)fread(buf, 1, (size_t)max, f);
    fclose(f);
    return n;
}
static int called(const char *fn) {           /* log the call; a fail_<fn> file forces its code once */
    FILE *log = fopen(in_dir("calls"), "a");
    if (log) { fprintf(log, "%s\n", fn); fclose(log); }
    char name[128];
    snprintf(name, sizeof name, "fail_%s", fn);
    FILE *f = fopen(in_dir(name), "r");
    if (!f) return 0;
    unsigned code = 0;
    if (fscanf(f, "%x", &code) != 1) code = 0x24;
    fclose(f);
    unlink(in_dir(name));
    return (int)code;
}
static int wanted_port(void) {
    unsigned char buf[16] = {0};
    return slurp("port", buf, sizeof buf - 1) > 0 ? atoi((char *)buf) : 1001;
}

int SDT_OpenPort(int port) {
    int forced = called("SDT_OpenPort");
    if (forced) return forced;
    if (port != wanted_port()) return 0x01;
    touch("open");
    return 0x90;
}
int SDT_ClosePort(int port) {
    called("SDT_ClosePort");
    unlink(in_dir("open"));
    return 0x90;
}
int SDT_GetSAMStatus(int port, int iIfOpen) {
    int forced = called("SDT_GetSAMStatus");
    if (forced) return forced;
    return has("open") ? 0x90 : 0x01;
}
int SDT_StartFindIDCard(int port, unsigned char *pucIIN, int iIfOpen) {
    int forced = called("SDT_StartFindIDCard");
    if (forced) return forced;
    if (!has("open")) return 0x01;
    if (!has("present") || has("read_done")) return 0x80;
    memset(pucIIN, 0, 4);
    return 0x9F;
}
int SDT_SelectIDCard(int port, unsigned char *pucSN, int iIfOpen) {
    int forced = called("SDT_SelectIDCard");
    if (forced) return forced;
    if (!has("present")) return 0x81;
    memset(pucSN, 0, 8);
    return 0x90;
}
#ifndef NO_READ
int SDT_ReadBaseMsg(int port, unsigned char *pucCHMsg, unsigned int *puiCHMsgLen,
                    unsigned char *pucPHMsg, unsigned int *puiPHMsgLen, int iIfOpen) {
    int forced = called("SDT_ReadBaseMsg");
    if (forced) return forced;
    if (!has("present")) return 0x41;
    long t = slurp("text.bin", pucCHMsg, 256), p = slurp("photo.wlt", pucPHMsg, 1024);
    if (t < 0 || p < 0) return 0x41;
    *puiCHMsgLen = (unsigned int)t;
    *puiPHMsgLen = (unsigned int)p;
    touch("read_done");
    return 0x90;
}
#endif
int SDT_ReadNewAppMsg(int port, unsigned char *pucAppMsg, unsigned int *puiAppMsgLen, int iIfOpen) {
    int forced = called("SDT_ReadNewAppMsg");
    if (forced) return forced;
    long n = slurp("app.bin", pucAppMsg, 280);
    if (n <= 0) { *puiAppMsgLen = 0; return 0x91; }
    *puiAppMsgLen = (unsigned int)n;
    return 0x90;
}
#ifndef NO_UNPACK
int unpack(char *src, char *dst, int bmpSave) {
    called("unpack");
    if (bmpSave != 602) return 0;                       /* the vendors' "bad bmpSave argument" */
    if ((unsigned char)src[0] != 'W') return -4;
    static const unsigned char head[54] = {'B', 'M', 0xCE, 0x97, 0, 0, 0, 0, 0, 0, 54, 0, 0, 0, 40, 0, 0, 0,
        102, 0, 0, 0, 126, 0, 0, 0, 1, 0, 24, 0, 0, 0, 0, 0, 0x98, 0x97, 0, 0};
    memcpy(dst, head, 54);
    for (int row = 0; row < 126; row++) {              /* bottom-up rows padded to 308 bytes */
        unsigned char *line = (unsigned char *)dst + 54 + row * 308;
        int y = 125 - row;
        memset(line, 0, 308);
        for (int x = 0; x < 102; x++) {
            line[x * 3] = (unsigned char)(x * 2); line[x * 3 + 1] = (unsigned char)(y * 2); line[x * 3 + 2] = 200;
        }
    }
    return 1;
}
#endif
"""


def build(directory: Path, *defines: str) -> Path:
    """Compile the shim into ``directory`` (with ``-D`` ``defines``: NO_READ, NO_UNPACK)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:  # deploy/system-deps.sh installs gcc: a machine without it is not set up
        raise RuntimeError("no C compiler: run deploy/system-deps.sh")
    src = directory / "sdt_shim.c"
    src.write_text(SOURCE)
    out = directory / ("libsdt_shim" + "".join(f"_{d.lower()}" for d in defines) + ".so")
    subprocess.run([cc, "-shared", "-fPIC", "-O1", *(f"-D{d}" for d in defines), "-o", str(out), str(src)], check=True)
    return out


class ShimCard:
    """Drives the shim's files: the card in the field, forced return codes, the calls made."""

    def __init__(self, directory: Path) -> None:
        """Point the shim at ``directory`` (sets ``$SDT_SHIM_DIR``; tests restore it with monkeypatch)."""
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        os.environ["SDT_SHIM_DIR"] = str(directory)

    def present(self, card: IdCard, wlt: bytes, appended: list[str] | None = None) -> None:
        (self.dir / "text.bin").write_bytes(codec.encode_text(card))
        (self.dir / "photo.wlt").write_bytes(wlt)
        app = b"".join(a.encode("utf-16-le") + b" \x00" * (35 - len(a)) for a in appended or [])
        (self.dir / "app.bin").write_bytes(app)
        (self.dir / "read_done").unlink(missing_ok=True)
        (self.dir / "present").touch()

    def remove(self) -> None:
        (self.dir / "present").unlink(missing_ok=True)
        (self.dir / "read_done").unlink(missing_ok=True)

    def fail(self, function: str, code: int) -> None:
        (self.dir / f"fail_{function}").write_text(f"{code:x}")

    def set_port(self, port: int) -> None:
        (self.dir / "port").write_text(str(port))

    def calls(self) -> list[str]:
        path = self.dir / "calls"
        return path.read_text().split() if path.exists() else []
