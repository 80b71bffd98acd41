"""Token factor types. Importing this package registers the ones whose libraries are present.

* ``fido2``: FIDO2 hmac-secret (python-fido2), over HID or PC/SC.
* ``otp``: YubiKey OTP HMAC-SHA1 challenge-response (yubikit), over PC/SC.
* ``pkcs11``: ECDH on any PKCS#11 token (python-pkcs11), enrolled online or offline.

PIV (through yubikit) is not in this version (PIV cards work through OpenSC's PKCS#11
module with the ``pkcs11`` factor); vaults holding such slots still load
(their factors show as "not supported here") and their other slots still open.
"""

from __future__ import annotations

from . import fido2 as _fido2  # noqa: F401 - registers the factor type
from . import otp as _otp  # noqa: F401 - registers the factor type
from . import pkcs11 as _pkcs11  # noqa: F401 - registers the factor type
