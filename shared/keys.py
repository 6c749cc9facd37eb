"""The keys made from the one configured card secret: one key per purpose.

``CARD_FINGERPRINT_KEY`` is the only configured secret.  The card fingerprint
uses it as it is (so the fingerprints already stored stay valid); every other
use gets its own key derived from it with HMAC-SHA256 over a purpose label (a
one-step HKDF-Expand).  A digest made for one purpose can then never be
compared with, or brute-forced as, a digest made for another, and a leaked
derived key does not give the secret back.
"""

from __future__ import annotations

import hashlib
import hmac

from shared.settings import Settings

#: The label of the Idempotency-Key request digest.  Changing it changes every
#: request hash, so a replay across the change would be answered 422.
REQUEST_HASH_PURPOSE = b"payment-service/request-hash/v1"


def derive_key(secret: bytes, purpose: bytes) -> bytes:
    """A 32-byte key for ``purpose``, derived from ``secret``."""
    if not secret:
        raise ValueError("the secret must not be empty")
    if not purpose:
        raise ValueError("a derived key needs a purpose label")
    return hmac.new(secret, purpose + b"\x01", hashlib.sha256).digest()


def fingerprint_key(settings: Settings) -> bytes:
    """The key of the card-number fingerprint (``shared.pan.fingerprint``)."""
    return settings.card_fingerprint_key.get_secret_value().encode()


def request_hash_key(settings: Settings) -> bytes:
    """The key of the request digest kept with jobs and Idempotency-Key records."""
    return derive_key(fingerprint_key(settings), REQUEST_HASH_PURPOSE)
