"""Power cuts under the outbox, the long form of tests/test_powercut.py.

    sudo .venv/bin/python bench/powercut.py [--cuts 200] [--max-run-s 1.0]

A writer captures (and marks some records sent) on a FUSE file system that drops every unsynced
write at a cut; it is killed at a random moment, the power is cut, and every acknowledged record is
checked. Needs /dev/fuse and fusermount3 (Debian fuse3). Ends with one key=value line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.powercut import run_cuts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuts", type=int, default=200)
    parser.add_argument("--max-run-s", type=float, default=1.0, help="the writer runs 0..this long before a cut")
    parser.add_argument("--seed", type=int, default=20261202)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fvagent-powercut-") as tmp:
        result = run_cuts(args.cuts, Path(tmp), seed=args.seed, max_run_s=args.max_run_s)
    print(
        f"cuts={result.cuts} acknowledged={result.acknowledged} acknowledged_sent={result.acknowledged_sent} "
        f"lost={result.lost} not_sent={result.not_sent} damaged={result.damaged} wall_s={result.wall_s}"
    )


if __name__ == "__main__":
    main()
