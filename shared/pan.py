"""Card number (PAN) helpers: normalizing, the Luhn check, brand, keyed fingerprint, masking.

PCI-minded by construction: no function here logs a card number, and no error
message contains the value it was given, so an exception that reaches a log or
a problem+json answer never carries card data.
"""

from __future__ import annotations

import hashlib
import hmac
import re

# ASCII digits only: str.isdigit() would also accept "²" or Arabic-Indic digits,
# which int() understands but no card network issues.
_PAN_INPUT = re.compile(r"[0-9 \-]+")
_DIGITS = re.compile(r"[0-9]+")

#: (brand, prefix length, lowest prefix, highest prefix), checked in order.  The
#: ranges do not overlap, so the order only matters for speed.
_BRAND_RANGES: tuple[tuple[str, int, int, int], ...] = (
    ("visa", 1, 4, 4),
    ("mastercard", 2, 51, 55),
    ("mastercard", 4, 2221, 2720),
    ("amex", 2, 34, 34),
    ("amex", 2, 37, 37),
    ("discover", 4, 6011, 6011),
    ("discover", 3, 644, 649),
    ("discover", 2, 65, 65),
    ("jcb", 4, 3528, 3589),
    ("diners", 3, 300, 305),
    ("diners", 2, 36, 36),
    ("diners", 2, 38, 38),
    ("unionpay", 2, 62, 62),
)

#: What a masked number shows in place of everything but the last four digits.
#: Always twelve, whatever the card's length, so the mask does not reveal it.
MASK_PREFIX = "*" * 12


def _is_digits(value: str) -> bool:
    return _DIGITS.fullmatch(value) is not None


def normalize_pan(value: str | int) -> str:
    """The card number as a string of ASCII digits.

    Accepts a string of digits with optional spaces and dashes ("4242 4242 ...",
    "4242-4242-...") or a non-negative integer (a JSON number).  Length and the
    Luhn check are the caller's business.  Raises ``ValueError`` with a message
    that never contains the value.
    """
    # bool is an int subclass: True must not become the card number "1".
    if isinstance(value, bool):
        raise ValueError("must be a string or an integer, not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        # A card number has at most 19 digits; refusing giant integers here
        # keeps str() away from Python's integer-to-string digit limit.
        if value.bit_length() > 256:
            raise ValueError("has far too many digits")
        return str(value)
    if not isinstance(value, str):
        raise ValueError("must be a string or an integer")
    if _PAN_INPUT.fullmatch(value) is None:
        raise ValueError("may contain only digits, spaces and dashes")
    digits = value.replace(" ", "").replace("-", "")
    if not digits:
        raise ValueError("must contain digits")
    return digits


def luhn_valid(digits: str) -> bool:
    """Whether ``digits`` (ASCII digits only) passes the Luhn (mod 10) check."""
    if not _is_digits(digits):
        return False
    total = 0
    # From the rightmost digit, double every second one; a doubled digit above
    # 9 counts as the sum of its two digits, which is the same as minus 9.
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def card_brand(digits: str) -> str:
    """The card network of a card number, from its leading digits (IIN ranges).

    One of "visa", "mastercard", "amex", "discover", "jcb", "diners",
    "unionpay", or "unknown".
    """
    if not _is_digits(digits):
        return "unknown"
    for brand, length, low, high in _BRAND_RANGES:
        if len(digits) >= length and low <= int(digits[:length]) <= high:
            return brand
    return "unknown"


def fingerprint(digits: str, key: bytes) -> str:
    """HMAC-SHA256 (hex) of the card number under ``key``.

    Used to find the same card number again (uniqueness across users) without
    storing it.  Keyed rather than a plain hash: card numbers are few enough
    (a known prefix, ~9 free digits and a check digit) that a plain hash is
    reversed by brute force in minutes; without the key a leaked database
    gives nothing.  ``digits`` must already be normalized, so that
    "4242 4242 ..." and "42424242..." cannot get different fingerprints.
    """
    if not key:
        raise ValueError("the fingerprint key must not be empty")
    if not _is_digits(digits):
        raise ValueError("the card number must be normalized to digits before fingerprinting")
    return hmac.new(key, digits.encode("ascii"), hashlib.sha256).hexdigest()


def mask(last4: str) -> str:
    """The card number as every answer shows it: "************4242".

    Takes only the last four digits, and refuses anything else, so that a
    caller passing the full number by mistake fails loudly instead of leaking it.
    """
    if len(last4) != 4 or not _is_digits(last4):
        raise ValueError("mask() takes exactly the last four digits of the card number")
    return MASK_PREFIX + last4
