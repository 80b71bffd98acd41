"""Token factor types. Importing this package registers the ones whose libraries are present.

* ``fido2``: FIDO2 hmac-secret (python-fido2), over HID or PC/SC.
* ``otp``: YubiKey OTP HMAC-SHA1 challenge-response (yubikit), over PC/SC.
* ``piv``: ECDH / RSA-OAEP decryption on a PIV card (yubikit), over PC/SC, enrolled online
  or offline.
* ``pkcs11``: ECDH / RSA-OAEP on any PKCS#11 token (python-pkcs11), enrolled online or offline.

A vault holding a slot whose factor type is not registered here still loads (the factor shows
as "not supported here") and its other slots still open.
"""

from __future__ import annotations

from . import fido2 as _fido2  # noqa: F401 - registers the factor type
from . import otp as _otp  # noqa: F401 - registers the factor type
from . import piv as _piv  # noqa: F401 - registers the factor type
from . import pkcs11 as _pkcs11  # noqa: F401 - registers the factor type
