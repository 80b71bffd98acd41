"""Formats of other tools whose keys tokenagent keeps or derives.

* ``cryptomator``: vault format 8 (``vault.cryptomator`` + ``masterkey.cryptomator``):
  read and verify, return the raw 64-byte key; write a fresh masterkey file.
* ``keepass``: a KeePass XML 2.0 key file derived from a vault (per-label subkey).

These modules are core-level (no click, no sockets); the keys come from the agent, and the
commands live in
``tokenagent._cli.integrations`` and the recipes in docs/integrations.md.
"""

from __future__ import annotations
