"""Desktop notifications: the freedesktop.org Notifications service on the session D-Bus.

Theory of operation. ``Notifier.show`` sends ``org.freedesktop.Notifications.Notify`` (jeepney,
pure Python, one short connection per message, in a worker thread so the event loop never
waits) and returns the notification id; ``close`` withdraws one (``CloseNotification``). The
agent shows "Touch your key" when a plugged token waits for a touch, withdraws it when the
vault is unlocked (or the wait ends), and says when a vault was locked because its token
left. Where there is no session bus (a server, a container) or no notification service, the
first failure is logged once and notifications stay off: the event stream
(``tokenagent events``) carries the same news. Texts hold vault and token names only, never
a secret.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)
APP = "tokenagent"
TIMEOUT_MS = 30_000
SEND_TIMEOUT = 2.0


class Notifier:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and bool(os.environ.get("DBUS_SESSION_BUS_ADDRESS"))
        self._lock = threading.Lock()

    def show(self, summary: str, body: str = "", urgent: bool = False) -> int | None:
        """Show a notification; its id, or None when notifications are off or failed."""
        hints = {"urgency": ("y", 2 if urgent else 1)}
        reply = self._call("Notify", "susssasa{sv}i", (APP, 0, "security-high", summary, body, [], hints, TIMEOUT_MS))
        return int(reply[0]) if reply and isinstance(reply[0], int) else None

    def close(self, notification: int | None) -> None:
        if notification is not None:
            self._call("CloseNotification", "u", (notification,))

    def _call(self, method: str, signature: str, body: tuple[object, ...]) -> tuple[object, ...] | None:
        if not self.enabled:
            return None
        try:
            from jeepney import DBusAddress, new_method_call
            from jeepney.io.blocking import open_dbus_connection

            service = DBusAddress("/org/freedesktop/Notifications", bus_name="org.freedesktop.Notifications",
                                  interface="org.freedesktop.Notifications")
            with self._lock, open_dbus_connection(bus="SESSION") as connection:
                reply = connection.send_and_get_reply(new_method_call(service, method, signature, body),
                                                      timeout=SEND_TIMEOUT)
            if reply.header.message_type.name == "error":
                raise RuntimeError(str(reply.body[0]) if reply.body else "D-Bus error")
            return tuple(reply.body)
        except Exception as err:  # noqa: BLE001 - no bus, no notification service, jeepney missing
            log.info("desktop notifications are off: %s", err)
            self.enabled = False
            return None
