"""The PKCS#11 factor on SoftHSM2, with keys made by OpenSC's pkcs11-tool (tools nobody here wrote).

SoftHSM reads its configuration once per process (at C_Initialize), so the whole module
shares one token directory; each test uses its own key labels.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from agentkit import cli, private_home
from factor_conformance import FactorConformance  # type: ignore[import-not-found]
from scripted import context  # type: ignore[import-not-found]

from tokenagent.drivers.pkcs11 import Pkcs11Factor
from tokenagent.errors import NotMine, PinInvalid, UsageError
from tokenagent.factors.base import FactorContext
from tokenagent.vault import new_vault, unlock

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = b"4711"


class SoftHsm:
    def __init__(self, root: Path) -> None:
        if not os.path.exists(MODULE) or shutil.which("softhsm2-util") is None or shutil.which("pkcs11-tool") is None:
            pytest.skip("SoftHSM2 and OpenSC's pkcs11-tool are needed (Debian packages softhsm2, opensc)")
        (root / "tokens").mkdir(parents=True)
        self.conf = root / "softhsm2.conf"
        self.conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n"
                             "log.level = ERROR\n")
        self.env = {**os.environ, "SOFTHSM2_CONF": str(self.conf)}
        self.ids = 0
        os.environ["SOFTHSM2_CONF"] = str(self.conf)  # this process's python-pkcs11 too

    def token(self, label: str) -> None:
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", PIN.decode(),
                        "--so-pin", "12345678"], env=self.env, check=True, capture_output=True)

    def keypair(self, token: str, label: str, key_type: str = "EC:prime256v1") -> None:
        self.ids += 1
        subprocess.run(["pkcs11-tool", "--module", MODULE, "--token-label", token, "--login", "--pin", PIN.decode(),
                        "--keypairgen", "--key-type", key_type, "--label", label, "--id", f"{self.ids:02x}"],
                       env=self.env, check=True, capture_output=True)

    def public_key(self, token: str, label: str, path: Path) -> None:
        subprocess.run(["pkcs11-tool", "--module", MODULE, "--token-label", token, "--read-object", "--type", "pubkey",
                        "--label", label, "--output-file", str(path)], env=self.env, check=True, capture_output=True)


def uri(token: str, label: str = "vault-key") -> str:
    return f"pkcs11:token={token};object={label}?module-path={MODULE}"


def ctx_with_pin(pin: bytes = PIN) -> FactorContext:
    return context(pin=[pin])


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    h = SoftHsm(tmp_path_factory.mktemp("softhsm"))
    h.token("alpha")
    h.keypair("alpha", "vault-key")
    h.token("beta")
    h.keypair("beta", "vault-key")
    return h


class TestPkcs11Conformance(FactorConformance):
    factor_type = "pkcs11"

    @pytest.fixture(autouse=True)
    def _hsm(self, hsm: SoftHsm) -> None:
        self.hsm = hsm

    def enroll_context(self) -> FactorContext:
        return context()

    def unlock_context(self) -> FactorContext:
        return ctx_with_pin()

    def foreign_context(self) -> FactorContext:
        return context()  # no PIN at hand: the token cannot be used

    def enroll_options(self) -> dict[str, Any]:
        return {"uri": uri("alpha")}


def test_ecdh_on_the_token_matches_enrolment(hsm: SoftHsm) -> None:
    factor, secret = Pkcs11Factor.enroll(context(), {"uri": uri("alpha")})
    assert factor.unlock(ctx_with_pin()) == secret
    with pytest.raises(PinInvalid, match="wrong PIN"):
        factor.unlock(ctx_with_pin(b"9999"))


def test_offline_enrolment_from_a_public_key_file(hsm: SoftHsm, tmp_path: Path) -> None:
    der = tmp_path / "beta.der"
    hsm.public_key("beta", "vault-key", der)
    factor, secret = Pkcs11Factor.enroll(context(), {"uri": uri("beta"), "cert": str(der)})
    assert factor.unlock(ctx_with_pin()) == secret  # the token was not needed until now


def test_another_key_under_the_same_name_is_not_mine(hsm: SoftHsm) -> None:
    factor, _ = Pkcs11Factor.enroll(context(), {"uri": uri("alpha")})
    assert isinstance(factor, Pkcs11Factor)
    moved = Pkcs11Factor(uri("beta"), factor.algorithm, factor.challenge, factor.key_hash)
    ctx = ctx_with_pin()
    with pytest.raises(NotMine, match="another key"):
        moved.unlock(ctx)
    assert ctx.ui.asked == []  # type: ignore[attr-defined]  # checked before the PIN is asked
    gone = Pkcs11Factor(uri("gamma"), factor.algorithm, factor.challenge, factor.key_hash)
    with pytest.raises(NotMine, match="not present"):
        gone.unlock(ctx_with_pin())


def test_p384_and_a_composite_slot(hsm: SoftHsm) -> None:
    hsm.keypair("alpha", "big", "EC:secp384r1")
    enrolled = [Pkcs11Factor.enroll(context(), {"uri": uri("alpha", "big")}),
                Pkcs11Factor.enroll(context(), {"uri": uri("beta")})]
    vault, key = new_vault("v", enrolled)
    assert unlock(vault, context(pin=[PIN, PIN])).masterkey == key


@pytest.mark.parametrize("bits", [2048, 3072])
def test_rsa_oaep_decryption_on_the_token(hsm: SoftHsm, tmp_path: Path, bits: int) -> None:
    label = f"rsa-{bits}"
    hsm.keypair("alpha", label, f"rsa:{bits}")
    factor, secret = Pkcs11Factor.enroll(context(), {"uri": uri("alpha", label)})
    assert isinstance(factor, Pkcs11Factor) and factor.algorithm == f"rsa{bits}"
    assert len(factor.challenge) == bits // 8 and "OAEP" in factor.describe()
    assert Pkcs11Factor.from_params(factor.params()).unlock(ctx_with_pin()) == secret
    der = tmp_path / "rsa.der"
    hsm.public_key("alpha", label, der)
    offline, offline_secret = Pkcs11Factor.enroll(context(), {"uri": uri("alpha", label), "cert": str(der)})
    assert offline.unlock(ctx_with_pin()) == offline_secret and offline_secret != secret
    with pytest.raises(PinInvalid):
        factor.unlock(ctx_with_pin(b"9999"))


def test_uri_rules() -> None:
    for bad, message in (("token=x", "not a PKCS#11 URI"), ("pkcs11:object=k", "token=LABEL"),
                         (f"pkcs11:token=a;object=k;pin-value=1234?module-path={MODULE}", "must not hold the PIN")):
        with pytest.raises(UsageError, match=message):
            Pkcs11Factor.enroll(context(), {"uri": bad})


def test_cli_with_softhsm(hsm: SoftHsm, tmp_path: Path) -> None:
    home = private_home(tmp_path)
    pin = tmp_path / "pin"
    pin.write_text(PIN.decode() + "\n")
    env = {"SOFTHSM2_CONF": str(hsm.conf)}
    done = cli(home, "init", "hsm", "--pkcs11", uri("alpha"), "--json", env=env)
    assert done.returncode == 0, done.stderr
    opened = cli(home, "open", "hsm", "--pin-file", str(pin), "--json", env=env)
    assert opened.returncode == 0 and json.loads(opened.stdout)["slot"] == "1", opened.stderr
    wrong = tmp_path / "wrong"
    wrong.write_text("0000\n")
    failed = cli(home, "open", "hsm", "--pin-file", str(wrong), env=env)
    assert failed.returncode == 5 and "wrong PIN" in failed.stderr


def test_devices_lists_the_tokens_of_configured_modules(hsm: SoftHsm, tmp_path: Path) -> None:
    home = private_home(tmp_path, "")
    env = {"SOFTHSM2_CONF": str(hsm.conf)}
    given = cli(home, "devices", "--pkcs11-module", MODULE, "--json", env=env)
    assert given.returncode == 0, given.stderr
    tokens = {d["name"]: d for d in json.loads(given.stdout)["devices"] if d["type"] == "pkcs11"}
    assert {"alpha", "beta"} <= set(tokens) and tokens["alpha"]["module"] == MODULE
    assert tokens["alpha"]["manufacturer"] == "SoftHSM project" and tokens["alpha"]["pin_locked"] is False
    (home / "config" / "config.toml").write_text(f'[devices]\npkcs11_modules = ["{MODULE}"]\n')
    configured = cli(home, "devices", env=env)
    assert configured.returncode == 0 and "pkcs11: alpha" in configured.stdout and "PIN ok" in configured.stdout
    missing = cli(home, "devices", "--pkcs11-module", str(tmp_path / "absent.so"), "--json", env=env)
    entry = [d for d in json.loads(missing.stdout)["devices"] if d.get("module") == str(tmp_path / "absent.so")]
    assert missing.returncode == 0 and "cannot load the module" in entry[0]["error"]
