"""The desk tier's guest: Debian's kernel under QEMU (TCG) through virtme-ng, booted once for all its tests.

Theory of operation. The host side of ``pytest -m desk`` does not run the tier's tests itself:
the first desk test boots one guest (``vng``) whose root is the host's own filesystem (9p, read
only, with virtme's overlays on /etc, /var, /tmp...), and in it ``guest-init.sh`` loads uhid,
starts systemd-udevd with the project's rules and runs pytest on the same test ids with
TOKENAGENT_DESK_GUEST=1; each test's outcome is written to a JSON file in a shared directory
(``--rwdir``), and the host reports every test with the guest's outcome and output.

Python over 9p under TCG is slow (a bare ``python -c pass`` took 7 s, importing fido2 and
ykman over 30 s, almost all of it in 9p lookups), so the interpreter and the virtual
environment travel as an ext4 image on a virtio disk (``mkfs.ext4 -d``, made here from
hard links, no copy) that the guest mounts over the same paths.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GUEST_INIT = REPO / "tests" / "desk" / "guest-init.sh"
GENERATORS = REPO / "tests" / "desk" / "systemd"  # the systemd boot's only generator (desk-generator)
BOOT_TIMEOUT = 25 * 60  # the whole guest run; CI's budget for the tier is well under 30 minutes
SYSTEMD_BOOT_TIMEOUT = 15 * 60  # the systemd boot (4 tests, ~4 min measured); its runner has tighter limits inside
SKIP_DIRS = {"test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "__phello__", "lib2to3", "mypy",
             "mypyc", "ruff", "IPython", "pip"}


def missing() -> str | None:
    """Why the guest cannot boot here (None: it can)."""
    if not sys.platform.startswith("linux"):
        return "the desk tier needs Linux"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is missing (apt-get install qemu-system-x86)"
    if not kernels():
        return "no kernel in /boot (apt-get install linux-image-amd64)"
    if vng() is None:
        return "virtme-ng's vng is missing (pip install -e '.[test]')"
    if not os.path.exists("/bin/busybox") and not os.path.exists("/usr/bin/busybox"):
        return "busybox is missing (apt-get install busybox-static), virtme-ng needs it"
    if shutil.which("mkfs.ext4") is None:
        return "mkfs.ext4 is missing (apt-get install e2fsprogs)"
    if os.geteuid() != 0:
        return "the desk tier boots its guest as root (vng --user root)"
    return None


def kernels() -> list[str]:
    return sorted(p for p in glob.glob("/boot/vmlinuz-*") if os.access(p, os.R_OK))


def vng() -> str | None:
    here = Path(sys.executable).parent / "vng"
    return str(here) if here.exists() else shutil.which("vng")


def _link_tree(src: Path, dst: Path) -> None:
    """``dst`` as a copy of ``src`` made of hard links where the filesystem allows, without the
    parts the tests never import (test suites, IDLE, linters)."""
    def ignore(directory: str, names: list[str]) -> set[str]:
        return {n for n in names if n in SKIP_DIRS or n.startswith("config-3") or n.endswith(".a")}

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, symlinks=True, ignore=ignore, copy_function=link)


CACHE = Path("/var/tmp/tokenagent-desk")  # the image is kept between runs while the environment is unchanged


def _image_key() -> str:
    import hashlib

    digest = hashlib.sha256(f"{sys.base_prefix}\0{sys.prefix}\0{sorted(SKIP_DIRS)}".encode())
    for root in (Path(sys.base_prefix), Path(sys.prefix)):
        for site in sorted(root.glob("lib/python3*/site-packages")) + [root / "bin"]:
            for entry in sorted(site.iterdir()):
                info = entry.lstat()
                digest.update(f"{entry}\0{info.st_mtime_ns}\0{info.st_size}\n".encode())
    return digest.hexdigest()[:16]


def python_image(work: Path) -> Path:
    """An ext4 image with the interpreter (``base/``) and the virtual environment (``venv/``)."""
    CACHE.mkdir(mode=0o700, exist_ok=True)
    cached = CACHE / f"python-{_image_key()}.ext4"
    if cached.exists():
        return cached
    for old in CACHE.glob("python-*.ext4"):
        old.unlink()
    stage = work / "stage"
    stage.mkdir()
    _link_tree(Path(sys.base_prefix), stage / "base")
    _link_tree(Path(sys.prefix), stage / "venv")
    size = sum(f.stat().st_size for f in stage.rglob("*") if f.is_file() and not f.is_symlink())
    image = work / "python.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "deskpy", "-N", "200000", "-d", str(stage), str(image),
                    f"{int(size * 1.4 / 1048576) + 64}M"], check=True, capture_output=True)
    shutil.rmtree(stage)
    os.replace(image, cached)
    return cached


def run_guest(nodeids: list[str], out: Path, work: Path, systemd: bool = False) -> dict[str, dict[str, object]]:
    """Boot the guest once, run ``nodeids`` in it; their results by id (also written to out/).

    ``systemd``: boot systemd as PID 1 (``vng --systemd``) with ``desk.target``, which
    ``systemd/desk-generator`` writes; its test runner is ``guest-systemd.sh`` (docs/desk.md)."""
    (out / "nodeids").write_text("\n".join(nodeids) + "\n")
    boot(out, work, systemd=systemd)
    try:
        results: dict[str, dict[str, object]] = json.loads((out / "results.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        results = {}
    return results


def boot(out: Path, work: Path, script: str = "", systemd: bool = False) -> None:
    """Boot the guest once: guest-init.sh runs the tier's tests (out/nodeids), or, with ``script``
    (a path in the repository and its arguments), that Python script instead (bench/plug_unlock_hid.py)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "tokenagent"), str(REPO / "tests")],
                   capture_output=True)  # the guest's root is read-only: no bytecode written there
    started = time.monotonic()
    image = python_image(work)
    (out / "image-seconds").write_text(f"{time.monotonic() - started:.0f}\n")
    (out / "script").write_text(script + "\n")
    env_prefix = (f"DESK_OUT={out} DESK_REPO={REPO} DESK_BASE={sys.base_prefix} DESK_VENV={sys.prefix}"
                  f" DESK_STRICT={os.environ.get('TOKENAGENT_STRICT_SKIPS', '0')}")
    command = f"{env_prefix} bash {GUEST_INIT} > {out}/guest.log 2>&1"
    args = [str(vng()), "-r", kernels()[-1], "--user", "root", "--disable-kvm", "--cpus", str(os.cpu_count() or 2),
            "--memory", "3G", "--rwdir", str(out), "--disk", str(image)]
    if systemd:
        kernel_args = [f"SYSTEMD_GENERATOR_PATH={GENERATORS}", "SYSTEMD_ENVIRONMENT_GENERATOR_PATH=/nonexistent",
                       "systemd.unit=desk.target", "systemd.show_status=1", "systemd.default_timeout_start_sec=300",
                       f"DESK_OUT={out}", f"DESK_REPO={REPO}", f"DESK_BASE={sys.base_prefix}",
                       f"DESK_VENV={sys.prefix}", f"DESK_STRICT={os.environ.get('TOKENAGENT_STRICT_SKIPS', '0')}"]
        args += ["--systemd", "--append", " ".join(kernel_args)]
    else:
        args += ["--", command]
    with open(out / "vng.log", "wb") as log:
        try:
            env = {**os.environ, "PATH": f"{Path(str(vng())).parent}:{os.environ.get('PATH', '')}"}  # virtme-run
            subprocess.run(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                           timeout=SYSTEMD_BOOT_TIMEOUT if systemd else BOOT_TIMEOUT, cwd=str(work), env=env)
        except subprocess.TimeoutExpired:
            pass
    (out / "wall-seconds").write_text(f"{time.monotonic() - started:.0f}\n")


def boot_script(script: str, who: str) -> Path:
    """A bench's boot (bench/plug_unlock_hid.py, idle_agent_desk.py): ``script`` run in one guest
    boot, its time said; the results directory. Exits with why when the guest cannot boot here."""
    why = missing()
    if why is not None:
        sys.exit(f"{who}: {why}")
    out = Path(tempfile.mkdtemp(prefix=f"tokenagent-{who}-"))
    work = Path(tempfile.mkdtemp(prefix=f"tokenagent-{who}-work-"))
    started = time.monotonic()
    boot(out, work, script)
    print(f"(one guest boot: {time.monotonic() - started:.0f} s; logs in {out})")
    return out


def guest_log(out: Path) -> str:
    text = ""
    for name in ("guest.log", "vng.log"):
        try:
            text += f"--- {name}\n" + (out / name).read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            continue
    return text
