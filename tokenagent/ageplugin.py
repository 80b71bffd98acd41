"""``age-plugin-tokenagent``: age's identity plugin for keys derived from tokenagent vaults (docs/age.md).

Theory of operation (C2SP age-plugin, the identity-v1 state machine). age runs
``age-plugin-tokenagent --age-plugin=identity-v1`` and sends, in phase 1, ``add-identity``
(our ``AGE-PLUGIN-TOKENAGENT-1...`` strings), ``recipient-stanza FILE TYPE ARGS...`` (every
stanza of every file) and ``done``; stanzas of other types (age's grease among them) are
ignored. In phase 2 the plugin talks: for each file, each identity in order is asked of the
agent (op ``age-unwrap``) with the file's X25519 stanzas; the first file key found is sent as
``file-key FILE``, and a file none of our identities opens gets nothing, so age tries its next
identity ("not mine"). A locked vault: the plugin tells the user with ``msg`` and asks the agent
to wait up to ``TOKENAGENT_AGE_WAIT`` seconds (default 30) for the vault to be unlocked (a plugged
token, ``tokenagent unlock``); then, still locked, ``error identity N`` with the reason, which
age prints. The plugin holds no key: it speaks only to the agent (tokenagent.client).
"""

from __future__ import annotations

import base64
import os
import sys
from typing import Any, BinaryIO

from . import agekeys
from .client import AgentClient
from .errors import TokenAgentError, VaultLocked, VaultNotFound

DEFAULT_WAIT = 30.0
MAX_STANZAS = 64  # per age-unwrap request (docs/spec/protocol.md)


class Plugin:
    def __init__(self, stdin: BinaryIO, stdout: BinaryIO, wait: float = DEFAULT_WAIT,
                 client: AgentClient | None = None) -> None:
        self.reader = agekeys.StanzaReader(stdin)
        self.out = stdout
        self.wait = wait
        self.client = client
        self.identities: list[tuple[str, str] | None] = []  # None: not one we can read
        self.files: dict[int, list[tuple[bytes, bytes]]] = {}  # file index -> its X25519 (share, body)

    def send(self, kind: str, args: tuple[str, ...] = (), body: bytes = b"") -> tuple[str, list[str], bytes]:
        """One command to age and its answer (``ok``, ``fail``, or ``unsupported``)."""
        self.out.write(agekeys.write_stanza(kind, args, body))
        self.out.flush()
        return self.reader.read()

    # --- phase 1 ------------------------------------------------------------------------------
    def read_phase1(self) -> None:
        while True:
            kind, args, body = self.reader.read()
            if kind == "done":
                return
            if kind == "add-identity" and len(args) == 1:
                try:
                    self.identities.append(agekeys.parse_identity(args[0]))
                except agekeys.EncodingError:
                    self.identities.append(None)
            elif kind == "recipient-stanza" and len(args) >= 2 and args[0].isdigit():
                stanzas = self.files.setdefault(int(args[0]), [])
                if args[1] == "X25519" and len(args) == 3:
                    try:
                        share = agekeys.unb64(args[2])
                    except agekeys.EncodingError:
                        continue
                    if len(share) == 32 and len(body) == 32:
                        stanzas.append((share, body))
            # anything else (grease, stanzas of later versions): ignored, as the spec asks

    # --- phase 2 ------------------------------------------------------------------------------
    def run(self) -> None:
        self.read_phase1()
        for index, parsed in enumerate(self.identities):
            if parsed is None:
                self.send("error", ("identity", str(index)), b"not a valid AGE-PLUGIN-TOKENAGENT-1 identity")
                self.done()
                return
        for file_index in sorted(self.files):
            stanzas = self.files[file_index]
            if not stanzas:
                continue
            for index, parsed in enumerate(self.identities):
                assert parsed is not None
                found: bytes | bool | None = None
                for start in range(0, len(stanzas), MAX_STANZAS):  # the agent takes 64 per request
                    found = self.ask(index, parsed, stanzas[start : start + MAX_STANZAS])
                    if found is not None:
                        break
                if found is False:
                    self.done()
                    return
                if isinstance(found, bytes):
                    self.send("file-key", (str(file_index),), found)
                    break
        self.done()

    def done(self) -> None:
        """The end of phase 2 (age answers nothing)."""
        self.out.write(agekeys.write_stanza("done"))
        self.out.flush()

    def _client(self) -> AgentClient:
        if self.client is None:
            self.client = AgentClient(timeout=self.wait + 30)
            self.client.connect()
        return self.client

    def ask(self, index: int, identity: tuple[str, str], stanzas: list[tuple[bytes, bytes]]) -> bytes | None | bool:
        """The file key, None (not ours), or False after an error was sent to age."""
        vault, label = identity
        args: dict[str, Any] = {"vault": vault, "label": label,
                "stanzas": [[base64.b64encode(s).decode(), base64.b64encode(b).decode()] for s, b in stanzas]}
        try:
            try:
                answer = self._client().request("age-unwrap", **args)
            except VaultLocked as err:
                if self.wait <= 0:
                    raise
                self.send("msg", (), f"{err.message} (waiting {self.wait:.0f} s)".encode())
                answer = self._client().request("age-unwrap", timeout=self.wait + 30, wait=self.wait, **args)
        except VaultNotFound:
            return None  # an identity of a vault that is not on this machine: not ours
        except TokenAgentError as err:
            self.send("error", ("identity", str(index)), f"tokenagent: {err.message}".encode())
            return False
        key = answer.get("file_key")
        return base64.b64decode(key) if isinstance(key, str) else None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--age-plugin=identity-v1"]:
        try:
            wait = float(os.environ.get("TOKENAGENT_AGE_WAIT", DEFAULT_WAIT))
        except ValueError:
            wait = DEFAULT_WAIT
        try:
            Plugin(sys.stdin.buffer, sys.stdout.buffer, wait).run()
        except (EOFError, agekeys.EncodingError, BrokenPipeError) as err:
            print(f"age-plugin-tokenagent: {err}", file=sys.stderr)
            return 1
        return 0
    if args and args[0].startswith("--age-plugin="):
        print(f"age-plugin-tokenagent: {args[0][len('--age-plugin='):]} is not supported (identity-v1 only:"
              " encrypt to the age1... recipient with age itself)", file=sys.stderr)
        return 1
    print("age-plugin-tokenagent is run by age: age -d -i IDENTITY_FILE (docs/age.md);"
          " 'tokenagent age identity VAULT LABEL' prints an identity", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
