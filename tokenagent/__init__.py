"""tokenagent: hardware-token key-source agent.

Layers, arrows one way: core (``errors``, ``vault``, ``factors``, ``protocol``) →
token drivers (``drivers``) → device discovery (``discovery``) → daemon (``daemon``)
→ command line (``_cli``). The virtual token (``virtual``) is test and demo hardware
and is reached only through real transports.

No ``from __future__ import annotations`` here, nor in the modules ``tokenagent get`` runs
(``_cli.entry``, ``fastget``, ``_locations``, ``getwire``): it imports the ``__future__``
module, which every get would pay for (docs/performance.md).
"""

__version__ = "0.1.0"
