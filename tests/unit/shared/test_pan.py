"""Card number helpers: normalizing, Luhn, brand, keyed fingerprint and mask."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from shared.pan import card_brand, fingerprint, luhn_valid, mask, normalize_pan

VISA = "4242424242424242"
MASTERCARD = "5555555555554444"
AMEX = "378282246310005"
DISCOVER = "6011111111111117"
BAD_LUHN = "4242424242424241"
KEY = b"test-card-fingerprint-key-0123456789abcdef"


@pytest.mark.parametrize(
    ("value", "digits"),
    [
        (VISA, VISA),
        ("4242 4242 4242 4242", VISA),
        ("4242-4242-4242-4242", VISA),
        (" 4242 4242-4242 4242 ", VISA),
        (4242424242424242, VISA),
        (378282246310005, AMEX),
        (0, "0"),
    ],
)
def test_normalize_pan_returns_the_digits_of_a_string_or_an_integer(value: str | int, digits: str) -> None:
    assert normalize_pan(value) == digits


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        -4242424242424242,
        "",
        "  ",
        "--",
        "4242x4242",
        "4242\t4242",
        "4242\n",
        "4242.4242",
        "+4242424242424242",
        "\u0664\u0662\u0664\u0662",  # Arabic-Indic digits: int() reads them, card networks do not
        "\u00b2\u00b3",  # superscripts count as isdigit()
        "\uff14\uff12",  # full-width digits
        10**400,
        4242.0,
        None,
        [4242],
        b"4242",
    ],
)
def test_normalize_pan_refuses_anything_but_digits_spaces_and_dashes(value: Any) -> None:
    with pytest.raises(ValueError, match=r"\w") as raised:
        normalize_pan(value)
    assert str(value) not in str(raised.value) or str(value) == ""


def test_normalize_pan_never_puts_the_number_in_its_error_message() -> None:
    with pytest.raises(ValueError, match="only digits") as raised:
        normalize_pan(VISA + "x")
    assert VISA not in str(raised.value)
    assert "4242" not in str(raised.value)


@pytest.mark.parametrize("digits", [VISA, MASTERCARD, AMEX, DISCOVER, "0", "18", "79927398713"])
def test_luhn_accepts_numbers_whose_check_digit_is_right(digits: str) -> None:
    assert luhn_valid(digits)


@pytest.mark.parametrize(
    "digits", [BAD_LUHN, "4242424242424243", "1", "79927398710", "", "4242 4242 4242 4242", "42a2", "\u0664"]
)
def test_luhn_refuses_a_wrong_check_digit_and_anything_not_plain_digits(digits: str) -> None:
    assert not luhn_valid(digits)


@pytest.mark.parametrize(
    ("digits", "brand"),
    [
        (VISA, "visa"),
        ("4000056655665556", "visa"),
        (MASTERCARD, "mastercard"),
        ("5105105105105100", "mastercard"),
        ("2221000000000009", "mastercard"),
        ("2720990000000000", "mastercard"),
        (AMEX, "amex"),
        ("341111111111111", "amex"),
        (DISCOVER, "discover"),
        ("6440000000000000", "discover"),
        ("6490000000000000", "discover"),
        ("6500000000000000", "discover"),
        ("3528000000000000", "jcb"),
        ("3589000000000000", "jcb"),
        ("30000000000004", "diners"),
        ("30500000000000", "diners"),
        ("36227206271667", "diners"),
        ("38000000000000", "diners"),
        ("6200000000000005", "unionpay"),
        ("2220990000000000", "unknown"),
        ("2721000000000000", "unknown"),
        ("5000000000000000", "unknown"),
        ("5600000000000000", "unknown"),
        ("3527000000000000", "unknown"),
        ("3590000000000000", "unknown"),
        ("30600000000000", "unknown"),
        ("6430000000000000", "unknown"),
        ("6012000000000000", "unknown"),
        ("1234567890123", "unknown"),
        ("", "unknown"),
        ("4242 4242", "unknown"),
    ],
)
def test_card_brand_is_read_from_the_leading_digits(digits: str, brand: str) -> None:
    assert card_brand(digits) == brand


def test_fingerprint_is_the_hmac_sha256_of_the_digits_under_the_key() -> None:
    expected = hmac.new(KEY, VISA.encode(), hashlib.sha256).hexdigest()
    assert fingerprint(VISA, KEY) == expected
    assert len(fingerprint(VISA, KEY)) == 64


def test_fingerprint_is_stable_for_one_number_and_differs_between_numbers_and_keys() -> None:
    assert fingerprint(VISA, KEY) == fingerprint(normalize_pan("4242 4242 4242 4242"), KEY)
    assert fingerprint(VISA, KEY) != fingerprint(MASTERCARD, KEY)
    assert fingerprint(VISA, KEY) != fingerprint(VISA, KEY + b"x")


def test_fingerprint_is_not_a_plain_hash_of_the_number() -> None:
    assert fingerprint(VISA, KEY) != hashlib.sha256(VISA.encode()).hexdigest()
    assert VISA not in fingerprint(VISA, KEY)


@pytest.mark.parametrize(
    ("digits", "key"), [(VISA, b""), ("4242 4242 4242 4242", KEY), ("", KEY), ("4242-4242", KEY)]
)
def test_fingerprint_refuses_an_empty_key_or_a_number_that_is_not_normalized(digits: str, key: bytes) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        fingerprint(digits, key)


@pytest.mark.parametrize(("last4", "masked"), [("4242", "************4242"), ("0005", "************0005")])
def test_mask_shows_twelve_asterisks_and_the_last_four_digits(last4: str, masked: str) -> None:
    assert mask(last4) == masked


def test_mask_is_the_same_length_for_an_amex_and_a_visa() -> None:
    assert len(mask(AMEX[-4:])) == len(mask(VISA[-4:])) == 16


@pytest.mark.parametrize("value", [VISA, AMEX, "424", "42424", "", "42a2", "\u0664\u0662\u0664\u0662"])
def test_mask_refuses_anything_but_four_digits_so_a_full_number_cannot_leak(value: str) -> None:
    with pytest.raises(ValueError, match="last four digits") as raised:
        mask(value)
    assert value not in str(raised.value) or value == ""
