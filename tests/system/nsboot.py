"""A real systemd as PID 1 in private PID, mount, network and cgroup namespaces, for tests/system.

Nothing the booted system does reaches the host:

- /etc, /var, /opt and /srv are overlays whose writes land in the test's own directory (install.sh's
  useradd, the unit files, /var/lib/fvagent, /opt/fvagent);
- /run, /etc/systemd/system, /tmp and /var/tmp are fresh tmpfs: systemd-tmpfiles' boot cleanup
  empties these private copies, never the host's /tmp that other processes use;
- the network namespace has only its own loopback (so the install is offline by construction and
  the daemons' ports are private);
- the cgroup trees are the test's own subgroup (removed at the end).

``NamespacedSystemd.start()`` boots it and waits until systemd answers; ``run(...)`` executes a
command inside (through nsenter); ``stop()`` powers it off, kills what is left, and always leaves
no process and no cgroup behind. ``unavailable()`` says why this machine cannot do it, or None.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

SYSTEMD = Path("/lib/systemd/systemd")
OVERLAID = ("etc", "var", "opt", "srv")
CGROUP_ROOT = Path("/sys/fs/cgroup")
TARGET = """[Unit]
Description=fvagent system test: basic system, nothing of the host's enabled services
Requires=basic.target
After=basic.target
AllowIsolate=yes
"""

BOOT = r"""
set -eu
w="$1"; shift
for d in {overlaid}; do
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$w/upper/$d,workdir=$w/scratch/$d" "/$d"
done
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=0755 tmpfs /etc/systemd/system
cp "$w/fvagent-systest.target" /etc/systemd/system/
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
# cgroups: fresh mounts, rooted (through the cgroup namespace) at the test's own subgroup
mount -t tmpfs -o mode=0755 tmpfs /sys/fs/cgroup
for spec in "$@"; do
    name=${{spec%%=*}}; opts=${{spec#*=}}
    mkdir -p "/sys/fs/cgroup/$name"
    if [ "$opts" = cgroup2 ]; then
        mount -t cgroup2 cgroup2 "/sys/fs/cgroup/$name"
    else
        mount -t cgroup -o "$opts" cgroup "/sys/fs/cgroup/$name"
    fi
done
ip link set lo up
# systemd mounts each service's credentials in a child mount namespace and moves them into place;
# only a shared mount carries them back to the namespace the service runs in. A booting systemd
# makes / shared itself, but not in a container (container= set): that is the container's job.
mount --make-rshared /
exec env -i container=fvagent-systest PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    {systemd} --system --unit=fvagent-systest.target --log-target=journal --show-status=no
"""


def offline_unavailable() -> str | None:
    """Why this machine cannot run a command without network (a private network namespace), or None."""
    if os.geteuid() != 0:
        return "needs root to run the install in a private network namespace (unshare --net)"
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    return f"cannot make a network namespace here: {probe.stderr.strip()}" if probe.returncode else None


def unavailable() -> str | None:
    """Why a namespaced systemd cannot boot here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (mount, PID and network namespaces)"
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not SYSTEMD.exists():
        return f"{SYSTEMD} is not installed (deploy/system-deps.sh test installs systemd)"
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount", "--net", "--cgroup", "--mount-proc", "true"],
        capture_output=True,
        text=True,
    )
    if probe.returncode:
        return f"cannot make private namespaces here: {probe.stderr.strip()}"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay file system"
    if not _hierarchies():
        return "no cgroup file system mounted under /sys/fs/cgroup"
    return None


def _hierarchies() -> list[tuple[str, str, Path]]:
    """(name under /sys/fs/cgroup, mount options for the fresh mount, host directory) of each
    mounted cgroup hierarchy: v1 controllers, the name=systemd tree, the unified (v2) tree."""
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, where, fstype, options, *_ = line.split()
        path = Path(where)
        if path.parent != CGROUP_ROOT and path != CGROUP_ROOT:
            continue
        if fstype == "cgroup2":
            out.append((path.name if path != CGROUP_ROOT else "", "cgroup2", path))
        elif fstype == "cgroup":
            kept = [o for o in options.split(",") if o not in ("rw", "ro", "relatime", "nosuid", "nodev", "noexec")]
            if not any(o.startswith("name=") for o in kept) and not kept:
                continue
            if any(o.startswith("name=") for o in kept):
                kept = ["none", *kept]
            out.append((path.name, ",".join(kept), path))
    return out


class NamespacedSystemd:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.log_path = workdir / "systemd-console.log"
        self._cgroups: list[Path] = []

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, timeout_s: float = 90.0) -> None:
        w = self.workdir
        for d in OVERLAID:
            (w / "upper" / d).mkdir(parents=True, exist_ok=True)
            (w / "scratch" / d).mkdir(parents=True, exist_ok=True)
        (w / "fvagent-systest.target").write_text(TARGET)
        hierarchies = [h for h in _hierarchies() if h[0]]  # a v2-only host: unified at the root
        specs = [f"{name}={opts}" for name, opts, _ in hierarchies]
        tag = f"fvagent-systest-{uuid.uuid4().hex[:8]}"
        procs_files = []
        for _, _, host_dir in hierarchies:
            sub = host_dir / tag
            sub.mkdir()
            self._cgroups.append(sub)
            for knob in ("cpuset.cpus", "cpuset.mems"):  # an empty cpuset admits no process
                if (host_dir / knob).exists():
                    (sub / knob).write_text((host_dir / knob).read_text())
            procs_files.append(str(sub / "cgroup.procs"))
        boot = w / "boot.sh"
        boot.write_text(BOOT.format(overlaid=" ".join(OVERLAID), systemd=SYSTEMD))
        # The shell joins the test's cgroups first, so the cgroup namespace is rooted there.
        join = "".join(f'echo $$ > "{f}"; ' for f in procs_files)
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                "sh",
                "-c",
                join + "exec unshare --pid --fork --mount --net --cgroup --propagation private "
                '--mount-proc sh "$0" "$@"',
                str(boot),
                str(w),
                *specs,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd did not boot: {self.console()[-3000:]}")
            if self.pid is None:
                children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
                try:
                    kids = children.read_text().split()
                except OSError:
                    kids = []
                if kids and Path(f"/proc/{kids[0]}/comm").read_text().strip() == "systemd":
                    self.pid = int(kids[0])
            if self.pid is not None:
                state = self.run(["systemctl", "is-system-running"], check=False, timeout=10).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.2)
        raise RuntimeError(f"systemd did not reach its target in {timeout_s:.0f} s: {self.console()[-3000:]}")

    def stop(self) -> None:
        """Power off; whatever is left is killed with the namespace's PID 1. Always tidy."""
        try:
            if self.pid is not None and self.proc is not None and self.proc.poll() is None:
                os.kill(self.pid, signal.SIGRTMIN + 4)  # systemd: poweroff
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if self.proc is not None and self.proc.poll() is None:
                if self.pid is not None:
                    try:
                        os.kill(self.pid, signal.SIGKILL)  # the kernel kills the whole PID namespace
                    except ProcessLookupError:
                        pass
                self.proc.kill()
                self.proc.wait(10)
            for cgroup in self._cgroups:
                _remove_cgroup(cgroup)

    # -- inside -----------------------------------------------------------------------------------
    def run(
        self,
        argv: list[str],
        *,
        check: bool = True,
        timeout: float = 120,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the booted system (its namespaces, its root), as root."""
        assert self.pid is not None, "systemd is not running"
        base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
        proc = subprocess.run(
            [
                "nsenter",
                "--target",
                str(self.pid),
                "--pid",
                "--mount",
                "--net",
                "--cgroup",
                "--",
                "env",
                "-i",
                *(f"{k}={v}" for k, v in {**base, **(env or {})}.items()),
                *argv,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and proc.returncode:
            raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run(["systemctl", "show", unit, *(f"--property={p}" for p in props)]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def console(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _remove_cgroup(path: Path) -> None:
    """rmdir a cgroup subtree, leaves first (a cgroup directory can only be removed empty)."""
    if not path.exists():
        return
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            child.rmdir()
        except OSError:
            pass
    try:
        path.rmdir()
    except OSError:
        pass
