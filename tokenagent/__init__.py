"""tokenagent: hardware-token key-source agent.

Layers, arrows one way: core (``errors``, ``vault``, ``factors``, ``protocol``) →
token drivers (``drivers``) → device discovery (``discovery``) → daemon (``daemon``)
→ command line (``_cli``). The virtual token (``virtual``) is test and demo hardware
and is reached only through real transports.
"""

from __future__ import annotations

__version__ = "0.1.0"
