"""Build the offline release bundles: dist/fvagent-VERSION-linux-ARCH.tar.gz (`make release`).

Each bundle holds the project's deploy kit (deploy/), the docs, README and CHANGELOG, and a wheel
house (wheels/) with fvagent and every dependency, the demo extra's included, as binary wheels for
that architecture and each Python version the wheels allow; bundle.txt names the version, the
architecture and the Python versions covered; SHA256SUMS lists every file. deploy/install.sh run
from the unpacked bundle installs from wheels/ alone (pip --no-index).

    python deploy/release.py                                  # x86_64 and aarch64, Python 3.11-3.13
    python deploy/release.py --arch x86_64 --python 3.11 --dist /tmp/out

Downloads go through pip (PyPI, or the index pip is configured with) into build/release/, kept
between runs: a wheel house whose requirements have not changed is reused without asking the index.
A dependency published only as a source archive is built once here into a wheel; that works only
for pure-Python ones (face-recognition-models is one), which is all fvagent has.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHES = ("x86_64", "aarch64")
PYTHONS = ("3.11", "3.12", "3.13")
GLIBC_TAGS = ("2_28", "2_27", "2_26", "2_24", "2_17", "2_12", "2_5")
"""manylinux levels accepted: glibc 2.28 is the oldest on the supported OS releases (docs/operations.md)."""
SOURCE_ONLY = ("face-recognition-models>=0.3.0",)
"""Pure-Python dependencies PyPI has no wheel of: built here into py3-none-any wheels."""
EXTRAS = "demo"
"""The extras whose wheels the bundle carries (install.sh --demo installs them)."""
KIT = (
    "deploy/install.sh",
    "deploy/uninstall.sh",
    "deploy/fvagent.service",
    "deploy/70-fvagent.rules",
    "deploy/fvagent.example.toml",
    "README.md",
    "CHANGELOG.md",
)


def version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args], capture_output=True, text=True
    )


def build_local_wheels(cache: Path) -> Path:
    """fvagent's own wheel (always rebuilt) and the source-only dependencies' (built once)."""
    local = cache / "local"
    local.mkdir(parents=True, exist_ok=True)
    for old in local.glob("fvagent-*.whl"):
        old.unlink()
    proc = pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(local), str(ROOT))
    if proc.returncode:
        sys.exit(f"release: building the fvagent wheel failed:\n{proc.stderr}")
    for requirement in SOURCE_ONLY:
        name = requirement.split(">")[0].split("=")[0].replace("-", "_")
        if not list(local.glob(f"{name}-*.whl")):
            proc = pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(local), requirement)
            if proc.returncode:
                sys.exit(f"release: building a wheel of {requirement} failed:\n{proc.stderr}")
    return local


def requirements_stamp() -> str:
    """Changes when the dependencies change: the cached wheel house is then fetched again."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    text = repr((project["dependencies"], project["optional-dependencies"].get(EXTRAS), SOURCE_ONLY, GLIBC_TAGS))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def wheel_house(cache: Path, local: Path, arch: str, python: str, ver: str) -> tuple[Path | None, str]:
    """build/release/wheels/ARCH-PY: every wheel fvagent[demo] needs there. (dir, "") or (None, why)."""
    house = cache / "wheels" / f"{arch}-py{python}"
    stamp = house / ".requirements"
    if stamp.exists() and stamp.read_text() == requirements_stamp():
        for old in house.glob("fvagent-*.whl"):  # only our own wheel changes without new requirements
            old.unlink()
        shutil.copy2(next(local.glob(f"fvagent-{ver}-*.whl")), house)
        return house, ""
    if house.exists():
        shutil.rmtree(house)
    house.mkdir(parents=True)
    platforms = [arg for tag in GLIBC_TAGS for arg in ("--platform", f"manylinux_{tag}_{arch}")]
    platforms += ["--platform", f"manylinux2014_{arch}"]
    proc = pip(
        "download",
        "--quiet",
        "--dest",
        str(house),
        "--only-binary=:all:",
        "--find-links",
        str(local),
        "--python-version",
        python,
        "--implementation",
        "cp",
        *platforms,
        f"fvagent[{EXTRAS}]=={ver}",
    )
    if proc.returncode:
        shutil.rmtree(house)
        last = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
        return None, " / ".join(last[-2:]) or proc.stderr.strip()[-300:]
    stamp.write_text(requirements_stamp())
    return house, ""


def bundle(arch: str, pythons: list[str], cache: Path, dist: Path, local: Path) -> Path | None:
    ver = version()
    covered: list[str] = []
    houses: list[Path] = []
    for python in pythons:
        t0 = time.monotonic()
        house, why = wheel_house(cache, local, arch, python, ver)
        if house is None:
            print(f"release: {arch} Python {python}: not covered ({why})")
            continue
        print(f"release: {arch} Python {python}: wheel house ready ({time.monotonic() - t0:.0f} s)")
        covered.append(python)
        houses.append(house)
    if not covered:
        print(f"release: no Python version could be covered for {arch}: no bundle")
        return None
    name = f"fvagent-{ver}-linux-{arch}"
    stage = cache / "stage" / name
    if stage.exists():
        shutil.rmtree(stage)
    (stage / "wheels").mkdir(parents=True)
    for rel in KIT:
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, stage / rel)
    shutil.copytree(ROOT / "deploy" / "monitoring", stage / "deploy" / "monitoring")
    shutil.copytree(ROOT / "docs", stage / "docs")
    for house in houses:  # one directory: a wheel several versions share (abi3, py3) appears once
        for wheel in house.glob("*.whl"):
            target = stage / "wheels" / wheel.name
            if not target.exists():
                try:
                    os.link(wheel, target)  # same file system: no copy of 100 MB of wheels
                except OSError:
                    shutil.copy2(wheel, target)
    (stage / "bundle.txt").write_text(f"version={ver}\narch={arch}\npythons={' '.join(covered)}\nextras={EXTRAS}\n")
    sums = []
    for path in sorted(p for p in stage.rglob("*") if p.is_file()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        sums.append(f"{digest}  {path.relative_to(stage).as_posix()}\n")
    (stage / "SHA256SUMS").write_text("".join(sums))
    dist.mkdir(parents=True, exist_ok=True)
    out = dist / f"{name}.tar.gz"
    tmp = out.with_suffix(".tmp")
    # Wheels are zip files already: level 1 saves most of what gzip can, at a fraction of the time.
    with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
        tar.add(stage, arcname=name)
    tmp.replace(out)
    print(f"release: {out} ({out.stat().st_size / 2**20:.0f} MiB; Python {', '.join(covered)})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", choices=ARCHES, default=list(ARCHES))
    parser.add_argument("--python", nargs="+", choices=PYTHONS, default=list(PYTHONS))
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="where the bundles go (default dist/)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=ROOT / "build" / "release",
        help="downloads and staging, kept between runs (default build/release/)",
    )
    args = parser.parse_args(argv)
    local = build_local_wheels(args.cache)
    built = [bundle(arch, args.python, args.cache, args.dist, local) for arch in args.arch]
    return 0 if all(built) else 1


if __name__ == "__main__":
    sys.exit(main())
