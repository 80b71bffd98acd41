"""The get socket's C code under AddressSanitizer and UndefinedBehaviorSanitizer.

The extension is compiled again with ``-fsanitize=address,undefined`` into a copy of the
package, and getserver_asan_driver.py runs every native entry point with hostile input in a
child Python that preloads the sanitizer runtime. A memory error or undefined behaviour
aborts the child; the test requires a clean exit and no sanitizer report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tokenagent" / "daemon" / "_getserver.c"


def _runtime() -> str | None:
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    found = subprocess.run([gcc, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return found if os.path.isabs(found) and os.path.exists(found) else None


@pytest.mark.skipif(_runtime() is None, reason="needs gcc with libasan (Debian: gcc, libasan8)")
def test_native_get_server_is_clean_under_sanitizers(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    shutil.copytree(ROOT / "tokenagent", package / "tokenagent",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    module_dir = package / "tokenagent" / "daemon"
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    built = subprocess.run(
        ["gcc", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
         "-shared", "-fPIC", f"-I{sysconfig.get_paths()['include']}", str(SOURCE),
         "-o", str(module_dir / f"_getserver{suffix}"), "-lpthread"],
        capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    env = {**os.environ, "PYTHONPATH": str(package), "LD_PRELOAD": str(_runtime()),
           "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1", "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("getserver_asan_driver.py")), str(module_dir)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    report = done.stdout + done.stderr
    assert "AddressSanitizer" not in report and "runtime error" not in report, report[-4000:]
    assert done.returncode == 0, report[-4000:]
    print("\n" + done.stdout.strip())
