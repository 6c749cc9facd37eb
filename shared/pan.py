"""Card number (PAN) helpers: normalizing, the Luhn check, brand, keyed fingerprint, masking, scrubbing.

PCI-minded by construction: no function here logs a card number, and no error
message contains the value it was given, so an exception that reaches a log or
a problem+json answer never carries card data.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

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


# -- scrubbing: card numbers out of text, JSON and raw messages ------------------
#
# What can be a card number: 12-19 digits passing the Luhn check, not starting
# with 0 (no card number does), written in one piece or in groups joined by
# one to three spaces, a dash or a dot, in any grouping.  A decimal number
# with a short integer part ("0.0045238999", "12.5") is a quantity, not a card
# number, and is left alone: that keeps task runtimes and amounts readable.

#: Digit groups and what joins them; only where twelve characters of digits
#: and separators follow (a shorter run cannot hold a card number), so that
#: the short numbers of every log line (ids, times, amounts) cost no call.
_DIGIT_RUN = re.compile(r"(?=[0-9][0-9 .\-]{11})[0-9]+(?:(?: {1,3}|[.\-])[0-9]+)*")
_GROUP = re.compile(r"[0-9]+")
#: A number in exponent form, as JSON or Python write a large float
#: ("4.242424242424242e15").
_EXPONENT_NUMBER = re.compile(r"(?<![0-9.])[0-9]+(?:\.[0-9]+)?[eE]\+?[0-9]{1,3}(?![0-9])")
#: Card-number fields of a JSON object, masked by name whatever the Luhn check
#: says (a mistyped number is as secret as a valid one).  Compared lowercased,
#: without "_" and "-".
_NUMBER_FIELDS = frozenset({"cardnumber", "number", "pan", "cardno", "ccnumber", "accountnumber"})
#: Fields whose value is always secret, whatever it looks like.
_SECRET_FIELDS = frozenset({"cvv", "cvc", "cvv2", "cvc2", "securitycode"})
#: In a raw message that is not JSON, a card-number field and its value.
_RAW_NUMBER_FIELD = re.compile(
    r'("(?:card_?number|cardNumber|pan|number)"\s*:\s*"?)([0-9](?:[0-9 .\-]*[0-9])?)',
    re.IGNORECASE,
)
_MIN_PAN, _MAX_PAN = 12, 19


def _is_pan(digits: str) -> bool:
    return _MIN_PAN <= len(digits) <= _MAX_PAN and digits[0] != "0" and luhn_valid(digits)


def _mask_run(run: str) -> str:
    """``run`` (digit groups and separators) with every card number in it masked.

    Every card number in the run begins a group, so each group is tried as a
    start, with the longest card number from there masked first.  A masked
    stretch keeps its last four digits; the scan goes on from the group that
    holds them, so digits kept visible can never complete another number.
    """
    groups = [(m.start(), m.end()) for m in _GROUP.finditer(run)]
    if sum(end - start for start, end in groups) < _MIN_PAN:
        return run
    # "12.5" or "0.00452389999": one dot after a short integer part is a decimal point.
    decimal_point = len(groups) == 2 and run[groups[0][1] : groups[1][0]] == "." and groups[0][1] < 4
    if decimal_point:
        return run
    masked = [False] * len(run)
    first = 0
    while first < len(groups):
        positions: list[int] = []
        best: list[int] = []
        for start, end in groups[first:]:
            positions.extend(range(start, end))
            if len(positions) > _MAX_PAN:
                break
            if _is_pan("".join(run[i] for i in positions)):
                best = list(positions)
        if not best:
            first += 1
            continue
        for i in best[:-4]:
            masked[i] = True
        kept = best[-4]
        first = max(first + 1, next(n for n, (start, end) in enumerate(groups) if start <= kept < end))
    return "".join("*" if hidden else char for char, hidden in zip(run, masked, strict=True))


def _mask_exponent(match: re.Match[str]) -> str:
    text = match.group(0)
    try:
        value = Decimal(text)
    except InvalidOperation:
        return text
    if value != value.to_integral_value() or value.adjusted() >= _MAX_PAN:
        return text
    digits = str(int(value))
    return mask(digits[-4:]) if _is_pan(digits) else text


def scrub_text(text: str) -> str:
    """``text`` with every card number masked, and every other number as it was.

    "4242 4242 4242 4242" becomes "**** **** **** 4242" (the layout stays, the
    digits go); a number in exponent form that is a card number becomes
    "************4242".
    """
    text = _EXPONENT_NUMBER.sub(_mask_exponent, text)
    return _DIGIT_RUN.sub(lambda m: _mask_run(m.group(0)), text)


class _Number(str):
    """A JSON number kept as its text, so that re-encoding writes it unchanged."""

    __slots__ = ()


class _Object(list[tuple[str, Any]]):
    """A JSON object as its pairs, duplicate names included."""

    __slots__ = ()


def _field_name(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def _number_digits(value: object) -> str | None:
    """The digits of a JSON number that is a whole number, else None."""
    if not isinstance(value, _Number):
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        return None
    if not number.is_finite() or number != number.to_integral_value() or number.adjusted() > 40:
        return None
    return str(abs(int(number)))


def _scrub_field(name: str, value: object) -> tuple[object, bool]:
    """The value of field ``name`` masked by what the field is, if it is a card field."""
    field = _field_name(name)
    if field in _SECRET_FIELDS and value is not None:
        return "***", True
    if field not in _NUMBER_FIELDS:
        return value, False
    digits = _number_digits(value)
    if digits is None and isinstance(value, str):
        digits = re.sub(r"[^0-9]", "", value)
        if not re.fullmatch(r"[0-9 .\-]*", value):
            digits = None  # not a number written out: masked by value below, if at all
    if digits is not None and len(digits) >= _MIN_PAN:
        return mask(digits[-4:]), True
    return value, False


def _scrub_json(value: object) -> tuple[object, bool]:
    """``value`` (as parsed below) with card numbers masked, and whether anything was."""
    if isinstance(value, _Object):
        changed = False
        pairs = _Object()
        for name, child in value:
            clean_name = scrub_text(name)
            new, hit = _scrub_field(name, child)
            if not hit:
                new, hit = _scrub_json(child)
            changed = changed or hit or clean_name != name
            pairs.append((clean_name, new))
        return pairs, changed
    if isinstance(value, list):
        items = [_scrub_json(child) for child in value]
        return [item for item, _ in items], any(hit for _, hit in items)
    if isinstance(value, _Number):
        digits = _number_digits(value)
        if digits is not None and _is_pan(digits):
            return mask(digits[-4:]), True
        return value, False
    if isinstance(value, str):
        clean = scrub_text(value)
        return clean, clean != value
    return value, False


def _encode(value: object) -> str:
    if isinstance(value, _Object):
        return "{" + ",".join(f"{json.dumps(name)}:{_encode(child)}" for name, child in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_encode(child) for child in value) + "]"
    if isinstance(value, _Number):
        return str.__str__(value)
    return json.dumps(value)


def scrub_data(value: Any) -> Any:
    """A JSON-shaped value (dicts, lists, strings, numbers) with card numbers masked.

    For structured log records: names and strings are scrubbed as text, a
    card-number field or a whole number that is a card number becomes
    "************4242", and anything else that is not plain JSON is scrubbed
    as its ``str()``.
    """
    if isinstance(value, dict):
        clean: dict[str, Any] = {}
        for name, child in value.items():
            new, hit = _scrub_field(str(name), _from_python(child))
            clean[scrub_text(str(name))] = new if hit else scrub_data(child)
        return clean
    if isinstance(value, (list, tuple)):
        return [scrub_data(child) for child in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float, Decimal)):
        new, hit = _scrub_json(_from_python(value))
        return new if hit else value
    return scrub_text(value if isinstance(value, str) else str(value))


def _from_python(value: object) -> object:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return _Number(value)
    if isinstance(value, (float, Decimal)):
        return _Number(repr(value) if isinstance(value, float) else str(value))
    return value


def scrub_message(value: bytes | None) -> bytes:
    """A message with every card number masked, by field and by value.

    A JSON message is parsed and masked value by value, at any depth
    (objects, arrays, names, strings, numbers in any notation, duplicate
    names, escaped digits), and written out again as valid JSON; a message
    with nothing to mask is returned unchanged, byte for byte.  A message that
    is not JSON (or too deep to parse) is masked as text on its raw bytes.
    """
    if not value:
        return b""
    try:
        parsed = json.loads(value, parse_float=_Number, parse_int=_Number, object_pairs_hook=_Object)
    except (UnicodeDecodeError, ValueError, RecursionError):
        parsed = _NOT_JSON
    if parsed is not _NOT_JSON:
        try:
            clean, changed = _scrub_json(parsed)
            return _encode(clean).encode() if changed else value
        except RecursionError:
            pass
    # Latin-1 maps every byte to one character and back: bytes that are not
    # digits pass unchanged, whatever the encoding.
    text = value.decode("latin-1")
    text = _RAW_NUMBER_FIELD.sub(_mask_raw_field, text)
    return scrub_text(text).encode("latin-1")


_NOT_JSON = object()


def _mask_raw_field(match: re.Match[str]) -> str:
    digits = re.sub(r"[^0-9]", "", match.group(2))
    if len(digits) < _MIN_PAN:
        return match.group(0)
    return match.group(1) + "*" * 12 + digits[-4:]
