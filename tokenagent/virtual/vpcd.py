"""Plug a virtual card into a real pcscd through the vsmartcard ``vpcd`` reader driver.

The vpcd driver listens on a TCP port (35963 by default; ``/etc/reader.conf.d/vpcd``) and
each connection is a card inserted in one of its readers ("Virtual PCD 00 00", "... 00 01").
Wire format: a 2-byte big-endian length, then the payload. A 1-byte payload is a control:
0 power off, 1 power on, 2 reset (no answer), 4 "send the ATR" (answered with the ATR);
anything longer is a C-APDU, answered with the R-APDU. Plugging is connecting; unplugging
is closing the connection: pcscd sees the card removed.

Why TCP_QUICKACK after every receive: the driver writes each frame in two small writes
(length, then payload) and waits for the answer. With Linux's delayed acknowledgement the
second write sits in the driver's Nagle buffer until our ACK, sent up to 40 ms later, so
every APDU took about 50 ms. Quick-ack mode is not sticky (the kernel leaves it after a
while), hence it is set again after each receive: an APDU then takes about 0.2 ms
(bench/apdu_roundtrip.py).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading

from .card import VirtualCard

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 35963
POWER_OFF, POWER_ON, RESET, GET_ATR = 0, 1, 2, 4
log = logging.getLogger(__name__)


class VpcdClient:
    def __init__(self, card: VirtualCard, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        self.card = card
        self.host, self.port = host, port
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def plugged(self) -> bool:
        return self._sock is not None

    def plug(self, timeout: float = 10.0) -> None:
        """Connect to vpcd (the card appears in pcscd)."""
        with self._lock:
            if self._sock is not None:
                return
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _quickack(sock)
            self._sock = sock
            self._thread = threading.Thread(target=self._serve, args=(sock,), daemon=True, name="vpcd")
            self._thread.start()

    def unplug(self) -> None:
        """Disconnect (pcscd sees the card removed); the card is powered off."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        self.card.power_off()

    def _serve(self, sock: socket.socket) -> None:
        try:
            while True:
                header = _recv_exactly(sock, 2)
                if header is None:
                    break
                (length,) = struct.unpack(">H", header)
                payload = _recv_exactly(sock, length)
                if payload is None:
                    break
                answer = self._handle(payload)
                if answer is not None:
                    sock.sendall(struct.pack(">H", len(answer)) + answer)
        except OSError:
            pass
        finally:
            with self._lock:
                if self._sock is sock:
                    self._sock = None  # vpcd went away: unplugged
            self.card.power_off()

    def _handle(self, payload: bytes) -> bytes | None:
        if len(payload) == 1:
            control = payload[0]
            if control == POWER_OFF:
                self.card.power_off()
            elif control in (POWER_ON, RESET):
                self.card.power_on()
            elif control == GET_ATR:
                return self.card.atr
            else:
                log.warning("unknown vpcd control byte %d", control)
            return None
        return self.card.transmit(payload)


def _quickack(sock: socket.socket) -> None:
    with contextlib.suppress(OSError, AttributeError):  # Linux only; elsewhere only slower
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        _quickack(sock)
        data += chunk
    return data
