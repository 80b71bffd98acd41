#!/usr/bin/env python3
"""Run python-fido2's own device tests (tests/device of its sdist) against a fresh virtual token.

    scripts/fido2_device_suite.py [--transport nfc|hid|both] [--markdown] [--cache DIR]

The tests come from PyPI's source distribution of exactly the fido2 version installed here
(``pip download --no-deps --no-binary :all: fido2==VERSION``, kept in --cache); nothing of
them is copied into this repository. Two runs, each against a new token:

- nfc: the token is a card in a private pcscd (tests/pcscd.py: root, pcscd, vsmartcard-vpcd),
  reached by their conftest's ``--reader`` as python-fido2's ``CtapPcscDevice`` (NFC framing);
- hid: the token's CTAPHID front end in process, listed and opened by ``fido2.hid`` through
  the plugin scripts/fido2_device_plugin.py (``-p``).

The operator's steps their conftest asks for (touch, remove, insert) reach the token through
their own ``--controller`` option, answered by ``OperatorServer`` (scripts/fido2_device_plugin.py)
with the token's control (plug, unplug, touch). The token runs with ``--touch explicit``: it
waits for those touches. Prints passed/failed/errors/skipped per transport and the skip
reasons, each checked against the getInfo of a fresh token: a skip is explained only when
getInfo does not claim what the skipped test needs (``--markdown``: the tables of
docs/virtual-token.md). Exits 1 when a test failed or errored or a skip is not explained, 2
when the suite could not be run, with one line saying why.
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET  # noqa: S405 - pytest's own junit file
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
PER_TEST_TIMEOUT = 120
DOCS = ROOT / "docs" / "virtual-token.md"
BEGIN = "<!-- fido2-device-suite: begin (scripts/fido2_device_suite.py --write-docs) -->"
END = "<!-- fido2-device-suite: end -->"


class SuiteUnavailable(Exception):
    pass


def fido2_version() -> str:
    return importlib.metadata.version("fido2")


def sdist(version: str, cache: Path) -> Path:
    """The sdist of fido2 ``version`` from PyPI (downloaded once into ``cache``)."""
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"fido2-{version}.tar.gz"
    if not archive.exists():
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                               "--disable-pip-version-check", f"fido2=={version}", "-d", str(cache)],
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0 or not archive.exists():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise SuiteUnavailable(f"cannot download the sdist of fido2 {version} from PyPI ({last})")
    return archive


def extract_tests(archive: Path, version: str, into: Path) -> Path:
    """Only the sdist's tests/ (not its fido2/ package: the installed one is what is tested)."""
    prefix = f"fido2-{version}/tests/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())]
        for member in members:
            member.name = member.name[len(f"fido2-{version}/"):]
        tar.extractall(into, members=members, filter="data")
    if not (into / "tests" / "device" / "conftest.py").exists():
        raise SuiteUnavailable(f"PyPI's sdist of fido2 {version} has no tests/device")
    (into / "pytest.ini").write_text("[pytest]\n")  # their rootdir, without this repository's settings
    return into / "tests" / "device"


def pytest_command(device_tests: Path, junit: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pytest", str(device_tests), "-p", "no:cacheprovider", "-q", "-rs",
            f"--junitxml={junit}", "-o", f"timeout={PER_TEST_TIMEOUT}", *extra]


def child_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(SCRIPTS), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, **extra}


def run_hid(device_tests: Path, work: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    junit = work / "hid.xml"
    state = work / "hid-token"
    state.mkdir(mode=0o700)
    done = subprocess.run(pytest_command(device_tests, junit, "-p", "fido2_device_plugin"),
                          env=child_env(TOKENAGENT_FIDO2_SUITE_HID="1", TOKENAGENT_FIDO2_SUITE_STATE=str(state)),
                          cwd=device_tests.parent.parent, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=900)
    return junit, done


def run_nfc(device_tests: Path, work: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    sys.path[:0] = [str(ROOT / "tests"), str(SCRIPTS)]
    from fido2_device_plugin import PICO_PORT, OperatorServer
    from pcscd import PrivatePcscd, TokenProcess, missing

    reason = missing()
    if reason:
        raise SuiteUnavailable(f"the nfc run needs a private pcscd: {reason}")
    junit = work / "nfc.xml"
    try:
        daemon = PrivatePcscd(work / "pcscd")
    except RuntimeError as err:
        raise SuiteUnavailable(f"the private pcscd did not start: {err}") from None
    try:
        try:
            token = TokenProcess(daemon, work / "nfc-token.json", 8_800_001, touch="explicit")
        except RuntimeError as err:
            raise SuiteUnavailable(str(err)) from None
        try:
            reader = _reader_with_card(daemon.env)
            operator = OperatorServer(token.plug, token.unplug, token.touch)
            try:
                done = subprocess.run(
                    pytest_command(device_tests, junit, "--reader", reader, "--controller", operator.url,
                                   "--pico-port", str(PICO_PORT)),
                    env=child_env(**daemon.env), cwd=device_tests.parent.parent, capture_output=True, text=True,
                    stdin=subprocess.DEVNULL, timeout=900)
            finally:
                operator.close()
        finally:
            token.stop()
    finally:
        daemon.stop()
    return junit, done


def _reader_with_card(env: dict[str, str]) -> str:
    """The full name of the one reader holding a card (their --reader matches a substring)."""
    code = ("from smartcard.System import readers\nfrom smartcard.Exceptions import NoCardException\n"
            "for r in readers():\n    c = r.createConnection()\n    try:\n        c.connect(); c.disconnect()"
            "\n        print(r)\n    except Exception:\n        pass\n")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60)
    names = done.stdout.split("\n")
    names = [n for n in names if n]
    if len(names) != 1:
        raise SuiteUnavailable(f"expected one reader with the virtual token, found {names or 'none'}")
    return names[0]


def token_info() -> Any:
    """getInfo of a fresh virtual token, what each skip is checked against."""
    from fido2.ctap2 import Ctap2
    from fido2.pcsc import CtapPcscDevice

    from tokenagent.virtual.token import VirtualToken

    with tempfile.TemporaryDirectory() as tmp:
        token = VirtualToken(Path(tmp) / "t.json", serial=1)
        return Ctap2(CtapPcscDevice(token.connection(), "virtual")).info


def _algorithm_absent(info: Any, name: str) -> bool:
    from fido2.cose import CoseKey

    wanted = [alg for alg in CoseKey.supported_algorithms() if CoseKey.for_alg(alg).__name__ == name]
    return bool(wanted) and {"type": "public-key", "alg": wanted[0]} not in info.algorithms


# A skip is explained when the token's getInfo does not claim what the skipped test needs.
SKIP_EXPLANATIONS: list[tuple[str, Callable[[Any, re.Match[str], str], bool], str]] = [
    (r"Algorithm (\w+) not supported", lambda i, m, t: _algorithm_absent(i, m.group(1)),
     "algorithms in getInfo: ES256 and EdDSA only"),
    (r"BioEnrollment not supported by authenticator", lambda i, m, t: "bioEnroll" not in i.options,
     "no bioEnroll option (no fingerprint sensor)"),
    (r"Config not supported by authenticator", lambda i, m, t: i.options.get("authnrCfg") is not True,
     "no authnrCfg option (authenticatorConfig)"),
    (r"CredBlob not supported by authenticator", lambda i, m, t: "credBlob" not in i.extensions,
     "no credBlob extension"),
    (r"Persistent PUAT not supported", lambda i, m, t: not i.options.get("perCredMgmtRO"),
     "no perCredMgmtRO option (CTAP 2.2)"),
    (r"hmac-secret-mc not supported by authenticator", lambda i, m, t: "hmac-secret-mc" not in i.extensions,
     "no hmac-secret-mc extension (CTAP 2.2)"),
    (r"previewSign not supported by authenticator", lambda i, m, t: "previewSign" not in i.extensions,
     "no previewSign extension"),
    (r"thirdPartyPayment not supported by authenticator",
     lambda i, m, t: "thirdPartyPayment" not in i.extensions, "no thirdPartyPayment extension (CTAP 2.2)"),
    (r"LargeBlobs not supported by authenticator", lambda i, m, t: not i.options.get("largeBlobs"),
     "no largeBlobs option"),
    (r"ClientPin update not supported", lambda i, m, t: not i.options.get("credMgmt"), "no credMgmt option"),
    (r"Enterprise Attestation not supported", lambda i, m, t: "ep" not in i.options,
     "no ep option (enterprise attestation)"),
    (r"Device is not a CtapHidDevice", lambda i, m, t: t == "nfc", "CTAPHID PING: the NFC run has no HID"),
]


def explain(reason: str, info: Any, transport: str) -> str | None:
    for pattern, absent, explanation in SKIP_EXPLANATIONS:
        match = re.fullmatch(pattern, reason)
        if match and absent(info, match, transport):
            return explanation
    return None


def counts(junit: Path) -> dict[str, object]:
    root = ET.parse(junit).getroot()  # noqa: S314 - written by the pytest run just made
    result: dict[str, object] = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    reasons: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}.{case.get('name', '')}"
        outcome = "passed"
        for child in case:
            if child.tag == "skipped":
                outcome = "skipped"
                reasons[(child.get("message") or "").removeprefix("Skipped: ")] += 1
            elif child.tag == "failure":
                outcome = "failed"
                failures.append(name)
            elif child.tag == "error":
                outcome = "errors"
                failures.append(name)
        result[outcome] = int(result[outcome]) + 1  # type: ignore[call-overload]
    result["reasons"] = reasons
    result["failures"] = failures
    return result


def report(version: str, results: dict[str, dict[str, object]], markdown: bool, info: Any) -> str:
    names = {"nfc": "NFC framing (CtapPcscDevice, private pcscd)", "hid": "CTAPHID (CtapHidDevice, in process)"}
    lines = []
    if markdown:
        lines += [f"python-fido2 {version}, tests/device of its sdist:", "",
                  "| transport | passed | failed | errors | skipped |", "|---|---|---|---|---|"]
        lines += [f"| {names[t]} | {r['passed']} | {r['failed']} | {r['errors']} | {r['skipped']} |"
                  for t, r in results.items()]
        reasons: collections.Counter[str] = collections.Counter()
        for r in results.values():
            reasons.update(r["reasons"])  # type: ignore[arg-type]
        lines += ["", "Skips (both runs together), each for what getInfo does not claim:", "",
                  "| skips | python-fido2's reason | what the token's getInfo lacks |", "|---|---|---|"]
        lines += [f"| {count} | {reason} | {explain(reason, info, 'nfc') or explain(reason, info, 'hid')} |"
                  for reason, count in sorted(reasons.items())]
    else:
        for t, r in results.items():
            lines.append(f"{t}: {r['passed']} passed, {r['failed']} failed, {r['errors']} errors,"
                         f" {r['skipped']} skipped ({names[t]}, python-fido2 {version})")
            lines += [f"  skipped {count} x {reason}: {explain(reason, info, t) or 'NOT EXPLAINED by getInfo'}"
                      for reason, count in sorted(r["reasons"].items())]  # type: ignore[attr-defined]
            lines += [f"  FAILED {name}" for name in r["failures"]]  # type: ignore[attr-defined]
    return "\n".join(lines)


def write_docs(tables: str) -> None:
    text = DOCS.read_text()
    if BEGIN not in text or END not in text:
        raise SuiteUnavailable(f"{DOCS} lacks the lines {BEGIN!r} and {END!r}")
    head, rest = text.split(BEGIN, 1)
    DOCS.write_text(f"{head}{BEGIN}\n{tables}\n{END}{rest.split(END, 1)[1]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", choices=("nfc", "hid", "both"), default="both")
    parser.add_argument("--markdown", action="store_true", help="print the table for docs/virtual-token.md")
    parser.add_argument("--cache", type=Path, help="where the sdist is kept (default: the user's cache dir)")
    parser.add_argument("--verbose", action="store_true", help="also print pytest's output")
    parser.add_argument("--write-docs", action="store_true",
                        help=f"put the tables into {DOCS.relative_to(ROOT)} (between its {BEGIN!r} and {END!r} lines)")
    args = parser.parse_args()
    cache = args.cache or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tokenagent" / "fido2"
    version = fido2_version()
    results: dict[str, dict[str, object]] = {}
    try:
        archive = sdist(version, cache)
        with tempfile.TemporaryDirectory(prefix="fido2-device-suite-") as tmp:
            device_tests = extract_tests(archive, version, Path(tmp))
            for transport in ("nfc", "hid") if args.transport == "both" else (args.transport,):
                work = Path(tmp) / f"work-{transport}"
                work.mkdir(mode=0o700)  # the token's control socket goes here: private, as the CLI requires
                junit, done = (run_nfc if transport == "nfc" else run_hid)(device_tests, work)
                if args.verbose or not junit.exists():
                    print(done.stdout[-20000:], done.stderr[-5000:], sep="\n", file=sys.stderr)
                if not junit.exists():
                    raise SuiteUnavailable(f"the {transport} run wrote no results (pytest exit {done.returncode})")
                results[transport] = counts(junit)
                if results[transport]["failed"] or results[transport]["errors"]:
                    print(done.stdout[-20000:], file=sys.stderr)
    except SuiteUnavailable as err:
        print(f"fido2 device suite: {err}", file=sys.stderr)
        return 2
    info = token_info()
    print(report(version, results, args.markdown, info))
    if args.write_docs:
        try:
            write_docs(report(version, results, True, info))
        except SuiteUnavailable as err:
            print(f"fido2 device suite: {err}", file=sys.stderr)
            return 2
    unexplained = [reason for t, r in results.items() for reason in r["reasons"]  # type: ignore[attr-defined]
                   if explain(reason, info, t) is None]
    if unexplained:
        print(f"fido2 device suite: skips not explained by getInfo: {sorted(set(unexplained))}", file=sys.stderr)
    return 1 if unexplained or any(r["failed"] or r["errors"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
