"""SM4-ECB (PKCS#7) and HMAC-SM3 throughput: fvagent (cryptography/OpenSSL) against gmssl (pure Python).

Run: .venv/bin/python bench/crypto.py [--quick]
Prints a table, then one line of key=value pairs (MB/s per library, operation and size, and the
fvagent/gmssl ratios; sm4_ecb_256k_ratio is the figure issue 2 targets at >= 100).
gmssl runs about 0.1 MB/s, so it gets one pass on the big inputs; the whole run takes about a minute.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gmssl import func as gm_func
from gmssl import sm3 as gm_sm3
from gmssl.sm4 import SM4_ENCRYPT, CryptSM4

from agent import crypto

SIZES = {"16k": 16 * 1024, "256k": 256 * 1024, "2m": 2 * 1024 * 1024}
KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")
MAC_KEY = b"orgAppSecret-for-the-bench"


def gm_sm4_ecb(data: bytes) -> bytes:
    c = CryptSM4()
    c.set_key(KEY, SM4_ENCRYPT)
    return bytes(c.crypt_ecb(data))


def gm_hmac_sm3(data: bytes) -> bytes:
    """RFC 2104 over gmssl's SM3 (gmssl has no HMAC of its own)."""

    def h(b: bytes) -> bytes:
        return bytes.fromhex(gm_sm3.sm3_hash(gm_func.bytes_to_list(b)))

    key = MAC_KEY.ljust(64, b"\0")
    return h(bytes(b ^ 0x5C for b in key) + h(bytes(b ^ 0x36 for b in key) + data))


def mb_per_s(fn: Callable[[bytes], bytes], data: bytes, *, min_time_s: float, max_runs: int) -> float:
    """Best throughput over repeated runs, until ``min_time_s`` is spent or ``max_runs`` are done."""
    best = float("inf")
    spent, runs = 0.0, 0
    while runs < max_runs and (runs == 0 or spent < min_time_s):
        t0 = time.perf_counter()
        fn(data)
        dt = time.perf_counter() - t0
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return len(data) / best / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip gmssl on 2 MB (about 45 s saved)")
    args = parser.parse_args(argv)
    crypto.self_test()
    ops: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
        "sm4_ecb": (lambda d: crypto.sm4_ecb_encrypt(KEY, d), gm_sm4_ecb),
        "hmac_sm3": (lambda d: crypto.hmac_sm3(MAC_KEY, d), gm_hmac_sm3),
    }
    results: dict[str, float] = {}
    print(f"{'operation':<10} {'size':>5} {'fvagent MB/s':>13} {'gmssl MB/s':>11} {'ratio':>8}")
    for op, (ours, theirs) in ops.items():
        sample = os.urandom(4096)
        if ours(sample) != theirs(sample):  # the two must compute the same thing to be compared
            raise SystemExit(f"{op}: fvagent and gmssl disagree on a 4 KB sample")
        for label, size in SIZES.items():
            data = os.urandom(size)
            fast = mb_per_s(ours, data, min_time_s=0.5, max_runs=200)
            results[f"fvagent_{op}_{label}_mbps"] = fast
            if args.quick and size > 300_000:
                print(f"{op:<10} {label:>5} {fast:13.1f} {'skipped':>11} {'-':>8}")
                continue
            slow = mb_per_s(theirs, data, min_time_s=0.0, max_runs=1 if size > 100_000 else 3)
            results[f"gmssl_{op}_{label}_mbps"] = slow
            results[f"{op}_{label}_ratio"] = fast / slow
            print(f"{op:<10} {label:>5} {fast:13.1f} {slow:11.3f} {fast / slow:8.0f}")
    print(" ".join(f"{k}={v:.4g}" for k, v in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
