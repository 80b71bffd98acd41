"""The virtual token's smart-card interface as a USB CCID reader with its card inside (CCID 1.1).

Theory of operation. A YubiKey's CCID interface is a reader and a card at once: the host's
driver (pcscd's libccid) writes PC_to_RDR messages to the bulk OUT endpoint and reads the
RDR_to_PC answers from bulk IN. Every message has a 10-byte header: bMessageType, dwLength
(little endian, the length of the data that follows), bSlot, bSeq (echoed in the answer) and
three bytes of parameters; answers carry bStatus (bits 0-1: the card present and powered 0,
present and not powered 1, absent 2; bits 6-7: processed 0, failed 1, time extension 2),
bError and one more byte. ``CcidSlot`` takes the bytes of bulk OUT transfers and hands each
answer to ``send``:

* IccPowerOn: the card is powered (a power cycle for its applets) and answers its ATR, the
  one a YubiKey 5 gives over USB (T=1; ykman tells USB from NFC by its TA1 byte);
* XfrBlock: one whole APDU (the descriptor claims short and extended APDU level exchange, so
  libccid sends APDUs, not T=1 blocks), answered by the card. It runs in a worker thread and,
  while it waits (for a touch), the reader sends a time extension (bStatus 0x80) every second,
  as a YubiKey does, so the driver keeps waiting instead of timing out;
* IccPowerOff, GetSlotStatus, GetParameters / SetParameters / ResetParameters (T=1), and the
  rest answered "command not supported" (bStatus 0x40, bError 0).

Over USB a YubiKey 5 has no FIDO applet on its CCID interface (FIDO is the HID interface
there; over NFC it is an applet): SELECT of the FIDO AID answers 6A82, as a real key does.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("tokenagent.virtual")

# The ATR of a YubiKey 5 over USB: TA1 0x13, T=1, IFSC 254, historical bytes "...YubiKey"
USB_ATR = bytes.fromhex("3BFD1300008131FE158073C021C057597562694B657940")
FIDO_AID = bytes.fromhex("A0000006472F0001")

HEADER_SIZE = 10
MAX_MESSAGE = 3072 + HEADER_SIZE  # dwMaxCCIDMessageLength in the class descriptor, plus the header
PC_TO_RDR_SET_PARAMETERS, PC_TO_RDR_ICC_POWER_ON, PC_TO_RDR_ICC_POWER_OFF = 0x61, 0x62, 0x63
PC_TO_RDR_GET_SLOT_STATUS, PC_TO_RDR_ESCAPE, PC_TO_RDR_GET_PARAMETERS = 0x65, 0x6B, 0x6C
PC_TO_RDR_RESET_PARAMETERS, PC_TO_RDR_ICC_CLOCK, PC_TO_RDR_XFR_BLOCK = 0x6D, 0x6E, 0x6F
PC_TO_RDR_ABORT = 0x72
RDR_TO_PC_DATA_BLOCK, RDR_TO_PC_SLOT_STATUS, RDR_TO_PC_PARAMETERS, RDR_TO_PC_ESCAPE = 0x80, 0x81, 0x82, 0x83
RDR_TO_PC_NOTIFY_SLOT_CHANGE = 0x50
ANSWER_TYPE = {PC_TO_RDR_ICC_POWER_ON: RDR_TO_PC_DATA_BLOCK, PC_TO_RDR_XFR_BLOCK: RDR_TO_PC_DATA_BLOCK,
               PC_TO_RDR_GET_PARAMETERS: RDR_TO_PC_PARAMETERS, PC_TO_RDR_SET_PARAMETERS: RDR_TO_PC_PARAMETERS,
               PC_TO_RDR_RESET_PARAMETERS: RDR_TO_PC_PARAMETERS, PC_TO_RDR_ESCAPE: RDR_TO_PC_ESCAPE}
ICC_ACTIVE, ICC_INACTIVE = 0, 1
COMMAND_FAILED, TIME_EXTENSION = 0x40, 0x80
ERROR_NOT_SUPPORTED, ERROR_BAD_SLOT, ERROR_ICC_MUTE, ERROR_BUSY = 0x00, 0x05, 0xFE, 0xE0
PROTOCOL_T1 = 1
# T=1 parameters (CCID 6.2.3): Fi/Di of TA1, LRC checksum, guard time, BWI/CWI, no clock stop, IFSC, NAD
T1_PARAMETERS = bytes([0x13, 0x10, 0x00, 0x15, 0x00, 0xFE, 0x00])
TIME_EXTENSION_EVERY = 1.0  # seconds between time extensions while the card works


def header(kind: int, data: bytes, slot: int, seq: int, status: int, error: int, last: int) -> bytes:
    return struct.pack("<BIBBBBB", kind, len(data), slot, seq, status, error, last) + data


def hides_fido(apdu: bytes) -> bool:
    """A SELECT of the FIDO applet, which a YubiKey's USB CCID interface does not have."""
    return len(apdu) >= 5 + len(FIDO_AID) and apdu[1] == 0xA4 and apdu[2] == 0x04 and apdu[5:].startswith(FIDO_AID)


class CcidSlot:
    """The reader's one slot and its card: PC_to_RDR messages in, RDR_to_PC answers out (``send``)."""

    def __init__(self, card: Any, send: Callable[[bytes], None], atr: bytes = USB_ATR, spare: tuple[Any, ...] = ()) -> None:
        """``spare``: the card's applets the slot's power does not reach. Over USB a YubiKey's FIDO
        authenticator is its HID interface's, powered with the device: pcscd powering the CCID
        slot on or off (which it does when a client connects, and after idling) must not reboot
        it (a new key agreement, the PIN token gone) in the middle of a CTAPHID exchange."""
        self.card, self.send, self.atr, self.spare = card, send, atr, spare
        self.powered = False
        self._buffer = bytearray()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Plugged in or pulled out: the card is unpowered and any half-received message dropped."""
        with self._lock:
            self._buffer.clear()
            if self.powered:
                self.card.power_off(self.spare)
            self.powered = False

    def receive(self, data: bytes) -> None:
        """The bytes of one bulk OUT transfer (a message may span several)."""
        with self._lock:
            self._buffer += data
            messages = []
            while len(self._buffer) >= HEADER_SIZE:
                length = struct.unpack_from("<I", self._buffer, 1)[0]
                if length > MAX_MESSAGE - HEADER_SIZE:
                    log.debug("CCID message of %d bytes: dropped", length)
                    self._buffer.clear()
                    return
                if len(self._buffer) < HEADER_SIZE + length:
                    break
                messages.append(bytes(self._buffer[: HEADER_SIZE + length]))
                del self._buffer[: HEADER_SIZE + length]
        for message in messages:
            self._message(message)

    def _status(self, failed: bool = False) -> int:
        return (COMMAND_FAILED if failed else 0) | (ICC_ACTIVE if self.powered else ICC_INACTIVE)

    def _message(self, message: bytes) -> None:
        kind, _length, slot, seq = struct.unpack_from("<BIBB", message)
        data = message[HEADER_SIZE:]
        answer_type = ANSWER_TYPE.get(kind, RDR_TO_PC_SLOT_STATUS)
        if slot != 0:
            self.send(header(answer_type, b"", slot, seq, COMMAND_FAILED | 2, ERROR_BAD_SLOT, 0))
            return
        if self._worker is not None and self._worker.is_alive() and kind != PC_TO_RDR_ABORT:
            self.send(header(answer_type, b"", slot, seq, self._status(True), ERROR_BUSY, 0))
            return
        if kind == PC_TO_RDR_ICC_POWER_ON:
            if self.powered:
                self.card.power_off(self.spare)
            self.card.power_on(self.spare)
            self.powered = True
            self.send(header(RDR_TO_PC_DATA_BLOCK, self.atr, slot, seq, self._status(), 0, 0))
        elif kind == PC_TO_RDR_ICC_POWER_OFF:
            if self.powered:
                self.card.power_off(self.spare)
            self.powered = False
            self.send(header(RDR_TO_PC_SLOT_STATUS, b"", slot, seq, self._status(), 0, 0))
        elif kind in (PC_TO_RDR_GET_SLOT_STATUS, PC_TO_RDR_ICC_CLOCK, PC_TO_RDR_ABORT):
            self.send(header(RDR_TO_PC_SLOT_STATUS, b"", slot, seq, self._status(), 0, 0))
        elif kind in (PC_TO_RDR_GET_PARAMETERS, PC_TO_RDR_SET_PARAMETERS, PC_TO_RDR_RESET_PARAMETERS):
            self.send(header(RDR_TO_PC_PARAMETERS, T1_PARAMETERS, slot, seq, self._status(), 0, PROTOCOL_T1))
        elif kind == PC_TO_RDR_XFR_BLOCK:
            if not self.powered:
                self.send(header(RDR_TO_PC_DATA_BLOCK, b"", slot, seq, self._status(True), ERROR_ICC_MUTE, 0))
                return
            self._worker = threading.Thread(target=self._transfer, args=(bytes(data), seq), daemon=True,
                                            name="virtual-ccid")
            self._worker.start()
        else:
            self.send(header(answer_type, b"", slot, seq, self._status(True), ERROR_NOT_SUPPORTED, 0))

    def _transfer(self, apdu: bytes, seq: int) -> None:
        answer: list[bytes] = []

        def run() -> None:
            answer.append(bytes.fromhex("6A82") if hides_fido(apdu) else self.card.transmit(apdu))

        runner = threading.Thread(target=run, daemon=True, name="virtual-ccid-card")
        runner.start()
        runner.join(TIME_EXTENSION_EVERY)
        while runner.is_alive():
            self.send(header(RDR_TO_PC_DATA_BLOCK, b"", 0, seq, TIME_EXTENSION | ICC_ACTIVE, 1, 0))
            runner.join(TIME_EXTENSION_EVERY)
        self.send(header(RDR_TO_PC_DATA_BLOCK, answer[0] if answer else bytes.fromhex("6F00"), 0, seq,
                         self._status(), 0, 0))


def notify_slot_change(present: bool = True) -> bytes:
    """RDR_to_PC_NotifySlotChange for slot 0 (interrupt IN): present or not, and changed."""
    return bytes([RDR_TO_PC_NOTIFY_SLOT_CHANGE, 0x03 if present else 0x02])
