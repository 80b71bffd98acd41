"""Mutations of get-socket requests, shared by test_get_socket.py and the sanitizer driver."""

from __future__ import annotations

import random


def mutate(rng: random.Random, data: bytes) -> bytes:
    """1-4 of: a byte changed, the tail cut, bytes inserted, or all replaced by random bytes."""
    body = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        action = rng.random()
        if action < 0.4 and body:
            body[rng.randrange(len(body))] = rng.randrange(256)
        elif action < 0.6:
            del body[rng.randrange(len(body) + 1):]
        elif action < 0.8:
            body[rng.randrange(len(body) + 1):0] = rng.randbytes(rng.randint(1, 8))
        else:
            body = bytearray(rng.randbytes(rng.randint(0, 40)))
    return bytes(body)
