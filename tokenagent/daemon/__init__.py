"""The per-user agent: holds unlocked vaults, serves keys over a Unix socket (docs/agent.md).

``state`` (sessions, lifetimes, dispatch; no sockets), ``server`` (asyncio, peers, streams),
``sockets`` (placement and peer credentials), ``config`` (config.toml), ``hardening``.
"""
